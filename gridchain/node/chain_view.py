"""The node's chain as gossip, capture and the operator API see it: reads of the ledger, blocks in.

Gossip asks it what our chain looks like and hands it the blocks peers send
(gridchain.net.gossip.ChainView); the capture task asks for the newest reading of a relay;
the operator API reads blocks, readings and audits through it (gridchain.api.server.NodeView).
Blocks it takes are logged once each (``block.accepted``, ``block.rejected``,
``chain.reorg`` through the node's ``on_reorg``), and a tip that moved is reported to the
node's ``on_tip_moved`` (which cancels mining and feeds `tail` subscribers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gridchain.consensus.block import Block, short_hash
from gridchain.consensus.chain import AddResult, ChainEntry
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.ledger.audit import AuditReport, audit_store
from gridchain.ledger.ledger import Ledger, LedgerUpdate
from gridchain.ledger.store import StoreError
from gridchain.net.gossip import ReceiveResult
from gridchain.net.messages import MAX_BLOCKS_PER_MESSAGE

# A `blocks` answer is kept under the frame cap with room to spare for its envelope.
SYNC_ANSWER_BYTES = 3 * 1024 * 1024


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

    async def receive_blocks(self, blocks: list[Block], peer: str, via_sync: bool) -> ReceiveResult:
        tip_before = self.ledger.tip
        started = time.perf_counter()
        try:
            if via_sync:
                batch = self.ledger.add_blocks(blocks, self.now_ms())
                updates, rejected, error = batch.updates, batch.rejected, batch.error
            else:
                updates, rejected, error = self._add_pushed(blocks[0])
        except StoreError as exc:
            # Our disk, not the peer, is at fault: keep the peer, report, take nothing.
            self.log.error("store.error", reason=exc.reason, detail=str(exc), peer=peer)
            return ReceiveResult()
        for update in updates:
            self._record(update, peer, started)
        accepted = [u for u in updates if u.result.status != "duplicate"]
        self._tip_check(tip_before)  # gossip announces once the blocks are sent on
        if via_sync and accepted:
            self.log.info("sync.progress", peer=peer, blocks=len(accepted), height=self.ledger.height,
                          hash=short_hash(self.ledger.tip.hash))
        blocks_by_hash = {b.hash: b for b in blocks}
        accepted_blocks = tuple(blocks_by_hash.get(u.result.entry.hash) or self.ledger.get_block(u.result.entry.hash)
                                for u in accepted)
        if error is None:
            return ReceiveResult(accepted_blocks)
        if error.reason == "unknown-parent":  # the ledger holds it as an orphan
            return ReceiveResult(accepted_blocks, missing_parent=True)
        self.log.warning("block.rejected", reason=error.reason, detail=error.detail, peer=peer,
                         height=rejected.height, hash=short_hash(rejected.hash))
        return ReceiveResult(accepted_blocks, (error.reason, error.detail))  # its cost: net.penalties

    def _add_pushed(self, block: Block) -> tuple[list[LedgerUpdate], Block | None, RuleViolation | None]:
        try:
            return self.ledger.add_block_with_orphans(block, self.now_ms()), None, None
        except RuleViolation as exc:
            return [], block, exc

    def _record(self, update: LedgerUpdate, peer: str, started: float) -> None:
        result: AddResult = update.result
        if result.status == "duplicate":
            return
        entry = result.entry
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
