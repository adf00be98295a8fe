"""The block tree: extension, side branches, fork choice, reorgs, relay bookkeeping, sync helpers."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridchain.consensus import pow
from gridchain.consensus.block import Capture
from gridchain.consensus.chain import (
    MAX_LOCATOR_HASHES, Chain, ChainEntry, OrphanPool, _trie_get, _trie_set, displaced_readings, locator_heights,
)
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.rules import RuleViolation
from gridchain.consensus.template import block_template, seal

from tests.support.blocks import (
    ALICE, BOB, GENESIS, NOW_MS, OTHER_RELAY_KEY, PARAMS, RELAY_KEY, Relay, capture, gap_notice, grow, make_block,
    new_chain, sealed,
)


def next_seq(chain: Chain, entry: ChainEntry, relay_id: str = "relay-1") -> int:
    return (chain.last_seq(relay_id, entry) or 0) + 1


def test_new_chain_is_genesis_only():
    chain = new_chain()
    assert chain.tip is chain.genesis and chain.height == 0 and len(chain) == 1
    assert chain.genesis_hash == GENESIS.hash and GENESIS.hash in chain
    assert chain.tip.work == 0 and chain.main_at(0) is chain.genesis and chain.main_at(1) is None
    assert chain.last_seq("relay-1") is None and chain.newest_reading_ms("relay-1") is None
    assert chain.locator() == [GENESIS.hash]


def test_extension():
    chain = new_chain()
    blocks, results = grow(chain, chain.tip, 5)
    assert [r.status for r in results] == ["extended"] * 5
    assert all(r.connected == (r.entry,) and r.disconnected == () for r in results)
    assert chain.height == 5 and len(chain) == 6 and chain.tip.hash == blocks[-1].hash
    assert [chain.main_at(h).hash for h in range(1, 6)] == [b.hash for b in blocks]
    assert chain.tip.work == 5 * 2**PARAMS.bits
    assert chain.get(blocks[2].hash).parent.hash == blocks[1].hash
    assert chain.main_at(-1) is None and chain.main_at(6) is None


def test_duplicate_is_reported_not_raised():
    chain = new_chain()
    blocks, results = grow(chain, chain.tip, 2)
    again = chain.add(blocks[0], NOW_MS)
    assert again.status == "duplicate" and again.entry is results[0].entry
    assert chain.height == 2 and len(chain) == 3
    assert chain.add(GENESIS, NOW_MS).status == "duplicate"


def test_side_branch_keeps_tip():
    chain = new_chain()
    grow(chain, chain.tip, 3)
    fork = chain.main_at(1)
    tip = chain.tip
    _, results = grow(chain, fork, 1, Relay.after(chain, fork), "bob", BOB)
    side = results[0]
    assert side.status == "side" and side.connected == () and side.disconnected == ()
    assert chain.tip is tip and not chain.is_main(side.entry) and chain.is_main(fork)
    assert chain.fork_point(side.entry) is fork


def test_tie_keeps_first_seen_then_reorg_depth_one():
    chain = new_chain()
    _, first = grow(chain, chain.tip, 3)
    fork = chain.main_at(2)
    relay = Relay.after(chain, fork)
    _, rival = grow(chain, fork, 1, relay, "bob", BOB)
    assert rival[0].status == "side" and rival[0].entry.work == chain.tip.work
    assert chain.tip is first[-1].entry
    _, more = grow(chain, rival[0].entry, 1, relay, "bob", BOB)
    result = more[0]
    assert result.status == "reorg"
    assert result.disconnected == (first[-1].entry,)
    assert result.connected == (rival[0].entry, result.entry)
    assert chain.tip is result.entry and chain.height == 4
    assert not chain.is_main(first[-1].entry) and chain.is_main(rival[0].entry)


def test_reorg_depth_50_and_displaced_readings():
    chain = new_chain()
    old_blocks, old = grow(chain, chain.tip, 50, Relay(openings=7))
    # The new branch holds the first 10 blocks' readings of relay-1 (as a peer that captured
    # them too would), and then readings of its own relay.
    new_blocks, new = grow(chain, chain.genesis, 10, Relay(openings=5), "bob", BOB)
    more_blocks, more = grow(chain, new[-1].entry, 41, Relay("relay-2"), "bob", BOB)
    assert all(r.status == "side" for r in new + more[:-1])
    result = more[-1]
    assert result.status == "reorg"
    assert result.disconnected == tuple(r.entry for r in reversed(old))  # tip first
    assert result.connected == tuple(r.entry for r in new + more)  # oldest first
    assert chain.height == 51 and chain.tip is result.entry
    assert all(chain.is_main(r.entry) for r in new + more)
    assert not any(chain.is_main(r.entry) for r in old)
    assert chain.last_seq("relay-1") == new_blocks[-1].capture.last_seq == 60
    assert chain.last_seq("relay-2") == more_blocks[-1].capture.last_seq
    assert chain.newest_reading_ms("relay-2") == more_blocks[-1].capture.newest_ms

    displaced = displaced_readings(list(reversed(old_blocks)), chain.last_seq)
    assert len(displaced) == 1
    expected = [r for b in old_blocks[10:] for r in b.capture.readings]
    assert displaced[0] == Capture("relay-1", "North", RELAY_KEY.public_key, tuple(expected),
                                   tuple(b.capture.seals[0] for b in old_blocks[10:]))


def test_displaced_seals_stay_whole_per_relay_and_skip_kept_ones():
    a, b = Relay("relay-a"), Relay("relay-b", signer=OTHER_RELAY_KEY)
    a1, b1, a2 = a.next(), b.next(), a.next()
    b1 = sealed("relay-b", b1.readings, signer=OTHER_RELAY_KEY, per_seal=3)  # two seals of three
    old = [make_block(new_chain().genesis, c) for c in (a1, b1, a2)]
    # The new branch holds a1 entirely and relay-b up to seq 3, the end of b1's first seal.
    kept = {"relay-a": a1.last_seq, "relay-b": 3}.get
    displaced = displaced_readings(old, kept)
    assert displaced == [Capture("relay-b", "North", OTHER_RELAY_KEY.public_key, b1.readings[3:], b1.seals[1:]),
                         Capture("relay-a", "North", RELAY_KEY.public_key, a2.readings, a2.seals)]
    # A seal only partly on the new branch comes back whole: the capture task decides.
    assert displaced_readings(old[1:2], {"relay-b": 4}.get)[0].seals == b1.seals[1:]
    assert displaced_readings([], kept) == [] and displaced_readings(old[:1], kept) == []


def test_displaced_runs_start_a_segment_at_each_gap_notice():
    relay = Relay("relay-1")
    first = relay.next()
    restarted = capture(start_seq=500, gap=gap_notice("relay-1", 500))
    after = capture(start_seq=506)
    old = [make_block(new_chain().genesis, c) for c in (first, restarted, after)]
    segments = displaced_readings(old, lambda relay_id: None)
    assert [(s.first_seq, s.last_seq, s.gap) for s in segments] == [(1, 6, None), (500, 511, restarted.gap)]
    # A notice the new branch has passed is not handed back.
    assert [s.gap for s in displaced_readings(old, {"relay-1": 502}.get)] == [None]


def test_last_seq_and_relay_key_per_relay_per_branch():
    chain = new_chain()
    grow(chain, chain.tip, 4, Relay())
    fork = chain.main_at(2)
    _, side = grow(chain, fork, 1, Relay.after(chain, fork), "bob", BOB)
    side_entry = side[0].entry
    assert chain.last_seq("relay-1", side_entry) == side_entry.last_seq == 18
    assert chain.last_seq("relay-1", fork) == fork.last_seq == 12
    assert chain.last_seq("relay-1") == chain.tip.last_seq == 24
    assert chain.newest_reading_ms("relay-1") == chain.tip.newest_ms
    assert chain.last_seq("relay-1", chain.genesis) is None and chain.last_seq("nobody") is None
    assert chain.relay_key("relay-1") == RELAY_KEY.public_key and chain.relay_key("nobody") is None
    # A reading on the main chain may still be added on a branch that lacks it.
    block = make_block(fork, capture(start_seq=next_seq(chain, fork)), "carol")
    assert chain.add(block, NOW_MS).status == "side"


def brute_last_seq(entry: ChainEntry, relay_id: str) -> int | None:
    node = entry
    while node is not None:
        if node.relay_id == relay_id and node.last_seq is not None:
            return node.last_seq
        node = node.parent
    return None


def test_newest_with_many_relays_grows_the_trie():
    chain = new_chain()
    relays = [Relay(f"relay-{i}", per_block=1) for i in range(40)]
    parent = chain.tip
    entries = [parent]
    for i in range(300):
        relay = relays[(i * 7) % len(relays)]
        parent = chain.add(make_block(parent, relay.next()), NOW_MS).entry
        entries.append(parent)
    for entry in entries[::13] + [chain.tip]:
        for relay in relays:
            assert chain.last_seq(relay.relay_id, entry) == brute_last_seq(entry, relay.relay_id)


def test_relay_trie_is_persistent_at_every_depth():
    rng = random.Random(7)
    versions = [((), 0, {})]
    for step in range(3_000):
        root, depth, model = versions[rng.randrange(len(versions))]  # branch off any older version
        number = rng.choice([rng.randrange(16), rng.randrange(300), rng.randrange(5_000)])
        root, depth = _trie_set(root, depth, number, step)
        versions.append((root, depth, {**model, number: step}))
    for root, depth, model in versions[::50] + versions[-5:]:
        for number in list(model) + [0, 15, 16, 255, 256, 4_095, 4_096, 70_000]:
            assert _trie_get(root, depth, number) == model.get(number)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2)), min_size=5, max_size=40))
def test_fork_choice_matches_a_model(steps):
    """Blocks on random parents: most work wins, a tie keeps the first seen, every branch is exact."""
    chain = new_chain()
    entries = [chain.genesis]
    expected_tip = chain.genesis
    for pick, relay_number in steps:
        parent = entries[pick % len(entries)]
        relay_id = f"relay-{relay_number}"
        cap = capture(relay_id, count=2, start_seq=next_seq(chain, parent, relay_id))
        result = chain.add(make_block(parent, cap), NOW_MS)
        entries.append(result.entry)
        if result.entry.work > expected_tip.work:
            expected_tip = result.entry
        assert chain.tip is expected_tip
        path = []
        node = chain.tip
        while node is not None:
            path.append(node)
            node = node.parent
        assert [chain.main_at(h) for h in range(chain.height + 1)] == path[::-1]
        if result.status == "reorg":
            assert result.connected[-1] is result.entry
            assert result.disconnected[-1].parent is result.connected[0].parent
    for entry in entries:
        for relay_number in range(3):
            relay_id = f"relay-{relay_number}"
            assert chain.last_seq(relay_id, entry) == brute_last_seq(entry, relay_id)


def test_unknown_parent_then_children_connect():
    chain, other = new_chain(), new_chain()
    blocks, _ = grow(other, other.tip, 3)
    with pytest.raises(RuleViolation) as caught:
        chain.add(blocks[2], NOW_MS)
    assert caught.value.reason == "unknown-parent"
    for block in blocks:
        chain.add(block, NOW_MS)
    assert chain.tip.hash == other.tip.hash


def test_prechecked_skips_only_the_context_free_checks(monkeypatch):
    chain, other = new_chain(), new_chain()
    blocks, _ = grow(other, other.tip, 2)
    calls = []
    monkeypatch.setattr("gridchain.consensus.chain.check_block", lambda *args: calls.append(args))
    with pytest.raises(RuleViolation) as caught:  # the parent is still looked up
        chain.add(blocks[1], NOW_MS, prechecked=True)
    assert caught.value.reason == "unknown-parent"
    chain.add(blocks[0], NOW_MS, prechecked=True)
    assert calls == []
    chain.add(blocks[1], NOW_MS)
    assert [args[0] for args in calls] == [blocks[1]]
    late = make_block(chain.tip, Relay().next())  # readings the branch holds already
    with pytest.raises(RuleViolation) as caught:  # and the rules of the branch still apply
        chain.add(late, NOW_MS, prechecked=True)
    assert caught.value.reason == "duplicate-reading"


def test_add_trusted_rebuilds_the_same_chain():
    chain = new_chain()
    blocks, main = grow(chain, chain.tip, 6)
    fork = chain.main_at(3)
    blocks += grow(chain, fork, 3, Relay.after(chain, fork), "bob", BOB)[0]
    jump = make_block(chain.tip, capture(start_seq=900, gap=gap_notice("relay-1", 900)))
    fill = make_block(chain.add(jump, NOW_MS).entry, capture(start_seq=100))
    chain.add(fill, NOW_MS)
    blocks += [jump, fill]
    rebuilt = new_chain()
    for block in sorted(blocks, key=lambda b: chain.get(b.hash).seq):
        c = block.capture
        added = rebuilt.add_trusted(block.header, c.relay_id, c.last_seq, c.newest_ms, c.relay_key, c.first_seq)
        assert added.status != "duplicate"
    assert rebuilt.tip.hash == chain.tip.hash and len(rebuilt) == len(chain)
    assert rebuilt.last_seq("relay-1") == chain.last_seq("relay-1") == 905
    assert rebuilt.open_gaps("relay-1") == chain.open_gaps("relay-1") == ((37, 99), (106, 899))
    assert rebuilt.newest_reading_ms("relay-1") == chain.newest_reading_ms("relay-1") == jump.capture.newest_ms
    assert rebuilt.relay_key("relay-1") == RELAY_KEY.public_key
    assert rebuilt.add_trusted(chain.tip.header, "relay-1", 1, 1, RELAY_KEY.public_key, 1).status == "duplicate"
    orphan = make_block(chain.tip, capture(start_seq=1000))
    with pytest.raises(RuleViolation):
        new_chain().add_trusted(orphan.header, "relay-1", 1, 1, RELAY_KEY.public_key, 1)


def test_reorg_across_a_fill_keeps_each_branchs_gaps():
    """The attack the fill rule answers: a fork below readings the main chain holds jumps
    straight to the relay's notice and outmines it; the readings come back as a fill, and a
    reorg off the fill hands them back again."""
    chain = new_chain()
    a_blocks, a = grow(chain, chain.tip, 3)  # 1..18
    a4 = make_block(a[-1].entry, capture(start_seq=5_000, gap=gap_notice("relay-1", 5_000)))
    a4_entry = chain.add(a4, NOW_MS).entry
    assert a4_entry.gaps == ((19, 4_999),) and chain.last_seq("relay-1") == 5_005
    fork = a[0].entry  # after seq 6
    b2 = make_block(fork, capture(start_seq=5_000, gap=gap_notice("relay-1", 5_000)), "mallory", BOB)
    parent = chain.add(b2, NOW_MS).entry
    assert parent.gaps == ((7, 4_999),)
    b_blocks, b = grow(chain, parent, 3, Relay(start_seq=5_006), "mallory", BOB)
    assert b[-1].status == "reorg" and chain.tip is b[-1].entry
    assert b[-1].entry.gaps is parent.gaps  # continuations share the tuple
    assert chain.last_seq("relay-1") == 5_023 and chain.open_gaps("relay-1") == ((7, 4_999),)
    disconnected = [*a_blocks[1:], a4]
    displaced = displaced_readings(disconnected, chain.last_seq, chain.open_gaps)
    expected = [r for blk in a_blocks[1:] for r in blk.capture.readings]  # 7..18; a4's 5_000.. are on the fork
    assert displaced == [Capture("relay-1", "North", RELAY_KEY.public_key, tuple(expected),
                                 tuple(blk.capture.seals[0] for blk in a_blocks[1:]))]
    assert displaced_readings(disconnected, chain.last_seq) == []  # without the gaps they looked held

    fill_cap = displaced[0]
    fill = make_block(chain.tip, fill_cap)
    filled = chain.add(fill, NOW_MS)
    assert filled.status == "extended" and chain.open_gaps("relay-1") == ((19, 4_999),)
    assert chain.last_seq("relay-1") == 5_023 and chain.newest_reading_ms("relay-1") == b_blocks[-1].capture.newest_ms
    assert chain.open_gaps("relay-1", b[-1].entry) == ((7, 4_999),)  # the branch below the fill is unchanged

    # A rival on the fork's tip, without the fill, outmines it: the fill's seals come back.
    rival_blocks, rival = grow(chain, b[-1].entry, 2, Relay(start_seq=5_024), "bob", BOB)
    assert rival[-1].status == "reorg" and rival[-1].disconnected == (filled.entry,)
    assert chain.open_gaps("relay-1") == ((7, 4_999),)
    again = displaced_readings([fill], chain.last_seq, chain.open_gaps)
    assert again == [fill_cap]
    # Filled on the rival too, the readings are there once; the old main chain's gap is its own.
    chain.add(make_block(chain.tip, fill_cap), NOW_MS)
    assert chain.open_gaps("relay-1") == ((19, 4_999),) and a4_entry.gaps == ((19, 4_999),)


def test_undo_takes_back_adds_newest_first():
    chain = new_chain()
    _, main = grow(chain, chain.tip, 3)
    fork = chain.main_at(1)
    relay = Relay.after(chain, fork)
    _, side = grow(chain, fork, 3, relay, "bob", BOB)
    assert [r.status for r in side] == ["side", "side", "reorg"]
    with pytest.raises(ValueError):
        chain.undo(main[-1])  # no longer the tip
    for result in reversed(side):
        chain.undo(result)
    assert chain.tip is main[-1].entry and len(chain) == 4
    assert [chain.main_at(h) for h in range(4)] == [chain.genesis] + [r.entry for r in main]
    chain.undo(main[-1])
    assert chain.tip is main[-2].entry and main[-1].entry.hash not in chain
    with pytest.raises(ValueError):
        chain.undo(main[-1])
    again = chain.add(make_block(chain.tip, Relay.after(chain, chain.tip).next()), NOW_MS)
    assert again.status == "extended" and chain.height == 3


# --- sync helpers -----------------------------------------------------------------------------

def test_locator_and_find_fork():
    chain = new_chain()
    grow(chain, chain.tip, 120, Relay(per_block=1))
    locator = chain.locator()
    heights = [chain.get(h).height for h in locator]
    assert heights[:10] == list(range(120, 110, -1))
    assert heights[10:] == [109, 105, 97, 81, 49, 0]
    assert len(locator) <= MAX_LOCATOR_HASHES and locator[-1] == GENESIS.hash
    assert chain.find_fork(locator) is chain.tip
    assert chain.find_fork([b"\x01" * 32]) is chain.genesis
    assert chain.find_fork([b"\x01" * 32, chain.main_at(7).hash]) is chain.main_at(7)


def test_locator_of_a_side_branch_follows_it():
    chain = new_chain()
    grow(chain, chain.tip, 30, Relay(per_block=1))
    fork = chain.main_at(20)
    _, side = grow(chain, fork, 5, Relay.after(chain, fork, per_block=1), "bob", BOB)
    locator = chain.locator(side[-1].entry)
    assert locator[:5] == [r.entry.hash for r in reversed(side)]
    assert [chain.get(h).height for h in locator[5:10]] == [20, 19, 18, 17, 16]
    assert chain.find_fork(locator) is fork


@pytest.mark.parametrize("height", [0, 1, 10, 11, 1_000, 10**6, 2**62])
def test_locator_heights_are_bounded(height):
    heights = locator_heights(height)
    assert heights[0] == height and heights[-1] == 0 and len(heights) <= MAX_LOCATOR_HASHES
    assert heights == sorted(set(heights), reverse=True)
    dense = min(10, height)
    assert heights[:dense] == list(range(height, height - dense, -1))


def test_main_hashes_after():
    chain = new_chain()
    blocks, _ = grow(chain, chain.tip, 10, Relay(per_block=1))
    assert chain.main_hashes_after(chain.genesis, 4) == [b.hash for b in blocks[:4]]
    assert chain.main_hashes_after(chain.main_at(8), 100) == [b.hash for b in blocks[8:]]
    assert chain.main_hashes_after(chain.tip, 5) == [] and chain.main_hashes_after(chain.genesis, 0) == []
    fork = chain.main_at(6)
    _, side = grow(chain, fork, 1, Relay.after(chain, fork, per_block=1), "bob", BOB)
    assert chain.main_hashes_after(side[0].entry, 2) == [b.hash for b in blocks[6:8]]


def test_ancestor():
    chain = new_chain()
    grow(chain, chain.tip, 8, Relay(per_block=1))
    fork = chain.main_at(4)
    _, side = grow(chain, fork, 3, Relay.after(chain, fork, per_block=1), "bob", BOB)
    tip = side[-1].entry
    assert chain.ancestor(tip, 7) is tip and chain.ancestor(tip, 5) is side[0].entry
    assert chain.ancestor(tip, 4) is fork and chain.ancestor(tip, 0) is chain.genesis
    with pytest.raises(ValueError):
        chain.ancestor(tip, 8)


# --- building blocks to mine ---------------------------------------------------------------------

def test_template_and_seal_make_an_acceptable_block():
    chain = new_chain()
    grow(chain, chain.tip, 3)
    parent = chain.tip
    cap = capture(start_seq=chain.last_seq("relay-1") + 1)
    median = chain.median_time_ms(parent)
    slow_clock = block_template(parent, cap, "alice", ALICE.public_key, PARAMS, median - 5_000)
    assert slow_clock.time_ms == median + 1  # a lagging clock still builds a block the rules accept
    header = block_template(parent, cap, "alice", ALICE.public_key, PARAMS, parent.time_ms + 60_000)
    assert (header.height, header.prev_hash, header.bits, header.nonce) == (4, parent.hash, PARAMS.bits, 0)
    assert header.time_ms == parent.time_ms + 60_000 and header.payload_root == payload_root(cap, "alice")
    nonce = pow.mine(header.prefix(), header.bits)
    block = seal(header, nonce, cap, "alice", ALICE.sign)
    assert block.header.nonce == nonce and block.header.with_nonce(0) == header
    assert chain.add(block, NOW_MS).status == "extended"


# --- orphans ----------------------------------------------------------------------------------

def orphan_blocks(count: int):
    chain = new_chain()
    blocks, _ = grow(chain, chain.tip, count, Relay(per_block=1))
    return blocks


def test_orphan_pool_children():
    blocks = orphan_blocks(4)
    pool = OrphanPool()
    assert pool.add(blocks[1], 100) and pool.add(blocks[2], 100) and pool.add(blocks[3], 100)
    assert not pool.add(blocks[1], 100)
    assert len(pool) == 3 and pool.has(blocks[2].hash) and blocks[2].hash in pool and pool.nbytes == 300
    assert pool.pop_children(blocks[0].hash) == [blocks[1]]
    assert pool.pop_children(blocks[0].hash) == []
    assert pool.pop_children(blocks[1].hash) == [blocks[2]] and len(pool) == 1 and pool.nbytes == 100


def test_orphan_pool_evicts_oldest_by_count_and_bytes():
    blocks = orphan_blocks(8)
    pool = OrphanPool(max_blocks=3, max_bytes=1_000)
    for block in blocks[:5]:
        pool.add(block, 100)
    assert len(pool) == 3 and [pool.has(b.hash) for b in blocks[:5]] == [False, False, True, True, True]
    assert pool.add(blocks[5], 850)  # needs room for 850 bytes: two of the three go
    assert [pool.has(b.hash) for b in blocks[2:6]] == [False, False, True, True]
    assert pool.nbytes == 950
    assert not pool.add(blocks[6], 1_001) and not pool.has(blocks[6].hash)
    assert pool.pop_children(blocks[4].hash) == [blocks[5]] and pool.nbytes == 100


def test_orphan_pool_siblings():
    chain = new_chain()
    parent = chain.tip
    a = make_block(parent, capture())
    b = make_block(parent, capture(), "bob", BOB)
    pool = OrphanPool()
    pool.add(a, 10)
    pool.add(b, 10)
    assert pool.pop_children(parent.hash) == [a, b] and len(pool) == 0
