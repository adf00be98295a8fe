"""The chain and its store together: what a node adds blocks to and reads them from.

Memory and disk never disagree. A block is validated and linked into the in-memory
``Chain``, then written with its readings and the new tip in one store transaction, all
before ``add_block`` returns, so the node announces only durable blocks; if the write
fails, the block is unlinked again and the StoreError propagates.

Opening rebuilds the chain from the store's block index (headers and a few payload facts,
no payload decoding) and then re-checks the newest main-chain blocks in full. Damage found
either way raises ``LedgerDamaged`` naming the block and the reason: a node must stop
rather than serve a chain it cannot vouch for. The full audit of a store (every block,
every reading row, the main table; for `gridchain verify`) is gridchain.ledger.audit.
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridchain.consensus import rules
from gridchain.consensus.block import Block, BlockDecodeError, Capture, Header
from gridchain.consensus.errors import GridchainError
from gridchain.consensus.chain import AddResult, Chain, ChainEntry, OrphanPool, displaced_readings
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.ledger.store import (
    DB_FILE, READING_SELECT, Gap, MainChange, Store, StoreError, reading_rows, store_error,
)

# Main-chain blocks re-checked in full on every open: enough to catch a torn or edited
# recent write, cheap enough (~10 ms) to run on every start. `gridchain verify` checks all.
RECHECK_BLOCKS = 100
# A sync batch's context-free checks run in threads ahead of linking: the Ed25519 verify,
# most of a block's cost, releases the GIL, so the checks overlap on every core there is.
CHECK_THREADS = min(4, os.cpu_count() or 1)
CHECK_CHUNK = 16  # blocks per thread task: a future per block would cost a third of a check
MIN_THREADED_BATCH = 16  # shorter runs (a sync's tail) are checked inline: little to gain from threads


class LedgerDamaged(GridchainError):
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
    """One block accepted: what it did to the chain and the sealed readings a reorg pushed out
    (``displaced``: whole seals the new main chain lacks, as they were checked on arrival)."""

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

    def __init__(self, store: Store, chain: Chain, params: NetworkParams,
                 check_threads: int = CHECK_THREADS) -> None:
        self.store = store
        self.chain = chain
        self.params = params
        self.orphans = OrphanPool()
        self.check_threads = check_threads  # below 2, every check runs inline
        self._check_pool: ThreadPoolExecutor | None = None  # made on the first long run

    @classmethod
    def open(cls, data_dir: Path, params: NetworkParams, now_ms: int | None = None,
             recheck: int = RECHECK_BLOCKS, check_threads: int = CHECK_THREADS) -> Ledger:
        """Open the ledger in ``data_dir``: rebuild the chain, re-check its newest blocks.

        ``now_ms`` is not needed for the checks: a stored block passed the clock rule when
        it arrived, and a clock set back since must not make a good store look damaged.
        """
        genesis = make_genesis(params)
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
        return cls(store, chain, params, check_threads)

    def close(self) -> None:
        if self._check_pool is not None:
            self._check_pool.shutdown(cancel_futures=True)
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

    def get_raw(self, block_hash: bytes) -> bytes | None:
        """A stored block's bytes (``Block.encode()``), for sending on without decoding."""
        return self.store.get_raw(block_hash)

    def block_at(self, height: int) -> Block | None:
        entry = self.chain.main_at(height)
        return None if entry is None else self.store.get_block(entry.hash)

    def newest_reading_ms(self, relay_id: str) -> int | None:
        return self.chain.newest_reading_ms(relay_id)

    def last_seq(self, relay_id: str) -> int | None:
        """The relay's last sequence number on the main chain (None: none of its readings yet)."""
        return self.chain.last_seq(relay_id)

    def gaps(self) -> list[Gap]:
        """The holes in each relay's sequence on the main chain, each one the relay signed."""
        return self.store.gaps()

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
        """``add_block``, then every pooled orphan that now connects (children first-come).

        A block whose parent is unknown is pooled as an orphan before its RuleViolation is raised.
        """
        try:
            updates = [self.add_block(block, now_ms, encoded_size)]
        except RuleViolation as exc:
            self._pool_if_orphan(block, exc)
            raise
        return updates + self._connect_orphans([block.hash], now_ms)

    def add_blocks(self, blocks: Sequence[Block], now_ms: int) -> BatchResult:
        """Add a run of blocks (a sync answer) in ONE store transaction.

        Stops at the first block that breaks a rule: the blocks before it are kept and
        committed, that block is returned as ``rejected`` with its ``error``. An
        "unknown-parent" one is pooled as an orphan before the pool is drained: its parent
        may be an orphan this very run connects. Raises StoreError if the commit
        fails, with none of the run kept.

        A long run's context-free checks run ahead in threads (see ``BatchChecks``); each
        block is still linked in order, and one that did not pass them is checked again
        inline, so the reason and the kept prefix are what checking one by one gives.
        """
        results: list[AddResult] = []
        updates: list[LedgerUpdate] = []
        pending: dict[bytes, Block] = {}
        changes: list[MainChange] = []
        rejected, error = None, None
        checks = self._batch_checks(blocks, now_ms)
        try:
            for index, block in enumerate(blocks):
                prechecked = checks is not None and checks.passed(index)
                try:
                    result = self.chain.add(block, now_ms, prechecked=prechecked)
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
        finally:
            if checks is not None:
                checks.cancel()  # after a refused block, the checks of the rest are not needed
        if error is not None:
            self._pool_if_orphan(rejected, error)
        updates += self._connect_orphans(list(pending), now_ms)
        return BatchResult(updates, rejected, error)

    def _pool_if_orphan(self, block: Block, error: RuleViolation) -> None:
        if error.reason == "unknown-parent":
            self.orphans.add(block, len(block.encode()))

    def _batch_checks(self, blocks: Sequence[Block], now_ms: int) -> BatchChecks | None:
        if len(blocks) < MIN_THREADED_BATCH or self.check_threads < 2:
            return None
        if self._check_pool is None:
            self._check_pool = ThreadPoolExecutor(self.check_threads, thread_name_prefix="gridchain-check")
        return BatchChecks(self._check_pool, blocks, self.chain.params, now_ms)

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
        tip = result.entry
        return displaced_readings([self._block(e, pending) for e in result.disconnected],
                                  lambda relay_id: self.chain.last_seq(relay_id, tip))


class BatchChecks:
    """``check_block`` of a run of blocks, started in a thread pool: which blocks passed it.

    Blocks go to the pool in chunks, in order, so the first chunks are done while the
    ledger links them and the later ones are still being checked. A block that failed, for
    whatever reason, is just "not passed": ``Chain.add`` then runs the same checks inline
    and raises what they raise, in the run's order.
    """

    def __init__(self, pool: ThreadPoolExecutor, blocks: Sequence[Block], params: NetworkParams,
                 now_ms: int) -> None:
        self._size = CHECK_CHUNK
        self._futures: list[Future[list[bool]]] = [
            pool.submit(_passes_check_block, blocks[start:start + self._size], params, now_ms)
            for start in range(0, len(blocks), self._size)]
        self._chunk = -1
        self._passed: list[bool] = []

    def passed(self, index: int) -> bool:
        """Whether block ``index`` of the run passed; waits for its chunk."""
        chunk = index // self._size
        if chunk != self._chunk:
            self._chunk, self._passed = chunk, self._futures[chunk].result()
        return self._passed[index % self._size]

    def cancel(self) -> None:
        """Drop the chunks no thread has started (the ones running finish and are ignored)."""
        for future in self._futures:
            future.cancel()


def _passes_check_block(blocks: Sequence[Block], params: NetworkParams, now_ms: int) -> list[bool]:
    passed = []
    for block in blocks:
        try:
            rules.check_block(block, params, now_ms)
        except Exception:  # whatever it was, Chain.add meets it again inline and raises it there
            passed.append(False)
        else:
            passed.append(True)
    return passed


# --- opening: rebuild and re-check ------------------------------------------------------------
def rebuild_chain(store: Store, genesis: Block, params: NetworkParams) -> Chain:
    """The chain as the store's block index describes it, in the order the blocks arrived."""
    chain = Chain(genesis, params)
    if store.get_raw(genesis.hash) != genesis.encode():
        raise LedgerDamaged(genesis.hash.hex(), 0, "the genesis row is missing or altered")
    for block_hash, header_bytes, relay_id, last_seq, newest_ms, relay_key in store.iter_index():
        if block_hash == genesis.hash:
            continue
        try:
            header = Header.from_bytes(header_bytes)
            result = chain.add_trusted(header, relay_id, last_seq, newest_ms, relay_key)
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
    if (entry.relay_id, entry.last_seq, entry.newest_ms, entry.relay_key) != index_facts(block):
        return "index relay/seq/newest/key columns differ from the payload"
    try:
        rules.check_block(block, params, block.header.time_ms)  # the clock rule as applied on arrival
        parent = entry.parent
        newest = chain.newest_of(block.capture.relay_id, parent)
        rules.check_context(block, parent.height, chain.median_time_ms(parent),
                            None if newest is None else newest.last_seq,
                            None if newest is None else newest.relay_key)
    except RuleViolation as exc:
        return str(exc)
    if store.main_hash_at(entry.height) != entry.hash:
        return "main table does not list this block at its height"
    return check_readings_rows(store.db, entry.height, block)


def check_readings_rows(db: sqlite3.Connection, height: int, block: Block | None) -> str | None:
    """Why the readings table's rows at ``height`` are not exactly ``block``'s, or None."""
    stored = db.execute(f"SELECT {READING_SELECT} FROM readings WHERE block_height = ? "
                        f"ORDER BY relay_id, seq", (height,)).fetchall()
    expected = list(reading_rows([block])) if block is not None else []
    if stored != expected:
        return f"readings table holds {len(stored)} row(s) at this height that differ from the block's {len(expected)}"
    return None


def index_facts(block: Block) -> tuple[str, int | None, int | None, bytes]:
    """The payload facts the block index keeps beside each header: relay, last seq, newest time, key."""
    c = block.capture
    return c.relay_id, c.last_seq, c.newest_ms, c.relay_key


def _height_of(header_bytes: bytes) -> int:
    try:
        return Header.from_bytes(header_bytes).height
    except BlockDecodeError:
        return -1
