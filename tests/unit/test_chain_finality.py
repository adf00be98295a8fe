"""Fork choice with finality: the highest justified checkpoint first, then work, then the
tip seen first; blocks off the finalized block's branch refused whatever their work; no
reorg below the finalized block; side branches below it pruned. Pure: a Chain with a
FinalityState fed votes by hand, as the ledger feeds it."""

from __future__ import annotations

import pytest

from gridchain.consensus.chain import Chain, ChainEntry
from gridchain.consensus.finality import Checkpoint, FinalityState, sign_vote
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.identity.keys import NodeKey

from tests.support.blocks import ALICE, BITS, BOB, NOW_MS, Relay, make_block

MEMBERS = [ALICE, BOB, NodeKey.from_seed(bytes([3]) * 32), NodeKey.from_seed(bytes([4]) * 32)]
FPARAMS = NetworkParams("finality-chain", BITS, members=frozenset(k.public_key for k in MEMBERS),
                        member_names={k.public_key: f"m{i}" for i, k in enumerate(MEMBERS)})
FGENESIS = make_genesis(FPARAMS)


def new_chain(finality: bool = True) -> Chain:
    return Chain(FGENESIS, FPARAMS, FinalityState(FPARAMS, FGENESIS.hash) if finality else None)


def grow(chain: Chain, parent: ChainEntry, count: int, relay: Relay, signer: NodeKey = ALICE) -> list[ChainEntry]:
    entries = []
    for _ in range(count):
        parent = chain.add(make_block(parent, relay.next(), signer=signer), NOW_MS).entry
        entries.append(parent)
    return entries


def cp(entry: ChainEntry) -> Checkpoint:
    return Checkpoint(entry.height, entry.hash)


def link(chain: Chain, source: ChainEntry, target: ChainEntry, voters=range(3)):
    """Quorum (3 of 4) votes for source -> target, fed to the chain's state; the last update."""
    update = None
    for i in voters:
        vote = sign_vote(MEMBERS[i].sign, MEMBERS[i].public_key, FPARAMS, cp(source), cp(target))
        update = chain.finality.add_vote(vote, chain.ancestor_at)
    return update


def finalize(chain: Chain, entries: list[ChainEntry]) -> None:
    """Votes along ``entries`` (consecutive blocks from genesis's child): each is justified
    by the link from the one before it, which that link finalizes."""
    previous = chain.genesis
    for entry in entries:
        link(chain, previous, entry)
        previous = entry


def test_ancestor_at_walks_the_tree():
    chain = new_chain()
    main = grow(chain, chain.genesis, 4, Relay())
    side = grow(chain, main[0], 2, Relay("relay-2"), BOB)
    assert chain.ancestor_at(main[3].hash, 2) == main[1].hash and chain.ancestor_at(main[3].hash, 4) == main[3].hash
    assert chain.ancestor_at(side[1].hash, 1) == main[0].hash and chain.ancestor_at(side[1].hash, 2) == side[0].hash
    assert chain.ancestor_at(side[1].hash, 0) == FGENESIS.hash
    assert chain.ancestor_at(side[1].hash, 4) is None and chain.ancestor_at(b"\x00" * 32, 0) is None


def test_fork_choice_prefers_the_justified_branch_over_a_heavier_one():
    chain = new_chain()
    first = grow(chain, chain.genesis, 1, Relay())[0]
    light = grow(chain, first, 2, Relay("relay-a"))
    heavy = grow(chain, first, 4, Relay("relay-b"), BOB)
    assert chain.tip is heavy[-1], "work alone so far: the heavier branch"
    update = link(chain, chain.genesis, light[0])
    assert [j.checkpoint for j in update.justified] == [cp(light[0])]
    result = chain.reconsider()
    assert result.status == "reorg" and chain.tip is light[-1]
    assert result.disconnected == tuple(reversed(heavy)) and result.connected == tuple(light)
    assert chain.justified_of() == cp(light[0])
    more = grow(chain, heavy[-1], 3, Relay("relay-b", start_seq=25), BOB)
    assert chain.tip is light[-1] and not chain.is_main(more[-1]), "more work on it changes nothing"
    assert chain.reconsider() is None


def test_a_higher_justified_checkpoint_on_the_heavier_branch_takes_it_back():
    chain = new_chain()
    first = grow(chain, chain.genesis, 1, Relay())[0]
    light = grow(chain, first, 2, Relay("relay-a"))
    heavy = grow(chain, first, 4, Relay("relay-b"), BOB)
    link(chain, chain.genesis, light[0])
    chain.reconsider()
    link(chain, chain.genesis, heavy[1])  # height 3 beats height 2 (no slashing rule: same source)
    assert chain.reconsider().status == "reorg" and chain.tip is heavy[-1]


def test_a_justified_common_ancestor_leaves_work_to_decide():
    chain = new_chain()
    first = grow(chain, chain.genesis, 1, Relay())[0]
    light = grow(chain, first, 1, Relay("relay-a"))
    heavy = grow(chain, first, 3, Relay("relay-b"), BOB)
    link(chain, chain.genesis, first)
    assert chain.reconsider() is None and chain.tip is heavy[-1]
    assert chain.justified_of(light[-1]) == chain.justified_of(heavy[-1]) == cp(first)


def test_a_tie_keeps_the_tip_seen_first():
    chain = new_chain()
    first = grow(chain, chain.genesis, 1, Relay())[0]
    a = grow(chain, first, 2, Relay("relay-a"))
    b = grow(chain, first, 2, Relay("relay-b"), BOB)
    link(chain, chain.genesis, first)
    assert chain.reconsider() is None and chain.tip is a[-1] and not chain.is_main(b[-1])


def test_a_block_conflicting_with_the_finalized_one_is_refused_even_with_100x_work():
    honest = new_chain()
    main = grow(honest, honest.genesis, 6, Relay())
    finalize(honest, main[:5])
    assert honest.finalized is main[3]
    # The attacker's secret fork from height 1, a hundred times the work of the honest part
    # above the fork point, made valid in a chain of its own.
    scratch = new_chain(finality=False)
    base = scratch.add(make_block(scratch.genesis, Relay().next()), NOW_MS).entry
    assert base.hash == main[0].hash
    fork_blocks, parent, relay = [], base, Relay("relay-x")
    for _ in range(500):
        block = make_block(parent, relay.next(), signer=BOB)
        parent = scratch.add(block, NOW_MS).entry
        fork_blocks.append(block)
    assert parent.work >= 100 * (honest.tip.work - main[0].work)
    tip, size = honest.tip, len(honest)
    for block in fork_blocks[:3]:  # heights 2..4: at or below the finalized height 4
        with pytest.raises(RuleViolation) as refused:
            honest.add(block, NOW_MS)
        assert refused.value.reason == "conflicts-finalized"
    assert honest.tip is tip and len(honest) == size and honest.finalized is main[3]


def test_a_side_branch_below_finality_can_grow_no_more_and_never_wins():
    chain = new_chain()
    main = grow(chain, chain.genesis, 5, Relay())
    side = grow(chain, main[0], 3, Relay("relay-2"), BOB)  # before finality: a side branch
    finalize(chain, main[:4])
    assert chain.finalized is main[2]
    with pytest.raises(RuleViolation) as refused:
        chain.add(make_block(side[-1], Relay("relay-2", start_seq=19).next(), signer=BOB), NOW_MS)
    assert refused.value.reason == "conflicts-finalized"
    assert chain.reconsider() is None and chain.tip is main[-1]


def test_no_reorg_below_the_finalized_block_even_from_the_store():
    chain = new_chain()
    main = grow(chain, chain.genesis, 4, Relay())
    finalize(chain, main[:3])
    assert chain.finalized is main[1]
    scratch = new_chain(finality=False)
    parent, relay, headers = scratch.genesis, Relay("relay-2"), []
    for _ in range(8):
        block = make_block(parent, relay.next(), signer=BOB)
        parent = scratch.add(block, NOW_MS).entry
        headers.append(block)
    tip = chain.tip
    for block in headers:  # add_trusted runs no finality rule, yet fork choice holds
        result = chain.add_trusted(block.header, *_facts(block))
        assert result.status == "side"
    assert chain.tip is tip and chain.is_main(main[1])


def _facts(block):
    c = block.capture
    return c.relay_id, c.last_seq, c.newest_ms, c.relay_key, c.first_seq


def test_pruning_names_the_side_branches_below_finality_and_keeps_those_above():
    chain = new_chain()
    main = grow(chain, chain.genesis, 6, Relay())
    low = grow(chain, main[0], 4, Relay("relay-2"), BOB)  # forks at 1, reaches height 5
    high = grow(chain, main[3], 1, Relay("relay-3"), BOB)  # forks at 4
    assert chain.conflicting() == [], "nothing finalized yet"
    finalize(chain, main[:4])
    assert chain.finalized is main[2]
    doomed = chain.conflicting()
    assert doomed == low
    chain.remove(doomed)
    assert all(e.hash not in chain for e in low) and high[0].hash in chain
    assert chain.side_entries() == high
    assert len(chain) == 1 + 6 + 1
    with pytest.raises(RuleViolation) as refused:  # a child of a pruned block
        chain.add(make_block(low[-1], Relay("relay-2", start_seq=25).next(), signer=BOB), NOW_MS)
    assert refused.value.reason == "conflicts-finalized"
    with pytest.raises(ValueError):
        chain.remove([main[1]])


def test_a_parentless_block_at_or_below_the_finalized_height_conflicts():
    chain = new_chain()
    main = grow(chain, chain.genesis, 4, Relay())
    finalize(chain, main[:3])
    scratch = new_chain(finality=False)
    a = scratch.add(make_block(scratch.genesis, Relay("relay-2").next(), signer=BOB), NOW_MS).entry
    b = make_block(a, Relay("relay-2", start_seq=7).next(), signer=BOB)
    with pytest.raises(RuleViolation) as refused:
        chain.add(b, NOW_MS)
    assert refused.value.reason == "conflicts-finalized"
    scratch.add(make_block(scratch.genesis, Relay().next()), NOW_MS)
    for entry in main:  # the same honest line in the scratch chain, then two blocks on it
        if entry.hash not in scratch:
            scratch.add_trusted(entry.header, *_facts_of(chain, entry))
    c = scratch.add(make_block(scratch.get(main[-1].hash), Relay(start_seq=25).next()), NOW_MS).entry
    d = make_block(c, Relay(start_seq=31).next())
    with pytest.raises(RuleViolation) as orphan:  # above the finalized height: an honest orphan
        chain.add(d, NOW_MS)
    assert orphan.value.reason == "unknown-parent"


def _facts_of(chain: Chain, entry: ChainEntry):
    return entry.relay_id, entry.last_seq, entry.newest_ms, entry.relay_key, entry.last_seq - 5


def test_extending_the_tip_never_asks_the_finality_state(monkeypatch):
    """Flat cost: an extension wins without looking up any justified checkpoint."""
    chain = new_chain()
    main = grow(chain, chain.genesis, 3, Relay())
    finalize(chain, main[:2])
    calls = []
    original = chain.finality.highest_justified
    monkeypatch.setattr(chain.finality, "highest_justified", lambda *a: calls.append(a) or original(*a))
    grow(chain, chain.tip, 20, Relay(start_seq=19))
    assert calls == []
    grow(chain, main[1], 1, Relay("relay-2"), BOB)  # a side block compares both keys
    assert len(calls) == 2


def test_undo_of_a_finality_reorg_and_of_a_reconsider():
    chain = new_chain()
    first = grow(chain, chain.genesis, 1, Relay())[0]
    light = grow(chain, first, 2, Relay("relay-a"))
    heavy = grow(chain, first, 4, Relay("relay-b"), BOB)
    link(chain, chain.genesis, light[0])
    result = chain.reconsider()
    chain.undo_reconsider(result)
    assert chain.tip is heavy[-1] and set(chain.side_entries()) == set(light)
    assert chain.reconsider().entry is light[-1]
    block = make_block(heavy[-1], Relay("relay-b", start_seq=25).next(), signer=BOB)
    side = chain.add(block, NOW_MS)
    assert side.status == "side"
    chain.undo(side)
    assert block.hash not in chain and chain.tip is light[-1] and set(chain.side_entries()) == set(heavy)


def test_without_finality_fork_choice_is_work_alone():
    chain = new_chain(finality=False)
    first = grow(chain, chain.genesis, 1, Relay())[0]
    grow(chain, first, 2, Relay("relay-a"))
    heavy = grow(chain, first, 3, Relay("relay-b"), BOB)
    assert chain.tip is heavy[-1] and chain.finalized is chain.genesis and chain.reconsider() is None
    assert chain.justified_of() == Checkpoint(0, FGENESIS.hash) and chain.conflicting() == []
