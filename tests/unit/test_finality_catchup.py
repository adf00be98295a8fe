"""A member that missed votes follows finality again: what it is greeted with, and the quorum
links it counts without their justification chain; and votes travel on once checked, before
their count is written (pure: a tree of real headers, the voter over the fake ledger of
tests/unit/test_voter.py).

The live version is tests/integration/test_finality_catchup.py: a member away for an hour's
worth of blocks, while the others justified many checkpoints without finalizing, came back to
a greeting whose 16 certificates stopped short of the others' highest justified checkpoint;
its votes then never had the others' source, and it never finalized again while connected.
"""

from __future__ import annotations

import asyncio

import pytest

from gridchain.consensus.finality import (
    Certificate, Checkpoint, FinalityError, FinalityState, sign_vote, verify_finality,
)
from gridchain.net.finality_gossip import FinalityGossip
from gridchain.net.messages import VoteMessage
from gridchain.node.voter import GREETING_CERTIFICATES

from tests.unit.test_finality import KEYS, P4, Tree
from tests.unit.test_voter import FakeLedger, make_voter, receive


def vote(member: int, source: Checkpoint, target: Checkpoint):
    return sign_vote(KEYS[member].sign, KEYS[member].public_key, P4, source, target)


def link(state: FinalityState, tree: Tree, source: Checkpoint, target: Checkpoint, members=(1, 2, 3)):
    return [state.add_vote(vote(i, source, target), tree.ancestor_at) for i in members][-1]


def main_chain(count: int) -> tuple[Tree, list[Checkpoint]]:
    tree = Tree()
    blocks = tree.extend(tree.genesis, count)
    return tree, [Checkpoint(0, tree.genesis)] + [tree.cp(b) for b in blocks]


def test_after_two_rounds_of_quorum_links_from_sources_not_justified_here_the_newest_is_handed_out():
    tree, c = main_chain(8)
    state = FinalityState(P4, tree.genesis)
    link(state, tree, c[4], c[5])  # the votes that justified 4 were cast before we were here
    link(state, tree, c[4], c[6])  # a quorum, but it skips 5: it would finalize nothing
    assert state.unsettled_finality() == [], "one round may be a vote outrunning the votes before it"
    link(state, tree, c[5], c[6])  # the others' next round: we are behind
    assert state.finalized == c[0] and c[5] not in state.justified
    (cert,) = state.unsettled_finality()
    assert cert.link == (c[5], c[6]) and len(cert.signatures) == 3 and verify_finality(P4, cert)
    assert state.unsettled_finality() == [], "handed out twice"
    update = state.adopt_finality(cert, tree.ancestor_at)
    assert [f.checkpoint for f in update.finalized] == [c[5]] and state.finalized == c[5]
    assert c[6] in state.justified


def test_nothing_is_handed_out_once_the_source_is_justified_by_the_rules():
    tree, c = main_chain(8)
    state = FinalityState(P4, tree.genesis)
    link(state, tree, c[3], c[4])
    link(state, tree, c[0], c[3])  # 3 justified after all: 3 -> 4 settles by the rules
    assert state.finalized == c[3] and state.unsettled_finality() == []
    link(state, tree, c[6], c[7])
    link(state, tree, c[4], c[5])
    link(state, tree, c[5], c[6])  # finality passes 6 by the rules: 6 -> 7 settles too
    assert state.finalized == c[6] and state.unsettled_finality() == []


def test_a_member_that_missed_the_chain_finalizes_with_the_others_next_round():
    tree, c = main_chain(9)
    journal: list = []
    ledger = FakeLedger(tree, c[8].hash, journal)
    voter, log = make_voter(ledger, journal)
    # The others justified 1..5 while we were away; now they finalize 5 and 6, a round each.
    for i in (1, 2, 3):
        assert receive(voter, vote(i, c[5], c[6])) == "counted"
    assert ledger.finalized == c[0]
    for i in (1, 2, 3):
        assert receive(voter, vote(i, c[6], c[7])) == "counted"
    assert ledger.finalized == c[6]
    (done,) = log.named("finality.finalized")
    assert done["height"] == 6 and sorted(done["signers"]) == ["member-1", "member-2", "member-3"]
    own = voter.tip_moved()
    assert own.source == c[7] and own.target == c[8], "our vote is not from the others' source"


def skip_justified(count: int) -> tuple[Tree, list[Checkpoint], FakeLedger]:
    """1 finalized (0 -> 1 -> 2), then 2 -> 4 -> 6 ... justified by skip links, none finalized."""
    tree, c = main_chain(2 * count + 3)
    ledger = FakeLedger(tree, c[-1].hash, [])
    link(ledger.state, tree, c[0], c[1])
    link(ledger.state, tree, c[1], c[2])
    for h in range(2, 2 * count + 2, 2):
        link(ledger.state, tree, c[h], c[h + 2])
    assert ledger.finalized == c[1]
    return tree, c, ledger


def greeted(tree: Tree, certificates: list[Certificate]) -> FinalityState:
    """A fresh node fed a greeting's certificates as the ledger feeds them (finalizing ones adopted)."""
    fresh = FinalityState(P4, tree.genesis)
    for cert in certificates:
        if cert.target.height == cert.source.height + 1:
            fresh.adopt_finality(cert, tree.ancestor_at)
        else:
            fresh.add_certificate(cert, tree.ancestor_at)
    return fresh


def test_a_greeting_brings_a_peer_to_our_highest_justified_checkpoint():
    tree, c, ledger = skip_justified(20)  # 21 justified above the finalized one, more than the old 16
    voter, _ = make_voter(ledger, [])
    _, certificates = voter.greeting()
    assert certificates[0].link == (c[1], c[2]) and len(certificates) == 21, "the finality one appears once"
    assert all(a.target == b.source for a, b in zip(certificates[1:], certificates[2:]))
    fresh = greeted(tree, certificates)
    assert fresh.finalized == c[1]
    top = c[-1]
    assert fresh.highest_justified(top.hash, top.height, tree.ancestor_at) == ledger.justified == c[42]


def test_a_long_chain_is_cut_at_the_top_so_what_is_sent_is_usable():
    tree, c, ledger = skip_justified(GREETING_CERTIFICATES + 10)
    voter, _ = make_voter(ledger, [])
    _, certificates = voter.greeting()
    assert len(certificates) == GREETING_CERTIFICATES
    fresh = greeted(tree, certificates)
    top = c[-1]
    reached = fresh.highest_justified(top.hash, top.height, tree.ancestor_at)
    assert reached == certificates[-1].target and reached.height == 2 + 2 * (GREETING_CERTIFICATES - 1)


def test_peek_vote_says_what_add_vote_will_and_changes_nothing():
    tree, c = main_chain(6)
    side = tree.extend(c[1].hash, 2, b"side")
    state = FinalityState(P4, tree.genesis)
    link(state, tree, c[0], c[1])
    lacking = Checkpoint(7, b"\x07" * 32)
    forged = Certificate(c[1], c[2], ((KEYS[1].public_key, bytes(64)),)).votes()[0]
    cases = [vote(1, c[1], c[2]), vote(1, c[0], c[1]), vote(2, c[1], lacking),
             vote(3, tree.cp(side[0]), c[3]), vote(0, c[1], c[2])]
    for case in cases:
        peeked = state.peek_vote(case, tree.ancestor_at)
        assert state.peek_vote(case, tree.ancestor_at) == peeked, "peeking changed the state"
        assert state.add_vote(case, tree.ancestor_at).status == peeked, case
    assert [state.peek_vote(v, tree.ancestor_at) for v in cases] == ["duplicate"] * 2 + [
        "unknown-checkpoint", "bad-link", "duplicate"]
    with pytest.raises(FinalityError) as refused:
        state.peek_vote(forged, tree.ancestor_at)
    assert refused.value.reason == "bad-vote-signature"


class Wire:
    """A ready peer that records what is sent to it."""

    listen_address = "127.0.0.1:1"

    def __init__(self, log: list) -> None:
        self.log = log

    def send_frame(self, frame: bytes) -> None:
        self.log.append("relayed")


class CountingView:
    def __init__(self, voter, log: list) -> None:
        self.voter, self.log = voter, log

    def check_vote(self, v):
        return self.voter.check_vote(v)

    async def receive_vote(self, v, peer):
        self.log.append("counted")
        return await self.voter.receive_vote(v, peer)


def test_a_vote_is_passed_on_once_checked_before_it_is_counted_and_stored():
    tree, c = main_chain(3)
    ledger = FakeLedger(tree, c[-1].hash, [])
    voter, _ = make_voter(ledger, [])
    log: list = []
    sender, other = Wire(log), Wire(log)
    gossip = FinalityGossip(CountingView(voter, log), lambda: [sender, other])
    asyncio.run(gossip.on_vote(sender, VoteMessage(vote(1, c[0], c[1]))))
    assert log == ["relayed", "counted"], "the vote waited for its count before travelling on"
    assert ledger.state.peek_vote(vote(1, c[0], c[1]), tree.ancestor_at) == "duplicate"
    asyncio.run(gossip.on_vote(sender, VoteMessage(vote(2, c[0], Checkpoint(3, b"\x03" * 32)))))
    assert log[2:] == ["relayed", "counted"], "a vote for a block we lack is still passed on"
