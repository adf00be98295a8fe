"""The node's chain as gossip, capture and the operator API see it: reads of the ledger, blocks in.

Gossip asks it what our chain looks like and hands it the blocks peers send
(gridchain.net.gossip.ChainView); the capture task asks for the newest reading of a relay;
the operator API reads blocks, readings and audits through it (gridchain.api.server.NodeView).
Pushed blocks it takes are logged once each (``block.accepted``), a sync batch once
(``sync.progress``: thousands of blocks a second would cost as much to log as to check);
``block.rejected`` and ``chain.reorg`` (through the node's ``on_reorg``) either way. A tip
that moved is reported to the node's ``on_tip_moved`` (which cancels mining and feeds
`tail` subscribers).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

import msgpack

from gridchain.consensus.block import Block, short_hash
from gridchain.consensus.chain import AddResult, ChainEntry
from gridchain.consensus.finality import make_note
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.ledger.audit import AuditReport, audit_store
from gridchain.ledger.ledger import Ledger, LedgerUpdate
from gridchain.ledger.store import StoreError, store_error
from gridchain.net.gossip import ReceiveResult
from gridchain.net.messages import MAX_BLOCKS_PER_MESSAGE

# A `blocks` answer is kept under the frame cap with room to spare for its envelope.
SYNC_ANSWER_BYTES = 3 * 1024 * 1024
# A stored block's first bytes hold its miner name: the array header, header (131), signature
# (66), relay id and substation (<= 259 each), relay key (34) and the name (<= 259) in msgpack.
MINER_NAME_PREFIX = 1024


class LedgerView:
    """One node's ledger behind the narrow views its services need."""

    def __init__(self, ledger: Ledger, params: NetworkParams, now_ms: Callable[[], int], log, *,
                 on_reorg: Callable[[LedgerUpdate], None], on_tip_moved: Callable[[ChainEntry], None]) -> None:
        self.ledger = ledger
        self.params = params
        self.network = params.name
        self.genesis_hash = ledger.chain.genesis_hash
        self.now_ms = now_ms
        self.log = log
        self.on_reorg = on_reorg
        self.on_tip_moved = on_tip_moved  # called with the tip before, once per change
        # Called after blocks joined the tree (any branch) with what the votes waiting for
        # them did (a list of ledger FinalityChange or None): pooled votes may have counted.
        self.after_blocks: Callable[[list], None] | None = None
        self._intake = asyncio.Lock()  # blocks from peers go to the ledger one sender at a time
        # Told of each refused block (reason, peer, block); True when the node has already
        # reported what such refusals mean (a clock off), so this one is logged at debug.
        self.on_refused: Callable[[str, str, Block], bool] | None = None

    # --- what gossip asks (net.gossip.ChainView) ------------------------------------------------
    def tip_info(self) -> tuple[int, bytes, int]:
        tip = self.ledger.tip
        return tip.height, tip.hash, tip.work

    def has_block(self, block_hash: bytes) -> bool:
        return block_hash in self.ledger.chain or self.ledger.orphans.has(block_hash)

    def is_linked(self, block_hash: bytes) -> bool:
        return block_hash in self.ledger.chain

    def locator(self) -> list[bytes]:
        return self.ledger.chain.locator()

    def height_of(self, block_hash: bytes) -> int:
        return self.ledger.chain.get(block_hash).height

    def blocks_for_locator(self, locator: list[bytes], limit: int) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Stored main-chain blocks after the locator's fork, as sent: no decoding on the way."""
        chain = self.ledger.chain
        fork = chain.find_fork(locator)
        hashes = chain.main_hashes_after(fork, min(limit, MAX_BLOCKS_PER_MESSAGE) + 1)
        blocks: list[tuple[bytes, bytes]] = []
        size = 0
        for block_hash in hashes[:limit]:
            raw = self.ledger.get_raw(block_hash)
            size += len(raw)
            if blocks and size > SYNC_ANSWER_BYTES:
                break
            blocks.append((block_hash, raw))
        return blocks, len(hashes) > len(blocks)

    def check_ahead(self, blocks: list[Block]) -> object | None:
        """Start a sync batch's context-free checks in threads (for ``receive_blocks``)."""
        return self.ledger.start_checks(blocks, self.now_ms())

    async def receive_blocks(self, blocks: list[Block], peer: str, via_sync: bool,
                             raws: list[bytes] | None = None, checks: object | None = None) -> ReceiveResult:
        # One sender's blocks at a time: a sync batch and a pushed block's reorg are added a
        # slice at a time (Ledger.add_blocks_sliced, add_block_sliced), and blocks from another
        # peer meanwhile would otherwise make the ledger finish them in one go.
        async with self._intake:
            return await self._receive(blocks, peer, via_sync, raws, checks)

    async def _receive(self, blocks: list[Block], peer: str, via_sync: bool, raws: list[bytes] | None,
                       checks: object | None) -> ReceiveResult:
        tip_before = self.ledger.tip
        started = time.perf_counter()
        changes = []  # what the votes waiting for these blocks did (finality)
        try:
            if via_sync:
                batch = await self.ledger.add_blocks_sliced(blocks, self.now_ms(), raws, checks)
                updates, rejected, error = batch.updates, batch.rejected, batch.error
                changes.append(getattr(batch, "finality", None))
            else:
                updates, rejected, error = await self._add_pushed(blocks[0])
        except StoreError as exc:
            # Our disk, not the peer, is at fault: keep the peer, report, take nothing.
            self.log.error("store.error", reason=exc.reason, detail=str(exc), peer=peer)
            return ReceiveResult()
        for update in updates:
            self._record(update, peer, started, log_each=not via_sync)
            changes.append(getattr(update, "finality", None))
        for change in changes:
            if change is not None and change.reorg is not None:
                self.on_reorg(change.reorg)  # justification moved the main chain
        accepted = [u for u in updates if u.result.status != "duplicate"]
        self._tip_check(tip_before)  # gossip announces once the blocks are sent on
        if accepted and self.after_blocks is not None:
            self.after_blocks(changes)
        if via_sync and accepted:
            self.log.info("sync.progress", peer=peer, blocks=len(accepted), height=self.ledger.height,
                          hash=short_hash(self.ledger.tip.hash),
                          ms=round((time.perf_counter() - started) * 1000, 3))
        blocks_by_hash = {b.hash: b for b in blocks}
        accepted_blocks = tuple(blocks_by_hash.get(u.result.entry.hash) or self.ledger.get_block(u.result.entry.hash)
                                for u in accepted)
        if error is None:
            return ReceiveResult(accepted_blocks)
        if error.reason == "unknown-parent":  # the ledger holds it as an orphan
            return ReceiveResult(accepted_blocks, missing_parent=True)
        quiet = self.on_refused is not None and self.on_refused(error.reason, peer, rejected)
        (self.log.debug if quiet else self.log.warning)("block.rejected", reason=error.reason, detail=error.detail,
                                                         peer=peer, height=rejected.height,
                                                         hash=short_hash(rejected.hash))
        return ReceiveResult(accepted_blocks, (error.reason, error.detail))  # its cost: net.penalties

    async def _add_pushed(self, block: Block) -> tuple[list[LedgerUpdate], Block | None, RuleViolation | None]:
        try:
            return await self.ledger.add_block_sliced(block, self.now_ms()), None, None
        except RuleViolation as exc:
            return [], block, exc

    def _record(self, update: LedgerUpdate, peer: str, started: float, log_each: bool = True) -> None:
        result: AddResult = update.result
        if result.status == "duplicate":
            return
        entry = result.entry
        if log_each:
            self.log.info("block.accepted", peer=peer, height=entry.height, hash=short_hash(entry.hash),
                          status=result.status, ms=round((time.perf_counter() - started) * 1000, 3))
        if result.status == "reorg":
            self.on_reorg(update)

    def _tip_check(self, tip_before: ChainEntry) -> bool:
        if self.ledger.tip is tip_before:
            return False
        self.on_tip_moved(tip_before)
        return True

    # --- our own blocks (the capture task's) ----------------------------------------------------
    def add_own_block(self, block: Block) -> LedgerUpdate:
        """Store a block we mined; raises RuleViolation or StoreError as Ledger.add_block does."""
        return self.ledger.add_block(block, self.now_ms())

    def tip_moved_since(self, tip_before: ChainEntry) -> bool:
        """Report a tip change since ``tip_before`` (to ``on_tip_moved``); True if there was one."""
        return self._tip_check(tip_before)

    def newest_reading_ms(self, relay_id: str) -> int | None:
        return self.ledger.chain.newest_reading_ms(relay_id)

    def joined_rows_since(self, old_tip: ChainEntry) -> list[dict]:
        """The header rows (``header_rows``) of each block that joined the main chain since
        ``old_tip`` was the tip: after a deep reorg, a thousand rows from the index, not a
        thousand blocks decoded."""
        return self.header_rows(self._fork_height(old_tip) + 1, self.ledger.chain.height)

    def _fork_height(self, old_tip: ChainEntry) -> int:
        fork = old_tip
        while fork is not None and not self.ledger.chain.is_main(fork):
            fork = fork.parent
        return fork.height if fork is not None else -1

    def joined_main_since(self, old_tip: ChainEntry) -> list[tuple[Block, int]]:
        """(block, height) of each block that joined the main chain since ``old_tip`` was the tip."""
        chain = self.ledger.chain
        fork = old_tip
        while fork is not None and not chain.is_main(fork):
            fork = fork.parent
        start = fork.height + 1 if fork is not None else 0
        return [(self.main_block(height), height) for height in range(start, chain.height + 1)]

    # --- what the operator API reads (api.server.NodeView) ---------------------------------------
    @property
    def height(self) -> int:
        return self.ledger.height

    def find_block(self, block_hash: bytes | None, height: int | None) -> tuple[Block, int, bool] | None:
        chain = self.ledger.chain
        entry = chain.get(block_hash) if block_hash is not None else chain.main_at(height)
        if entry is None:
            return None
        return self.ledger.get_block(entry.hash), entry.height, chain.is_main(entry)

    def main_block(self, height: int) -> Block:
        return self.ledger.get_block(self.ledger.chain.main_at(height).hash)

    def header_rows(self, start: int, stop: int) -> list[dict]:
        """A headers_reply row of each main-chain block from ``start`` to ``stop`` (both within
        the chain), from the chain's index and each block's stored count and first bytes:
        nothing is decoded but a block's miner name."""
        chain = self.ledger.chain
        entries = [chain.main_at(height) for height in range(start, stop + 1)]
        facts = self._row_facts([e.hash for e in entries])
        rows = []
        for entry in entries:
            readings, miner_name = facts[entry.hash]
            header = entry.header
            rows.append({"height": entry.height, "hash": entry.hash, "miner_name": miner_name,
                         "relay_id": entry.relay_id, "readings": readings, "newest_ms": entry.newest_ms,
                         "time_ms": header.time_ms, "miner_key": header.miner_key})
        return rows

    def _row_facts(self, hashes: list[bytes]) -> dict[bytes, tuple[int, str]]:
        """Block hash -> (readings, miner name), read with an incremental blob read of the
        block's first bytes (the rest of a block of 10,000 readings is never read)."""
        db = self.ledger.store.db
        facts: dict[bytes, tuple[int, str]] = {}
        try:
            for i in range(0, len(hashes), 500):  # under SQLite's bound on parameters
                chunk = hashes[i:i + 500]
                rows = db.execute(f"SELECT hash, rowid, n_readings FROM blocks WHERE hash IN "
                                  f"({', '.join('?' * len(chunk))})", chunk).fetchall()
                for block_hash, rowid, readings in rows:
                    with db.blobopen("blocks", "raw", rowid, readonly=True) as blob:
                        facts[block_hash] = (readings, _miner_name(blob.read(MINER_NAME_PREFIX)))
        except sqlite3.Error as exc:
            raise store_error(exc, "reading block index rows") from None
        missing = [h for h in hashes if h not in facts]
        if missing:
            raise StoreError("corrupt", f"block {missing[0].hex()} of the main chain is not stored")
        return facts

    def get_block(self, block_hash: bytes) -> Block | None:
        return self.ledger.get_block(block_hash)

    def readings_page(self, relay: str | None, since_ms: int | None, until_ms: int | None,
                      after: tuple[int, str] | None, limit: int) -> tuple[list[tuple], tuple[int, str] | None]:
        return self.ledger.store.readings_page(relay=relay, since_ms=since_ms, until_ms=until_ms, after=after,
                                               limit=limit)

    def reading_location(self, relay_id: str, timestamp_ms: int) -> tuple[bytes, int] | None:
        return self.ledger.store.reading_location(relay_id, timestamp_ms)

    def audit(self) -> AuditReport:
        return audit_store(self.ledger.store.path, self.params)

    # --- finality, for the operator (api.server.NodeView) ------------------------------------
    @property
    def finalized_height(self) -> int | None:
        return None if not self.params.members else self.ledger.finalized.height

    def finalized_checkpoint(self, since: int | None) -> tuple[bytes, bytes, str] | None:
        """(header, certificate, note) of the newest finalized checkpoint, or of the lowest at or
        above ``since`` (any finalized checkpoint above a block proves the block final)."""
        if not self.params.members:
            return None
        if since is None:
            finalized = self.ledger.finalized
            cert = None if finalized.height == 0 else self.ledger.certificate_for(finalized.hash)
        else:
            cert = self.ledger.proof_certificate(since)
        if cert is None:
            return None
        entry = self.ledger.chain.get(cert.source.hash)
        return None if entry is None else self._checkpoint(entry.header, cert)

    def raw_headers(self, start: int, stop: int) -> list[bytes]:
        start, stop = max(0, start), min(stop, self.ledger.height)
        if start > stop:
            return []
        return [header.to_bytes() for header in self.ledger.headers_between(start, stop)]

    def _checkpoint(self, header, cert) -> tuple[bytes, bytes, str]:
        return header.to_bytes(), cert.encode(), make_note(self.params, header, cert).text()

    def raw_headers(self, start: int, stop: int) -> list[bytes]:
        chain = self.ledger.chain
        return [chain.main_at(height).header.to_bytes() for height in range(max(0, start), min(stop, chain.height) + 1)]


def _miner_name(prefix: bytes) -> str:
    """The miner name, field 6 of a stored block's wire array, from the block's first bytes."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MINER_NAME_PREFIX)
    unpacker.feed(prefix)
    unpacker.read_array_header()
    for _ in range(5):
        unpacker.skip()
    name = unpacker.unpack()
    if not isinstance(name, str):
        raise StoreError("corrupt", "a stored block's miner name is not text")
    return name
