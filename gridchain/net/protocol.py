"""One peer link's protocol state, with no sockets: the handshake, keepalive and what may be said. Pure.

``PeerProtocol`` is fed the messages a peer sends and the time, and answers with events for
the asyncio layer (gridchain.net.peer) to carry out: ``Send`` a message, the link is
``Ready`` (the handshake is done), or ``Deliver`` a message to the gossip logic. ``tick(now)``
says when a ping is due; ``deadline()`` is when the next tick must happen at the latest. A
peer that breaks the protocol makes a method raise ``ProtocolViolation``, whose cost (drop
or ban) gridchain.net.penalties decides. Time is only ever an argument, so every rule here
is unit-tested through two protocol objects wired to each other (tests/unit/test_peer_protocol.py).

The handshake: the dialler sends its hello; the listener checks it (same version, network
and genesis, not ourselves, then the node's own ``admit`` check: bans, duplicates) and
answers with its own hello; the dialler checks that one alike. A ``reject`` instead of a
hello names why the other side refused us. Afterwards pings are answered here, and the
messages with a meaning for gossip (tip, block, get_blocks, blocks, reject) are delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gridchain.consensus.errors import GridchainError
from gridchain.net.messages import PROTOCOL_VERSION, BlockMessage, Blocks, GetBlocks, Hello, Ping, Pong, Reject, Tip
from gridchain.net.penalties import LINK, REJECTED, Cost, cost_of

# A peer must say hello this fast; slowloris-style half-open connections are closed.
HANDSHAKE_TIMEOUT_S = 5.0
# Keepalive: ping after this much silence; close after IDLE_TIMEOUT_S with no whole frame at all.
PING_INTERVAL_S = 15.0
IDLE_TIMEOUT_S = 45.0
# The messages gossip handles once a link is ready (each by its ``on_<type>`` method).
DELIVERED = (Tip, BlockMessage, GetBlocks, Blocks, Reject)


class ProtocolViolation(GridchainError):
    """The peer broke the protocol (or refused us): the link closes, at the cost its reason carries.

    ``kind`` says how to read ``reason`` (see gridchain.net.penalties): a fault of the link,
    a consensus rule a block broke, or a refusal the peer sent us (never answered with a
    ``reject`` of our own).
    """

    def __init__(self, reason: str, detail: str = "", kind: str = LINK) -> None:
        super().__init__(reason, detail)
        self.kind = kind

    @property
    def cost(self) -> Cost:
        return cost_of(self.reason, self.kind)

    @property
    def reply(self) -> bool:
        return self.kind != REJECTED


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``message`` on the link."""

    message: object


@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake is done: the peer is ``hello``."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message for the gossip logic."""

    message: object


Event = Send | Ready | Deliver


def admit_all(hello: Hello) -> None:
    """The default node-level check of a hello: every peer is welcome."""


class PeerProtocol:
    """The state of one link: ``handshake`` until both hellos are accepted, then ``ready``."""

    def __init__(self, hello: Hello, *, inbound: bool, now: float,
                 admit: Callable[[Hello], None] = admit_all) -> None:
        self.local = hello  # ours: also what theirs is checked against
        self.inbound = inbound
        self.admit = admit  # raises ProtocolViolation for a peer the node will not take
        self.state = "handshake"
        self.remote: Hello | None = None
        self._started_at = now
        self._last_frame_at = now
        self._last_ping_at = now
        self._nonce = 0

    # --- the clock -----------------------------------------------------------------------
    def deadline(self) -> float:
        """When ``tick`` must run next at the latest (a timeout or a ping falls due)."""
        idle = self._last_frame_at + IDLE_TIMEOUT_S
        if self.state == "handshake":
            return min(idle, self._started_at + HANDSHAKE_TIMEOUT_S)
        return min(idle, max(self._last_frame_at, self._last_ping_at) + PING_INTERVAL_S)

    def tick(self, now: float) -> list[Event]:
        """A ping when the link has been silent long enough; raises when it has been silent too long."""
        if self.state == "handshake" and now >= self._started_at + HANDSHAKE_TIMEOUT_S:
            raise ProtocolViolation("handshake-timeout", f"no hello within {HANDSHAKE_TIMEOUT_S}s")
        if now >= self._last_frame_at + IDLE_TIMEOUT_S:
            raise ProtocolViolation("idle-timeout", f"no whole frame for {IDLE_TIMEOUT_S}s")
        if self.state == "ready" and now >= max(self._last_frame_at, self._last_ping_at) + PING_INTERVAL_S:
            self._last_ping_at = now
            self._nonce += 1
            return [Send(Ping(nonce=self._nonce))]
        return []

    # --- messages --------------------------------------------------------------------------
    def start(self) -> list[Event]:
        """What to send as the link opens: the dialler speaks first."""
        return [] if self.inbound else [Send(self.local)]

    def closed(self) -> ProtocolViolation | None:
        """The peer closed the link: a fault only while the handshake is unfinished."""
        if self.state == "handshake":
            return ProtocolViolation("closed", "closed during handshake")
        return None

    def receive(self, message: object, now: float) -> list[Event]:
        """Take one message from the peer (a whole frame arrived at ``now``)."""
        self._last_frame_at = now
        if self.state == "handshake":
            return self._receive_hello(message)
        if isinstance(message, Ping):
            return [Send(Pong(nonce=message.nonce))]
        if isinstance(message, Pong):
            return []  # any frame resets the idle timer; nothing else to do
        if isinstance(message, DELIVERED):
            return [Deliver(message)]
        raise ProtocolViolation("unexpected-message", f"{message.TYPE} from a peer")

    def _receive_hello(self, message: object) -> list[Event]:
        if isinstance(message, Reject):
            # The other side refused our hello (another network, ourselves, a duplicate...):
            # its code is the reason, and a dialler seeing "self" stops redialling.
            raise ProtocolViolation(message.code, message.detail, kind=REJECTED)
        if not isinstance(message, Hello):
            raise ProtocolViolation("no-hello", f"first message was {message.TYPE}")
        self._check(message)
        self.admit(message)
        self.remote = message
        self.state = "ready"
        return [Send(self.local), Ready(message)] if self.inbound else [Ready(message)]

    def _check(self, hello: Hello) -> None:
        local = self.local
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolViolation("bad-version", f"speaks {hello.version}, we speak {PROTOCOL_VERSION}")
        if hello.network != local.network or hello.genesis != local.genesis:
            raise ProtocolViolation("wrong-network", f"{hello.network} {hello.genesis.hex()[:12]}")
        if hello.node_key == local.node_key:
            raise ProtocolViolation("self", "connected to ourselves")
