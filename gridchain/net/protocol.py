"""One peer link's protocol state, with no sockets: the handshake, keepalive and what may be said. Pure.

``PeerProtocol`` is fed the messages a peer sends and the time, and answers with events for
the asyncio layer (gridchain.net.peer) to carry out: ``Send`` a message, the link is
``Ready`` (the handshake is done), or ``Deliver`` a message to the gossip logic. ``tick(now)``
says when a ping is due; ``deadline()`` is when the next tick must happen at the latest. A
peer that breaks the protocol makes a method raise ``ProtocolViolation``, whose cost (drop
or ban) gridchain.net.penalties decides. Time is only ever an argument, so every rule here
is unit-tested through two protocol objects wired to each other (tests/unit/test_peer_protocol.py).

The handshake proves identities before any decision uses them (docs/protocol.md, Handshake):

    dialler  -> hello (its fresh nonce)
    listener -> hello (its fresh nonce)
    dialler  -> hello_proof (signed statement, gridchain.net.handshake)
    listener -> hello_proof, once it has verified the dialler's and accepted it
    (the dialler verifies it: the link is ready on both sides)

A hello is only checked for what holds whoever sent it (version, network and genesis, a
nonce, not our own nonce echoed back); nothing about its key is decided until the proof
for that key has verified. Then, in order: our own key (``self``: we reached ourselves),
not a member of the network (``not-a-member``), and the node's ``admit`` check (bans,
duplicates). A failed or missing proof is ``bad-handshake-proof`` and costs nothing
remembered against the claimed key (gridchain.net.penalties). A listener that finds the
dialler proved the listener's own key sends its proof all the same, so that the dialling
side, which is the one that decides whether to dial that address again, can prove it
reached itself; it then waits for the dialler's ``reject`` ``self``. A ``reject`` instead
of the next handshake message names why the other side refused us.

Afterwards pings are answered here, and the messages with a meaning for gossip (tip,
block, get_blocks, blocks, vote, evidence, certificates, reject) are delivered.

Keepalive finds a dead link in seconds, not when TCP gives up (its retransmission backoff
doubles into minutes, and a silent cut sends no reset): after PING_INTERVAL_S with nothing
heard the link is pinged; a pong overdue by PONG_STALE_S makes the link ``stale`` (shown in
``status``, still open), one overdue by PONG_TIMEOUT_S closes it as ``ping-timeout`` and the
dialler redials at once. Anything heard in the meantime counts as an answer: a whole frame,
or bytes of one still arriving (``heard``), since a pong may queue behind a large frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gridchain.consensus.errors import GridchainError
from gridchain.net import handshake
from gridchain.net.messages import (
    PROTOCOL_VERSION, BlockMessage, Blocks, CertificatesMessage, EvidenceMessage, GetBlocks, Hello, HelloProof, Ping,
    Pong, Reject, Tip, VoteMessage,
)
from gridchain.net.penalties import LINK, REJECTED, Cost, cost_of

# The whole handshake (hellos and proofs) must end this fast; half-open connections are closed.
HANDSHAKE_TIMEOUT_S = 5.0
# Keepalive: ping after this much silence. A ping is a 14-byte frame, and a link that
# carries anything else (a block a second, tips) needs none; one second keeps detection short.
PING_INTERVAL_S = 1.0
# A pong this late marks the link ``stale``: a live peer answers within a round trip and an
# event-loop turn (milliseconds on a LAN, well under a second across a continent).
PONG_STALE_S = 1.0
# A pong this late closes the link (``ping-timeout``): room for two TCP retransmissions of a
# lost segment on a lossy WAN link (RTO ~0.8 s, then 1.6 s) or a peer's event loop held by a
# deep reorg, yet a cut is found ~4 s after it began, well before the partition heals.
PONG_TIMEOUT_S = 3.0
# No whole frame at all for this long closes the link (``idle-timeout``), even if bytes
# trickle in: a frame dripped a byte at a time holds no connection for longer.
IDLE_TIMEOUT_S = 45.0
# The messages gossip handles once a link is ready (each by its ``on_<type>`` method).
DELIVERED = (Tip, BlockMessage, GetBlocks, Blocks, VoteMessage, EvidenceMessage, CertificatesMessage, Reject)
PROOF_REASON = "bad-handshake-proof"  # a claimed key the peer did not prove


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
    """The default node-level check of a proven hello: every peer is welcome."""


class PeerProtocol:
    """The state of one link: ``handshake`` until both keys are proven and accepted, then ``ready``.

    ``hello`` is ours, with this connection's fresh nonce; ``sign`` signs with the key it
    names. ``members`` None takes any key (an open network); otherwise only those keys may
    be peers. ``binding`` is the channel binding both proofs cover (empty on plaintext).
    """

    def __init__(self, hello: Hello, *, inbound: bool, now: float, sign: Callable[[bytes], bytes],
                 admit: Callable[[Hello], None] = admit_all, members: frozenset[bytes] | None = None,
                 binding: bytes = b"") -> None:
        self.local = hello  # ours: also what theirs is checked against
        self.inbound = inbound
        self.sign = sign
        self.admit = admit  # raises ProtocolViolation for a proven peer the node will not take
        self.members = members
        self.binding = binding
        self.state = "handshake"
        self.claimed: Hello | None = None  # their hello, before its key is proven
        self.remote: Hello | None = None  # their hello, proven and accepted (set when ready)
        self.proven = False  # their proof verified: faults from now on are held against their key
        self.found_self = False  # their proof verified under our own key: we reached ourselves
        self._awaiting = "hello"  # then "proof", then (listener reached by itself) "self"
        self._started_at = now
        self._last_frame_at = now
        self._heard_at = now  # the last whole frame, or the last bytes of a frame in progress
        self._ping_sent_at: float | None = None  # the unanswered ping's time (None: none out)
        self._nonce = 0

    # --- the clock -----------------------------------------------------------------------
    def deadline(self) -> float:
        """When ``tick`` must run next at the latest (a timeout or a ping falls due)."""
        idle = self._idle_at()
        if self.state == "handshake":
            return min(idle, self._started_at + HANDSHAKE_TIMEOUT_S)
        if self._ping_sent_at is None:
            return min(idle, self._heard_at + PING_INTERVAL_S)
        return min(idle, self._waiting_since() + PONG_TIMEOUT_S)

    def tick(self, now: float) -> list[Event]:
        """A ping when the link has been silent long enough; raises when it has been silent too long."""
        if self.state == "handshake" and now >= self._started_at + HANDSHAKE_TIMEOUT_S:
            raise ProtocolViolation("handshake-timeout", f"handshake unfinished after {HANDSHAKE_TIMEOUT_S}s")
        idle = now >= self._idle_at()
        if self.state != "ready" or self._ping_sent_at is not None:
            if idle:
                raise ProtocolViolation("idle-timeout", f"no whole frame for {IDLE_TIMEOUT_S}s")
            if self._ping_sent_at is not None and now >= self._waiting_since() + PONG_TIMEOUT_S:
                raise ProtocolViolation("ping-timeout", f"ping {self._nonce} unanswered for {PONG_TIMEOUT_S}s: "
                                        f"the link is dead")
            return []
        if now >= self._heard_at + PING_INTERVAL_S:
            # Due even when the idle timeout is too: a quiet ready link gets one ping's chance.
            self._ping_sent_at = now
            self._nonce += 1
            return [Send(Ping(nonce=self._nonce))]
        if idle:  # bytes keep coming but no whole frame: a frame dripped a byte at a time
            raise ProtocolViolation("idle-timeout", f"no whole frame for {IDLE_TIMEOUT_S}s")
        return []

    def heard(self, now: float) -> None:
        """Bytes of a frame arrived (not yet whole): the link is alive, though no frame came."""
        self._heard_at = max(self._heard_at, now)

    def link_state(self, now: float) -> str:
        """``handshake``, ``ready``, or ``stale``: ready, but our ping has gone unanswered too long."""
        if self.state == "ready" and self._ping_sent_at is not None \
                and now >= self._waiting_since() + PONG_STALE_S:
            return "stale"
        return self.state

    def _idle_at(self) -> float:
        """When the idle timeout falls due: a ping sent just before gets PONG_STALE_S to be answered."""
        at = self._last_frame_at + IDLE_TIMEOUT_S
        return at if self._ping_sent_at is None else max(at, self._ping_sent_at + PONG_STALE_S)

    def _waiting_since(self) -> float:
        """Since when an answer to the ping is awaited: the ping, or anything heard after it."""
        return max(self._ping_sent_at, self._heard_at)

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
        self._heard_at = max(self._heard_at, now)
        if self.state == "handshake":
            return self._receive_handshake(message)
        if isinstance(message, Ping):
            return [Send(Pong(nonce=message.nonce))]
        if isinstance(message, Pong):
            if message.nonce == self._nonce:
                self._ping_sent_at = None  # answered: the next ping after PING_INTERVAL_S of silence
            return []  # any frame resets the idle timer; nothing else to do
        if isinstance(message, DELIVERED):
            return [Deliver(message)]
        raise ProtocolViolation("unexpected-message", f"{message.TYPE} from a peer")

    # --- the handshake ------------------------------------------------------------------------
    def _receive_handshake(self, message: object) -> list[Event]:
        if isinstance(message, Reject):
            # The other side refused us (another network, a duplicate, our proof...): its
            # code is the reason. Only ever logged: a refusal decides nothing here, not even
            # "self" (the dialler proves that itself).
            raise ProtocolViolation(message.code, message.detail, kind=REJECTED)
        if self._awaiting == "hello":
            return self._receive_hello(message)
        if self._awaiting == "self":
            raise ProtocolViolation("self", "connected to ourselves")
        return self._receive_proof(message)

    def _receive_hello(self, message: object) -> list[Event]:
        if not isinstance(message, Hello):
            raise ProtocolViolation("no-hello", f"first message was {message.TYPE}")
        self.claimed = message  # named in logs even if refused; decides nothing until proven
        self._check(message)
        self._awaiting = "proof"
        # The listener answers with its hello; the dialler, having both nonces now, proves first.
        return [Send(self.local)] if self.inbound else [Send(self._proof())]

    def _check(self, hello: Hello) -> None:
        """What a hello says that holds whoever sent it: nothing here trusts its key."""
        local = self.local
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolViolation("bad-version", f"speaks {hello.version}, we speak {PROTOCOL_VERSION}")
        if hello.network != local.network or hello.genesis != local.genesis:
            raise ProtocolViolation("wrong-network", f"{hello.network} {hello.genesis.hex()[:12]}")
        if len(hello.nonce) != handshake.NONCE_SIZE:
            raise ProtocolViolation(PROOF_REASON, "hello without a nonce: its key cannot be proven")
        if hello.nonce == local.nonce:
            # Our own hello came back (an echo, or a replay of it): never taken for ourselves.
            raise ProtocolViolation("echo", "the hello carries our own nonce")

    def _receive_proof(self, message: object) -> list[Event]:
        claimed = self.claimed
        if not isinstance(message, HelloProof):
            raise ProtocolViolation(PROOF_REASON, f"{message.TYPE} where the proof of its key belongs")
        if not handshake.verify_proof(message.signature, **self._statement(theirs=True)):
            raise ProtocolViolation(PROOF_REASON, f"no valid proof for key {claimed.node_key.hex()[:16]}")
        self.proven = True
        if claimed.node_key == self.local.node_key:
            self.found_self = True
            if self.inbound:
                # Our own key, proven by the dialler: it is us. Prove it back so the dialling
                # side can tell this address is its own, and wait for its reject.
                self._awaiting = "self"
                return [Send(self._proof())]
            raise ProtocolViolation("self", "connected to ourselves")
        if self.members is not None and claimed.node_key not in self.members:
            raise ProtocolViolation("not-a-member", f"key {claimed.node_key.hex()[:16]} is not in the network file")
        self.admit(claimed)
        self.remote = claimed
        self.state = "ready"
        # The listener's proof is also its acceptance: a dialler is never ready before it.
        return [Send(self._proof()), Ready(claimed)] if self.inbound else [Ready(claimed)]

    def _statement(self, *, theirs: bool) -> dict:
        """The proof statement of one side of this connection (ours, or theirs to verify)."""
        ours_role, their_role = (handshake.LISTENER, handshake.DIALLER) if self.inbound else \
            (handshake.DIALLER, handshake.LISTENER)
        local, claimed = self.local, self.claimed
        signer, other = (claimed, local) if theirs else (local, claimed)
        return {"genesis": local.genesis, "role": their_role if theirs else ours_role,
                "signer_key": signer.node_key, "other_key": other.node_key, "signer_nonce": signer.nonce,
                "other_nonce": other.nonce, "binding": self.binding}

    def _proof(self) -> HelloProof:
        return HelloProof(signature=self.sign(handshake.proof_statement(**self._statement(theirs=False))))
