"""The store's finality tables: votes, certificates, evidence and the member's own last vote.

Part of the store (gridchain/ledger/store.py, schema 3); plain SQL over its connection, no
transactions of its own: ``Store.commit`` writes a ``FinalityWrite`` in the same transaction
as the blocks and main-chain change it goes with, so a finalization, the certificates it
made and the side branches it pruned are durable together or not at all.

Tables (query them with any SQLite tool):
  votes         members' votes counted for checkpoints above the finalized one (what a
                restart feeds the finality state again), at most MAX_VOTES_PER_TARGET per
                member per target height; rows below the finalized height are deleted as
                it advances
  certificates  ``role`` 'finalizes': the finality certificate of a finalized block (the
                link from it to the next checkpoint), kept for ever for proofs and notes,
                though its target block may be pruned (a later checkpoint finalized on
                another branch from the same source: the target was only justified);
                'justifies': the link that justified a block, kept while above the
                finalized height and while its block is stored (pruned with it).
                ``block_hash``/``height`` name the block finalized or justified; ``cert``
                is Certificate.encode()
  evidence      the first proof of equivocation found against each member (Evidence.encode)
  own_vote      this node's newest vote per key of its own (VoterGuard's state), written
                and synced before the vote is sent
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from gridchain.consensus.finality import Certificate, Checkpoint, Evidence, Vote

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    voter BLOB NOT NULL, target_height INTEGER NOT NULL, target_hash BLOB NOT NULL,
    source_height INTEGER NOT NULL, source_hash BLOB NOT NULL, signature BLOB NOT NULL,
    PRIMARY KEY (voter, target_height, target_hash, source_height, source_hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS votes_by_target ON votes (target_height);
CREATE TABLE IF NOT EXISTS certificates (
    role TEXT NOT NULL, height INTEGER NOT NULL, block_hash BLOB NOT NULL, cert BLOB NOT NULL,
    PRIMARY KEY (role, height, block_hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS certificates_by_hash ON certificates (block_hash);
CREATE TABLE IF NOT EXISTS evidence (voter BLOB PRIMARY KEY, kind TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS own_vote (voter BLOB PRIMARY KEY, vote BLOB NOT NULL);
"""
FINALIZES = "finalizes"
JUSTIFIES = "justifies"
# Votes kept per member per target height. An honest member signs one; an equivocating one
# may sign any number, and two are all the evidence needs (the rest would only fill the disk).
MAX_VOTES_PER_TARGET = 2


@dataclass(slots=True)
class FinalityWrite:
    """What one finality step stores, in one transaction with its main-chain change.

    ``finalized_height`` (when finality advanced) deletes votes and justification
    certificates below it; ``pruned`` are side blocks that conflict with the finalized one.
    """

    votes: list[Vote] = field(default_factory=list)
    certificates: list[tuple[str, Certificate]] = field(default_factory=list)  # (role, cert)
    evidence: list[tuple[str, Evidence]] = field(default_factory=list)  # (kind, evidence)
    finalized_height: int | None = None
    pruned: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.votes or self.certificates or self.evidence or self.pruned
                    or self.finalized_height is not None)


def write(db: sqlite3.Connection, rows: FinalityWrite) -> None:
    """Apply ``rows`` inside the caller's transaction."""
    for vote in rows.votes:
        count = db.execute("SELECT count(*) FROM votes WHERE voter = ? AND target_height = ?",
                           (vote.voter, vote.target.height)).fetchone()[0]
        if count < MAX_VOTES_PER_TARGET:
            db.execute("INSERT OR IGNORE INTO votes VALUES (?, ?, ?, ?, ?, ?)", _vote_row(vote))
    db.executemany("INSERT OR IGNORE INTO certificates VALUES (?, ?, ?, ?)",
                   [(role, *_named_block(role, cert), cert.encode()) for role, cert in rows.certificates])
    db.executemany("INSERT OR IGNORE INTO evidence VALUES (?, ?, ?)",
                   [(evidence.voter, kind, evidence.encode()) for kind, evidence in rows.evidence])
    if rows.finalized_height is not None:
        db.execute("DELETE FROM votes WHERE target_height < ?", (rows.finalized_height,))
        db.execute("DELETE FROM certificates WHERE role = ? AND height < ?", (JUSTIFIES, rows.finalized_height))
    pruned = [(block_hash,) for block_hash in rows.pruned]
    # A justification of a pruned block justifies nothing any more: it goes with its block.
    db.executemany(f"DELETE FROM certificates WHERE role = '{JUSTIFIES}' AND block_hash = ?", pruned)
    db.executemany("DELETE FROM blocks WHERE hash = ?", pruned)


def record_own_vote(db: sqlite3.Connection, vote: Vote) -> None:
    """Keep ``vote`` as its voter's newest (inside the caller's transaction)."""
    db.execute("INSERT OR REPLACE INTO own_vote VALUES (?, ?)", (vote.voter, vote.encode()))


def own_votes(db: sqlite3.Connection, voter: bytes | None = None) -> list[Vote]:
    rows = db.execute("SELECT vote FROM own_vote" + ("" if voter is None else " WHERE voter = ?"),
                      () if voter is None else (voter,)).fetchall()
    return [Vote.decode(row[0]) for row in rows]


def votes(db: sqlite3.Connection, min_target_height: int = 0) -> Iterator[Vote]:
    """Stored votes with a target at or above ``min_target_height``, lowest target first."""
    for voter, t_height, t_hash, s_height, s_hash, signature in db.execute(
            "SELECT voter, target_height, target_hash, source_height, source_hash, signature FROM votes "
            "WHERE target_height >= ? ORDER BY target_height", (min_target_height,)):
        yield Vote(voter, Checkpoint(s_height, s_hash), Checkpoint(t_height, t_hash), signature)


def certificate_rows(db: sqlite3.Connection, role: str, min_height: int = 0, newest_first: bool = False,
                     limit: int = -1) -> list[tuple[int, bytes, bytes]]:
    """(height, block hash, certificate bytes) of one role, by height."""
    order = "DESC" if newest_first else "ASC"
    return db.execute(f"SELECT height, block_hash, cert FROM certificates WHERE role = ? AND height >= ? "
                      f"ORDER BY height {order} LIMIT ?", (role, min_height, limit)).fetchall()


def iter_certificates(db: sqlite3.Connection, role: str) -> Iterator[tuple[int, bytes, bytes]]:
    """Every (height, block hash, certificate bytes) of one role, lowest first, streamed."""
    yield from db.execute("SELECT height, block_hash, cert FROM certificates WHERE role = ? ORDER BY height", (role,))


def finalized_height(db: sqlite3.Connection) -> int:
    """The height of the newest finalized block the store records (0: genesis only)."""
    row = db.execute("SELECT max(height) FROM certificates WHERE role = ?", (FINALIZES,)).fetchone()
    return 0 if row[0] is None else row[0]


def certificate_of(db: sqlite3.Connection, role: str, key: int | bytes) -> bytes | None:
    """The certificate bytes of ``role`` for a block hash, or for the lowest hash at a height."""
    column = "block_hash" if isinstance(key, bytes) else "height"
    row = db.execute(f"SELECT cert FROM certificates WHERE role = ? AND {column} = ? ORDER BY block_hash LIMIT 1",
                     (role, key)).fetchone()
    return None if row is None else row[0]


def first_certificate_from(db: sqlite3.Connection, role: str, height: int) -> bytes | None:
    """The lowest certificate of ``role`` at or above ``height`` (a proof's nearest final point)."""
    row = db.execute("SELECT cert FROM certificates WHERE role = ? AND height >= ? ORDER BY height LIMIT 1",
                     (role, height)).fetchone()
    return None if row is None else row[0]


def evidence_rows(db: sqlite3.Connection) -> list[tuple[bytes, str, bytes]]:
    return db.execute("SELECT voter, kind, data FROM evidence ORDER BY voter").fetchall()


def _vote_row(vote: Vote) -> tuple:
    return (vote.voter, vote.target.height, vote.target.hash, vote.source.height, vote.source.hash, vote.signature)


def _named_block(role: str, cert: Certificate) -> tuple[int, bytes]:
    checkpoint = cert.source if role == FINALIZES else cert.target
    return checkpoint.height, checkpoint.hash

