"""The composition root: one node's ledger, key, peers, relays, miner and operator API.

Everything a node runs is built here and run in one TaskGroup; a stop event is the one
shutdown path (cancel mining, close peers and relays, flush the store, log node.stopped).
The services meet only here: the chain view (chain_view.py) sits between the ledger and
gossip, capture and the API; two doors (doors.py) listen, one for peers, one for the
operator API and the web dashboard (observability.py: dashboard, metrics, alerts, fed from
here); status.py builds the status report. The node itself is the capture
task's host (what the capture task asks of the node, capture.CaptureHost).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

from gridchain.node import port
from gridchain.api.access import AccessError, Tokens
from gridchain.api.server import ClientSessions
from gridchain.config import Address, NodeConfig
from gridchain.consensus.block import Block, short_hash
from gridchain.consensus.chain import ChainEntry
from gridchain.identity.node_network import node_params
from gridchain.identity.keys import KeyFileError, NodeKey
from gridchain.identity.tls import TlsIdentity
from gridchain.ledger.ledger import Ledger, LedgerUpdate
from gridchain.node.capture import CaptureTask, RelayWatch
from gridchain.node.clock import ClockOk, ClockWatch
from gridchain.node.lag import LoopLagMonitor
from gridchain.node.doors import OperatorDoor, PeerDoor
from gridchain.node.miner import Miner
from gridchain.node.observability import Observability, ObservedGossip, ObservedLedgerView
from gridchain.node.status import NodeFacts, build_status
from gridchain.node.voter import Voter
from gridchain.relay.client import RelayClient

log = structlog.get_logger()

# The clock evidence (relay skews, refusals expiring) is looked at this often.
CLOCK_CHECK_S = 5.0
# A peer whose block was too new for our clock starts no sync on its tips for this long at
# least, and at most SYNC_HOLD_MAX_S (then one sync tries again: a clock set right resumes).
SYNC_HOLD_MIN_S = 5.0
SYNC_HOLD_MAX_S = 60.0


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
        self.chain = ObservedLedgerView(self.ledger, self.params, self.now_ms, self.log, on_reorg=self._note_reorg,
                                        on_tip_moved=self._tip_moved)
        # The dashboard, metrics and alerts (served on the operator door, fed by the calls below).
        self.observability = Observability(name=self.name, chain=self.chain, ledger=self.ledger, status=self.status,
                                           now_ms=self.now_ms, tokens=None, log=self.log,
                                           thresholds=config.alerts)
        self.miner = Miner(config.mining_threads)
        self.watches = [RelayWatch(self._relay_client(a), self.name) for a in config.relays]
        self.observability.watches = self.watches
        self.capture = CaptureTask(self, self.ledger, self.key, self.params, self.miner, self.watches,
                                   config.capture_interval_s, config.min_peers, clock)
        # TLS: the peer links of a network with a network file, and remote operators.
        self.tls = TlsIdentity(config.data_dir, self.key,
                               self.params.members if config.network_file is not None else None)
        try:
            tokens = Tokens.load_or_create(config.data_dir)
        except (AccessError, OSError) as exc:
            raise NodeStartError(f"operator tokens: {exc}") from None
        self.clients = ClientSessions(self.chain, self.status, self.name, decode=port.decode_message, tokens=tokens)
        self.observability.tokens = tokens  # the dashboard's access rule is the API's
        # Peers prove their keys in the handshake; with a member list only members may be peers.
        self.gossip = ObservedGossip(chain=self.chain, node_key=self.key.public_key, sign=self.key.sign,
                                     name=self.name, port=config.port, peers=config.peers,
                                     members=self.params.members, ban_seconds=config.ban_seconds,
                                     redial_max_s=config.redial_max_s, decode=port.decode_message, tls=self.tls)
        self.observability.attach_gossip(self.gossip)  # configured peers: up or down, and since when
        # Finality (a network with members): vote if we are one, follow the others' votes either way.
        self.voter: Voter | None = None
        if self.params.members:
            self.voter = Voter(self.ledger, self.params, self.key, self.log, self.now_ms)
            self.ledger.defer_votes = True  # the voter stores a burst of peers' votes in one commit
            finality = self.gossip.attach_finality(self.voter)
            self.voter.broadcast_vote = finality.broadcast_vote
            self.voter.broadcast_evidence = finality.broadcast_evidence
            self.chain.after_blocks = self.voter.blocks_added
            self.voter.on_reorg = self._finality_reorg
        # Two doors: the peer port speaks only the peer protocol, the operator port only the API.
        self.peer_door = PeerDoor(config.host, config.port, identity=self.tls, max_inbound=config.max_inbound,
                                  inbound_peers=self.gossip.inbound_count, serve=self.gossip.accept, log=self.log)
        self.listener = self.peer_door.listener
        self.api = OperatorDoor(config.api_host, config.operator_port, identity=self.tls, serve=self.clients.serve,
                                log=self.log, path=config.api_socket, http_probe=self.observability.http_probe,
                                http=self.observability.serve_http)
        self.lag = LoopLagMonitor()
        self.clock_watch = ClockWatch()
        self._quiet_refusals = False  # block.rejected time-too-new at debug: the clock verdict said it
        self.chain.on_refused = self._refused_block
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
        return self.observability.relay_client(address.host, address.port, known_relays=known,
                                               relay_id=address.relay_id)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- running ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        where = ""
        try:
            await self.listener.start()
            for api in self.api.listeners:
                where = str(api.path) if api.path is not None else f"{api.host}:{api.port}"
                await api.start()
        except OSError as exc:
            failed = where if self.listener.listening else f"{self.config.host}:{self.config.port}"
            self.listener.stop()
            for api in self.api.listeners:
                api.stop()
            self.ledger.close()
            raise NodeStartError(f"cannot listen on {failed}: {exc.strerror or exc}") from None
        self.gossip.port = self.listener.port
        self.log.info("node.started", port=self.listener.port, api_port=self.api.port, tls=self.tls.peer_tls,
                      network=self.network, height=self.ledger.height,
                      hash=short_hash(self.ledger.tip.hash), node_key=self.key.public_key.hex(),
                      peers=[str(p) for p in self.config.peers], relays=[str(r) for r in self.config.relays])
        try:
            async with asyncio.TaskGroup() as tasks:
                jobs = [tasks.create_task(self.gossip.run()), tasks.create_task(self.capture.run()),
                        tasks.create_task(self.lag.run()), tasks.create_task(self.observability.monitor.run()),
                        tasks.create_task(self._watch_clock())]
                await stop.wait()
                self.log.info("node.stopping")
                self._stop_accepting()  # first: a stopping node takes no new peer nor operator
                for job in jobs:
                    job.cancel()
        finally:
            await self._shutdown()

    def _stop_accepting(self) -> None:
        """Close every listening socket (idempotent): new connections are refused from now on."""
        self.listener.stop()
        for api in self.api.listeners:
            api.stop()

    async def _shutdown(self) -> None:
        # Doors first, then what came through them: no peer arrives after the peers are closed.
        self._stop_accepting()
        self.miner.shutdown()
        await self.clients.close()
        await self.observability.close()  # every open page and event stream
        self.gossip.close()
        await self.listener.wait_closed()
        for watch in self.watches:
            await watch.client.close()
        self.ledger.close()
        self.log.info("node.stopped", height=self.ledger.height, hash=short_hash(self.ledger.tip.hash))

    # --- the chain view's reports ------------------------------------------------------------
    def _note_reorg(self, update: LedgerUpdate) -> None:
        displaced = sum(len(c.readings) for c in update.displaced)
        self.log.warning("chain.reorg", depth=len(update.result.disconnected), displaced=displaced,
                         height=self.ledger.height, hash=short_hash(self.ledger.tip.hash))
        self.capture.displaced.add(update.displaced)  # the one buffer: whole seals, verified
        self.observability.reorg(len(update.result.disconnected))

    def _tip_moved(self, tip_before: ChainEntry) -> None:
        self.miner.cancel()  # a better tip: whatever we were mining is built on the old one
        if self.voter is not None:
            # Once the handler that moved the tip has sent the block on: peers get the block
            # before our vote for it.
            asyncio.get_running_loop().call_soon(self.voter.tip_moved)
        if self.clients.has_subscribers:
            self.clients.publish(self.chain.joined_rows_since(tip_before))  # from the index
        self.observability.tip_moved(lambda: self.chain.joined_main_since(tip_before))

    def _finality_reorg(self, update: LedgerUpdate, tip_before: ChainEntry) -> None:
        """A vote or certificate moved the main chain to a branch with a higher justified checkpoint."""
        self._note_reorg(update)
        if self.chain.tip_moved_since(tip_before):
            self.gossip.announce_tip()

    def has_block(self, block_hash: bytes) -> bool:
        return self.chain.has_block(block_hash)

    # --- our own clock (clock.py) ---------------------------------------------------------------
    def _refused_block(self, reason: str, peer: str, block: Block) -> bool:
        """A peer's block was refused; True when it need not be logged loudly again."""
        if reason != "time-too-new":
            return False
        ahead_ms = block.header.time_ms - self.now_ms()
        self.clock_watch.refused(block.header.miner_key, ahead_ms, time.monotonic())
        # It becomes acceptable when our clock reaches its time less the rules' margin: until
        # then (bounded) a sync from that peer would fetch blocks only to refuse them again.
        wait_s = (ahead_ms - self.params.max_future_ms) / 1000
        self.gossip.hold_sync(peer, min(max(wait_s, SYNC_HOLD_MIN_S), SYNC_HOLD_MAX_S))
        quiet = self._quiet_refusals
        self._quiet_refusals = True  # the first is a warning; the clock verdict explains the rest
        self._report_clock()
        return quiet

    def _report_clock(self) -> None:
        change = self.clock_watch.update(time.monotonic())
        if change is None:
            return
        if isinstance(change, ClockOk):
            self._quiet_refusals = False
            self.log.info("node.clock_ok")
            return
        seconds = round(change.offset_ms / 1000, 1)
        self.log.warning("node.clock_off", offset_ms=change.offset_ms, source=change.source,
                         detail=f"this node's clock looks {abs(seconds)} s {'ahead' if seconds > 0 else 'behind'} "
                                f"(by its {change.source}); its blocks and its peers' cannot agree: check NTP")

    async def _watch_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            self.clock_watch.relays([w.client.clock_skew_ms for w in self.watches if w.state == "ok"])
            self._report_clock()

    # --- what the capture task asks of the node (capture.CaptureHost) ---------------------------
    def newest_reading_ms(self, relay_id: str) -> int | None:
        return self.chain.newest_reading_ms(relay_id)

    def connected_peers(self) -> int:
        return len(self.gossip.peers)

    def cut_off_s(self) -> float | None:
        """How long none of the configured peers has been ready (None: one is, or none is configured)."""
        alone_since = self.gossip.alone_since
        if not self.config.peers or alone_since is None:
            return None
        return time.monotonic() - alone_since

    def blocks_behind(self) -> int:
        """How many blocks the peer we are syncing from claims beyond our tip (0: not syncing)."""
        peer = self.gossip.sync_peer
        return 0 if peer is None else max(0, peer.height - self.ledger.height)

    def accept_own_block(self, block: Block, mined_ms: float) -> None:
        tip_before = self.ledger.tip
        update = self.chain.add_own_block(block)
        self.log.info("block.mined", height=block.height, hash=short_hash(block.hash), ms=mined_ms,
                      readings=len(block.capture.readings), relay_id=block.capture.relay_id,
                      nonce=block.header.nonce)
        self.observability.own_block(block, mined_ms)
        if update.result.status == "reorg":
            self._note_reorg(update)
        finality = getattr(update, "finality", None)
        if finality is not None and finality.reorg is not None:
            self._note_reorg(finality.reorg)
        self.gossip.spread([block], self.chain.tip_moved_since(tip_before))
        if self.voter is not None:
            self.voter.blocks_added([finality])

    # --- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        now = time.monotonic()
        return build_status(self.facts, now=now, port=self.listener.port, tip=self.ledger.tip,
                            peers=self.gossip.peers.values(), relays=[w.status() for w in self.watches],
                            mining=self.miner.busy, orphans=len(self.ledger.orphans),
                            clock=self.clock_watch.status(),
                            syncing=self.gossip.sync_peer is not None, loop_lag_ms=self.lag.summary(),
                            finality=None if self.voter is None else
                            {**self.voter.status(), "sent_bytes": self.gossip.finality.sent_bytes},
                            alerts=self.observability.active_alerts(),
                            configured_peers=self.observability.configured_peer_rows(now))


async def run_node(config: NodeConfig, stop: asyncio.Event) -> None:
    """Build and run one node until ``stop`` is set (the CLI's entry point)."""
    await Node(config).run(stop)
