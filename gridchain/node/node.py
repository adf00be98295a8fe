"""The composition root: one node's ledger, key, peers, relays, miner and operator API.

Everything a node runs is built here and run in one TaskGroup; a stop event is the one
shutdown path (cancel mining, close peers and relays, flush the store, log node.stopped).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

from gridchain.node.capture import CaptureTask, RelayWatch
from gridchain.config import NodeConfig
from gridchain.consensus.block import Block, Capture, short_hash
from gridchain.consensus.chain import AddResult, ChainEntry
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.identity.keys import KeyFileError, NodeKey
from gridchain.node.lag import LoopLagMonitor
from gridchain.ledger.ledger import Ledger, LedgerUpdate
from gridchain.node.miner import Miner
from gridchain.net.gossip import Gossip, ReceiveResult
from gridchain.net.messages import MAX_BLOCKS_PER_MESSAGE
from gridchain.relay.client import RelayClient
from gridchain.api.server import ClientSessions
from gridchain.ledger.store import StoreError

log = structlog.get_logger()

# Rule failures that an honest peer can cause (clock skew): refuse the block, keep the peer.
SOFT_REASONS = frozenset({"time-too-new"})
# A `blocks` answer is kept under the frame cap with room to spare for its envelope.
SYNC_ANSWER_BYTES = 3 * 1024 * 1024


class NodeStartError(Exception):
    """The node cannot start; str() is one line for the operator."""


class Node:
    """One gridchaind process."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.name = config.miner_name
        self.params = NetworkParams(config.network, config.difficulty, config.members)
        self.log = log.bind(node=self.name)
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeStartError(f"cannot create data dir {config.data_dir}: {exc.strerror or exc}") from None
        try:
            self.key = NodeKey.load_or_create(config.data_dir)
        except KeyFileError as exc:
            raise NodeStartError(str(exc)) from None
        self.ledger = Ledger.open(config.data_dir, self.params, self.now_ms())
        # The rebuilt chain is hundreds of thousands of long-lived objects: keep them out of
        # every future garbage collection pass (a full pass over them costs ~100 ms at 100k blocks).
        gc.freeze()
        self.network = config.network
        self.genesis_hash = self.ledger.chain.genesis_hash
        self.miner = Miner(config.mining_threads)
        self.watches = [RelayWatch(RelayClient(a.host, a.port), self.name) for a in config.relays]
        self.capture = CaptureTask(self, self.ledger, self.key, self.params, self.miner, self.watches,
                                   config.capture_interval_s, config.min_peers, clock)
        self.clients = ClientSessions(self)
        self.gossip = Gossip(chain=self, node_key=self.key.public_key, name=self.name, host=config.host,
                             port=config.port, peers=config.peers, max_inbound=config.max_inbound,
                             ban_seconds=config.ban_seconds, client_handler=self.clients.serve,
                             redial_max_s=config.redial_max_s)
        self.lag = LoopLagMonitor()
        self._displaced: dict[str, Capture] = {}
        self.started_at = time.monotonic()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- running ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.gossip.start()
        except OSError as exc:
            self.ledger.close()
            raise NodeStartError(f"cannot listen on {self.config.host}:{self.config.port}: "
                                 f"{exc.strerror or exc}") from None
        self.log.info("node.started", port=self.gossip.port, network=self.network, height=self.ledger.height,
                      hash=short_hash(self.ledger.tip.hash), node_key=self.key.public_key.hex(),
                      peers=[str(p) for p in self.config.peers], relays=[str(r) for r in self.config.relays])
        try:
            async with asyncio.TaskGroup() as tasks:
                jobs = [tasks.create_task(self.gossip.run()), tasks.create_task(self.capture.run()),
                        tasks.create_task(self.lag.run())]
                await stop.wait()
                self.log.info("node.stopping")
                for job in jobs:
                    job.cancel()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.miner.shutdown()
        await self.clients.close()
        await self.gossip.close()
        for watch in self.watches:
            await watch.client.close()
        self.ledger.close()
        self.log.info("node.stopped", height=self.ledger.height, hash=short_hash(self.ledger.tip.hash))

    # --- what gossip asks of the chain (net.gossip.ChainView) ---------------------------------
    def tip_info(self) -> tuple[int, bytes, int]:
        tip = self.ledger.tip
        return tip.height, tip.hash, tip.work

    def has_block(self, block_hash: bytes) -> bool:
        return block_hash in self.ledger.chain or self.ledger.orphans.has(block_hash)

    def is_linked(self, block_hash: bytes) -> bool:
        return block_hash in self.ledger.chain

    def locator(self) -> list[bytes]:
        return self.ledger.chain.locator()

    def blocks_for_locator(self, locator: list[bytes], limit: int) -> tuple[list[Block], bool]:
        chain = self.ledger.chain
        fork = chain.find_fork(locator)
        hashes = chain.main_hashes_after(fork, min(limit, MAX_BLOCKS_PER_MESSAGE) + 1)
        blocks: list[Block] = []
        size = 0
        for block_hash in hashes[:limit]:
            raw = self.ledger.store.get_raw(block_hash)
            size += len(raw)
            if blocks and size > SYNC_ANSWER_BYTES:
                break
            blocks.append(Block.decode(raw))
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
        self._after_updates(tip_before, announce=False)  # gossip announces once the blocks are sent
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
        if error.reason in SOFT_REASONS:
            return ReceiveResult(accepted_blocks)
        return ReceiveResult(accepted_blocks, (error.reason, error.detail))

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
            self._note_reorg(update)

    def _note_reorg(self, update: LedgerUpdate) -> None:
        displaced = sum(len(c.readings) for c in update.displaced)
        self.log.warning("chain.reorg", depth=len(update.result.disconnected), displaced=displaced,
                         height=self.ledger.height, hash=short_hash(self.ledger.tip.hash))
        for capture in update.displaced:
            self._displaced[capture.relay_id] = capture

    def _after_updates(self, tip_before: ChainEntry, announce: bool) -> None:
        if self.ledger.tip is tip_before:
            return
        self.miner.cancel()  # a better tip: whatever we were mining is built on the old one
        if announce:
            self.gossip.announce_tip()
        self.clients.publish_new_tip(tip_before)

    # --- what the capture task asks of the node (capture.CaptureHost) ---------------------------
    def newest_reading_ms(self, relay_id: str) -> int | None:
        return self.ledger.chain.newest_reading_ms(relay_id)

    def connected_peers(self) -> int:
        return len(self.gossip.peers)

    def take_displaced(self) -> dict[str, Capture]:
        displaced, self._displaced = self._displaced, {}
        return displaced

    def accept_own_block(self, block: Block, mined_ms: float) -> None:
        tip_before = self.ledger.tip
        update = self.ledger.add_block(block, self.now_ms())
        self.log.info("block.mined", height=block.height, hash=short_hash(block.hash), ms=mined_ms,
                      readings=len(block.capture.readings), relay_id=block.capture.relay_id,
                      nonce=block.header.nonce)
        if update.result.status == "reorg":
            self._note_reorg(update)
        self.gossip.broadcast_block(block)
        self._after_updates(tip_before, announce=True)

    # --- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        tip = self.ledger.tip
        return {
            "network": self.network, "name": self.name, "node_key": self.key.public_key.hex(),
            "port": self.gossip.port, "height": tip.height, "tip": tip.hash.hex(), "work": tip.work,
            "genesis": self.genesis_hash.hex(), "difficulty": self.params.bits,
            "peers": self.gossip.peer_rows(), "relays": [w.status() for w in self.watches],
            "mining": "busy" if self.miner.busy else "idle", "orphans": len(self.ledger.orphans),
            "syncing": self.gossip.sync_peer is not None, "uptime_s": round(time.monotonic() - self.started_at, 3),
            "loop_lag_ms": self.lag.summary(), "capture_interval_s": self.config.capture_interval_s,
        }


async def run_node(config: NodeConfig, stop: asyncio.Event) -> None:
    """Build and run one node until ``stop`` is set (the CLI's entry point)."""
    await Node(config).run(stop)
