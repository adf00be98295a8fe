"""The node's durable ledger: one SQLite database (WAL, synchronous=FULL) per data dir.

Tables (query them with any SQLite tool; ``readings_view`` shows hex hashes and ISO times):
  blocks    every block ever accepted, side branches included, in arrival order (``seq``),
            with its 128-byte header, its wire bytes (``raw``: readings, seals, gap notice)
            and the facts the chain is rebuilt from (relay, relay key, last reading seq and
            time), its seal count and its gap notice (resume seq and boot time) if any
  main      height -> hash of the main chain
  readings  the readings of main-chain blocks only, one row per (relay, seq): the signed
            row's seq, time, openings, flags and values, and the block holding it
  meta      network name, genesis hash, tip hash, schema version
  votes, certificates, evidence, own_vote: finality (gridchain/ledger/finality_store.py)

Readings rows as ``readings_page`` and ``relay_readings`` return them (READING_ROW):
  (relay_id, seq, timestamp_ms, openings, flags, vab, vbc, vca, ia, ib, ic, frequency,
   power_factor, active_power, reactive_power, block_height, block_hash)

Each accepted block, its readings and the new tip are written in ONE transaction
(``commit``), so after a crash the database holds either all of it or none of it. A
failed commit is rolled back and leaves the store usable once the cause (a full disk, a
read-only file) is fixed. SQLite failures surface as ``StoreError`` with a short reason.
Only one process may write a store: it holds an advisory lock on ``<db>.lock`` while open.

Schema versions: 3 adds the finality tables. A store of schema 2 (the version before
finality) is migrated on open, in one transaction: the tables are added and the version
set to 3; its blocks, readings and main chain are not touched. Any other version is
refused with ``schema-version`` naming it (a newer node's store is never read by an older
one, and a schema-2 node refuses a migrated store the same way, naming 3).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridchain.consensus.block import ROW_FIELDS

from gridchain.consensus.errors import GridchainError
from gridchain.consensus.block import Block
from gridchain.consensus.finality import Vote
from gridchain.ledger import finality_store
from gridchain.ledger.finality_store import FinalityWrite

DB_FILE = "chain.sqlite3"
SCHEMA_VERSION = 3  # 2: signed readings (seq, flags, openings per reading), seals, gap notices; 3: finality
MIGRATES_FROM = 2  # the one older schema this node upgrades in place (module docstring)
# How long a write waits for another connection's write lock (an operator's sqlite3 shell)
# before failing; the node calls the store from its event loop, so this bounds a stall.
BUSY_TIMEOUT_S = 2.0
MAX_PAGE = 10_000  # readings per page: a few MB per answer at most
INDEX_FETCH = 2_000  # rows per fetch while streaming the block index
# A step of ``commit_steps``: this many readings rows written (a few ms), so a deep reorg's
# rewrite of the main table can be spread over many turns of the event loop.
COMMIT_STEP_ROWS = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY, height INTEGER NOT NULL, prev_hash BLOB NOT NULL,
    seq INTEGER NOT NULL UNIQUE, header BLOB NOT NULL, relay_id TEXT NOT NULL, relay_key BLOB NOT NULL,
    last_seq INTEGER, newest_ms INTEGER, n_readings INTEGER NOT NULL, n_seals INTEGER NOT NULL,
    gap_resume_seq INTEGER, gap_boot_ms INTEGER, raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_with_gaps ON blocks (gap_resume_seq) WHERE gap_resume_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS main (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    relay_id TEXT NOT NULL, seq INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL,
    openings INTEGER NOT NULL, flags INTEGER NOT NULL,
    vab REAL, vbc REAL, vca REAL, ia REAL, ib REAL, ic REAL, frequency REAL, power_factor REAL,
    active_power REAL, reactive_power REAL,
    block_height INTEGER NOT NULL, block_hash BLOB NOT NULL,
    PRIMARY KEY (relay_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (timestamp_ms, relay_id, seq);
CREATE INDEX IF NOT EXISTS readings_by_height ON readings (block_height);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE VIEW IF NOT EXISTS readings_view AS
    SELECT relay_id, seq, strftime('%Y-%m-%dT%H:%M:%fZ', timestamp_ms / 1000.0, 'unixepoch') AS time,
           timestamp_ms, openings, flags, vab, vbc, vca, ia, ib, ic, frequency, power_factor, active_power,
           reactive_power, block_height, lower(hex(block_hash)) AS block_hash
    FROM readings;
""" + finality_store.SCHEMA
READING_COLUMNS = ("relay_id", *ROW_FIELDS, "block_height", "block_hash")  # one readings row, in order
READING_SELECT = ", ".join(READING_COLUMNS)  # the columns, as SQL
# What rebuilds the chain; a block's seqs run on by one, so its first is last - count + 1.
INDEX_COLUMNS = "hash, header, relay_id, last_seq, newest_ms, relay_key, last_seq - n_readings + 1"
_INSERT_BLOCK = f"INSERT INTO blocks VALUES ({', '.join('?' * 14)})"
_INSERT_READING = f"INSERT INTO readings ({READING_SELECT}) VALUES ({', '.join('?' * len(READING_COLUMNS))})"

# SQLite primary result codes (https://sqlite.org/rescode.html) -> StoreError reasons.
_REASONS = {13: "disk-full", 8: "read-only", 11: "corrupt", 26: "corrupt", 10: "io-error",
            14: "cannot-open", 5: "busy", 6: "busy", 19: "constraint", 23: "access-denied"}


class StoreError(GridchainError):
    """The store cannot do what was asked; ``reason`` is a short stable name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"store {reason}: {detail}" if detail else f"store {reason}")
        self.reason = reason
        self.detail = detail


def store_error(exc: sqlite3.Error, doing: str) -> StoreError:
    """Map an sqlite3 exception to a StoreError with a named reason."""
    code = getattr(exc, "sqlite_errorcode", None)
    reason = _REASONS.get(code & 0xFF, "sqlite-error") if isinstance(code, int) else "sqlite-error"
    return StoreError(reason, f"{doing}: {exc}")


@dataclass(frozen=True, slots=True)
class MainChange:
    """How one accepted block moved the main chain: heights above ``fork_height`` now hold
    ``connected`` (in height order), and ``tip`` is the new tip's hash."""

    fork_height: int
    connected: tuple[Block, ...]
    tip: bytes


class Store:
    """One node's SQLite database; every method runs in the caller's thread."""

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self.db = db
        self._lock_fd = lock_fd
        self._next_seq = 0

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, network: str, genesis: Block) -> Store:
        """Open (creating if new) the store at ``path`` for ``network``; refuse another's."""
        path = Path(path)
        lock_fd = _lock(path)
        try:
            db = _connect(path)
            try:
                store = cls(path, db, lock_fd)
                store._init_or_check(network, genesis)
                store._next_seq = db.execute("SELECT coalesce(max(seq), -1) + 1 FROM blocks").fetchone()[0]
            except BaseException:
                db.close()
                raise
        except sqlite3.Error as exc:
            os.close(lock_fd)
            raise store_error(exc, f"opening {path}") from None
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    def _init_or_check(self, network: str, genesis: Block) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = dict(self.db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if not meta and tables - {"meta"}:
            raise StoreError("not-a-store", f"{self.path} is an SQLite database of something else "
                                            f"(tables {', '.join(sorted(tables))})")
        if not meta:
            with self.transaction("creating the store"):
                _run_script(self.db, _SCHEMA)
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema_version", SCHEMA_VERSION), ("network", network),
                    ("genesis", genesis.hash), ("tip", genesis.hash)])
                self._insert_blocks([genesis])
                self.db.execute("INSERT INTO main VALUES (0, ?)", (genesis.hash,))
            return
        version = meta.get("schema_version")
        if version not in (SCHEMA_VERSION, MIGRATES_FROM):
            raise StoreError("schema-version", f"{self.path} has schema {version!r}; this node reads "
                                               f"{SCHEMA_VERSION} and migrates {MIGRATES_FROM}, nothing else")
        if meta.get("network") != network:
            raise StoreError("wrong-network", f"{self.path} holds network {meta.get('network')!r}, "
                                              f"not {network!r}")
        if meta.get("genesis") != genesis.hash:
            stored = meta.get("genesis")
            raise StoreError("wrong-genesis", f"{self.path} starts from genesis "
                                              f"{stored.hex() if isinstance(stored, bytes) else stored!r}, "
                                              f"this network's is {genesis.hash.hex()} (another difficulty?)")
        if version == MIGRATES_FROM:
            with self.transaction(f"migrating the store from schema {MIGRATES_FROM} to {SCHEMA_VERSION}"):
                _run_script(self.db, finality_store.SCHEMA)
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    def close(self) -> None:
        if self._lock_fd < 0:
            return
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        os.close(self._lock_fd)
        self._lock_fd = -1

    # --- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, doing: str, *, synced: bool = True) -> Iterator[None]:
        """One write transaction; any failure rolls it back and raises StoreError.

        ``synced=False``: the commit is not synced to disk by itself (synchronous=NORMAL for
        it): it survives the process dying, and the next synced commit makes it survive a
        power loss too. For rows a peer can hand us again (other members' votes), never for
        blocks, the tip, certificates or this member's own vote."""
        next_seq = self._next_seq
        try:
            if not synced:
                self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                self._next_seq = next_seq
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise store_error(exc, doing) from None
        finally:
            if not synced:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("PRAGMA synchronous=FULL")

    def commit(self, blocks: Sequence[Block], changes: Sequence[MainChange] = (),
               finality: FinalityWrite | None = None, raws: Mapping[bytes, bytes] | None = None) -> None:
        """Insert ``blocks`` (in arrival order), apply ``changes`` (in order) and then the
        finality rows (votes, certificates, evidence, pruned side blocks), atomically.

        ``raws``: block hash -> the block's bytes as received (``Block.encode()`` form),
        stored as they are; a block missing from it is encoded here."""
        for _ in self.commit_steps(blocks, changes, finality, raws):
            pass

    def commit_votes(self, finality: FinalityWrite) -> None:
        """Store finality rows that are only other members' votes, unsynced (``transaction``):
        a member counts each vote it receives, and a synced commit apiece was most of its
        time in a round with many members. A vote lost to a power cut comes back in a peer's
        greeting; whatever the votes made (a certificate) is written synced."""
        with self.transaction("storing votes", synced=False):
            finality_store.write(self.db, finality)

    def commit_steps(self, blocks: Sequence[Block], changes: Sequence[MainChange] = (),
                     finality: FinalityWrite | None = None, raws: Mapping[bytes, bytes] | None = None
                     ) -> Iterator[None]:
        """``commit``, one transaction yielding after each step of about COMMIT_STEP_ROWS rows:
        the caller may serve other work between steps (reads on this connection see the
        transaction's writes so far), and must write nothing else until it is exhausted."""
        fork_height, connected, tip = _net_change(changes)
        with self.transaction(f"committing {len(blocks)} block(s)"):
            self._insert_blocks(blocks, raws)
            if tip is not None:
                top = self.db.execute("SELECT coalesce(max(height), 0) FROM main").fetchone()[0]
                for height in range(top, fork_height, -1):  # one block's rows (<= 10,000) a step
                    self.db.execute("DELETE FROM readings WHERE block_height = ?", (height,))
                    yield
                self.db.execute("DELETE FROM main WHERE height > ?", (fork_height,))
                self.db.executemany("INSERT INTO main VALUES (?, ?)", [(b.height, b.hash) for b in connected])
                rows: list[tuple] = []
                for row in reading_rows(connected):
                    rows.append(row)
                    if len(rows) >= COMMIT_STEP_ROWS:
                        self.db.executemany(_INSERT_READING, rows)
                        rows.clear()
                        yield
                self.db.executemany(_INSERT_READING, rows)
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'tip'", (tip,))
            if finality:
                finality_store.write(self.db, finality)

    def record_own_vote(self, vote: Vote) -> None:
        """Make ``vote`` its voter's newest own vote, durably, before returning: the commit
        syncs the write-ahead log to disk (WAL with synchronous=FULL), so a vote is never
        sent that a restart would not remember."""
        with self.transaction("recording our own vote"):
            finality_store.record_own_vote(self.db, vote)

    def own_votes(self, voter: bytes | None = None) -> list[Vote]:
        """The newest own vote of each key (of ``voter`` only, if given): VoterGuard's past."""
        try:
            return finality_store.own_votes(self.db, voter)
        except sqlite3.Error as exc:
            raise store_error(exc, "reading our own votes") from None

    def _insert_blocks(self, blocks: Sequence[Block], raws: Mapping[bytes, bytes] | None = None) -> None:
        rows = []
        raws = raws or {}
        for block in blocks:
            raw = raws.get(block.hash)
            c = block.capture
            gap = c.gap
            rows.append((block.hash, block.height, block.prev_hash, self._next_seq, block.header.to_bytes(),
                         c.relay_id, c.relay_key, c.last_seq, c.newest_ms, len(c.readings), len(c.seals),
                         None if gap is None else gap.resume_seq, None if gap is None else gap.boot_ms,
                         block.encode() if raw is None else raw))
            self._next_seq += 1
        self.db.executemany(_INSERT_BLOCK, rows)

    # --- reading -------------------------------------------------------------------------------
    def _one(self, sql: str, args: tuple, doing: str):
        try:
            return self.db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise store_error(exc, doing) from None

    def get_raw(self, block_hash: bytes) -> bytes | None:
        row = self._one("SELECT raw FROM blocks WHERE hash = ?", (block_hash,), "reading a block")
        return None if row is None else row[0]

    def get_block(self, block_hash: bytes) -> Block | None:
        raw = self.get_raw(block_hash)
        return None if raw is None else Block.decode(raw)

    def main_hash_at(self, height: int) -> bytes | None:
        row = self._one("SELECT hash FROM main WHERE height = ?", (height,), "reading the main chain")
        return None if row is None else row[0]

    def tip_hash(self) -> bytes:
        return self._one("SELECT value FROM meta WHERE key = 'tip'", (), "reading the tip")[0]

    def meta(self) -> dict[str, object]:
        try:
            return dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as exc:
            raise store_error(exc, "reading meta") from None

    def count_blocks(self) -> int:
        return self._one("SELECT count(*) FROM blocks", (), "counting blocks")[0]

    def iter_index(self) -> Iterator[tuple[bytes, bytes, str, int | None, int | None, bytes, int | None]]:
        """(hash, header, relay_id, last_seq, newest_ms, relay_key, first_seq) of every block, in arrival order.

        Parents always arrive before their children, so the chain can be rebuilt in this
        order without decoding a single payload.
        """
        try:
            cursor = self.db.execute(f"SELECT {INDEX_COLUMNS} FROM blocks ORDER BY seq")
            while rows := cursor.fetchmany(INDEX_FETCH):
                yield from rows
        except sqlite3.Error as exc:
            raise store_error(exc, "reading the block index") from None

    def readings_page(self, relay: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
                      after: tuple[int, str, int] | None = None, limit: int = 1000
                      ) -> tuple[list[tuple], tuple[int, str, int] | None]:
        """Main-chain readings ordered by (timestamp_ms, relay_id, seq), one keyset page at a time.

        Rows are READING_COLUMNS; ``since_ms`` and ``until_ms`` are inclusive. The second
        value is the ``after`` of the next page, (timestamp_ms, relay_id, seq) of this
        page's last row, or None when this page is the last.
        """
        where, args = [], []
        if relay is not None:
            where.append("relay_id = ?")
            args.append(relay)
        if since_ms is not None:
            where.append("timestamp_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("timestamp_ms <= ?")
            args.append(until_ms)
        if after is not None:
            where.append("(timestamp_ms, relay_id, seq) > (?, ?, ?)")
            args.extend(after)
        rows, limit = self._readings(where, args, "timestamp_ms, relay_id, seq", limit)
        following = (rows[-1][2], rows[-1][0], rows[-1][1]) if len(rows) == limit else None
        return rows, following

    def relay_readings(self, relay_id: str, after_seq: int = 0, until_seq: int | None = None,
                       limit: int = 1000) -> tuple[list[tuple], int | None]:
        """Main-chain readings of one relay with seq > ``after_seq`` (and <= ``until_seq``), by seq.

        The second value is the ``after_seq`` of the next page, or None when this is the last.
        """
        where, args = ["relay_id = ?", "seq > ?"], [relay_id, after_seq]
        if until_seq is not None:
            where.append("seq <= ?")
            args.append(until_seq)
        rows, limit = self._readings(where, args, "seq", limit)
        return rows, rows[-1][1] if len(rows) == limit else None

    def _readings(self, where: list[str], args: list, order: str, limit: int) -> tuple[list[tuple], int]:
        limit = max(1, min(limit, MAX_PAGE))
        sql = (f"SELECT {READING_SELECT} FROM readings {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY {order} LIMIT ?")
        try:
            return self.db.execute(sql, (*args, limit)).fetchall(), limit
        except sqlite3.Error as exc:
            raise store_error(exc, "reading readings") from None

    def reading_location(self, relay_id: str, timestamp_ms: int | None = None, *,
                         seq: int | None = None) -> tuple[bytes, int] | None:
        """(block hash, height) of the main-chain block holding this reading, if any.

        By ``seq`` (unique per relay) or by ``timestamp_ms`` (the relay's clock may repeat a
        time: then the lowest seq at that time).
        """
        if seq is not None:
            sql, args = "SELECT block_hash, block_height FROM readings WHERE relay_id = ? AND seq = ?", (relay_id, seq)
        else:
            sql = ("SELECT block_hash, block_height FROM readings WHERE relay_id = ? AND timestamp_ms = ? "
                   "ORDER BY seq LIMIT 1")
            args = (relay_id, timestamp_ms)
        row = self._one(sql, args, "locating a reading")
        return None if row is None else (row[0], row[1])

    def gaps(self) -> list[Gap]:
        """Every hole left in a relay's sequence on the main chain (each one the relay signed
        as lost, less what later blocks filled in)."""
        try:
            return main_chain_gaps(self.db)
        except sqlite3.Error as exc:
            raise store_error(exc, "listing gaps") from None


@dataclass(frozen=True, slots=True)
class Gap:
    """Readings a relay signed as lost that are not on the main chain: seqs ``first_seq``..
    ``last_seq`` (inclusive). ``after_ms`` is the time of the relay's reading just before,
    ``resume_ms`` that of the reading just after (the notice's first, or a filled-in one);
    ``boot_ms`` is the relay's own restart time from its notice; ``height``/``block_hash``
    name the block carrying the notice. A notice's hole partly filled in later (rules:
    a block may fill an open gap) shows as the one or more holes that remain."""

    relay_id: str
    first_seq: int
    last_seq: int
    after_ms: int
    resume_ms: int
    boot_ms: int
    height: int
    block_hash: bytes

    def as_dict(self) -> dict[str, object]:
        return {"relay_id": self.relay_id, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "missing": self.last_seq - self.first_seq + 1, "after_ms": self.after_ms,
                "resume_ms": self.resume_ms, "boot_ms": self.boot_ms, "height": self.height,
                "block_hash": self.block_hash.hex()}


def main_chain_gaps(db: sqlite3.Connection) -> list[Gap]:
    """The unfilled gaps of the main chain, oldest notice first, from the notices and the readings table.

    A notice at height h resuming at R opened the hole between the relay's last reading
    below h and R; the readings now inside it can only be fills (higher blocks), so what
    remains is the hole less those rows, found by walking them in seq order.
    """
    gaps = []
    for relay_id, resume, boot_ms, height, block_hash in db.execute(
            "SELECT b.relay_id, b.gap_resume_seq, b.gap_boot_ms, b.height, b.hash FROM blocks b "
            "JOIN main m ON m.hash = b.hash WHERE b.gap_resume_seq IS NOT NULL ORDER BY b.height").fetchall():
        # "+block_height": walk the (relay, seq) key down from R past the fills, not the height index.
        before = db.execute("SELECT seq, timestamp_ms FROM readings WHERE relay_id = ? AND seq < ? "
                            "AND +block_height < ? ORDER BY seq DESC LIMIT 1", (relay_id, resume, height)).fetchone()
        filled = db.execute("SELECT seq, timestamp_ms FROM readings WHERE relay_id = ? AND seq > ? AND seq < ? "
                            "ORDER BY seq", (relay_id, 0 if before is None else before[0], resume)).fetchall()
        if before is None:
            if not filled:
                # The relay's first block: its sequence starts where it starts (a relay whose key
                # was made before its first start begins with a notice at a clock-derived seq).
                continue
            before, filled = filled[0], filled[1:]  # nothing is known below the lowest filled-in reading
        resumed = db.execute("SELECT timestamp_ms FROM readings WHERE relay_id = ? AND seq = ?",
                             (relay_id, resume)).fetchone()
        for seq, timestamp_ms in [*filled, (resume, None if resumed is None else resumed[0])]:
            if seq > before[0] + 1:  # a notice the relay sent although nothing was lost leaves no hole
                gaps.append(Gap(relay_id, before[0] + 1, seq - 1, before[1], timestamp_ms, boot_ms, height,
                                block_hash))
            before = (seq, timestamp_ms)
    return gaps


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run each statement of ``script`` (executescript would commit the open transaction)."""
    for statement in script.split(";\n"):
        if statement.strip():
            db.execute(statement)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), never implied.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError("read-only", f"{path}: cannot switch to WAL mode (journal mode {mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=OFF")
    except BaseException:
        db.close()
        raise
    return db


def _lock(path: Path) -> int:
    """Hold an exclusive advisory lock beside the database for as long as the store is open."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError("cannot-open", f"{lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError("in-use", f"{path} is open in another process (another node on this data dir?)") from None
    return fd


def _net_change(changes: Sequence[MainChange]) -> tuple[int, list[Block], bytes | None]:
    """Fold a run of main-chain changes into one: (lowest fork, blocks above it, final tip)."""
    if not changes:
        return 0, [], None
    fork = min(c.fork_height for c in changes)
    above: dict[int, Block] = {}  # height -> block
    top = -1  # highest height in ``above``: an extension deletes nothing, so a run stays O(n)
    for change in changes:
        for height in range(change.fork_height + 1, top + 1):
            above.pop(height, None)
        top = min(top, change.fork_height)
        for block in change.connected:
            above[block.height] = block
            top = block.height
    return fork, [above[h] for h in sorted(above)], changes[-1].tip


def reading_rows(blocks: Sequence[Block]) -> Iterator[tuple]:
    """The readings-table rows of ``blocks`` (READING_COLUMNS order), by seq within a block."""
    for block in blocks:
        relay_id = block.capture.relay_id
        for r in block.capture.readings:
            yield (relay_id, r.seq, r.timestamp_ms, r.openings, r.flags, r.vab, r.vbc, r.vca, r.ia, r.ib, r.ic,
                   r.frequency, r.power_factor, r.active_power, r.reactive_power, block.height, block.hash)
