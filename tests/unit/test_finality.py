"""Finality (Casper FFG on the proof-of-work chain): votes, evidence, certificates, the
justified/finalized state, partitions healing, the voter's own guard, accountable safety,
and checkpoint notes with their consistency proofs. All pure: a block tree of real headers
stands in for the chain, members vote by hand or through a small simulation."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gridchain.consensus.block import BLOCK_VERSION, ZERO_HASH, Header
from gridchain.consensus.finality import (
    BAD_LINK, CAUGHT, COUNTED, DUPLICATE, STALE, UNKNOWN, Certificate, Checkpoint, Evidence, FinalityError,
    FinalityState, Vote, VoterGuard, certificate_evidence, check_consistency, check_evidence, conflict_kind,
    make_note, parse_note, sign_vote, verify_certificate, verify_finality, verify_note, verify_vote, with_block,
)
from gridchain.consensus.finality_votes import VOTE_DOMAIN, VOTE_SIZE, vote_message
from gridchain.consensus.genesis import GENESIS_TIME_MS
from gridchain.consensus.params import NetworkParams, default_quorum
from gridchain.identity.keys import NodeKey

KEYS = [NodeKey.from_seed(bytes([60 + i]) * 32) for i in range(16)]
OUTSIDER = NodeKey.from_seed(b"\x99" * 32)


def make_params(n: int = 4, interval: int = 1, quorum: int | None = None, name: str = "finality-test"):
    members = KEYS[:n]
    return NetworkParams(name, 1, members=frozenset(k.public_key for k in members),
                         member_names={k.public_key: f"member-{i}" for i, k in enumerate(members)},
                         checkpoint_interval=interval, quorum=quorum)


P4 = make_params()


class Tree:
    """A block tree of real headers (proof of work plays no part here) with ``ancestor_at``."""

    def __init__(self) -> None:
        genesis = Header(BLOCK_VERSION, 0, ZERO_HASH, bytes(32), GENESIS_TIME_MS, 1, bytes(32))
        self.genesis = genesis.hash()
        self.headers = {self.genesis: genesis}

    def add(self, parent: bytes, tag: bytes = b"") -> bytes:
        above = self.headers[parent]
        header = Header(BLOCK_VERSION, above.height + 1, parent, hashlib.sha256(tag + parent).digest(),
                        above.time_ms + 60_000, 1, bytes(32))
        self.headers[header.hash()] = header
        return header.hash()

    def extend(self, parent: bytes, count: int, tag: bytes = b"") -> list[bytes]:
        hashes = []
        for _ in range(count):
            parent = self.add(parent, tag)
            hashes.append(parent)
        return hashes

    def height(self, block_hash: bytes) -> int:
        return self.headers[block_hash].height

    def cp(self, block_hash: bytes) -> Checkpoint:
        return Checkpoint(self.height(block_hash), block_hash)

    def ancestor_at(self, block_hash: bytes, height: int) -> bytes | None:
        header = self.headers.get(block_hash)
        if header is None or not 0 <= height <= header.height:
            return None
        while header.height > height:
            block_hash = header.prev_hash
            header = self.headers[block_hash]
        return block_hash

    def branch(self, tip: bytes, from_height: int) -> list[Header]:
        """Headers from ``from_height`` up to ``tip``, oldest first."""
        out = []
        while self.height(tip) >= from_height:
            out.append(self.headers[tip])
            if self.height(tip) == 0:
                break
            tip = self.headers[tip].prev_hash
        return out[::-1]


def vote(i: int, source: Checkpoint, target: Checkpoint, params: NetworkParams = P4) -> Vote:
    return sign_vote(KEYS[i].sign, KEYS[i].public_key, params, source, target)


def reason(call, *args) -> str:
    with pytest.raises(FinalityError) as info:
        call(*args)
    return info.value.reason


@pytest.fixture
def chain():
    tree = Tree()
    return tree, [tree.genesis, *tree.extend(tree.genesis, 8)]


def cps(tree, hashes):
    return [tree.cp(h) for h in hashes]


# --- votes ---------------------------------------------------------------------------------------
def test_a_vote_signs_the_documented_message_and_round_trips(chain):
    tree, blocks = chain
    g, c1 = cps(tree, blocks[:2])
    v = vote(0, g, c1)
    assert v.message(P4.network_hash) == (VOTE_DOMAIN + P4.network_hash + g.hash + (0).to_bytes(8, "big")
                                          + c1.hash + (1).to_bytes(8, "big"))
    assert len(v.encode()) == VOTE_SIZE == 176 and Vote.decode(v.encode()) == v
    verify_vote(P4, v)
    assert reason(Vote.decode, v.encode()[:-1]) == "bad-vote"


def test_verify_vote_names_each_fault(chain):
    tree, blocks = chain
    g, c1, c2 = cps(tree, blocks[:3])
    good = vote(0, g, c1)
    assert reason(verify_vote, P4, Vote(good.voter, g, c1, bytes(64))) == "bad-vote-signature"
    assert reason(verify_vote, P4, Vote(good.voter, g, c2, good.signature)) == "bad-vote-signature"  # other link
    other_network = make_params(name="another-network")
    assert reason(verify_vote, P4, vote(0, g, c1, other_network)) == "bad-vote-signature"
    outsider = sign_vote(OUTSIDER.sign, OUTSIDER.public_key, P4, g, c1)
    assert reason(verify_vote, P4, outsider) == "not-a-member"
    assert reason(vote, 0, c1, c1) == "bad-vote"  # target not above source
    assert reason(verify_vote, P4, Vote(good.voter, c2, c1, good.signature)) == "bad-vote"
    assert reason(vote, 0, g, c1, make_params(interval=2)) == "bad-vote"  # 1 is no checkpoint at interval 2
    assert reason(verify_vote, NetworkParams("open", 1), good) == "finality-off"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.text(max_size=300))
def test_decoders_refuse_garbage_by_name(data, text):
    for decode in (Vote.decode, Evidence.decode, Certificate.decode):
        try:
            decoded = decode(data)
        except FinalityError as exc:
            assert exc.reason in ("bad-vote", "bad-evidence", "bad-certificate")
        else:
            assert decoded.encode() == data  # whatever decodes is in its one canonical form
    for garbage in (text, "gridchain finalized checkpoint v1\n" + text):
        with pytest.raises(FinalityError) as info:
            parse_note(garbage)
        assert info.value.reason == "bad-note"


# --- evidence ------------------------------------------------------------------------------------
def test_double_and_surround_votes_are_evidence(chain):
    tree, blocks = chain
    side = tree.extend(blocks[1], 3, b"side")
    c = cps(tree, blocks)
    s = cps(tree, side)  # heights 2, 3, 4 on a side branch
    double = Evidence.of(vote(1, c[1], c[2]), vote(1, c[1], s[0]))
    double_other_source = Evidence.of(vote(1, c[0], c[2]), vote(1, c[1], c[2]))
    surround = Evidence.of(vote(1, c[0], c[5]), vote(1, c[2], c[3]))
    assert check_evidence(P4, double) == check_evidence(P4, double_other_source) == "double-vote"
    assert check_evidence(P4, surround) == "surround-vote"
    assert Evidence.decode(surround.encode()) == surround
    assert Evidence.of(surround.second, surround.first) == surround  # one canonical form


def test_fake_evidence_is_refused(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    same = vote(1, c[0], c[1])
    cases = {
        "identical": Evidence(same, same),
        "same link, other signature bytes": Evidence(same, Vote(same.voter, same.source, same.target, bytes(64))),
        "consecutive": Evidence.of(vote(1, c[0], c[1]), vote(1, c[1], c[2])),
        "nested but sharing a source": Evidence.of(vote(1, c[0], c[2]), vote(1, c[0], c[5])),
        "two members": Evidence.of(vote(1, c[1], c[2]), vote(2, c[0], c[2])),
    }
    for name, evidence in cases.items():
        assert reason(check_evidence, P4, evidence) == "bad-evidence", name
    forged = Evidence.of(vote(1, c[1], c[2]), Vote(KEYS[1].public_key, c[0], c[2], bytes(64)))
    assert reason(check_evidence, P4, forged) == "bad-vote-signature"


# --- certificates --------------------------------------------------------------------------------
def test_a_quorum_certificate_verifies_and_names_its_signers(chain):
    tree, blocks = chain
    g, c1, c2 = cps(tree, blocks[:3])
    cert = Certificate.from_votes([vote(i, g, c1) for i in (2, 0, 1)])
    assert verify_certificate(P4, cert) == tuple(P4.member_names[k] for k in sorted(KEYS[i].public_key
                                                                                     for i in range(3)))
    assert Certificate.decode(cert.encode()) == cert
    assert verify_finality(P4, cert) and len(cert.encode()) == 82 + 3 * 96
    p16 = make_params(16)
    eleven = Certificate.from_votes([vote(i, g, c1, p16) for i in range(11)])
    assert len(verify_certificate(p16, eleven)) == 11 == default_quorum(16)
    ten = Certificate.from_votes([vote(i, g, c1, p16) for i in range(10)])
    assert reason(verify_certificate, p16, ten) == "short-certificate"


def test_bad_certificates_are_refused_by_name(chain):
    tree, blocks = chain
    g, c1, c2 = cps(tree, blocks[:3])
    votes = [vote(i, g, c1) for i in range(4)]
    good = Certificate.from_votes(votes[:3])
    sigs = list(good.signatures)
    forged = Certificate(g, c1, (sigs[0], sigs[1], (sigs[2][0], bytes(64))))
    lifted = vote(3, g, c2)  # a real signature by member 3, for another link
    mixed = Certificate(g, c1, tuple(sorted([*sigs[:2], (lifted.voter, lifted.signature)])))
    outsider = sign_vote(OUTSIDER.sign, OUTSIDER.public_key, P4, g, c1)
    with_outsider = Certificate(g, c1, tuple(sorted([*sigs[:2], (outsider.voter, outsider.signature)])))
    cases = {
        "short-certificate": Certificate.from_votes(votes[:2]),
        "bad-vote-signature": forged,
        "duplicate-signer": Certificate(g, c1, (sigs[0], sigs[0], sigs[1])),
        "not-a-member": with_outsider,
        "bad-certificate": Certificate(g, c1, tuple(reversed(sigs))),
        "bad-vote": Certificate(c1, g, tuple(sigs)),
    }
    for expected, cert in cases.items():
        assert reason(verify_certificate, P4, cert) == expected, expected
    assert reason(verify_certificate, P4, mixed) == "bad-vote-signature"  # a vote for a different link
    assert reason(Certificate.from_votes, [*votes[:2], lifted]) == "mixed-links"
    assert reason(Certificate.from_votes, [votes[0], votes[0], votes[1]]) == "duplicate-signer"
    assert reason(Certificate.decode, good.encode()[:-1]) == "bad-certificate"
    skip = Certificate.from_votes([vote(i, g, c2) for i in range(3)])
    assert verify_certificate(P4, skip) and reason(verify_finality, P4, skip) == "not-finalizing"


# --- the justified / finalized state ---------------------------------------------------------------
def test_justification_then_finalization_along_a_chain(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    state = FinalityState(P4, tree.genesis)
    assert state.finalized == c[0] and state.justified == (c[0],)
    first = [state.add_vote(vote(i, c[0], c[1]), tree.ancestor_at) for i in range(4)]
    assert [u.status for u in first] == [COUNTED] * 4
    assert [len(u.justified) for u in first] == [0, 0, 1, 0]  # justified at the third vote, not the second
    assert first[2].justified[0].checkpoint == c[1] and not first[2].finalized  # genesis was final already
    assert verify_certificate(P4, first[2].justified[0].certificate) and state.finalized == c[0]
    second = [state.add_vote(vote(i, c[1], c[2]), tree.ancestor_at) for i in range(3)]
    (done,) = second[2].finalized
    assert done.checkpoint == c[1] and state.finalized == c[1] and state.justified == (c[0], c[1], c[2])
    assert verify_finality(P4, done.certificate) and state.finality_of(c[1]) == done.certificate
    assert state.justification_of(c[2]) == second[2].justified[0].certificate
    assert state.add_vote(vote(0, c[1], c[2]), tree.ancestor_at).status == DUPLICATE
    forged_copy = Vote(KEYS[0].public_key, c[1], c[2], bytes(64))
    assert reason(state.add_vote, forged_copy, tree.ancestor_at) == "bad-vote-signature"
    assert not state.evidence and not state.safety_broken


def test_a_link_waiting_for_its_source_counts_once_the_source_is_justified(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    state = FinalityState(P4, tree.genesis)
    for i in range(3):
        state.add_vote(vote(i, c[1], c[2]), tree.ancestor_at)  # 1 is not justified yet
    assert state.finalized == c[0] and c[2] not in state.justified
    update = [state.add_vote(vote(i, c[0], c[1]), tree.ancestor_at) for i in range(3)][-1]
    assert [j.checkpoint for j in update.justified] == [c[1], c[2]]
    assert [f.checkpoint for f in update.finalized] == [c[1]] and state.finalized == c[1]


def test_checkpoints_every_third_block(chain):
    tree, blocks = chain
    p3 = make_params(interval=3)
    c = cps(tree, blocks)
    state = FinalityState(p3, tree.genesis)
    assert reason(vote, 0, c[0], c[2], p3) == "bad-vote"  # 2 is no checkpoint
    skip = [state.add_vote(vote(i, c[0], c[6], p3), tree.ancestor_at) for i in range(3)][-1]
    assert [j.checkpoint for j in skip.justified] == [c[6]] and not skip.finalized  # 0 -> 6 skips 3
    assert state.finalized == c[0]
    assert conflict_kind(vote(0, c[0], c[6], p3), vote(0, c[3], c[6], p3)) == "double-vote"
    # 6 -> 9 needs block 9: the tree reaches 8, so the vote waits for it
    assert state.add_vote(vote(3, c[6], Checkpoint(9, b"\x01" * 32), p3), tree.ancestor_at).status == UNKNOWN
    nine = tree.add(blocks[8])
    last = [state.add_vote(vote(i, c[6], tree.cp(nine), p3), tree.ancestor_at) for i in range(3)][-1]
    assert [f.checkpoint for f in last.finalized] == [c[6]] and state.finalized == c[6]


def test_unknown_targets_wait_and_bad_links_do_not_count(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    side = tree.extend(blocks[0], 3, b"side")
    state = FinalityState(P4, tree.genesis)
    known: set[bytes] = set(blocks)

    def partial(block_hash, height):  # a node that has not seen block 3 yet
        return tree.ancestor_at(block_hash, height) if block_hash in known - {blocks[3]} else None

    early = vote(0, c[0], c[3])
    assert state.add_vote(early, partial).status == UNKNOWN
    assert state.add_vote(early, tree.ancestor_at).status == COUNTED  # fed again once the block is in
    assert state.add_vote(vote(1, tree.cp(side[0]), c[2]), tree.ancestor_at).status == BAD_LINK
    wrong_height = Vote.decode(vote(2, c[0], Checkpoint(2, blocks[3])).encode())
    assert state.add_vote(wrong_height, tree.ancestor_at).status == BAD_LINK


def test_highest_justified_is_per_branch(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    side = tree.extend(blocks[2], 4, b"side")  # heights 3..6
    state = FinalityState(P4, tree.genesis)
    for link in [(c[0], c[2]), (c[2], tree.cp(side[1]))]:
        for i in range(3):
            state.add_vote(vote(i, *link), tree.ancestor_at)
    assert state.highest_justified(blocks[8], 8, tree.ancestor_at) == c[2]
    assert state.highest_justified(side[3], 6, tree.ancestor_at) == tree.cp(side[1])
    assert state.highest_justified(side[0], 3, tree.ancestor_at) == c[2]
    assert state.highest_justified(blocks[1], 1, tree.ancestor_at) == c[0]


def test_blocks_conflicting_with_the_finalized_checkpoint(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    low_side = tree.extend(blocks[1], 5, b"low")  # forks below the finalized height 4, heights 2..6
    high_side = tree.extend(blocks[5], 2, b"high")  # forks above it
    state = FinalityState(P4, tree.genesis)
    for link in [(c[0], c[4]), (c[4], c[5])]:
        for i in range(3):
            state.add_vote(vote(i, *link), tree.ancestor_at)
    assert state.finalized == c[4]
    anc = tree.ancestor_at
    assert not any(state.conflicts_finalized(h, tree.height(h), anc) for h in [*blocks, *high_side])
    assert all(state.conflicts_finalized(h, tree.height(h), anc) for h in low_side)
    new_block = tree.headers[low_side[-1]]  # a child of the side branch, not yet in the tree
    fresh = Header(BLOCK_VERSION, 7, low_side[-1], bytes(32), new_block.time_ms + 1, 1, bytes(32))
    assert state.conflicts_finalized(fresh.hash(), 7, with_block(anc, fresh.hash(), 7, low_side[-1]))
    good = Header(BLOCK_VERSION, 9, blocks[8], bytes(32), 0, 1, bytes(32))
    assert not state.conflicts_finalized(good.hash(), 9, with_block(anc, good.hash(), 9, blocks[8]))
    assert reason(state.conflicts_finalized, fresh.hash(), 7, anc) == "unknown-checkpoint"


def test_prune_forgets_below_finality_and_a_restart_restores(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    state = FinalityState(P4, tree.genesis)
    for h in range(1, 6):
        for i in range(4):
            state.add_vote(vote(i, c[h - 1], c[h]), tree.ancestor_at)
    assert state.finalized == c[4]
    state.prune(4)
    assert state.justified == (c[0], c[4], c[5])
    assert state.add_vote(vote(0, c[2], c[3]), tree.ancestor_at).status == STALE
    restored = FinalityState(P4, tree.genesis, finalized=c[4], justified=[c[5]])
    for i in range(3):
        restored.add_vote(vote(i, c[5], c[6]), tree.ancestor_at)
    assert restored.finalized == c[5] and state.finalized == c[4]


def test_a_fresh_node_adopts_a_finality_certificate_without_the_justification_chain(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    cert = Certificate.from_votes([vote(i, c[5], c[6]) for i in (1, 2, 3)])
    fed = FinalityState(P4, tree.genesis)
    assert not fed.add_certificate(cert, tree.ancestor_at).finalized  # 5 is not justified in its view
    fresh = FinalityState(P4, tree.genesis)
    (done,) = fresh.adopt_finality(cert, tree.ancestor_at).finalized
    assert done.checkpoint == c[5] == fresh.finalized and c[6] in fresh.justified
    short = Certificate.from_votes([vote(i, c[6], c[7]) for i in (1, 2)])
    assert reason(fresh.adopt_finality, short, tree.ancestor_at) == "short-certificate"
    skip = Certificate.from_votes([vote(i, c[6], c[8]) for i in (1, 2, 3)])
    assert reason(fresh.adopt_finality, skip, tree.ancestor_at) == "not-finalizing"
    side = tree.extend(blocks[3], 4, b"side")  # 4..7 beside the finalized 5
    rival = Certificate.from_votes([vote(i, tree.cp(side[2]), tree.cp(side[3])) for i in (0, 1, 2)])
    update = fresh.adopt_finality(rival, tree.ancestor_at)
    assert update.status == "conflicts-finalized" and update.conflicts == (tree.cp(side[2]),)
    assert fresh.finalized == c[5] and fresh.safety_broken


def test_an_equivocating_member_is_caught_and_no_longer_counted(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    side = tree.extend(blocks[0], 3, b"side")
    state = FinalityState(P4, tree.genesis)
    state.add_vote(vote(3, c[0], c[1]), tree.ancestor_at)
    update = state.add_vote(vote(3, c[0], tree.cp(side[0])), tree.ancestor_at)
    (evidence,) = update.evidence
    assert check_evidence(P4, evidence) == "double-vote" and state.caught == {KEYS[3].public_key}
    surround = FinalityState(P4, tree.genesis)
    surround.add_vote(vote(2, c[1], c[2]), tree.ancestor_at)
    assert surround.add_vote(vote(2, c[0], c[4]), tree.ancestor_at).evidence[0].kind == "surround-vote"
    assert state.add_vote(vote(3, c[0], c[2]), tree.ancestor_at).status == CAUGHT


def test_adopting_a_certificate_whose_votes_came_first_settles_the_links_waiting_on_it(chain):
    """The votes of 5 -> 6 and 6 -> 7 counted while 5 was not justified here; then a sync's
    finality certificate for 5, every vote of it a duplicate: 5 and 6 are final all the same."""
    tree, blocks = chain
    c = cps(tree, blocks)
    state = FinalityState(P4, tree.genesis)
    for i in range(4):
        state.add_vote(vote(i, c[5], c[6]), tree.ancestor_at)
    for i in range(3):
        state.add_vote(vote(i, c[6], c[7]), tree.ancestor_at)
    assert state.finalized == c[0] and state.justified == (c[0],)
    cert = Certificate.from_votes([vote(i, c[5], c[6]) for i in (1, 2, 3)])
    update = state.adopt_finality(cert, tree.ancestor_at)
    assert update.status == DUPLICATE
    assert [f.checkpoint for f in update.finalized] == [c[5], c[6]] and state.finalized == c[6]
    assert [j.checkpoint for j in update.justified] == [c[6], c[7]] and state.justified == (c[0], c[5], c[6], c[7])
    assert state.finality_of(c[5]) == cert  # the proof it was given, not all four counted
    assert verify_finality(P4, state.finality_of(c[6]))
    again = state.adopt_finality(cert, tree.ancestor_at)
    assert again.status == DUPLICATE and not again.finalized and not again.justified
    # Justified by a certificate's new votes instead (adoption of 4): the links waiting on 5 follow.
    fed = FinalityState(P4, tree.genesis)
    for i in range(3):
        fed.add_vote(vote(i, c[5], c[6]), tree.ancestor_at)
    fed.adopt_finality(Certificate.from_votes([vote(i, c[4], c[5]) for i in range(3)]), tree.ancestor_at)
    assert fed.finalized == c[5] and c[6] in fed.justified


def test_evidence_catches_its_member_whatever_became_of_its_blocks(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    state = FinalityState(P4, tree.genesis)
    for h in range(1, 6):
        for i in range(3):
            state.add_vote(vote(i, c[h - 1], c[h]), tree.ancestor_at)
    state.prune(4)
    gone = [Checkpoint(2, bytes([n]) * 32) for n in (1, 2)]  # blocks this tree never held, below the horizon
    evidence = Evidence.of(vote(3, c[0], gone[0]), vote(3, c[0], gone[1]))
    assert state.add_vote(evidence.first, tree.ancestor_at).status == STALE  # why votes alone cannot catch it
    update = state.add_evidence(evidence)
    assert update.status == COUNTED and update.evidence == (evidence,)
    assert state.caught == {KEYS[3].public_key} and state.evidence == (evidence,)
    assert state.add_vote(vote(3, c[5], c[6]), tree.ancestor_at).status == CAUGHT
    assert state.justified == (c[0], c[4], c[5]) and state.finalized == c[4]  # nothing counted
    other = Evidence.of(vote(3, c[5], c[7]), vote(3, c[6], c[7]))
    later = state.add_evidence(other)
    assert later.status == DUPLICATE and not later.evidence and state.evidence == (evidence,)
    forged = Evidence.of(evidence.first, Vote(KEYS[2].public_key, c[0], gone[1], bytes(64)))
    assert reason(state.add_evidence, forged) == "bad-evidence"
    unsigned = Evidence.of(vote(2, c[0], gone[0]), Vote(KEYS[2].public_key, c[0], gone[1], bytes(64)))
    assert reason(state.add_evidence, unsigned) == "bad-vote-signature" and KEYS[2].public_key not in state.caught


# --- a small simulation: members with their own views, partitions, healing ------------------------
class SimMember:
    """One member's view: the blocks it knows, its finality state, its guard and stored votes."""

    def __init__(self, index: int, params: NetworkParams, tree: Tree) -> None:
        self.key, self.params, self.tree = KEYS[index], params, tree
        self.known = {tree.genesis}
        self.state = FinalityState(params, tree.genesis)
        self.guard = VoterGuard(params, self.key.public_key)
        self.stored: list[Vote] = []
        self.pending: list[Vote] = []
        self.finalized_seen = [self.state.finalized]

    def ancestor_at(self, block_hash, height):
        return self.tree.ancestor_at(block_hash, height) if block_hash in self.known else None

    def receive_block(self, block_hash: bytes) -> bool:
        header = self.tree.headers[block_hash]
        if block_hash in self.known or header.prev_hash not in self.known:
            return False
        view = with_block(self.ancestor_at, block_hash, header.height, header.prev_hash)
        if self.state.conflicts_finalized(block_hash, header.height, view):
            return False  # conflicts-finalized: refused whatever its work
        self.known.add(block_hash)
        waiting, self.pending = self.pending, []
        for v in waiting:
            self.receive_vote(v)
        return True

    def receive_vote(self, v: Vote) -> None:
        update = self.state.add_vote(v, self.ancestor_at)
        if update.status == UNKNOWN:
            self.pending.append(v)
        self.finalized_seen.append(self.state.finalized)

    def tip(self) -> bytes:
        def key(h):
            height = self.tree.height(h)
            return self.state.highest_justified(h, height, self.ancestor_at).height, height, h
        return max((h for h in self.known if not self.state.conflicts_finalized(h, self.tree.height(h),
                                                                               self.ancestor_at)), key=key)

    def mine(self, tag: bytes) -> bytes:
        block_hash = self.tree.add(self.tip(), tag)
        self.known.add(block_hash)
        return block_hash

    def vote(self) -> Vote | None:
        tip = self.tip()
        justified = self.state.highest_justified(tip, self.tree.height(tip), self.ancestor_at)
        link = self.guard.next_vote(tip, self.tree.height(tip), justified, self.ancestor_at)
        if link is None:
            return None
        v = sign_vote(self.key.sign, self.key.public_key, self.params, *link)
        self.guard.record(v)
        self.stored.append(v)  # durable before it is sent
        return v


class Sim:
    def __init__(self, n: int = 4) -> None:
        self.tree = Tree()
        self.params = make_params(n)
        self.members = [SimMember(i, self.params, self.tree) for i in range(n)]
        self.blocks: list[bytes] = []
        self.votes: list[Vote] = []
        self.counter = itertools.count()

    def step(self, groups: list[list[int]], miners: dict[int, int]) -> None:
        """Each group's miner (group index -> member) mines a block, it spreads in the group,
        everyone votes, and the votes spread in the group."""
        for g, group in enumerate(groups):
            if g in miners:
                block = self.members[miners[g]].mine(b"%d" % next(self.counter))
                self.blocks.append(block)
                for i in group:
                    self.members[i].receive_block(block)
            cast = [v for v in (self.members[i].vote() for i in group) if v is not None]
            self.votes += cast
            for v in cast:
                for i in group:
                    self.members[i].receive_vote(v)

    def heal(self) -> None:
        for member in self.members:
            for block in sorted(self.blocks, key=self.tree.height):
                member.receive_block(block)
            for v in self.votes:
                member.receive_vote(v)

    def assert_never_reverted(self) -> None:
        for m in self.members:
            for older, newer in itertools.pairwise(m.finalized_seen):
                assert newer.height >= older.height and self.tree.ancestor_at(newer.hash, older.height) == older.hash
        assert not any(m.state.evidence or m.state.safety_broken for m in self.members)


ALL = [[0, 1, 2, 3]]


def test_a_2_2_split_stops_finality_and_it_resumes_after_the_heal():
    sim = Sim()
    for _ in range(3):
        sim.step(ALL, {0: 0})
    before = {m.state.finalized for m in sim.members}
    assert len(before) == 1 and next(iter(before)).height == 2
    for n in range(4):
        sim.step([[0, 1], [2, 3]], {0: 0, 1: 2} if n < 2 else {0: 0})  # both sides mine, one more
    assert {m.state.finalized for m in sim.members} == before  # mining went on, finality did not
    assert sim.members[0].tree.height(sim.members[0].tip()) == 7 and sim.tree.height(sim.members[2].tip()) == 5
    sim.heal()
    for _ in range(2):
        sim.step(ALL, {0: 1})
    after = {m.state.finalized for m in sim.members}
    assert len(after) == 1 and next(iter(after)).height == 8
    sim.assert_never_reverted()


def test_a_1_3_split_keeps_finality_on_the_three_and_the_one_rejoins():
    sim = Sim()
    for _ in range(3):
        sim.step(ALL, {0: 0})
    for _ in range(5):
        sim.step([[0], [1, 2, 3]], {0: 0, 1: 1})  # the lone member mines as fast, on its own
    lone, others = sim.members[0], sim.members[1:]
    assert lone.state.finalized.height == 2 and {m.state.finalized.height for m in others} == {7}
    lone_tip = lone.tip()
    sim.heal()
    assert lone.state.finalized == others[0].state.finalized  # it learns the three's finality
    assert all(lone_tip not in m.known for m in others)  # its branch conflicts with finality: refused
    assert lone.state.conflicts_finalized(lone_tip, sim.tree.height(lone_tip), lone.ancestor_at)
    for _ in range(4):
        sim.step(ALL, {0: 1})
    assert {m.state.finalized for m in sim.members} == {others[0].state.finalized}
    assert others[0].state.finalized.height == 11
    assert {v.voter for v in sim.votes[-4:]} == {k.public_key for k in KEYS[:4]}  # all four vote again
    sim.assert_never_reverted()


def test_four_members_finalize_each_block_one_round_behind():
    sim = Sim()
    for n in range(1, 11):
        sim.step(ALL, {0: n % 4})
        assert {m.state.finalized.height for m in sim.members} == {n - 1}


# --- the voter's guard ------------------------------------------------------------------------------
def test_the_guard_votes_newest_target_from_highest_justified_and_refuses_equivocation(chain):
    tree, blocks = chain
    c = cps(tree, blocks)
    side = tree.extend(blocks[2], 3, b"side")
    guard = VoterGuard(P4, KEYS[0].public_key)
    assert guard.next_vote(blocks[3], 3, c[1], tree.ancestor_at) == (c[1], c[3])
    guard.record(vote(0, c[1], c[3]))
    assert guard.next_vote(blocks[3], 3, c[1], tree.ancestor_at) is None  # voted for it already
    assert guard.next_vote(side[0], 3, c[2], tree.ancestor_at) is None  # same height on the side branch
    assert reason(guard.record, vote(0, c[1], tree.cp(side[0]))) == "would-double-vote"
    assert reason(guard.record, vote(0, c[0], c[5])) == "would-surround"  # surrounds 1 -> 3
    assert reason(guard.record, vote(0, c[1], c[2])) == "vote-not-newer"
    assert reason(guard.record, vote(1, c[1], c[4])) == "bad-vote"  # not this member's
    guard.record(vote(0, c[1], c[3]))  # the same vote again is fine
    restarted = VoterGuard(P4, KEYS[0].public_key, [vote(0, c[1], c[3])])
    assert restarted.next_vote(side[1], 4, c[1], tree.ancestor_at) == (c[1], tree.cp(side[1]))
    assert reason(restarted.record, vote(0, c[2], c[3])) == "would-double-vote"


@st.composite
def tip_sequences(draw):
    """A random block tree and a run of (tip, justified ancestor, crash point) for one member."""
    tree = Tree()
    nodes = [tree.genesis]
    for n in range(draw(st.integers(1, 30))):  # parents mostly the newest block: a chain, with forks
        back = min(len(nodes) - 1, draw(st.sampled_from([0, 0, 0, 1, 2, 5])))
        nodes.append(tree.add(nodes[-1 - back], b"%d" % n))
    steps = []
    for step in range(draw(st.integers(1, 30))):
        # tips move up the tree over the run, with jumps back (reorgs, a stale view after a restart)
        reach = max(1, (step + 1) * len(nodes) // 30)
        tip = nodes[min(len(nodes) - 1, draw(st.integers(0, reach)) + draw(st.integers(0, len(nodes) // 3)))]
        justified_height = max(0, tree.height(tip) - draw(st.integers(1, 4)))
        crash = draw(st.sampled_from(["none", "none", "before-persist", "before-send", "restart"]))
        forced = None  # now and then a caller asks for any link at all
        if draw(st.integers(0, 4)) == 0:
            forced = draw(st.tuples(st.sampled_from(nodes), st.sampled_from(nodes)))
        steps.append((tip, justified_height, crash, forced))
    return tree, steps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tip_sequences())
def test_a_guard_restarted_from_persisted_votes_never_equivocates(case):
    tree, steps = case
    key = KEYS[0]
    persisted: list[Vote] = []
    sent: list[Vote] = []
    guard = VoterGuard(P4, key.public_key, persisted)
    for tip, justified_height, crash, forced in steps:
        justified = Checkpoint(justified_height, tree.ancestor_at(tip, justified_height))
        link = guard.next_vote(tip, tree.height(tip), justified, tree.ancestor_at)
        if forced is not None:  # the guard must refuse whatever of it is unsafe
            s, t = tree.cp(forced[0]), tree.cp(forced[1])
            if s.height < t.height:
                link = (s, t)
        if link is not None:
            v = sign_vote(key.sign, key.public_key, P4, *link)
            try:
                guard.record(v)
            except FinalityError:
                v = None
            if v is not None and crash != "before-persist":
                persisted.append(v)
                if crash != "before-send":
                    sent.append(v)
        if crash != "none":  # killed here, restarted from the store
            guard = VoterGuard(P4, key.public_key, list(persisted))
    event(f"votes sent: {min(len(sent) // 3 * 3, 9)}+")
    for a, b in itertools.combinations(persisted, 2):
        assert conflict_kind(a, b) is None, (a, b)
    assert set(sent) <= set(persisted)


# --- accountable safety ------------------------------------------------------------------------------
@st.composite
def safety_scenarios(draw):
    """A trunk and two branches; honest members vote through their guard, byzantine ones sign
    anything; two views see the votes of their branch (and the trunk)."""
    n = draw(st.integers(4, 6))
    tree = Tree()
    trunk = [tree.genesis, *tree.extend(tree.genesis, draw(st.integers(0, 2)), b"t")]
    a = tree.extend(trunk[-1], draw(st.integers(1, 4)), b"a")
    b = tree.extend(trunk[-1], draw(st.integers(1, 4)), b"b")
    points = {h: tree.cp(h) for h in [*trunk, *a, *b]}
    links = [(points[s], points[t]) for s in points for t in points
             if tree.height(s) < tree.height(t) and tree.ancestor_at(t, tree.height(s)) == s]
    # Per branch, the links its followers sign: consecutive, or skipping some checkpoints (then
    # a finalization on one branch can be surrounded by a link on the other). The trunk part is shared.
    kept_trunk = [h for h in trunk[1:] if draw(st.booleans())]
    scripts = {}
    for name, branch in (("a", a), ("b", b)):
        kept = [h for h in branch[:-2] if draw(st.booleans())]
        path = list(dict.fromkeys([trunk[0], *kept_trunk, *kept, *[*trunk, *branch][-2:]]))
        scripts[name] = [(points[s], points[t]) for s, t in itertools.pairwise(sorted(path, key=tree.height))]
    params = make_params(n)
    attack = draw(st.booleans())  # an attack: just too few or enough byzantine members sign both branches
    overlap = 2 * params.quorum - n
    count = draw(st.integers(max(0, overlap - 1), n) if attack else st.integers(0, n))
    byzantine = set(draw(st.permutations(range(n)))[:count])
    votes = []
    for i in range(n):
        # Byzantine members sign both branches or anything; honest ones follow one branch, or
        # try both and let the guard refuse what would equivocate.
        if attack:
            choices = ["ab"] if i in byzantine else ["a", "b"]
        else:
            choices = ["ab", "a", "b", ""] if i in byzantine else ["a", "b", "ab", ""]
        follow = draw(st.sampled_from(choices))
        extra = draw(st.lists(st.sampled_from(links), max_size=1 if attack else 3))
        wanted = [link for name in follow for link in scripts[name]] + extra
        guard = VoterGuard(params, KEYS[i].public_key)
        for link in wanted:
            v = vote(i, *link, params)
            if i not in byzantine:
                try:
                    guard.record(v)
                except FinalityError:
                    continue
            votes.append(v)
    order = draw(st.permutations(votes))
    return tree, params, set(a), set(b), byzantine, order


def _run(params, tree, votes):
    state = FinalityState(params, tree.genesis)
    for v in votes:
        state.add_vote(v, tree.ancestor_at)
    return state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(safety_scenarios())
def test_conflicting_finality_needs_a_third_of_the_members_caught(case):
    tree, params, a, b, byzantine, votes = case
    n, q = len(params.members), params.quorum
    view_a = _run(params, tree, [v for v in votes if v.target.hash not in b])
    view_b = _run(params, tree, [v for v in votes if v.target.hash not in a])
    everything = _run(params, tree, votes)
    fa, fb = view_a.finalized, view_b.finalized
    low, high = sorted((fa, fb))
    conflict = tree.ancestor_at(high.hash, low.height) != low.hash
    broken = conflict or any(s.safety_broken for s in (view_a, view_b, everything))
    event("conflicting finality" if conflict else "safety alarm only" if broken else "safe")
    if broken:
        event("evidence: " + ", ".join(sorted({e.kind for e in everything.evidence})))
    honest = {KEYS[i].public_key for i in range(n) if i not in byzantine}
    assert not everything.caught & honest  # the guard keeps honest members out of trouble
    if broken:
        assert len(everything.caught) >= 2 * q - n and 3 * len(everything.caught) >= n
        for evidence in everything.evidence:
            assert check_evidence(params, evidence) in ("double-vote", "surround-vote")


def test_two_byzantine_members_of_four_finalize_two_branches_and_are_caught():
    tree = Tree()
    a = [tree.genesis, *tree.extend(tree.genesis, 3, b"a")]
    b = [tree.genesis, *tree.extend(tree.genesis, 3, b"b")]
    votes_a = [vote(i, tree.cp(s), tree.cp(t)) for s, t in itertools.pairwise(a) for i in (0, 1, 2)]
    votes_b = [vote(i, tree.cp(s), tree.cp(t)) for s, t in itertools.pairwise(b) for i in (1, 2, 3)]
    view_a, view_b = _run(P4, tree, votes_a), _run(P4, tree, votes_b)
    assert view_a.finalized == tree.cp(a[2]) and view_b.finalized == tree.cp(b[2])  # two branches final
    both = _run(P4, tree, votes_a + votes_b)
    assert both.caught == {KEYS[1].public_key, KEYS[2].public_key}
    assert both.safety_at_risk and both.finalized == tree.cp(a[2])  # keeps its first branch, says so
    assert not _run(P4, tree, votes_a[:6]).safety_at_risk
    certs = view_a.finality_of(tree.cp(a[2])), view_b.finality_of(tree.cp(b[2]))
    assert {e.voter for e in certificate_evidence(*certs)} == both.caught


@pytest.mark.parametrize("a_first", [True, False])
def test_a_skip_link_that_surrounds_a_finalization_is_caught(a_first):
    tree = Tree()
    a = [tree.genesis, *tree.extend(tree.genesis, 2, b"a")]
    b = [tree.genesis, *tree.extend(tree.genesis, 4, b"b")]
    votes_a = [vote(i, tree.cp(s), tree.cp(t)) for s, t in [(a[0], a[1]), (a[1], a[2])] for i in (0, 1, 2)]
    votes_b = [vote(i, tree.cp(s), tree.cp(t)) for s, t in [(b[0], b[3]), (b[3], b[4])] for i in (1, 2, 3)]
    assert _run(P4, tree, votes_a).finalized == tree.cp(a[1]) and _run(P4, tree, votes_b).finalized == tree.cp(b[3])
    both = _run(P4, tree, votes_a + votes_b if a_first else votes_b + votes_a)
    assert both.caught == {KEYS[1].public_key, KEYS[2].public_key} and both.safety_at_risk
    assert {check_evidence(P4, e) for e in both.evidence} == {"surround-vote"}  # 0 < 1 < 2 < 3: no double vote


# --- checkpoint notes ----------------------------------------------------------------------------------
def finalized_note(tree, blocks, at, params=P4, signers=(0, 1, 2)):
    cert = Certificate.from_votes([vote(i, tree.cp(blocks[at]), tree.cp(blocks[at + 1]), params) for i in signers])
    return make_note(params, tree.headers[blocks[at]], cert)


def test_a_note_verifies_offline_and_round_trips(chain):
    tree, blocks = chain
    note = finalized_note(tree, blocks, 3)
    text = note.text()
    assert text.splitlines()[0] == "gridchain finalized checkpoint v1" and "time 1970-" not in text
    assert parse_note(text) == note
    check = verify_note(P4, text)
    assert check.checkpoint == tree.cp(blocks[3]) and check.time_ms == tree.headers[blocks[3]].time_ms
    assert check.summary().endswith(f"certified by 3 of 4 members ({', '.join(check.signers)})")


def test_tampered_and_short_notes_are_refused(chain):
    tree, blocks = chain
    text = finalized_note(tree, blocks, 3).text()
    lines = text.splitlines(keepends=True)
    other_block = tree.headers[blocks[4]].to_bytes().hex()
    cases = {
        "short-certificate": "".join(lines[:-1]),
        "bad-vote-signature": text.replace(lines[-1].split()[2], "00" * 64),
        "bad-note": text.replace(lines[5].split()[1], other_block),
        "wrong-network": text.replace(P4.network_hash.hex(), "11" * 32),
    }
    for expected, tampered in cases.items():
        assert reason(verify_note, P4, tampered) == expected, expected
    for not_canonical in [text.upper(), text.rstrip("\n"), text.replace("height 3", "height 03"),
                          text.replace("\n", "\r\n"), text + "\n", "hello\n"]:
        assert reason(parse_note, not_canonical) == "bad-note"
    renamed = lines[-1].rsplit(" ", 1)[0] + " someone-else\n"
    assert reason(verify_note, P4, "".join(lines[:-1]) + renamed) == "bad-note"
    skip = Certificate.from_votes([vote(i, tree.cp(blocks[3]), tree.cp(blocks[5])) for i in range(3)])
    assert reason(make_note, P4, tree.headers[blocks[3]], skip) == "not-finalizing"


def test_a_later_note_extends_an_earlier_one(chain):
    tree, blocks = chain
    earlier, later = finalized_note(tree, blocks, 2), finalized_note(tree, blocks, 6, signers=(1, 2, 3))
    headers = tree.branch(blocks[6], 3)
    for first, second in [(earlier, later), (later, earlier)]:
        result = check_consistency(P4, first, second, headers)
        assert result.extends and (result.earlier, result.later) == (tree.cp(blocks[2]), tree.cp(blocks[6]))
    assert check_consistency(P4, earlier, earlier).extends
    assert reason(check_consistency, P4, earlier, later, headers[1:]) == "bad-headers"  # does not reach 2
    gap = headers[:2] + headers[3:]
    assert reason(check_consistency, P4, earlier, later, gap) == "bad-headers"
    side = tree.extend(blocks[2], 4, b"side")
    assert reason(check_consistency, P4, earlier, later, tree.branch(side[-1], 3)) == "bad-headers"


def test_two_notes_on_forked_branches_show_the_fork_and_who_signed_both():
    tree = Tree()
    trunk = [tree.genesis, *tree.extend(tree.genesis, 2, b"t")]
    a = [*trunk, *tree.extend(trunk[-1], 3, b"a")]
    b = [*trunk, *tree.extend(trunk[-1], 4, b"b")]
    note_a = finalized_note(tree, a, 4, signers=(0, 1, 2))
    note_b = finalized_note(tree, b, 4, signers=(1, 2, 3))
    result = check_consistency(P4, note_a, note_b, tree.branch(b[4], 1) + tree.branch(a[4], 1))
    assert not result.extends and result.fork.height == 4
    assert result.fork.common == tree.cp(trunk[-1])
    assert {e.voter for e in result.evidence} == {KEYS[1].public_key, KEYS[2].public_key}
    assert all(check_evidence(P4, e) == "double-vote" for e in result.evidence)
    higher = finalized_note(tree, b, 5, signers=(1, 2, 3))
    apart = check_consistency(P4, note_a, higher, tree.branch(b[5], 4))
    assert not apart.extends and apart.fork.height == 4 and apart.fork.common is None  # headers too short
