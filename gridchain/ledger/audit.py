"""The offline audit of a whole store, for `gridchain verify` and the operator's verify request.

``audit_store`` opens its own read-only connection, reads one consistent snapshot and
replays every stored block through a fresh ``Chain`` in the order the blocks arrived, so
every consensus rule runs again (the clock rule as it stood when each block arrived), every
relay signature (seal and gap notice) included. It also checks each row's columns against the block's own bytes, the readings table against
the main chain, and the main table and tip against the best chain rebuilt here.

A faulty block is still linked by whichever copy of its header hashes right, so its
descendants are checked too; a block that cannot be placed at all is listed once, and
what descends from it is counted, not listed. Opening a ledger (gridchain.ledger.ledger) checks
only the newest blocks; this checks them all. The report also lists the main chain's gaps:
the holes in a relay's sequence that the relay itself signed as lost and that no later
block filled in (store.Gap).

With finality (a network with members) it checks every stored certificate (finality_keeper.
certificate_damage: signatures, quorum, the blocks it names in the tree), every stored vote,
own vote and evidence row, rebuilds the finality state as opening does and runs fork choice
with it before comparing the main table, checks that every finalized block is on the main
chain, and reports the evidence (members caught equivocating: not damage, but shown).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gridchain.consensus.block import Block, BlockDecodeError, Header
from gridchain.consensus.chain import Chain
from gridchain.consensus.finality import Evidence, FinalityError, Vote, verify_vote
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.ledger import finality_store
from gridchain.ledger.damage import LedgerDamaged
from gridchain.ledger.finality_keeper import certificate_damage, evidence_damage, load_finality, vote_damage
from gridchain.ledger.finality_store import FINALIZES, JUSTIFIES
from gridchain.ledger.reopen import check_readings_rows, index_facts
from gridchain.ledger.store import MIGRATES_FROM, SCHEMA_VERSION, Gap, main_chain_gaps, store_error

# Problems listed in one report; past this the count goes on but the list stops growing.
MAX_PROBLEMS = 1000
PROGRESS_EVERY = 1000  # blocks between progress callbacks


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The verdict on a whole store: ``problems`` are (height, block hash hex, reason).

    ``omitted`` counts problems left out of the list: past MAX_PROBLEMS, and blocks that
    descend from a block that is missing (the first missing link is listed). ``gaps`` are
    the relay-signed holes of the main chain still unfilled: not problems, but shown to the
    operator. ``certificates`` counts the certificates checked; ``evidence`` is the valid
    stored evidence, one per caught member (shown, not a problem of the store).
    """

    ok: bool
    checked: int
    problems: list[tuple[int, str, str]]
    omitted: int = 0
    gaps: list[Gap] = field(default_factory=list)
    certificates: int = 0
    evidence: list[Evidence] = field(default_factory=list)


def audit_store(path: Path, params: NetworkParams,
                progress: Callable[[int, int], None] | None = None) -> AuditReport:
    """Check every block, every main-chain reading row and the main table of the store at ``path``.

    Opens its own read-only connection and reads one snapshot, so it may run in a thread
    while the node keeps writing. ``progress(checked, total)`` is called now and then.
    Raises StoreError only when the file cannot be opened at all.
    """
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise store_error(exc, f"opening {path} to audit it") from None
    audit = _Audit(db, params, progress)
    try:
        db.execute("BEGIN")  # one consistent snapshot, whatever the node commits meanwhile
        audit.run()
    except sqlite3.DatabaseError as exc:
        audit.note(-1, b"", f"database unreadable: {exc}")
    finally:
        db.close()
    return AuditReport(not audit.problems and not audit.omitted, audit.checked, audit.problems, audit.omitted,
                       audit.gaps, audit.certificates, audit.evidence)


class _Audit:
    def __init__(self, db: sqlite3.Connection, params: NetworkParams,
                 progress: Callable[[int, int], None] | None) -> None:
        self.db = db
        self.params = params
        self.progress = progress
        self.genesis = make_genesis(params)
        self.chain = Chain(self.genesis, params)
        self.problems: list[tuple[int, str, str]] = []
        self.omitted = 0
        self.checked = 0
        self.lost: set[bytes] = set()  # blocks that could not be placed in the tree
        self.saw_genesis = False
        self.gaps: list[Gap] = []
        self.certificates = 0
        self.evidence: list[Evidence] = []

    def note(self, height: int, block_hash: bytes, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((height, block_hash.hex(), reason))
        else:
            self.omitted += 1

    def run(self) -> None:
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        legacy = meta.get("schema_version") == MIGRATES_FROM  # not opened by this node yet: no finality tables
        expected = {"schema_version": MIGRATES_FROM if legacy else SCHEMA_VERSION, "network": self.params.name,
                    "genesis": self.genesis.hash}
        for key, value in expected.items():
            if meta.get(key) != value:
                self.note(0, self.genesis.hash, f"meta {key} is {meta.get(key)!r}, expected {value!r}")
                return
        main = dict(self.db.execute("SELECT height, hash FROM main"))
        total = self.db.execute("SELECT count(*) FROM blocks").fetchone()[0]
        rows = self.db.execute("SELECT hash, height, prev_hash, header, relay_id, last_seq, newest_ms, relay_key, "
                               "n_readings, n_seals, gap_resume_seq, gap_boot_ms, raw FROM blocks ORDER BY seq")
        for row in rows:
            self._check_row(row, main)
            self.checked += 1
            if self.progress is not None and self.checked % PROGRESS_EVERY == 0:
                self.progress(self.checked, total)
        if not self.saw_genesis:
            self.note(0, self.genesis.hash, "the genesis row is missing")
        if self.params.members is not None and self.params.quorum is not None and not legacy:
            self._check_finality()
        self._check_main(meta.get("tip"), main)
        self.gaps = main_chain_gaps(self.db)
        if self.progress is not None:
            self.progress(self.checked, total)

    def _check_row(self, row: tuple, main: dict[int, bytes]) -> None:
        block_hash, height, prev_hash, header_bytes, *_ = row
        if block_hash == self.genesis.hash:
            self.saw_genesis = True
            if row[-1] != self.genesis.encode() or header_bytes != self.genesis.header.to_bytes() or height != 0:
                self.note(height, block_hash, "genesis row differs from this network's genesis")
            return
        if prev_hash in self.lost:
            self.lost.add(block_hash)
            self.omitted += 1
            return
        block = None
        try:
            block = Block.decode(row[-1])
        except BlockDecodeError as exc:
            reason = f"stored block does not decode ({exc})"
        else:
            reason = _row_reason(block, row)
            if reason is None and self.chain.get(block.prev_hash) is None:
                reason = "parent missing"
            elif reason is None:
                try:  # every consensus rule; the clock rule as it stood when the block arrived
                    self.chain.add(block, block.header.time_ms)
                except RuleViolation as exc:
                    reason = str(exc)
                else:
                    if main.get(height) == block_hash:
                        reason = check_readings_rows(self.db, height, block)
        if reason is not None:
            self.note(height, block_hash, reason)
            self._place_anyway(row, block)

    def _place_anyway(self, row: tuple, block: Block | None) -> None:
        """Link a faulty block by whichever of its copies still hashes right, so that its
        descendants are checked too; a block with neither is lost, and so are they."""
        block_hash, _, _, header_bytes, relay_id, last_seq, newest_ms, relay_key, n_readings, *_ = row
        if block_hash in self.chain:
            return
        candidates = []
        if block is not None and block.hash == block_hash:
            candidates.append((block.header, *index_facts(block)))
        with contextlib.suppress(BlockDecodeError):
            # An edited row may hold anything; a first seq it cannot give is the last one's.
            first_seq = last_seq - n_readings + 1 if type(last_seq) is int and type(n_readings) is int else last_seq
            candidates.append((Header.from_bytes(header_bytes), relay_id, last_seq, newest_ms, relay_key, first_seq))
        for header, *facts in candidates:
            if header.hash() == block_hash:
                with contextlib.suppress(RuleViolation):
                    self.chain.add_trusted(header, *facts)
                    return
        self.lost.add(block_hash)

    def _check_finality(self) -> None:
        """Every certificate, vote and evidence row; then the finality state, as opening
        builds it, for fork choice (only when every certificate passed: a state built
        from a bad one would only add noise to the main-chain check)."""
        db, params, chain = self.db, self.params, self.chain
        clean = True
        top = finality_store.finalized_height(db)
        for role in (FINALIZES, JUSTIFIES):
            for height, block_hash, data in finality_store.iter_certificates(db, role):
                self.certificates += 1
                reason = certificate_damage(params, chain, role, height, block_hash, data, top)
                if reason is not None:
                    clean = False
                    self.note(height, block_hash, reason)
        for vote in finality_store.votes(db):
            reason = vote_damage(params, vote)
            if reason is not None:
                self.note(vote.target.height, vote.target.hash, reason)
        for (data,) in db.execute("SELECT vote FROM own_vote"):
            try:
                verify_vote(params, Vote.decode(data))
            except FinalityError as exc:
                self.note(-1, b"", f"stored own vote is not valid ({exc.reason})")
        for voter, _, data in finality_store.evidence_rows(db):
            evidence, reason = evidence_damage(params, voter, data)
            if reason is not None:
                self.note(-1, voter, reason)
            else:
                self.evidence.append(evidence)
        if not clean or self.lost:
            return
        try:
            chain.finality = load_finality(db, chain, params, recheck=1)
        except LedgerDamaged as exc:
            self.note(exc.height, bytes.fromhex(exc.block_hash_hex), exc.reason)
            return
        chain.reconsider()
        for height, block_hash, _ in finality_store.iter_certificates(db, FINALIZES):
            entry = chain.main_at(height)
            if entry is None or entry.hash != block_hash:
                self.note(height, block_hash, "finalized block is not on the main chain")

    def _check_main(self, stored_tip: object, main: dict[int, bytes]) -> None:
        """The main table, tip and readings against the best chain rebuilt here. With blocks
        lost that chain is not the stored one, so the main table is checked on its own."""
        chain = self.chain
        if self.lost:
            expected = self._stored_main(stored_tip, main)
        else:
            expected = {h: chain.main_at(h).hash for h in range(chain.height + 1)}
            if stored_tip != chain.tip.hash:
                entry = chain.get(stored_tip) if isinstance(stored_tip, bytes) else None
                self.note(-1 if entry is None else entry.height, stored_tip if isinstance(stored_tip, bytes) else b"",
                          f"stored tip is not the best chain's tip {chain.tip.hash.hex()} at height {chain.height}")
        for height, block_hash in expected.items():
            if main.get(height) != block_hash:
                self.note(height, block_hash, "main table does not list this block at its height")
        for height in sorted(h for h in main if h not in expected):
            self.note(height, main[height], "main table lists a height above the best tip")
        for height, block_hash in self.db.execute(
                "SELECT DISTINCT block_height, block_hash FROM readings ORDER BY block_height"):
            if expected.get(height) != block_hash:
                self.note(height, block_hash, "readings table holds rows of a block not on the main chain")

    def _stored_main(self, stored_tip: object, main: dict[int, bytes]) -> dict[int, bytes]:
        """Check the main table is one linked line of stored blocks up to the tip; return it."""
        top = max(main, default=-1)
        for height in range(top + 1):
            if height not in main:
                self.note(height, b"", "main table has no row at this height")
        for height, block_hash, stored_height, prev_hash in self.db.execute(
                "SELECT m.height, m.hash, b.height, b.prev_hash FROM main m LEFT JOIN blocks b ON b.hash = m.hash "
                "ORDER BY m.height"):
            if stored_height is None:
                self.note(height, block_hash, "main table lists a block that is not stored")
            elif stored_height != height or (height > 0 and prev_hash != main.get(height - 1)):
                self.note(height, block_hash, "main table row does not follow the row below it")
        if stored_tip != main.get(top):
            self.note(top, stored_tip if isinstance(stored_tip, bytes) else b"",
                      "stored tip is not the top of the main table")
        return main


def _row_reason(block: Block, row: tuple) -> str | None:
    """Why a block row's columns disagree with its own stored bytes, or None."""
    block_hash, height, prev_hash, header_bytes, relay_id, last_seq, newest_ms, relay_key, *counts, _ = row
    if block.hash != block_hash:
        return "stored block does not hash to its key"
    if header_bytes != block.header.to_bytes():
        return "header column differs from the stored block's header"
    if (height, prev_hash) != (block.height, block.prev_hash):
        return "height/prev_hash columns differ from the header"
    c = block.capture
    facts = (*index_facts(block)[:4], len(c.readings), len(c.seals),
             None if c.gap is None else c.gap.resume_seq, None if c.gap is None else c.gap.boot_ms)
    if (relay_id, last_seq, newest_ms, relay_key, *counts) != facts:
        return "relay/seq/newest/key/readings/seals/gap columns differ from the payload"
    return None
