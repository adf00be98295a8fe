"""The composition root: one node's ledger, key, peers, relays, miner and operator API.

Everything a node runs is built here and run in one TaskGroup; a stop event is the one
shutdown path (cancel mining, close peers and relays, flush the store, log node.stopped).
The services meet only here: the chain view (chain_view.py) sits between the ledger and
gossip, capture and the API; the listener (listener.py) routes each connection to the peer
protocol or the API; status.py builds the status report. The node itself is the capture
task's host (what the capture task asks of the node, capture.CaptureHost).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

from gridchain.node import port
from gridchain.api.server import ClientSessions
from gridchain.config import Address, NodeConfig
from gridchain.consensus.block import Block, short_hash
from gridchain.consensus.chain import ChainEntry
from gridchain.identity.node_network import node_params
from gridchain.identity.keys import KeyFileError, NodeKey
from gridchain.ledger.ledger import Ledger, LedgerUpdate
from gridchain.net.gossip import Gossip
from gridchain.node.capture import CaptureTask, RelayWatch
from gridchain.node.chain_view import LedgerView
from gridchain.node.lag import LoopLagMonitor
from gridchain.node.listener import Listener
from gridchain.node.miner import Miner
from gridchain.node.status import NodeFacts, build_status
from gridchain.relay.client import RelayClient

log = structlog.get_logger()


class NodeStartError(Exception):
    """The node cannot start; str() is one line for the operator."""


class Node:
    """One gridchaind process."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.name = config.miner_name
        self.params = node_params(config)  # the network file's, or an open network (warned)
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
        self.chain = LedgerView(self.ledger, self.params, self.now_ms, self.log, on_reorg=self._note_reorg,
                                on_tip_moved=self._tip_moved)
        self.miner = Miner(config.mining_threads)
        self.watches = [RelayWatch(self._relay_client(a), self.name) for a in config.relays]
        self.capture = CaptureTask(self, self.ledger, self.key, self.params, self.miner, self.watches,
                                   config.capture_interval_s, config.min_peers, clock)
        self.clients = ClientSessions(self.chain, self.status, self.name, decode=port.decode_message)
        self.gossip = Gossip(chain=self.chain, node_key=self.key.public_key, name=self.name, port=config.port,
                             peers=config.peers, ban_seconds=config.ban_seconds, redial_max_s=config.redial_max_s,
                             decode=port.decode_message)
        self.listener = Listener(config.host, config.port, max_inbound=config.max_inbound,
                                 inbound_peers=self.gossip.inbound_count, is_operator=port.is_request_frame,
                                 serve_peer=self.gossip.accept, serve_operator=self._serve_operator, log=self.log)
        self.lag = LoopLagMonitor()
        self.facts = NodeFacts(self.network, self.name, self.key.public_key, self.genesis_hash, self.params.bits,
                               config.capture_interval_s, time.monotonic())

    def _relay_client(self, address: Address) -> RelayClient:
        """A relay feed client that checks the relay against the network file (never first use).

        With a network file the relay must be one it names (``unknown-relay`` otherwise), signing
        with the key it gives (``relay-key-mismatch``); only an open development network
        (params.relays None) pins the key a relay announces on first contact.
        """
        relays = self.params.relays
        known = None if relays is None else {relay_id: info.key for relay_id, info in relays.items()}
        return RelayClient(address.host, address.port, known_relays=known)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- running ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.listener.start()
        except OSError as exc:
            self.ledger.close()
            raise NodeStartError(f"cannot listen on {self.config.host}:{self.config.port}: "
                                 f"{exc.strerror or exc}") from None
        self.gossip.port = self.listener.port
        self.log.info("node.started", port=self.listener.port, network=self.network, height=self.ledger.height,
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
        self.listener.stop()
        self.gossip.close()
        await self.listener.wait_closed()
        for watch in self.watches:
            await watch.client.close()
        self.ledger.close()
        self.log.info("node.stopped", height=self.ledger.height, hash=short_hash(self.ledger.tip.hash))

    async def _serve_operator(self, frames, writer: asyncio.StreamWriter, address: str) -> None:
        await self.clients.serve(frames, writer)

    # --- the chain view's reports ------------------------------------------------------------
    def _note_reorg(self, update: LedgerUpdate) -> None:
        displaced = sum(len(c.readings) for c in update.displaced)
        self.log.warning("chain.reorg", depth=len(update.result.disconnected), displaced=displaced,
                         height=self.ledger.height, hash=short_hash(self.ledger.tip.hash))
        self.capture.displaced.add(update.displaced)  # the one buffer: whole seals, verified

    def _tip_moved(self, tip_before: ChainEntry) -> None:
        self.miner.cancel()  # a better tip: whatever we were mining is built on the old one
        if self.clients.has_subscribers:
            self.clients.publish(self.chain.joined_main_since(tip_before))

    def has_block(self, block_hash: bytes) -> bool:
        return self.chain.has_block(block_hash)

    # --- what the capture task asks of the node (capture.CaptureHost) ---------------------------
    def newest_reading_ms(self, relay_id: str) -> int | None:
        return self.chain.newest_reading_ms(relay_id)

    def connected_peers(self) -> int:
        return len(self.gossip.peers)

    def accept_own_block(self, block: Block, mined_ms: float) -> None:
        tip_before = self.ledger.tip
        update = self.chain.add_own_block(block)
        self.log.info("block.mined", height=block.height, hash=short_hash(block.hash), ms=mined_ms,
                      readings=len(block.capture.readings), relay_id=block.capture.relay_id,
                      nonce=block.header.nonce)
        if update.result.status == "reorg":
            self._note_reorg(update)
        self.gossip.spread([block], self.chain.tip_moved_since(tip_before))

    # --- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        return build_status(self.facts, now=time.monotonic(), port=self.listener.port, tip=self.ledger.tip,
                            peers=self.gossip.peers.values(), relays=[w.status() for w in self.watches],
                            mining=self.miner.busy, orphans=len(self.ledger.orphans),
                            syncing=self.gossip.sync_peer is not None, loop_lag_ms=self.lag.summary())


async def run_node(config: NodeConfig, stop: asyncio.Event) -> None:
    """Build and run one node until ``stop`` is set (the CLI's entry point)."""
    await Node(config).run(stop)
