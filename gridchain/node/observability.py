"""What the node shows its operator beyond the API: the web dashboard, Prometheus metrics, alerts.

Built by the composition root (node.py) around the parts it already has, and fed from what
happens there: each block accepted (own, pushed by a peer, or in a sync batch) or refused,
each reorg, the time each own block took to mine, every relay signature failure, every tip
move (whose joined blocks go to the open dashboards). The gauges (heights, peers and relays
by state, loop lag, store size) are read from the status map at scrape time. The alert loop
(gridchain.web.monitor) observes the node every few seconds; its edges are the
``alert.raised`` / ``alert.cleared`` events, the ``gridchain_alerts`` gauge, the ``alerts``
list in ``status`` and the dashboard's banner.

HTTP reaches the dashboard through the operator door (gridchain.node.doors), under the
operator API's rule (gridchain.api.access, docs/security.md "Operator access"): the read role
is needed; a connection from the node's own host has it without a token, one from another
host needs TLS and a token, given as ``Authorization: Bearer <token>`` or ``?token=``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from gridchain.api.access import Tokens
from gridchain.consensus.block import Block
from gridchain.ledger.ledger import Ledger
from gridchain.net.gossip import Gossip, ReceiveResult
from gridchain.net.peer import Peer
from gridchain.node.chain_view import LedgerView
from gridchain.node.status import ConfiguredPeerBook, configured_links
from gridchain.relay.client import RelayClient, RelayError
from gridchain.web.alerts import SIGNATURE_REASONS, AlertBook, Observation, Thresholds, observation_from_status
from gridchain.web.http import HttpError, Request
from gridchain.web.metrics import Metrics
from gridchain.web.monitor import AlertMonitor
from gridchain.web.server import Dashboard, looks_like_http, serve_http

TOKEN_QUERY = "token"  # ?token=<hex>: what a browser can send on a link and on an EventSource
# Files of the page itself (code shipped in the package, nothing of the node's): over TLS they
# load without a token, so that the page a remote operator opened with ?token= can start.
PUBLIC_PREFIX = "/static/"


class ObservedLedgerView(LedgerView):
    """The node's chain view, reporting what peers' blocks did to the node's metrics."""

    on_received: Callable[[list[Block], bool, ReceiveResult], None] | None = None

    async def receive_blocks(self, blocks: list[Block], peer: str, via_sync: bool, *args, **kwargs) -> ReceiveResult:
        result = await super().receive_blocks(blocks, peer, via_sync, *args, **kwargs)
        if self.on_received is not None:
            self.on_received(blocks, via_sync, result)
        return result


class ObservedGossip(Gossip):
    """The node's gossip, reporting each ready link that comes or goes (so that how long a
    configured peer has been up or down is known to the moment, not to the next look)."""

    on_links_changed: Callable[[], None] | None = None

    async def on_peer_ready(self, peer: Peer) -> None:
        try:
            await super().on_peer_ready(peer)
        finally:
            self._links_changed()

    async def on_peer_closed(self, peer: Peer, reason: str, ban: bool) -> None:
        try:
            await super().on_peer_closed(peer, reason, ban)
        finally:
            self._links_changed()

    def _links_changed(self) -> None:
        if self.on_links_changed is not None:
            self.on_links_changed()


class CountingRelayClient(RelayClient):
    """A relay client that reports each signature or key failure of what the relay sent."""

    on_signature_failure: Callable[[RelayClient], None] | None = None

    async def read(self, *args, **kwargs):
        try:
            return await super().read(*args, **kwargs)
        except RelayError as exc:
            self._note(exc)
            raise

    async def info(self, *args, **kwargs):
        try:
            return await super().info(*args, **kwargs)
        except RelayError as exc:
            self._note(exc)
            raise

    def _note(self, exc: RelayError) -> None:
        if exc.reason in SIGNATURE_REASONS and self.on_signature_failure is not None:
            self.on_signature_failure(self)


class Observability:
    """One node's metrics, alert book, dashboard and alert loop, and the calls that feed them."""

    def __init__(self, *, name: str, chain: LedgerView, ledger: Ledger, status: Callable[[], dict],
                 now_ms: Callable[[], int], tokens: Tokens | None, log,
                 thresholds: Thresholds = Thresholds(), monotonic: Callable[[], float] = time.monotonic) -> None:
        self.chain = chain
        self.ledger = ledger
        self.status = status
        self.now_ms = now_ms
        self.monotonic = monotonic
        self.tokens = tokens
        self.log = log
        self.gossip: Gossip | None = None  # attached once built (attach_gossip: configured peers and their links)
        self.peer_book = ConfiguredPeerBook((), monotonic())
        self.watches: list = []  # the node's RelayWatch list (signature failures by relay)
        self.signature_failures: dict[str, int] = {}
        self._gaps: tuple[object, list] | None = None  # (tip hash, the store's gaps on it)
        self.metrics = Metrics(status, ledger.store.path, configured_peers=self.configured_peers)
        self.alerts = AlertBook(thresholds)
        self.dashboard = Dashboard(chain, status, metrics=self.metrics, alerts=self.alerts, name=name)
        self.monitor = AlertMonitor(self.alerts, self.observe, metrics=self.metrics, dashboard=self.dashboard,
                                    logger=log)
        if isinstance(chain, ObservedLedgerView):
            chain.on_received = self._received

    # --- what the node reports ---------------------------------------------------------------
    def _received(self, blocks: list[Block], via_sync: bool, result: ReceiveResult) -> None:
        now = self.now_ms()
        for block in result.accepted:
            propagation = None if via_sync else (now - block.header.time_ms) / 1000
            self.metrics.on_block_accepted(len(block.capture.readings), "sync" if via_sync else "peer", propagation)
        if result.invalid is not None:
            self.metrics.on_block_rejected(result.invalid[0])

    def own_block(self, block: Block, mined_ms: float) -> None:
        self.metrics.on_block_mined(mined_ms / 1000)
        self.metrics.on_block_accepted(len(block.capture.readings), "own")

    def reorg(self, depth: int) -> None:
        self.metrics.on_reorg(depth)

    def tip_moved(self, joined: Callable[[], list[tuple[Block, int]]]) -> None:
        """The main chain changed: open dashboards get its new blocks (read only if one is open)."""
        if self.dashboard.hub.subscribers:
            self.dashboard.publish_blocks(joined())

    def relay_client(self, host: str, port: int, **options) -> CountingRelayClient:
        client = CountingRelayClient(host, port, **options)
        client.on_signature_failure = self._signature_failure
        return client

    def _signature_failure(self, client: RelayClient) -> None:
        watch = next((w for w in self.watches if w.client is client), None)
        relay = (watch.relay_id if watch is not None else None) or client.address
        self.signature_failures[relay] = self.signature_failures.get(relay, 0) + 1
        self.metrics.on_relay_signature_failure(relay)

    # --- configured peers ---------------------------------------------------------------------
    def attach_gossip(self, gossip: Gossip) -> None:
        """Watch ``gossip``'s configured peers: down since now until a link to one is up."""
        self.gossip = gossip
        self.peer_book = ConfiguredPeerBook(gossip.configured, self.monotonic())
        if isinstance(gossip, ObservedGossip):
            gossip.on_links_changed = self.links_changed

    def links_changed(self, now: float | None = None) -> None:
        """Look at the ready links (a link came or went): the peer book's times are exact."""
        if self.gossip is not None:
            self.peer_book.observe(configured_links(self.gossip.configured, self.gossip.peers.values()),
                                   self.monotonic() if now is None else now)

    def configured_peers(self) -> dict[str, bool]:
        """Each configured peer's address and whether a ready link to it is up."""
        self.links_changed()
        return self.peer_book.connected()

    def configured_peer_rows(self, now: float) -> list[dict]:
        """``status["configured_peers"]`` at ``now`` (monotonic)."""
        self.links_changed(now)
        return self.peer_book.rows(now)

    # --- what the alert loop sees ------------------------------------------------------------
    def observe(self) -> Observation:
        status = self.status()
        equivocators = [e.get("member") or e.get("member_key", "?")
                        for e in (status.get("finality") or {}).get("evidence", ())]
        obs = observation_from_status(status, self.now_ms(), gaps=self._main_gaps(), equivocators=equivocators,
                                      signature_failures=self.signature_failures)
        rows = status.get("configured_peers", ())  # the peer book's, as status shows them
        return dataclasses.replace(obs, configured_peers={r["address"]: r["connected"] for r in rows},
                                   peers_down_s={r["address"]: r["since_s"] for r in rows if not r["connected"]})

    def _main_gaps(self) -> list:
        tip = self.ledger.tip.hash
        if self._gaps is None or self._gaps[0] != tip:  # gaps change only with the main chain
            self._gaps = (tip, self.ledger.gaps())
        return self._gaps[1]

    def active_alerts(self) -> list[dict]:
        return [alert.as_dict() for alert in self.alerts.active()]

    # --- HTTP on the operator door -----------------------------------------------------------
    @staticmethod
    def http_probe(first: bytes) -> bool:
        return looks_like_http(first)

    async def serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b"",
                         *, local: bool = False, tls: bool = False) -> None:
        await serve_http(reader, writer, self.dashboard, first,
                         authorize=lambda request: self.authorize(request, local=local, tls=tls))

    def authorize(self, request: Request, *, local: bool, tls: bool) -> bool:
        """The operator API's rule for the read role (raises HttpError saying what is missing)."""
        if not local and not tls:  # a token must never cross the network in clear
            raise HttpError("tls-required", "from another host the dashboard is served over TLS (https://)", 403)
        token = bearer_token(request)
        if token is not None:
            if self.tokens is None or self.tokens.role_of(token) is None:
                raise HttpError("bad-token", "no role has this token", 403)
            return True
        if local or request.path.startswith(PUBLIC_PREFIX):
            return True
        raise HttpError("token-required", "from another host add ?token=<read token> or an "
                        "Authorization: Bearer header", 403)

    async def close(self) -> None:
        await self.dashboard.close()


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, else of ``?token=``; None if neither."""
    header = request.header("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = request.query.get(TOKEN_QUERY)
    return value if value else None
