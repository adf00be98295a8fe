"""The chain and its store together: what a node adds blocks to and reads them from.

Memory and disk never disagree. A block is validated and linked into the in-memory
``Chain``, then written with its readings and the new tip in one store transaction, all
before ``add_block`` returns, so the node announces only durable blocks; if the write
fails, the block is unlinked again and the StoreError propagates.

Opening rebuilds the chain from the store's block index (headers and a few payload facts,
no payload decoding) and then re-checks the newest main-chain blocks in full. Damage found
either way raises ``LedgerDamaged`` naming the block and the reason: a node must stop
rather than serve a chain it cannot vouch for. ``audit_store`` (every block, every
reading row, the main table; for `gridchain verify`) lives at the end of this module.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .consensus import rules
from .consensus.block import Block, BlockDecodeError, Capture, Header
from .consensus.chain import AddResult, Chain, ChainEntry, OrphanPool, displaced_readings
from .consensus.genesis import make_genesis
from .consensus.params import NetworkParams
from .consensus.rules import RuleViolation
from .store import DB_FILE, SCHEMA_VERSION, MainChange, Store, StoreError, reading_rows, store_error

# Main-chain blocks re-checked in full on every open: enough to catch a torn or edited
# recent write, cheap enough (~10 ms) to run on every start. `gridchain verify` checks all.
RECHECK_BLOCKS = 100


class LedgerDamaged(Exception):
    """The stored chain fails a check; str() names the block and the reason on one line."""

    def __init__(self, block_hash_hex: str, height: int, reason: str) -> None:
        super().__init__(f"stored chain is damaged at height {height}, block {block_hash_hex}: {reason} "
                         f"(the node will not serve it; run `gridchain verify` for a full report, then "
                         f"restore the data dir from a backup or move {DB_FILE} aside to resync from peers)")
        self.block_hash_hex = block_hash_hex
        self.height = height
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LedgerUpdate:
    """One block accepted: what it did to the chain and the readings a reorg pushed out."""

    result: AddResult
    displaced: list[Capture]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``add_blocks`` did: the updates of the blocks it took, and the first it refused."""

    updates: list[LedgerUpdate]
    rejected: Block | None = None
    error: RuleViolation | None = None


class Ledger:
    """A node's chain (in memory) over its store (on disk), kept in step."""

    def __init__(self, store: Store, chain: Chain, params: NetworkParams) -> None:
        self.store = store
        self.chain = chain
        self.params = params
        self.orphans = OrphanPool()

    @classmethod
    def open(cls, data_dir: Path, params: NetworkParams, now_ms: int | None = None,
             recheck: int = RECHECK_BLOCKS) -> Ledger:
        """Open the ledger in ``data_dir``: rebuild the chain, re-check its newest blocks.

        ``now_ms`` is not needed for the checks: a stored block passed the clock rule when
        it arrived, and a clock set back since must not make a good store look damaged.
        """
        genesis = make_genesis(params.name, params.bits)
        store = Store.open(Path(data_dir) / DB_FILE, params.name, genesis)
        try:
            chain = rebuild_chain(store, genesis, params)
            recheck_newest(store, chain, params, recheck)
        except sqlite3.Error as exc:
            store.close()
            raise store_error(exc, "re-checking the stored chain") from None
        except BaseException:
            store.close()
            raise
        return cls(store, chain, params)

    def close(self) -> None:
        self.store.close()

    # --- reading -------------------------------------------------------------------------------
    @property
    def tip(self) -> ChainEntry:
        return self.chain.tip

    @property
    def height(self) -> int:
        return self.chain.height

    def get_block(self, block_hash: bytes) -> Block | None:
        return self.store.get_block(block_hash)

    def block_at(self, height: int) -> Block | None:
        entry = self.chain.main_at(height)
        return None if entry is None else self.store.get_block(entry.hash)

    def newest_reading_ms(self, relay_id: str) -> int | None:
        return self.chain.newest_reading_ms(relay_id)

    def newest_openings(self, relay_id: str) -> int | None:
        return self.chain.newest_openings(relay_id)

    # --- adding --------------------------------------------------------------------------------
    def add_block(self, block: Block, now_ms: int, encoded_size: int | None = None) -> LedgerUpdate:
        """Validate, link and durably store ``block``; raises RuleViolation or StoreError."""
        result = self.chain.add(block, now_ms, encoded_size)
        if result.status == "duplicate":
            return LedgerUpdate(result, [])
        try:
            pending = {block.hash: block}
            change = self._main_change(result, pending)
            displaced = self._displaced(result, pending)
            self.store.commit([block], [change] if change else [])
        except BaseException:
            self.chain.undo(result)
            raise
        return LedgerUpdate(result, displaced)

    def add_block_with_orphans(self, block: Block, now_ms: int, encoded_size: int | None = None
                               ) -> list[LedgerUpdate]:
        """``add_block``, then every pooled orphan that now connects (children first-come)."""
        updates = [self.add_block(block, now_ms, encoded_size)]
        return updates + self._connect_orphans([block.hash], now_ms)

    def add_blocks(self, blocks: Sequence[Block], now_ms: int) -> BatchResult:
        """Add a run of blocks (a sync answer) in ONE store transaction.

        Stops at the first block that breaks a rule: the blocks before it are kept and
        committed, that block is returned as ``rejected`` with its ``error`` (an
        "unknown-parent" one is worth pooling as an orphan). Raises StoreError if the
        commit fails, with none of the run kept.
        """
        results: list[AddResult] = []
        updates: list[LedgerUpdate] = []
        pending: dict[bytes, Block] = {}
        changes: list[MainChange] = []
        rejected, error = None, None
        try:
            for block in blocks:
                try:
                    result = self.chain.add(block, now_ms)
                except RuleViolation as exc:
                    rejected, error = block, exc
                    break
                results.append(result)
                if result.status != "duplicate":
                    pending[block.hash] = block
                    change = self._main_change(result, pending)
                    if change is not None:
                        changes.append(change)
                updates.append(LedgerUpdate(result, self._displaced(result, pending)))
            if pending:
                self.store.commit(list(pending.values()), changes)
        except BaseException:
            for result in reversed(results):
                self.chain.undo(result)
            raise
        updates += self._connect_orphans(list(pending), now_ms)
        return BatchResult(updates, rejected, error)

    def _connect_orphans(self, parents: Iterable[bytes], now_ms: int) -> list[LedgerUpdate]:
        updates: list[LedgerUpdate] = []
        queue = deque(parents)
        while queue:
            children = self.orphans.pop_children(queue.popleft())
            for index, child in enumerate(children):
                try:
                    updates.append(self.add_block(child, now_ms))
                except RuleViolation:
                    continue  # an orphan that breaks a rule is simply dropped
                except StoreError:
                    # Keep them for later; the error recurs (and is reported) on the next write.
                    for waiting in children[index:]:
                        self.orphans.add(waiting, len(waiting.encode()))
                    return updates
                queue.append(child.hash)
        return updates

    def _block(self, entry: ChainEntry, pending: dict[bytes, Block]) -> Block:
        block = pending.get(entry.hash) or self.store.get_block(entry.hash)
        if block is None:
            raise StoreError("corrupt", f"block {entry.hash.hex()} at height {entry.height} is missing")
        return block

    def _main_change(self, result: AddResult, pending: dict[bytes, Block]) -> MainChange | None:
        if result.status not in ("extended", "reorg"):
            return None
        connected = tuple(self._block(entry, pending) for entry in result.connected)
        return MainChange(result.connected[0].height - 1, connected, result.entry.hash)

    def _displaced(self, result: AddResult, pending: dict[bytes, Block]) -> list[Capture]:
        if result.status != "reorg":
            return []
        return displaced_readings([self._block(e, pending) for e in result.disconnected],
                                  [self._block(e, pending) for e in result.connected])


# --- opening: rebuild and re-check ------------------------------------------------------------
def rebuild_chain(store: Store, genesis: Block, params: NetworkParams) -> Chain:
    """The chain as the store's block index describes it, in the order the blocks arrived."""
    chain = Chain(genesis, params)
    if store.get_raw(genesis.hash) != genesis.encode():
        raise LedgerDamaged(genesis.hash.hex(), 0, "the genesis row is missing or altered")
    for block_hash, header_bytes, relay_id, newest_ms, openings in store.iter_index():
        if block_hash == genesis.hash:
            continue
        try:
            header = Header.from_bytes(header_bytes)
            result = chain.add_trusted(header, relay_id, newest_ms, openings)
        except (BlockDecodeError, RuleViolation) as exc:
            raise LedgerDamaged(block_hash.hex(), _height_of(header_bytes), f"index: {exc}") from None
        if result.entry.hash != block_hash or result.status == "duplicate":
            raise LedgerDamaged(block_hash.hex(), header.height, "index: header does not hash to the block's hash")
    stored_tip = store.tip_hash()
    if stored_tip != chain.tip.hash:
        entry = chain.get(stored_tip)
        raise LedgerDamaged(stored_tip.hex(), -1 if entry is None else entry.height,
                            f"stored tip is not the best chain's tip {chain.tip.hash.hex()} "
                            f"at height {chain.height}")
    return chain


def recheck_newest(store: Store, chain: Chain, params: NetworkParams, count: int) -> None:
    """Check the newest ``count`` main-chain blocks in full; raise LedgerDamaged on the first fault."""
    for height in range(max(1, chain.height - count + 1), chain.height + 1):
        entry = chain.main_at(height)
        reason = _recheck(store, chain, entry, params)
        if reason is not None:
            raise LedgerDamaged(entry.hash.hex(), height, reason)


def _recheck(store: Store, chain: Chain, entry: ChainEntry, params: NetworkParams) -> str | None:
    """Why the stored block of main-chain ``entry`` or its rows are not what they must be, or None."""
    raw = store.get_raw(entry.hash)
    if raw is None:
        return "block row missing"
    try:
        block = Block.decode(raw)
    except BlockDecodeError as exc:
        return f"stored block does not decode ({exc})"
    if block.hash != entry.hash:
        return "stored block does not hash to its key"
    if (entry.relay_id, entry.newest_ms, entry.openings) != _index_facts(block):
        return "index relay/newest/openings columns differ from the payload"
    try:
        rules.check_block(block, params, block.header.time_ms)  # the clock rule as applied on arrival
        parent = entry.parent
        newest = chain.newest_of(block.capture.relay_id, parent)
        rules.check_context(block, parent.height, chain.median_time_ms(parent),
                            None if newest is None else newest.newest_ms,
                            None if newest is None else newest.openings)
    except RuleViolation as exc:
        return str(exc)
    if store.main_hash_at(entry.height) != entry.hash:
        return "main table does not list this block at its height"
    return check_readings_rows(store.db, entry.height, block)


def check_readings_rows(db: sqlite3.Connection, height: int, block: Block | None) -> str | None:
    """Why the readings table's rows at ``height`` are not exactly ``block``'s, or None."""
    stored = db.execute("SELECT relay_id, timestamp_ms, vab, vbc, vca, ia, ib, ic, frequency, power_factor, "
                        "active_power, reactive_power, openings, block_height, block_hash FROM readings "
                        "WHERE block_height = ? ORDER BY timestamp_ms", (height,)).fetchall()
    expected = list(reading_rows([block])) if block is not None else []
    if stored != expected:
        return f"readings table holds {len(stored)} row(s) at this height that differ from the block's {len(expected)}"
    return None


def _index_facts(block: Block) -> tuple[str, int | None, int]:
    c = block.capture
    return c.relay_id, c.newest_ms, c.openings


def _height_of(header_bytes: bytes) -> int:
    try:
        return Header.from_bytes(header_bytes).height
    except BlockDecodeError:
        return -1


# --- auditing a whole store ---------------------------------------------------------------------
# Problems listed in one report; past this the count goes on but the list stops growing.
MAX_PROBLEMS = 1000
PROGRESS_EVERY = 1000  # blocks between progress callbacks


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The verdict on a whole store: ``problems`` are (height, block hash hex, reason).

    ``omitted`` counts problems left out of the list: past MAX_PROBLEMS, and blocks that
    descend from a block that is missing (the first missing link is listed).
    """

    ok: bool
    checked: int
    problems: list[tuple[int, str, str]]
    omitted: int = 0


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
    return AuditReport(not audit.problems and not audit.omitted, audit.checked, audit.problems, audit.omitted)


class _Audit:
    def __init__(self, db: sqlite3.Connection, params: NetworkParams,
                 progress: Callable[[int, int], None] | None) -> None:
        self.db = db
        self.params = params
        self.progress = progress
        self.genesis = make_genesis(params.name, params.bits)
        self.chain = Chain(self.genesis, params)
        self.problems: list[tuple[int, str, str]] = []
        self.omitted = 0
        self.checked = 0
        self.lost: set[bytes] = set()  # blocks that could not be placed in the tree
        self.saw_genesis = False

    def note(self, height: int, block_hash: bytes, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((height, block_hash.hex(), reason))
        else:
            self.omitted += 1

    def run(self) -> None:
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        expected = {"schema_version": SCHEMA_VERSION, "network": self.params.name, "genesis": self.genesis.hash}
        for key, value in expected.items():
            if meta.get(key) != value:
                self.note(0, self.genesis.hash, f"meta {key} is {meta.get(key)!r}, expected {value!r}")
                return
        main = dict(self.db.execute("SELECT height, hash FROM main"))
        total = self.db.execute("SELECT count(*) FROM blocks").fetchone()[0]
        rows = self.db.execute("SELECT hash, height, prev_hash, header, relay_id, newest_ms, openings, "
                               "n_readings, raw FROM blocks ORDER BY seq")
        for row in rows:
            self._check_row(row, main)
            self.checked += 1
            if self.progress is not None and self.checked % PROGRESS_EVERY == 0:
                self.progress(self.checked, total)
        if not self.saw_genesis:
            self.note(0, self.genesis.hash, "the genesis row is missing")
        self._check_main(meta.get("tip"), main)
        if self.progress is not None:
            self.progress(self.checked, total)

    def _check_row(self, row: tuple, main: dict[int, bytes]) -> None:
        block_hash, height, prev_hash, header_bytes, *_ = row
        if block_hash == self.genesis.hash:
            self.saw_genesis = True
            if row[8] != self.genesis.encode() or header_bytes != self.genesis.header.to_bytes() or height != 0:
                self.note(height, block_hash, "genesis row differs from this network's genesis")
            return
        if prev_hash in self.lost:
            self.lost.add(block_hash)
            self.omitted += 1
            return
        block = None
        try:
            block = Block.decode(row[8])
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
        block_hash, _, _, header_bytes, relay_id, newest_ms, openings, *_ = row
        if block_hash in self.chain:
            return
        candidates = []
        if block is not None and block.hash == block_hash:
            candidates.append((block.header, *_index_facts(block)))
        with contextlib.suppress(BlockDecodeError):
            candidates.append((Header.from_bytes(header_bytes), relay_id, newest_ms, openings))
        for header, *facts in candidates:
            if header.hash() == block_hash:
                with contextlib.suppress(RuleViolation):
                    self.chain.add_trusted(header, *facts)
                    return
        self.lost.add(block_hash)

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
    block_hash, height, prev_hash, header_bytes, relay_id, newest_ms, openings, n_readings, _ = row
    if block.hash != block_hash:
        return "stored block does not hash to its key"
    if header_bytes != block.header.to_bytes():
        return "header column differs from the stored block's header"
    if (height, prev_hash) != (block.height, block.prev_hash):
        return "height/prev_hash columns differ from the header"
    if (relay_id, newest_ms, openings, n_readings) != (*_index_facts(block), len(block.capture.readings)):
        return "relay/newest/openings/readings columns differ from the payload"
    return None
