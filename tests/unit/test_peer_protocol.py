"""The peer and sync protocol without sockets: two PeerProtocol objects wired to each other.

As h11 tests its connection through a ConnectionPair, a ``Pair`` here carries every message
one side sends to the other, with the time as an argument, so handshakes, keepalive and
timeouts run in microseconds and each rule is pinned to the exact moment it applies. Sync
runs the node-wide SyncState against an in-memory chain that answers ``get_blocks``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
import pytest

from gridchain.net import protocol, sync
from gridchain.net.messages import (
    MAX_BLOCKS_PER_MESSAGE, PROTOCOL_VERSION, Blocks, GetBlocks, Hello, Ping, Pong, Reject, Tip, blocks_frame,
    encode_message,
)
from gridchain.net.penalties import BLOCK, LINK, REJECTED, Cost, cost_of
from gridchain.net.protocol import Deliver, PeerProtocol, ProtocolViolation, Ready, Send
from gridchain.net.sync import SyncState
from gridchain.wire.frames import encode_frame

GENESIS = b"\x00" * 32


def hello(name: str, *, network: str = "test-net", genesis: bytes = GENESIS, key: bytes | None = None,
          version: int = PROTOCOL_VERSION, work: int = 1) -> Hello:
    return Hello(version=version, network=network, genesis=genesis,
                 node_key=key or hashlib.sha256(name.encode()).digest(), listen_port=0, height=0, tip=GENESIS,
                 work=work, agent="test", name=name)


class Pair:
    """A dialler and a listener joined by a perfect link; ``events`` holds what each side surfaced."""

    def __init__(self, dialler: Hello, listener: Hello, now: float = 0.0, admit=protocol.admit_all) -> None:
        self.a = PeerProtocol(dialler, inbound=False, now=now)
        self.b = PeerProtocol(listener, inbound=True, now=now, admit=admit)
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


# --- handshake -------------------------------------------------------------------------------

def test_handshake_makes_both_sides_ready_with_the_other_hello():
    alice, bob = hello("alice"), hello("bob")
    pair = Pair(alice, bob)
    pair.pump(0.1)
    assert [type(m) for _, m in pair.wire] == [Hello, Hello]  # the dialler speaks first
    assert pair.events == {"a": [Ready(bob)], "b": [Ready(alice)]}
    assert pair.a.state == pair.b.state == "ready"
    assert pair.a.remote == bob and pair.b.remote == alice


@pytest.mark.parametrize("change", [{"network": "other-net"}, {"genesis": b"\x01" * 32}],
                         ids=["network", "genesis"])
def test_hello_of_another_network_is_refused_and_only_dropped(change):
    pair = Pair(hello("alice", **change), hello("bob"))
    with pytest.raises(ProtocolViolation) as info:
        pair.pump(0.1)
    assert info.value.reason == "wrong-network" and info.value.cost is Cost.DROP and info.value.reply
    assert pair.b.state == "handshake" and [s for s, _ in pair.wire] == ["a"], "no hello in answer"


def test_newer_protocol_version_is_dropped_not_banned():
    pair = Pair(hello("alice", version=PROTOCOL_VERSION + 1), hello("bob"))
    with pytest.raises(ProtocolViolation) as info:
        pair.pump(0.1)
    assert info.value.reason == "bad-version" and info.value.cost is Cost.DROP


def test_self_connection_is_refused_and_the_dialler_learns_why():
    me = hello("me")
    pair = Pair(me, me)
    with pytest.raises(ProtocolViolation) as refused:
        pair.pump(0.1)
    assert refused.value.reason == "self" and refused.value.cost is Cost.DROP
    # The listener answers with a reject carrying the reason; the dialler sees it as the
    # other side's refusal: same reason (so it stops redialling), never answered, never a ban.
    with pytest.raises(ProtocolViolation) as told:
        pair.a.receive(Reject(code=refused.value.reason, detail=refused.value.detail), 0.2)
    assert told.value.reason == "self" and told.value.kind == REJECTED
    assert not told.value.reply and told.value.cost is Cost.DROP


def test_node_level_refusal_happens_before_the_listener_says_hello():
    def banned(remote: Hello) -> None:
        raise ProtocolViolation("banned", "node is banned")

    pair = Pair(hello("alice"), hello("bob"), admit=banned)
    with pytest.raises(ProtocolViolation, match="banned"):
        pair.pump(0.1)
    assert [s for s, _ in pair.wire] == ["a"]


def test_first_message_other_than_hello_is_a_breach():
    listener = PeerProtocol(hello("bob"), inbound=True, now=0.0)
    with pytest.raises(ProtocolViolation) as info:
        listener.receive(Ping(nonce=1), 0.1)
    assert info.value.reason == "no-hello" and info.value.cost is Cost.BAN


def test_silence_before_hello_is_a_handshake_timeout():
    listener = PeerProtocol(hello("bob"), inbound=True, now=100.0)
    assert listener.deadline() == 100.0 + protocol.HANDSHAKE_TIMEOUT_S
    assert listener.tick(100.0 + protocol.HANDSHAKE_TIMEOUT_S - 0.01) == []
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


def test_no_frame_for_the_idle_timeout_closes_the_link():
    pair = ready_pair(now=0.0)
    pair.tick("a", protocol.PING_INTERVAL_S)
    pair.tick("a", 2 * protocol.PING_INTERVAL_S)  # the peer answers nothing
    assert [m for _, m in pair.wire] == [Ping(nonce=1), Ping(nonce=2)]
    assert pair.a.deadline() == min(protocol.IDLE_TIMEOUT_S, 3 * protocol.PING_INTERVAL_S)
    with pytest.raises(ProtocolViolation) as info:
        pair.tick("a", protocol.IDLE_TIMEOUT_S)
    assert info.value.reason == "idle-timeout" and info.value.cost is Cost.DROP


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


# --- what faults cost, and the stored-bytes sync answer ------------------------------------------

def test_one_name_costs_by_its_kind():
    assert cost_of("bad-version", LINK) is Cost.DROP  # a newer peer
    assert cost_of("bad-version", BLOCK) is Cost.BAN  # a broken block
    assert cost_of("time-too-new", BLOCK) is Cost.KEEP  # clock skew is honest
    assert cost_of("bad-pow", REJECTED) is Cost.DROP  # the peer's complaint about us
    assert cost_of("some-new-close-reason") is Cost.DROP  # nothing is banned by accident


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
