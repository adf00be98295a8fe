"""The peer and sync protocol without sockets: two PeerProtocol objects wired to each other.

As h11 tests its connection through a ConnectionPair, a ``Pair`` here carries every message
one side sends to the other, with the time as an argument, so handshakes, keepalive and
timeouts run in microseconds and each rule is pinned to the exact moment it applies. Sync
runs the node-wide SyncState against an in-memory chain that answers ``get_blocks``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridchain.identity.keys import SigningKey
from gridchain.net import handshake, protocol, sync
from gridchain.net.messages import (
    MAX_BLOCKS_PER_MESSAGE, PROTOCOL_VERSION, Blocks, GetBlocks, Hello, HelloProof, Ping, Pong, Reject, Tip,
    blocks_frame, decode_message, encode_message,
)
from gridchain.net.penalties import BLOCK, FINALITY, LINK, REJECTED, Cost, cost_of
from gridchain.net.protocol import Deliver, PeerProtocol, ProtocolViolation, Ready, Send
from gridchain.net.sync import SyncState
from gridchain.wire.frames import encode_frame

GENESIS = b"\x00" * 32
PROOF = protocol.PROOF_REASON


def key_of(name: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(name.encode()).digest())


def hello(name: str, *, network: str = "test-net", genesis: bytes = GENESIS, key: bytes | None = None,
          version: int = PROTOCOL_VERSION, work: int = 1, nonce: bytes | None = None) -> Hello:
    """``name``'s hello with a fresh nonce, claiming ``key`` (default: ``name``'s own)."""
    return Hello(version=version, network=network, genesis=genesis,
                 node_key=key or key_of(name).public_key, listen_port=0, height=0, tip=GENESIS,
                 work=work, agent="test", name=name, nonce=os.urandom(32) if nonce is None else nonce)


class Pair:
    """A dialler and a listener joined by a perfect link; ``events`` holds what each side surfaced.

    Each side signs with the key of its hello's name unless ``sign_a``/``sign_b`` says otherwise
    (an impostor: it claims one key and holds another).
    """

    def __init__(self, dialler: Hello, listener: Hello, now: float = 0.0, admit=protocol.admit_all, *,
                 members: frozenset[bytes] | None = None, sign_a=None, sign_b=None,
                 admit_a=protocol.admit_all) -> None:
        self.a = PeerProtocol(dialler, inbound=False, now=now, sign=sign_a or key_of(dialler.name).sign,
                              members=members, admit=admit_a)
        self.b = PeerProtocol(listener, inbound=True, now=now, sign=sign_b or key_of(listener.name).sign,
                              members=members, admit=admit)
        self.events: dict[str, list] = {"a": [], "b": []}
        self.wire: list[tuple[str, object]] = []  # (sender, message) in the order sent
        self._queue: list[tuple[str, object]] = []
        self._take("a", self.a.start())

    def _take(self, side: str, events: list) -> None:
        for event in events:
            if isinstance(event, Send):
                self._queue.append((side, event.message))
                self.wire.append((side, event.message))
            else:
                self.events[side].append(event)

    def send(self, side: str, message: object) -> None:
        self._queue.append((side, message))

    def tick(self, side: str, now: float) -> None:
        self._take(side, getattr(self, side).tick(now))

    def pump(self, now: float) -> None:
        """Deliver everything in flight (and what it provokes), in order."""
        while self._queue:
            sender, message = self._queue.pop(0)
            receiver = "b" if sender == "a" else "a"
            self._take(receiver, getattr(self, receiver).receive(message, now))

    def kinds(self) -> list[tuple[str, type]]:
        return [(side, type(m)) for side, m in self.wire]


def refused(pair: Pair, now: float = 0.1) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        pair.pump(now)
    return info.value


# --- handshake -------------------------------------------------------------------------------

def test_both_keys_proven_then_both_sides_are_ready_with_the_other_hello():
    alice, bob = hello("alice"), hello("bob")
    pair = Pair(alice, bob)
    pair.pump(0.1)
    # The dialler speaks first; the listener's proof comes last and is its acceptance.
    assert pair.kinds() == [("a", Hello), ("b", Hello), ("a", HelloProof), ("b", HelloProof)]
    assert pair.events == {"a": [Ready(bob)], "b": [Ready(alice)]}
    assert pair.a.state == pair.b.state == "ready" and pair.a.proven and pair.b.proven
    assert pair.a.remote == bob and pair.b.remote == alice
    assert not pair.a.found_self and not pair.b.found_self


def test_the_proof_signs_the_documented_bytes():
    alice, bob = hello("alice"), hello("bob")
    pair = Pair(alice, bob)
    pair.pump(0.1)
    proofs = {side: m.signature for side, m in pair.wire if isinstance(m, HelloProof)}
    # docs/protocol.md, "Identity proof": tag, genesis, role, signer key, other key, signer
    # nonce, other nonce, binding length, binding.
    dialler = b"gridchain/hello-proof/v1" + GENESIS + b"\x01" + alice.node_key + bob.node_key \
        + alice.nonce + bob.nonce + b"\x00"
    listener = b"gridchain/hello-proof/v1" + GENESIS + b"\x02" + bob.node_key + alice.node_key \
        + bob.nonce + alice.nonce + b"\x00"
    assert len(dialler) == len(listener) == 186
    Ed25519PublicKey.from_public_bytes(alice.node_key).verify(proofs["a"], dialler)
    Ed25519PublicKey.from_public_bytes(bob.node_key).verify(proofs["b"], listener)
    frame = encode_frame(encode_message(HelloProof(signature=proofs["a"])))
    assert frame[4:] == msgpack.packb(["hello_proof", {"signature": proofs["a"]}], use_bin_type=True)
    assert decode_message(msgpack.unpackb(frame[4:])) == HelloProof(proofs["a"])


@pytest.mark.parametrize("change", [{"network": "other-net"}, {"genesis": b"\x01" * 32}],
                         ids=["network", "genesis"])
def test_hello_of_another_network_is_refused_and_only_dropped(change):
    pair = Pair(hello("alice", **change), hello("bob"))
    fault = refused(pair)
    assert fault.reason == "wrong-network" and fault.cost is Cost.DROP and fault.reply
    assert pair.b.state == "handshake" and [s for s, _ in pair.wire] == ["a"], "no hello in answer"


def test_newer_protocol_version_is_dropped_not_banned():
    fault = refused(Pair(hello("alice", version=PROTOCOL_VERSION + 1), hello("bob")))
    assert fault.reason == "bad-version" and fault.cost is Cost.DROP


def test_a_hello_without_a_nonce_cannot_be_proven():
    for pair in (Pair(hello("alice", nonce=b""), hello("bob")), Pair(hello("alice"), hello("bob", nonce=b""))):
        fault = refused(pair)
        assert fault.reason == PROOF and fault.cost is Cost.DROP
        assert not any(isinstance(m, HelloProof) for _, m in pair.wire), "nobody signs for an unprovable hello"


def test_a_forged_proof_is_refused_before_anything_uses_the_claimed_key():
    consulted = []
    alice = hello("mallory", key=key_of("alice").public_key)  # claims alice's key, holds mallory's
    pair = Pair(alice, hello("bob"), admit=consulted.append, sign_a=key_of("mallory").sign)
    fault = refused(pair)
    assert fault.reason == PROOF and fault.reply
    assert not pair.b.proven and pair.b.remote is None and consulted == [], "the node-level check never ran"
    assert cost_of(fault.reason, fault.kind, proven=pair.b.proven) is Cost.DROP
    assert pair.kinds() == [("a", Hello), ("b", Hello), ("a", HelloProof)], "the listener never proved itself"


def test_a_proof_from_another_session_is_refused():
    alice_key = key_of("alice")
    first = Pair(hello("alice"), hello("bob"))
    first.pump(0.1)
    alice_hello, alice_proof = [m for side, m in first.wire if side == "a"]
    # Mallory replays alice's hello and proof, byte for byte, on a new connection to bob:
    # bob's nonce is fresh, so the old signature covers the wrong statement.
    listener = PeerProtocol(hello("bob"), inbound=True, now=1.0, sign=key_of("bob").sign)
    assert listener.receive(alice_hello, 1.0) == [Send(listener.local)]
    with pytest.raises(ProtocolViolation) as info:
        listener.receive(alice_proof, 1.0)
    assert info.value.reason == PROOF and not listener.proven and alice_hello.node_key == alice_key.public_key
    # Nor does bob's own proof of the first session, reflected back as a dialler's (the role differs).
    bob_proof = [m for side, m in first.wire if side == "b"][1]
    again = PeerProtocol(hello("bob"), inbound=True, now=2.0, sign=key_of("bob").sign)
    again.receive(hello("mallory", key=first.b.local.node_key, nonce=first.b.local.nonce), 2.0)
    with pytest.raises(ProtocolViolation) as info:
        again.receive(bob_proof, 2.0)
    assert info.value.reason == PROOF and not again.found_self


def test_anything_but_the_proof_after_the_hellos_is_a_failed_proof():
    pair = Pair(hello("alice"), hello("bob"))
    pair.a.receive = lambda message, now: []  # the dialler's side says nothing more itself
    pair.pump(0.1)
    with pytest.raises(ProtocolViolation) as info:
        pair.b.receive(Tip(height=1, tip=GENESIS, work=5), 0.2)
    assert info.value.reason == PROOF and cost_of(info.value.reason, LINK, proven=False) is Cost.DROP


def test_an_echo_of_our_own_hello_is_refused_not_taken_for_ourselves():
    me = hello("me")
    dialler = PeerProtocol(me, inbound=False, now=0.0, sign=key_of("me").sign)
    assert dialler.start() == [Send(me)]
    with pytest.raises(ProtocolViolation) as info:
        dialler.receive(me, 0.1)  # the listener echoed our hello back, nonce and all
    assert info.value.reason == "echo" and info.value.cost is Cost.DROP
    assert not dialler.found_self and not dialler.proven


def test_our_key_with_a_fresh_nonce_but_no_proof_is_not_ourselves():
    me = hello("me")
    dialler = PeerProtocol(me, inbound=False, now=0.0, sign=key_of("me").sign)
    dialler.start()
    (ours,) = dialler.receive(hello("impostor", key=me.node_key), 0.1)  # our key, a nonce of its own
    assert isinstance(ours.message, HelloProof)
    # It reflects our own proof (signed as the dialler), or signs with its own key: neither verifies.
    for answer in (ours.message, HelloProof(key_of("impostor").sign(b"anything"))):
        attempt = PeerProtocol(me, inbound=False, now=0.0, sign=key_of("me").sign)
        attempt.start()
        attempt.receive(hello("impostor", key=me.node_key), 0.1)
        with pytest.raises(ProtocolViolation) as info:
            attempt.receive(answer, 0.2)
        assert info.value.reason == PROOF and not attempt.found_self
    with pytest.raises(ProtocolViolation) as info:
        dialler.receive(Reject(code="self", detail="trust me"), 0.2)
    assert info.value.kind == REJECTED and not dialler.found_self, "a refusal saying self decides nothing"


def test_a_real_self_connection_is_proven_on_both_sides():
    me_out, me_in = hello("me"), hello("me")  # one node: one key, a nonce per connection
    pair = Pair(me_out, me_in)
    fault = refused(pair)
    assert fault.reason == "self" and fault.kind == LINK and fault.reply and fault.cost is Cost.DROP
    assert pair.a.found_self and pair.b.found_self
    assert pair.kinds() == [("a", Hello), ("b", Hello), ("a", HelloProof), ("b", HelloProof)]
    assert pair.events == {"a": [], "b": []}, "neither side is ready with itself"
    with pytest.raises(ProtocolViolation) as told:
        pair.b.receive(Reject(code=fault.reason, detail=fault.detail), 0.2)
    assert told.value.reason == "self" and told.value.kind == REJECTED and not told.value.reply


def test_only_members_may_be_peers_and_only_after_their_proof():
    members = frozenset({key_of("alice").public_key, key_of("bob").public_key})
    ok = Pair(hello("alice"), hello("bob"), members=members)
    ok.pump(0.1)
    assert ok.a.state == ok.b.state == "ready"
    outsider = Pair(hello("carol"), hello("bob"), members=members)
    fault = refused(outsider)
    assert fault.reason == "not-a-member" and outsider.b.proven and fault.cost is Cost.DROP
    # A dialler refuses a listener that is not a member too, after the listener's proof.
    dialled = Pair(hello("alice"), hello("carol"), members=members)
    dialled.b.members = None  # carol takes anybody
    fault = refused(dialled)
    assert fault.reason == "not-a-member" and dialled.a.proven and dialled.a.state == "handshake"
    # A non-member claiming a member's key is a failed proof, not a member.
    claim = Pair(hello("carol", key=key_of("alice").public_key), hello("bob"), members=members,
                 sign_a=key_of("carol").sign)
    assert refused(claim).reason == PROOF


@pytest.mark.parametrize("reason", ["banned", "duplicate-peer"])
def test_an_unproven_claim_of_a_banned_or_connected_key_leaves_the_real_holder_alone(reason):
    alice_key = key_of("alice").public_key
    consulted: list[bytes] = []

    def admit(remote: Hello) -> None:
        consulted.append(remote.node_key)
        if reason == "duplicate-peer":
            return  # the real alice's second link would be judged here, with her proof in
        raise ProtocolViolation("banned", "node is banned")

    impostor = Pair(hello("mallory", key=alice_key), hello("bob"), admit=admit, sign_a=key_of("mallory").sign)
    fault = refused(impostor)
    assert fault.reason == PROOF and consulted == [], "neither ban nor duplicate rule saw the claim"
    real = Pair(hello("alice"), hello("bob"), admit=admit)
    if reason == "banned":
        assert refused(real).reason == "banned"
    else:
        real.pump(0.1)
        assert real.b.state == "ready"
    assert consulted == [alice_key]


def test_node_level_refusal_happens_after_the_proof_and_before_the_listener_proves_itself():
    def banned(remote: Hello) -> None:
        raise ProtocolViolation("banned", "node is banned")

    pair = Pair(hello("alice"), hello("bob"), admit=banned)
    fault = refused(pair)
    assert fault.reason == "banned" and pair.b.proven
    assert pair.kinds() == [("a", Hello), ("b", Hello), ("a", HelloProof)]
    assert pair.a.state == "handshake", "the dialler is never ready before the listener accepts it"


def test_the_proof_statement_refuses_malformed_parts():
    good = dict(genesis=GENESIS, role=handshake.DIALLER, signer_key=bytes(32), other_key=bytes(32),
                signer_nonce=bytes(32), other_nonce=bytes(32))
    assert len(handshake.proof_statement(**good, binding=b"\x07" * 32)) == 186 + 32
    for change in ({"role": 3}, {"signer_nonce": bytes(31)}, {"binding": bytes(65)}):
        with pytest.raises(ValueError):
            handshake.proof_statement(**{**good, **change})
    assert not handshake.verify_proof(bytes(64), **{**good, "role": 3})


def test_first_message_other_than_hello_is_a_breach():
    listener = PeerProtocol(hello("bob"), inbound=True, now=0.0, sign=key_of("bob").sign)
    with pytest.raises(ProtocolViolation) as info:
        listener.receive(Ping(nonce=1), 0.1)
    assert info.value.reason == "no-hello" and info.value.cost is Cost.BAN
    assert cost_of("no-hello", LINK, proven=listener.proven) is Cost.DROP, "but no key to ban: dropped"


def test_silence_before_the_handshake_ends_is_a_handshake_timeout():
    listener = PeerProtocol(hello("bob"), inbound=True, now=100.0, sign=key_of("bob").sign)
    assert listener.deadline() == 100.0 + protocol.HANDSHAKE_TIMEOUT_S
    assert listener.tick(100.0 + protocol.HANDSHAKE_TIMEOUT_S - 0.01) == []
    listener.receive(hello("alice"), 101.0)  # a hello, then no proof: the same clock runs on
    assert listener.deadline() == 100.0 + protocol.HANDSHAKE_TIMEOUT_S
    with pytest.raises(ProtocolViolation) as info:
        listener.tick(100.0 + protocol.HANDSHAKE_TIMEOUT_S)
    assert info.value.reason == "handshake-timeout" and info.value.cost is Cost.DROP


def test_close_during_handshake_is_a_fault_and_after_it_is_not():
    pair = Pair(hello("alice"), hello("bob"))
    assert pair.b.closed().reason == "closed"
    pair.pump(0.1)
    assert pair.a.closed() is None and pair.b.closed() is None


# --- a ready link ------------------------------------------------------------------------------

def ready_pair(now: float = 0.0) -> Pair:
    pair = Pair(hello("alice"), hello("bob"), now=now)
    pair.pump(now)
    pair.events = {"a": [], "b": []}
    pair.wire.clear()
    return pair


def test_pings_are_answered_and_gossip_messages_delivered():
    pair = ready_pair()
    tip = Tip(height=5, tip=b"\x05" * 32, work=9)
    for message in (Ping(nonce=7), tip, GetBlocks(locator=(GENESIS,), limit=10), Reject(code="x")):
        pair.send("a", message)
    pair.pump(1.0)
    assert ("b", Pong(nonce=7)) in pair.wire
    assert pair.events["b"] == [Deliver(tip), Deliver(GetBlocks(locator=(GENESIS,), limit=10)),
                                Deliver(Reject(code="x"))]
    assert pair.events["a"] == [], "a pong means nothing to gossip"


def test_votes_evidence_and_certificates_are_delivered_only_on_a_ready_link():
    from gridchain.consensus.finality import Certificate, Checkpoint, Evidence, Vote
    from gridchain.net.messages import CertificatesMessage, EvidenceMessage, VoteMessage
    one = Vote(b"\x01" * 32, Checkpoint(0, GENESIS), Checkpoint(1, b"\x02" * 32), b"\x03" * 64)
    two = Vote(b"\x01" * 32, Checkpoint(0, GENESIS), Checkpoint(1, b"\x04" * 32), b"\x05" * 64)
    messages = (VoteMessage(one), EvidenceMessage(Evidence.of(one, two)),
                CertificatesMessage((Certificate(one.source, one.target, ((one.voter, one.signature),)),)))
    pair = ready_pair()
    for message in messages:
        pair.send("a", message)
    pair.pump(1.0)
    assert pair.events["b"] == [Deliver(m) for m in messages]
    fresh = Pair(hello("alice"), hello("bob"), now=0.0)
    with pytest.raises(ProtocolViolation) as info:
        fresh.b.receive(messages[0], 0.1)  # before any hello: not a handshake message
    assert info.value.reason == "no-hello"


def test_a_second_hello_on_a_ready_link_is_a_breach():
    link = ready_pair().b
    assert link.receive(Pong(nonce=1), 1.0) == []  # an unasked-for pong is harmless
    with pytest.raises(ProtocolViolation) as info:
        link.receive(hello("again"), 1.0)
    assert info.value.reason == "unexpected-message" and info.value.cost is Cost.BAN


def test_keepalive_pings_after_silence_and_a_pong_keeps_the_link():
    pair = ready_pair(now=0.0)
    assert pair.a.deadline() == protocol.PING_INTERVAL_S
    pair.tick("a", protocol.PING_INTERVAL_S - 0.01)
    assert pair.wire == []
    pair.tick("a", protocol.PING_INTERVAL_S)
    assert pair.wire == [("a", Ping(nonce=1))]
    pair.pump(protocol.PING_INTERVAL_S + 0.01)  # the pong is a frame: the idle clock restarts
    assert pair.wire[-1] == ("b", Pong(nonce=1))
    pair.tick("a", protocol.IDLE_TIMEOUT_S + 1.0)  # would have timed out without the pong
    assert pair.a.state == "ready"


def test_an_unanswered_ping_makes_the_link_stale_then_closes_it_as_a_ping_timeout():
    pair = ready_pair(now=0.0)
    ping_at = protocol.PING_INTERVAL_S
    pair.tick("a", ping_at)  # the ping goes out; the link is cut: nothing comes back
    assert pair.wire == [("a", Ping(nonce=1))]
    assert pair.a.link_state(ping_at + protocol.PONG_STALE_S - 0.01) == "ready"
    assert pair.a.link_state(ping_at + protocol.PONG_STALE_S) == "stale"
    assert pair.a.deadline() == ping_at + protocol.PONG_TIMEOUT_S
    pair.tick("a", ping_at + protocol.PONG_TIMEOUT_S - 0.01)
    assert len(pair.wire) == 1, "one ping at a time: no second ping while the first is unanswered"
    with pytest.raises(ProtocolViolation) as info:
        pair.tick("a", ping_at + protocol.PONG_TIMEOUT_S)
    assert info.value.reason == "ping-timeout" and info.value.cost is Cost.DROP
    # A dead link is found within seconds of going quiet, long before the 45 s idle timeout.
    assert protocol.PING_INTERVAL_S + protocol.PONG_TIMEOUT_S <= 5.0 < protocol.IDLE_TIMEOUT_S


def test_a_late_pong_makes_a_stale_link_ready_again():
    pair = ready_pair(now=0.0)
    ping_at = protocol.PING_INTERVAL_S
    pair.tick("a", ping_at)
    late = ping_at + protocol.PONG_STALE_S + 0.5
    assert pair.a.link_state(late) == "stale"
    pair.pump(late)  # the pong arrives before the timeout
    assert pair.wire[-1] == ("b", Pong(nonce=1))
    assert pair.a.link_state(late) == "ready"
    assert pair.a.deadline() == late + protocol.PING_INTERVAL_S  # the next ping after a quiet second
    pair.tick("a", ping_at + protocol.PONG_TIMEOUT_S + 0.5)  # would have timed out without the pong
    assert pair.a.state == "ready"


def test_any_frame_after_the_ping_counts_as_an_answer():
    pair = ready_pair(now=0.0)
    ping_at = protocol.PING_INTERVAL_S
    pair.tick("a", ping_at)
    # No pong yet (it may be queued behind other frames), but a frame from b: the link is alive.
    tip = Tip(height=5, tip=b"\x05" * 32, work=9)
    assert pair.a.receive(tip, ping_at + 2.0) == [Deliver(tip)]
    assert pair.a.link_state(ping_at + 2.5) == "ready"
    assert pair.a.deadline() == ping_at + 2.0 + protocol.PONG_TIMEOUT_S
    with pytest.raises(ProtocolViolation) as info:
        pair.tick("a", ping_at + 2.0 + protocol.PONG_TIMEOUT_S)
    assert info.value.reason == "ping-timeout"


def test_bytes_of_a_large_frame_keep_the_link_but_not_past_the_idle_timeout():
    pair = ready_pair(now=0.0)
    pair.tick("a", protocol.PING_INTERVAL_S)  # the pong is queued behind a large frame at b
    now = protocol.PING_INTERVAL_S
    while now + 1.0 < protocol.IDLE_TIMEOUT_S:
        now += 1.0
        pair.a.heard(now)  # part of the large frame arrived: the link is alive
        pair.tick("a", now)
        assert pair.a.link_state(now) == "ready"
    with pytest.raises(ProtocolViolation) as info:  # but no whole frame for 45 s: a dripped frame
        pair.tick("a", protocol.IDLE_TIMEOUT_S)
    assert info.value.reason == "idle-timeout" and info.value.cost is Cost.DROP


def test_a_quiet_link_woken_late_gets_one_pings_chance_before_the_idle_timeout():
    pair = ready_pair(now=0.0)
    late = protocol.IDLE_TIMEOUT_S + 5.0  # the loop slept past the idle timeout (a stalled host)
    pair.tick("a", late)
    assert pair.wire == [("a", Ping(nonce=1))]
    pair.tick("a", late + protocol.PONG_STALE_S - 0.01)  # no idle-timeout while the ping may be answered
    pair.pump(late + 0.5)
    pair.tick("a", late + 0.6)
    assert pair.a.state == "ready"


def test_pings_wait_for_the_handshake():
    pair = Pair(hello("alice"), hello("bob"), now=0.0)  # the hellos are never delivered
    assert pair.a.link_state(protocol.HANDSHAKE_TIMEOUT_S - 0.1) == "handshake"
    pair.tick("a", protocol.HANDSHAKE_TIMEOUT_S - 0.1)
    assert [m for _, m in pair.wire if isinstance(m, Ping)] == []


# --- sync ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeBlock:
    height: int
    hash: bytes


def chain_of(count: int, tag: bytes = b"main") -> list[FakeBlock]:
    """Genesis and ``count`` blocks after it."""
    return [FakeBlock(0, GENESIS)] + [FakeBlock(h, hashlib.sha256(tag + h.to_bytes(8, "big")).digest())
                                      for h in range(1, count + 1)]


def serve(chain: list[FakeBlock], request: GetBlocks) -> Blocks:
    """What an honest peer holding ``chain`` answers (its main chain after the fork)."""
    index = {b.hash: b.height for b in chain}
    fork = next(index[h] for h in request.locator if h in index)
    after = chain[fork + 1:]
    return Blocks(blocks=tuple(after[:request.limit]), more=len(after) > request.limit)


def locator_of(chain: list[FakeBlock]) -> list[bytes]:
    return [b.hash for b in reversed(chain)]  # every hash, newest first: enough for a test


def test_sync_fetches_a_long_chain_in_batches_then_ends():
    theirs, ours = chain_of(2 * MAX_BLOCKS_PER_MESSAGE + 234), chain_of(0)
    state, peer, now = SyncState(), object(), 0.0
    assert state.wants(peer_work=len(theirs), our_work=len(ours))
    request, requests = state.request(peer, locator_of(ours), now), 0
    while request is not None:
        requests += 1
        now += 0.5
        answer = serve(theirs, request)
        assert state.answer_arrived(peer, answer, now)
        new = [b for b in answer.blocks if b.hash not in {x.hash for x in ours}]
        ours.extend(new)
        request = state.answer_handled(b"key", answer, len(new), len(theirs), len(ours), locator_of(ours), now)
    assert requests == 3 and ours == theirs
    assert state.peer is None and state.wants(peer_work=len(theirs) + 1, our_work=len(ours))


def test_only_one_peer_syncs_at_a_time_and_late_answers_are_ignored():
    state, first, second = SyncState(), object(), object()
    assert isinstance(state.request(first, [GENESIS], 0.0), GetBlocks)
    assert state.request(second, [GENESIS], 0.0) is None
    assert not state.wants(peer_work=10, our_work=1)
    assert not state.answer_arrived(second, Blocks(blocks=(), more=False), 1.0)


def test_unanswered_sync_request_stalls_after_the_timeout():
    state, peer = SyncState(), object()
    state.request(peer, [GENESIS], 100.0)
    assert state.stalled(100.0 + sync.SYNC_TIMEOUT_S) is None
    assert state.stalled(100.0 + sync.SYNC_TIMEOUT_S + 0.01) is peer
    assert state.peer is None and cost_of("sync-timeout") is Cost.BAN


def test_answers_that_bring_nothing_while_promising_more_are_cut_off():
    state, peer, now = SyncState(), object(), 0.0
    request = state.request(peer, [GENESIS], now)
    with pytest.raises(ProtocolViolation) as info:
        for count in range(1, sync.MAX_EMPTY_SYNC_ANSWERS + 1):
            empty = Blocks(blocks=(), more=True)
            assert state.answer_arrived(peer, empty, now)
            request = state.answer_handled(b"key", empty, 0, 10, 1, [GENESIS], now)
            assert count < sync.MAX_EMPTY_SYNC_ANSWERS and isinstance(request, GetBlocks)
    assert info.value.reason == "empty-sync" and info.value.cost is Cost.BAN


def test_a_side_branch_we_hold_moves_the_sync_on_from_the_last_block_sent():
    theirs = chain_of(5, b"theirs")
    state, peer = SyncState(), object()
    state.request(peer, [GENESIS], 0.0)
    answer = Blocks(blocks=tuple(theirs[1:4]), more=True)  # blocks we already hold
    assert state.answer_arrived(peer, answer, 1.0)
    request = state.answer_handled(b"key", answer, 0, 10, 1, [GENESIS], 1.0)
    assert request.locator[:2] == (theirs[3].hash, GENESIS), "goes on from the last block the peer sent"


def test_a_pipelined_sync_asks_ahead_keeps_one_answer_aside_and_stays_bounded():
    """As gossip runs it: each answer that promises more gets the next request at once, waits
    aside while the one before is stored, and never more than two are asked for or waiting."""
    theirs, ours = chain_of(5 * MAX_BLOCKS_PER_MESSAGE + 17), chain_of(0)
    state, peer, now = SyncState(), object(), 0.0
    wire = [state.request(peer, locator_of(ours), now)]  # requests the peer has yet to answer
    held, requests, most_out = None, 1, 0

    def store(answer):
        new = [b for b in answer.blocks if b.hash not in {x.hash for x in ours}]
        ours.extend(new)
        return state.answer_handled(b"key", answer, len(new), len(theirs), len(ours), locator_of(ours), now)

    while wire:
        now += 0.1
        answer = serve(theirs, wire.pop(0))
        assert state.answer_arrived(peer, answer, now)
        ahead = state.ask_ahead(peer, answer, locator_of(ours), now)
        if ahead is not None:
            wire.append(ahead)
            requests += 1
        most_out = max(most_out, len(wire) + (ahead is not None))  # asked for, and this one aside
        stored, held = held, answer if ahead is not None else None
        for each in [stored, None if ahead is not None else answer]:
            if each is not None:
                request = store(each)
                if request is not None:
                    wire.append(request)
                    requests += 1
    assert ours == theirs and requests == 6, "one request per batch, the same as one at a time"
    assert most_out == sync.PIPELINE_BATCHES, "one answer aside and one asked for, never more"
    assert state.peer is None


def test_a_batch_that_breaks_a_rule_drops_what_was_asked_after_it():
    theirs = chain_of(3 * MAX_BLOCKS_PER_MESSAGE)
    state, peer = SyncState(), object()
    first = serve(theirs, state.request(peer, [GENESIS], 0.0))
    assert state.answer_arrived(peer, first, 1.0)
    ahead = state.ask_ahead(peer, first, [GENESIS], 1.0)
    assert ahead.locator[0] == first.blocks[-1].hash, "goes on after the batch just received"
    assert state.request(peer, [GENESIS], 1.0) is None, "nothing more while an answer is due"
    # The first batch's 100th block breaks a (kept) rule: its prefix is stored, the rest not.
    state.cancel_ahead(first)
    kept = first.blocks[:100]
    request = state.answer_handled(b"key", first, len(kept), len(theirs), len(kept) + 1,
                                   [kept[-1].hash, GENESIS], 2.0)
    assert request.locator[:2] == (first.blocks[-1].hash, kept[-1].hash), "as without the request ahead"
    assert not state.answer_arrived(peer, serve(theirs, ahead), 3.0), "the answer asked ahead is dropped"
    assert state.answer_arrived(peer, serve(theirs, request), 3.5)


def test_an_answer_due_when_a_round_ends_is_not_taken_by_the_next_round():
    theirs = chain_of(2 * MAX_BLOCKS_PER_MESSAGE)
    state, peer = SyncState(), object()
    first = serve(theirs, state.request(peer, [GENESIS], 0.0))
    assert state.answer_arrived(peer, first, 1.0)
    assert state.ask_ahead(peer, first, [GENESIS], 1.0) is not None
    state.end()  # our store refused the batch: the peer's next tip resumes
    again = state.request(peer, [GENESIS], 2.0)
    assert again is not None and again.locator == (GENESIS,)
    late = Blocks(blocks=tuple(theirs[MAX_BLOCKS_PER_MESSAGE + 1:]), more=False)
    assert not state.answer_arrived(peer, late, 3.0), "due to the round that ended"
    assert state.answer_arrived(peer, first, 3.5)
    assert state.peer_gone(peer) and state.peer is None


# --- what faults cost, and the stored-bytes sync answer ------------------------------------------

def test_one_name_costs_by_its_kind():
    assert cost_of("bad-version", LINK) is Cost.DROP  # a newer peer
    assert cost_of("bad-version", BLOCK) is Cost.BAN  # a broken block
    assert cost_of("time-too-new", BLOCK) is Cost.KEEP  # clock skew is honest
    assert cost_of("bad-pow", REJECTED) is Cost.DROP  # the peer's complaint about us
    assert cost_of("some-new-close-reason") is Cost.DROP  # nothing is banned by accident
    # Nothing is held against a key its holder has not proven: a ban becomes a drop.
    assert cost_of("bad-field", LINK, proven=False) is Cost.DROP
    assert cost_of("bad-pow", BLOCK, proven=False) is Cost.DROP
    assert cost_of("bad-field", LINK, proven=True) is Cost.BAN
    # Finality: a forged or malformed vote from a proven member bans it; a vote for a block
    # we lack, or a conflict with what we finalized, costs nothing.
    assert cost_of("bad-vote-signature", FINALITY) is Cost.BAN
    assert cost_of("not-a-member", FINALITY) is Cost.BAN and cost_of("not-a-member", LINK) is Cost.DROP
    assert cost_of("short-certificate", FINALITY) is Cost.BAN
    assert cost_of("unknown-checkpoint", FINALITY) is Cost.KEEP
    assert cost_of("conflicts-finalized", FINALITY) is Cost.KEEP
    assert cost_of("conflicts-finalized", BLOCK) is Cost.KEEP  # refused; a restarted member's stale branch
    assert cost_of("bad-vote-signature", FINALITY, proven=False) is Cost.DROP


class _Fields:
    """Stands in for a block: Blocks only needs its wire array."""

    def __init__(self, fields: list) -> None:
        self.fields = fields

    def to_fields(self) -> list:
        return self.fields


@pytest.mark.parametrize("count,more", [(0, False), (1, True), (300, False)])
def test_blocks_frame_from_stored_bytes_is_the_encoded_message(count, more):
    fields = [[bytes([i % 256]) * 120, b"\x01" * 64, f"relay {i}", "sub", i, "miner", b"\x02" * (i % 7)]
              for i in range(count)]
    raw = [msgpack.packb(f, use_bin_type=True) for f in fields]
    expected = encode_frame(encode_message(Blocks(blocks=tuple(_Fields(f) for f in fields), more=more)))
    assert blocks_frame(raw, more) == expected


# --- the send queue and the tip rate limit (gridchain.net.peer, gridchain.net.gossip) -------------

class FakeTransport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.closing = True


class FakeWriter:
    """A link that records what the peer's writer puts on it."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default=None):
        return default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.transport.closing = True


class FakeFrames:
    buffered = 0

    class reader:  # noqa: N801 - stands in for the StreamReader the write loop wakes
        @staticmethod
        def feed_eof() -> None:
            pass


def fake_peer():
    from gridchain.net.peer import Peer
    writer = FakeWriter()
    peer = Peer(FakeFrames(), writer, handler=object(), hello=hello("alice"), inbound=False,
                address="10.0.0.2:5005", sign=key_of("alice").sign)
    return peer, writer


def tip_frame(height: int) -> bytes:
    return encode_frame(encode_message(Tip(height=height, tip=bytes([height]) * 32, work=height)))


async def test_queued_tips_collapse_to_the_newest_which_still_follows_the_blocks_before_it():
    peer, writer = fake_peer()
    block_1, block_2 = b"block-1", b"block-2"  # frames the queue carries as they are
    peer.send_frame(block_1)
    peer.send_tip(tip_frame(1))
    peer.send_tip(tip_frame(2))
    peer.send_frame(block_2)
    peer.send_tip(tip_frame(3))
    peer.close("shutdown")
    await peer._write_loop()
    assert writer.written == [block_1, block_2, tip_frame(3)]
    assert peer._queued_bytes == 0


async def test_nothing_is_written_once_the_other_side_has_closed():
    peer, writer = fake_peer()
    writer.transport.closing = True  # e.g. a TLS close_notify arrived
    for height in range(10):
        peer.send_frame(tip_frame(height))
    peer.close("peer-closed")
    await peer._write_loop()
    assert writer.written == []


class TipChain:
    network, genesis_hash = "test-net", GENESIS

    def tip_info(self):
        return 0, GENESIS, 10 ** 9  # more work than any tip below: no sync starts

    def locator(self):
        return [GENESIS]


@dataclass
class TipPeer:
    listen_address: str = "10.0.0.3:5006"
    node_key: bytes = b"k" * 32
    height: int = 0
    tip: bytes = b""
    work: int = 0


async def test_an_honest_burst_of_tips_is_collapsed_to_its_newest_and_not_called_a_flood():
    import asyncio

    from structlog.testing import capture_logs

    from gridchain.net import gossip
    node = gossip.Gossip(chain=TipChain(), node_key=b"n" * 32, sign=key_of("n").sign, name="n")
    peer = TipPeer()
    burst = gossip.TIP_BURST + gossip.TIP_HELD_MAX  # what a link stuck for a while could bring at once
    with capture_logs() as logs:
        for height in range(1, burst + 1):
            await node.on_tip(peer, Tip(height=height, tip=bytes([height % 256]) * 32, work=height))
        assert peer.height == gossip.TIP_BURST  # the rest wait for the bucket
        await asyncio.sleep(3 / gossip.TIP_RATE_PER_S)
    assert peer.height == burst, "the newest announcement of the burst counts"
    assert not [e for e in logs if e["event"] == "peer.rate_limited"]


async def test_a_flood_of_tips_is_dropped_unread_and_logged_once():
    import asyncio

    from structlog.testing import capture_logs

    from gridchain.net import gossip
    node = gossip.Gossip(chain=TipChain(), node_key=b"n" * 32, sign=key_of("n").sign, name="n")
    peer = TipPeer()
    with capture_logs() as logs:
        for height in range(1, 10_001):
            await node.on_tip(peer, Tip(height=height, tip=bytes([height % 256]) * 32, work=height))
        await asyncio.sleep(3 / gossip.TIP_RATE_PER_S)
    assert peer.height < 10_000 - 100, "a flood's newest announcement is not held for later"
    assert [e["reason"] for e in logs if e["event"] == "peer.rate_limited"] == ["tip-flood"]

