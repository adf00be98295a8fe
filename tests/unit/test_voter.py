"""The node's voter (gridchain/node/voter.py) over a fake ledger: a real FinalityState on a
tree of real headers, a store that is a list, a log that is a list.

What it must do: vote for the newest checkpoint once a block is on the main chain, write the
vote before anyone can see it, never sign a conflicting vote after a restart (whatever the
chain looks like then), take the others' votes and report finality and equivocation once.
"""

from __future__ import annotations

import asyncio

import pytest

from gridchain.consensus.finality import Checkpoint, Evidence, FinalityError, FinalityState, sign_vote
from gridchain.ledger.store import StoreError
from gridchain.node.voter import Voter

from tests.unit.test_finality import KEYS, P4, Tree


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((level, event, fields))

    def named(self, event: str) -> list[dict]:
        return [fields for _, name, fields in self.events if name == event]


class Entry:
    def __init__(self, block_hash: bytes, height: int) -> None:
        self.hash, self.height = block_hash, height


class FakeChain:
    """The main chain is the branch ending at ``tip``."""

    def __init__(self, tree: Tree, tip: bytes) -> None:
        self.tree, self.tip_hash = tree, tip

    @property
    def tip(self) -> Entry:
        return Entry(self.tip_hash, self.tree.height(self.tip_hash))

    def main_at(self, height: int) -> Entry | None:
        found = self.tree.ancestor_at(self.tip_hash, height)
        return None if found is None else Entry(found, height)

    def get(self, block_hash: bytes) -> Entry | None:
        return Entry(block_hash, self.tree.height(block_hash)) if block_hash in self.tree.headers else None


class FakeLedger:
    """The ledger's finality API (gridchain.ledger.ledger.Ledger) over a FinalityState."""

    defer_votes = False  # every vote counted is stored at once

    def __init__(self, tree: Tree, tip: bytes, journal: list, stored: list | None = None) -> None:
        self.tree = tree
        self.chain = FakeChain(tree, tip)
        self.state = FinalityState(P4, tree.genesis)
        self.stored = [] if stored is None else stored  # the own-vote table: survives a "restart"
        self.journal = journal
        self.fail_writes = False

    @property
    def tip(self) -> Entry:
        return self.chain.tip

    @property
    def height(self) -> int:
        return self.chain.tip.height

    @property
    def finalized(self) -> Checkpoint:
        return self.state.finalized

    @property
    def justified(self) -> Checkpoint:
        tip = self.chain.tip
        return self.state.highest_justified(tip.hash, tip.height, self.tree.ancestor_at)

    def add_vote(self, vote, now_ms):
        return self.state.add_vote(vote, self.tree.ancestor_at)

    async def add_vote_sliced(self, vote, now_ms):
        return self.add_vote(vote, now_ms)

    @property
    def finality_state(self) -> FinalityState:
        return self.state

    def ancestor_at(self, block_hash, height):
        return self.tree.ancestor_at(block_hash, height)

    def add_certificate(self, cert, now_ms):
        return self.state.adopt_finality(cert, self.tree.ancestor_at)

    async def add_certificate_sliced(self, cert, now_ms):
        return self.add_certificate(cert, now_ms)

    def add_evidence(self, evidence, now_ms):
        updates = [self.state.add_vote(v, self.tree.ancestor_at) for v in (evidence.first, evidence.second)]
        return updates[-1]

    def justification_for(self, key):
        return self.state.justification_of(Checkpoint(self.tree.height(key), key))

    def record_own_vote(self, vote) -> None:
        if self.fail_writes:
            raise StoreError("disk-full", "no space left")
        self.stored.append(vote)
        self.journal.append(("stored", vote))

    def own_votes(self, voter=None):
        return [v for v in self.stored if voter is None or v.voter == voter][-1:]

    def evidence(self):
        return list(self.state.evidence)

    def certificate_for(self, key):
        if isinstance(key, int):
            key = self.tree.ancestor_at(self.chain.tip_hash, key)
        if key is None:
            return None
        return self.state.finality_of(Checkpoint(self.tree.height(key), key))


def make_voter(ledger: FakeLedger, journal: list, member: int = 0, env: dict | None = None) -> tuple[Voter, Log]:
    log = Log()
    voter = Voter(ledger, P4, KEYS[member], log, lambda: 0, env=env or {})
    voter.broadcast_vote = lambda vote: journal.append(("sent", vote))
    voter.broadcast_evidence = lambda evidence: journal.append(("evidence", evidence))
    return voter, log


def receive(voter: Voter, vote, peer: str = "peer") -> str:
    """A peer's vote handed to the voter, as finality gossip does (awaited)."""
    return asyncio.run(voter.receive_vote(vote, peer))


def others_vote(ledger: FakeLedger, voter: Voter, members=(1, 2, 3)) -> None:
    """The other members vote the link our voter just voted for (as they would)."""
    last = voter.guard.last
    for i in members:
        receive(voter, sign_vote(KEYS[i].sign, KEYS[i].public_key, P4, last.source, last.target))


@pytest.fixture
def tree() -> Tree:
    return Tree()


def test_a_member_votes_for_the_new_tip_writing_before_sending(tree):
    blocks = tree.extend(tree.genesis, 1)
    journal: list = []
    ledger = FakeLedger(tree, blocks[-1], journal)
    voter, log = make_voter(ledger, journal)
    vote = voter.tip_moved()
    assert vote is not None and vote.target == Checkpoint(1, blocks[0]) and vote.source.height == 0
    assert [kind for kind, _ in journal] == ["stored", "sent"], "the vote left before it was durable"
    assert log.named("finality.vote_recorded")[0]["target"] == 1
    assert voter.tip_moved() is None, "a second vote for the same checkpoint"


def test_three_of_four_finalize_and_it_is_logged_once_with_the_signers(tree):
    blocks = tree.extend(tree.genesis, 2)
    journal: list = []
    ledger = FakeLedger(tree, blocks[0], journal)
    voter, log = make_voter(ledger, journal)
    voter.tip_moved()
    others_vote(ledger, voter, (1, 2))  # 3 of 4: genesis -> 1 justifies block 1
    ledger.chain.tip_hash = blocks[1]
    voter.tip_moved()
    others_vote(ledger, voter, (1, 2))  # 1 -> 2 finalizes block 1
    assert ledger.finalized == Checkpoint(1, blocks[0])
    finalized = log.named("finality.finalized")
    assert len(finalized) == 1 and finalized[0]["height"] == 1
    assert sorted(finalized[0]["signers"]) == ["member-0", "member-1", "member-2"]
    status = voter.status()
    assert status["finalized_height"] == 1 and status["finality_lag"] == 1 and status["evidence"] == []
    assert voter.sync_certificate(blocks[1]).source == Checkpoint(1, blocks[0])
    assert voter.sync_certificate(blocks[0]) is None, "a certificate whose target the batch lacks"


def test_killed_between_writing_and_sending_it_never_equivocates_after_a_restart(tree):
    blocks = tree.extend(tree.genesis, 3)
    journal: list = []
    stored: list = []
    ledger = FakeLedger(tree, blocks[1], journal, stored)
    voter, _ = make_voter(ledger, journal)

    def crash(vote):
        raise SystemExit("killed")  # the process died after the write, before the send
    voter.broadcast_vote = crash
    with pytest.raises(SystemExit):
        voter.tip_moved()
    assert [kind for kind, _ in journal] == ["stored"]
    written = stored[0]
    # Restarted on a chain whose block at that height is another one (a reorg while down).
    rival = tree.extend(blocks[0], 1, tag=b"rival")
    restarted_ledger = FakeLedger(tree, rival[0], journal, stored)
    restarted, log = make_voter(restarted_ledger, journal)
    assert log.named("finality.votes_restored")[0]["target"] == written.target.height
    assert restarted.tip_moved() is None, "voted again at a height it had voted at: a double vote"
    assert restarted.greeting()[0] == [written], "the stored vote is not sent again"
    # A later block: voting goes on, and no two of its votes conflict.
    later = tree.extend(rival[0], 1, tag=b"rival")
    restarted_ledger.chain.tip_hash = later[0]
    vote = restarted.tip_moved()
    assert vote is not None and vote.target.height == 3
    assert Evidence.of(written, vote).kind is None


def test_the_crash_hook_exits_after_writing_before_sending(tree, monkeypatch):
    blocks = tree.extend(tree.genesis, 1)
    journal: list = []
    ledger = FakeLedger(tree, blocks[0], journal)
    exits = []
    monkeypatch.setattr("gridchain.node.voter.os._exit", lambda status: (exits.append(status), (_ for _ in ()).throw(
        SystemExit(status))))
    voter, _ = make_voter(ledger, journal, env={"GRIDCHAIND_TEST_EXIT_AFTER_VOTE": "1"})
    with pytest.raises(SystemExit):
        voter.tip_moved()
    assert exits and [kind for kind, _ in journal] == ["stored"]


def test_a_vote_that_cannot_be_written_is_never_sent(tree):
    blocks = tree.extend(tree.genesis, 1)
    journal: list = []
    ledger = FakeLedger(tree, blocks[0], journal)
    ledger.fail_writes = True
    voter, log = make_voter(ledger, journal)
    assert voter.tip_moved() is None
    assert journal == [] and log.named("finality.vote_not_stored")


def test_a_node_that_is_not_a_member_follows_but_does_not_vote(tree):
    blocks = tree.extend(tree.genesis, 1)
    journal: list = []
    ledger = FakeLedger(tree, blocks[0], journal)
    log = Log()
    voter = Voter(ledger, P4, None, log, lambda: 0, env={})
    assert not voter.is_member and voter.tip_moved() is None and journal == []


def test_an_equivocating_member_is_caught_once_and_the_evidence_gossiped(tree):
    blocks = tree.extend(tree.genesis, 1)
    fork = tree.extend(tree.genesis, 1, tag=b"fork")
    journal: list = []
    ledger = FakeLedger(tree, blocks[0], journal)
    voter, log = make_voter(ledger, journal)
    genesis = Checkpoint(0, tree.genesis)
    one = sign_vote(KEYS[3].sign, KEYS[3].public_key, P4, genesis, Checkpoint(1, blocks[0]))
    two = sign_vote(KEYS[3].sign, KEYS[3].public_key, P4, genesis, Checkpoint(1, fork[0]))
    receive(voter, one)
    receive(voter, two)
    caught = log.named("member.equivocation")
    assert len(caught) == 1 and caught[0]["member"] == "member-3" and caught[0]["kind"] == "double-vote"
    assert [kind for kind, _ in journal] == ["evidence"]
    assert voter.status()["evidence"][0]["member"] == "member-3"
    assert voter.receive_evidence(Evidence.of(one, two), "peer") is False, "old evidence passed on again"


def test_evidence_from_a_peer_is_checked_stored_and_fake_evidence_refused(tree):
    blocks = tree.extend(tree.genesis, 1)
    fork = tree.extend(tree.genesis, 1, tag=b"fork")
    journal: list = []
    ledger = FakeLedger(tree, blocks[0], journal)
    voter, log = make_voter(ledger, journal)
    genesis = Checkpoint(0, tree.genesis)
    one = sign_vote(KEYS[2].sign, KEYS[2].public_key, P4, genesis, Checkpoint(1, blocks[0]))
    other = sign_vote(KEYS[1].sign, KEYS[1].public_key, P4, genesis, Checkpoint(1, fork[0]))
    with pytest.raises(FinalityError) as info:
        voter.receive_evidence(Evidence.of(one, other), "peer")
    assert info.value.reason == "bad-evidence"
    two = sign_vote(KEYS[2].sign, KEYS[2].public_key, P4, genesis, Checkpoint(1, fork[0]))
    assert voter.receive_evidence(Evidence.of(one, two), "peer") is True
    assert KEYS[2].public_key in ledger.state.caught, "the ledger did not see the conflict"
    assert log.named("member.equivocation")[0]["from_peer"] == "peer"
    assert journal == [], "gossip floods evidence from peers itself; the voter must not send it twice"


def test_a_forged_vote_raises_with_its_reason(tree):
    blocks = tree.extend(tree.genesis, 1)
    journal: list = []
    ledger = FakeLedger(tree, blocks[0], journal)
    voter, _ = make_voter(ledger, journal)
    genesis = Checkpoint(0, tree.genesis)
    good = sign_vote(KEYS[1].sign, KEYS[1].public_key, P4, genesis, Checkpoint(1, blocks[0]))
    forged = type(good)(good.voter, good.source, good.target, bytes(64))
    with pytest.raises(FinalityError) as info:
        receive(voter, forged)
    assert info.value.reason == "bad-vote-signature"
