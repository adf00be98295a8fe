"""Finality in the ledger: votes and certificates stored in one transaction with what they
change, reloaded and re-checked on open; the member's own vote durable before it is sent;
votes that outrun their block applied when it comes; side branches below the finalized
block pruned from store and tree; fork choice by justification surviving a reopen; the
audit checking every certificate and reporting evidence; the schema-2 migration."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gridchain.consensus.block import Block
from gridchain.consensus.chain import Chain
from gridchain.consensus.finality import (
    Certificate, Checkpoint, FinalityError, Vote, VoterGuard, sign_vote, verify_finality,
)
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.identity.keys import NodeKey
from gridchain.ledger.audit import audit_store
from gridchain.ledger.finality_keeper import PendingPool
from gridchain.ledger import finality_store
from gridchain.ledger.finality_store import JUSTIFIES, MAX_VOTES_PER_TARGET, FinalityWrite
from gridchain.ledger.ledger import Ledger, LedgerDamaged
from gridchain.ledger.store import DB_FILE, SCHEMA_VERSION, StoreError

from tests.support.blocks import ALICE, BITS, BOB, NOW_MS, Relay, make_block

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = [ALICE, BOB, NodeKey.from_seed(bytes([3]) * 32), NodeKey.from_seed(bytes([4]) * 32)]
FPARAMS = NetworkParams("finality-ledger", BITS, members=frozenset(k.public_key for k in MEMBERS),
                        member_names={k.public_key: f"m{i}" for i, k in enumerate(MEMBERS)})


def vote(i: int, source: Checkpoint, target: Checkpoint) -> Vote:
    return sign_vote(MEMBERS[i].sign, MEMBERS[i].public_key, FPARAMS, source, target)


def cp(entry) -> Checkpoint:
    return Checkpoint(entry.height, entry.hash)


def add_line(ledger: Ledger, count: int, relay: Relay, parent=None, signer: NodeKey = ALICE) -> list[Block]:
    blocks = []
    for _ in range(count):
        block = make_block(parent or ledger.tip, relay.next(), signer=signer)
        parent = ledger.add_block(block, NOW_MS).result.entry
        blocks.append(block)
    return blocks


def vote_tip(ledger: Ledger, voters=range(3)):
    """What honest members do after each block: vote (highest justified -> tip)."""
    change = None
    for i in voters:
        change = ledger.add_vote(vote(i, ledger.justified, cp(ledger.tip)), NOW_MS)
    return change


def finalized_line(ledger: Ledger, count: int, relay: Relay) -> list[Block]:
    """``count`` blocks, each voted on as it comes: finality trails the tip by one block."""
    blocks = []
    for _ in range(count):
        blocks += add_line(ledger, 1, relay)
        vote_tip(ledger)
    return blocks


@pytest.fixture
def ledger(tmp_path):
    led = Ledger.open(tmp_path, FPARAMS, NOW_MS)
    yield led
    led.close()


def reopen(ledger: Ledger) -> Ledger:
    path = ledger.store.path.parent
    ledger.close()
    return Ledger.open(path, FPARAMS, NOW_MS)


def db_of(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path / DB_FILE, isolation_level=None)


def count(ledger: Ledger, table: str) -> int:
    return ledger.store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# --- votes, certificates, reopen ---------------------------------------------------------------
def test_votes_finalize_and_certificates_are_stored_with_their_blocks(ledger):
    blocks = finalized_line(ledger, 5, Relay())
    assert ledger.finalized == Checkpoint(4, blocks[3].hash) and ledger.justified == Checkpoint(5, blocks[4].hash)
    for height in range(1, 5):
        cert = ledger.certificate_for(height)
        assert cert.source == Checkpoint(height, blocks[height - 1].hash)
        assert len(verify_finality(FPARAMS, cert)) == 3
        assert ledger.certificate_for(blocks[height - 1].hash) == cert
    assert ledger.certificate_for(5) is None and ledger.justification_for(5).target.height == 5
    assert ledger.proof_certificate(2).source.height == 2 and ledger.proof_certificate(5) is None
    assert count(ledger, "votes") == 6, "only the votes for the finalized height and above stay"
    assert count(ledger, "certificates") == 4 + 2, "every finality certificate; justifications from the finalized up"


def test_finality_and_pending_votes_survive_a_reopen(ledger):
    blocks = finalized_line(ledger, 4, Relay())
    extra = add_line(ledger, 1, Relay(start_seq=25))[0]
    for i in (0, 1):  # two of the three votes a link needs
        assert ledger.add_vote(vote(i, ledger.justified, cp(ledger.tip)), NOW_MS).status == "counted"
    finalized, justified = ledger.finalized, ledger.justified
    ledger = reopen(ledger)
    try:
        assert ledger.finalized == finalized == Checkpoint(3, blocks[2].hash) and ledger.justified == justified
        change = ledger.add_vote(vote(2, justified, Checkpoint(5, extra.hash)), NOW_MS)
        assert [f.checkpoint for f in change.finalized] == [justified], "the two stored votes counted again"
        assert ledger.add_vote(vote(0, justified, Checkpoint(5, extra.hash)), NOW_MS).status == "duplicate"
    finally:
        ledger.close()


def test_a_peers_vote_is_stored_unsynced_and_what_it_makes_synced(ledger):
    """Other members' votes are written without a sync of their own (a peer can send them again);
    the certificate a quorum makes, and the member's own vote, are synced commits."""
    finalized_line(ledger, 2, Relay())
    add_line(ledger, 1, Relay(start_seq=13))
    modes = []  # the synchronous level each write transaction committed with

    def on_commit(text: str) -> None:
        if text == "COMMIT":
            modes.append(ledger.store.db.execute("PRAGMA synchronous").fetchone()[0])

    ledger.store.db.set_trace_callback(on_commit)
    source, target = ledger.justified, cp(ledger.tip)
    assert ledger.add_vote(vote(0, source, target), NOW_MS).status == "counted"
    assert ledger.add_vote(vote(1, source, target), NOW_MS).status == "counted"
    change = ledger.add_vote(vote(2, source, target), NOW_MS)
    assert change.justified and change.finalized
    own = vote(3, source, target)
    ledger.record_own_vote(own)
    ledger.store.db.set_trace_callback(None)
    NORMAL, FULL = 1, 2
    assert modes == [NORMAL, NORMAL, FULL, FULL], modes
    assert ledger.store.db.execute("PRAGMA synchronous").fetchone()[0] == FULL, "the connection stays synced"
    ledger = reopen(ledger)
    try:
        assert ledger.finalized == source and ledger.own_votes() == [own]
        assert count(ledger, "votes") >= 3
    finally:
        ledger.close()


def test_fork_choice_by_justification_survives_a_reopen(ledger):
    first = add_line(ledger, 1, Relay())[0]
    light = add_line(ledger, 2, Relay("relay-a"))
    heavy = add_line(ledger, 4, Relay("relay-b"), parent=ledger.chain.get(first.hash), signer=BOB)
    assert ledger.tip.hash == heavy[-1].hash
    change = None
    for i in range(3):
        change = ledger.add_vote(vote(i, ledger.finalized, cp(ledger.chain.get(light[0].hash))), NOW_MS)
    assert change.reorg is not None and change.reorg.result.status == "reorg"
    assert ledger.tip.hash == light[-1].hash
    assert [c.relay_id for c in change.reorg.displaced] == ["relay-b"], "heavy's readings go back to capture"
    rows, _ = ledger.store.readings_page(relay="relay-a")
    assert len(rows) == 12
    ledger = reopen(ledger)
    try:
        assert ledger.tip.hash == light[-1].hash
    finally:
        ledger.close()


def test_votes_are_bounded_per_member_per_checkpoint_and_evidence_is_stored(ledger):
    first = add_line(ledger, 1, Relay())[0]
    rivals = [add_line(ledger, 1, Relay(f"relay-r{i}"), parent=ledger.chain.get(first.hash))[0] for i in range(4)]
    genesis = ledger.finalized
    changes = [ledger.add_vote(vote(3, genesis, Checkpoint(2, b.hash)), NOW_MS) for b in rivals]
    assert changes[0].status == "counted" and changes[0].evidence == ()
    [evidence] = changes[1].evidence
    assert evidence.voter == MEMBERS[3].public_key and evidence.kind == "double-vote"
    assert [c.status for c in changes[2:]] == ["caught", "caught"]
    assert count(ledger, "votes") <= MAX_VOTES_PER_TARGET
    assert ledger.evidence() == [evidence]
    report = audit_store(ledger.store.path, FPARAMS)
    assert report.ok and report.evidence == [evidence], report.problems
    ledger = reopen(ledger)
    try:
        assert ledger.finality_state.caught == {MEMBERS[3].public_key}, "caught again after a restart"
    finally:
        ledger.close()


def test_an_invalid_vote_is_refused_with_its_reason_and_not_stored(ledger):
    add_line(ledger, 1, Relay())
    good = vote(0, ledger.finalized, cp(ledger.tip))
    forged = Vote(good.voter, good.source, good.target, bytes(64))
    with pytest.raises(FinalityError) as refused:
        ledger.add_vote(forged, NOW_MS)
    assert refused.value.reason == "bad-vote-signature" and count(ledger, "votes") == 0


def test_a_peers_finality_certificate_is_adopted(tmp_path, ledger):
    blocks = finalized_line(ledger, 4, Relay())
    cert = ledger.certificate_for(3)
    (tmp_path / "fresh").mkdir()
    fresh = Ledger.open(tmp_path / "fresh", FPARAMS, NOW_MS)
    try:
        assert fresh.add_blocks(blocks, NOW_MS).error is None
        change = fresh.add_certificate(cert, NOW_MS)
        assert fresh.finalized == cert.source and change.finalized[0].checkpoint == cert.source
        assert fresh.certificate_for(3) == cert
    finally:
        fresh.close()


def test_a_certificate_whose_votes_came_first_still_finalizes(ledger):
    """Votes of link 1 -> 2 counted while 1 was not justified here (we missed the votes that
    justified it), then the sync's finality certificate for 1: it must finalize 1."""
    blocks = add_line(ledger, 3, Relay())
    one, two = Checkpoint(1, blocks[0].hash), Checkpoint(2, blocks[1].hash)
    assert [ledger.add_vote(vote(i, one, two), NOW_MS).status for i in range(4)] == ["counted"] * 4
    assert ledger.finalized.height == 0
    cert = Certificate.from_votes(vote(i, one, two) for i in range(3))
    change = ledger.add_certificate(cert, NOW_MS)
    assert ledger.finalized == one and [f.checkpoint for f in change.finalized] == [one]
    assert ledger.justified == two and ledger.certificate_for(1) == cert
    ledger = reopen(ledger)
    try:
        assert ledger.finalized == one and ledger.justified == two
    finally:
        ledger.close()


def test_a_peers_evidence_is_checked_stored_once_and_catches_the_member(ledger, tmp_path):
    first = add_line(ledger, 1, Relay())[0]
    rivals = [add_line(ledger, 1, Relay(f"relay-r{i}"), parent=ledger.chain.get(first.hash))[0] for i in range(2)]
    changes = [ledger.add_vote(vote(3, ledger.finalized, Checkpoint(2, b.hash)), NOW_MS) for b in rivals]
    [evidence] = changes[1].evidence
    (tmp_path / "other").mkdir()
    other = Ledger.open(tmp_path / "other", FPARAMS, NOW_MS)
    try:
        assert other.add_evidence(evidence, NOW_MS).evidence == (evidence,)
        assert other.evidence() == [evidence] and other.finality_state.caught == {evidence.voter}
        assert other.add_evidence(evidence, NOW_MS).evidence == ()
        forged = type(evidence)(evidence.first, Vote(evidence.voter, evidence.second.source, evidence.second.target,
                                                     bytes(64)))
        with pytest.raises(FinalityError) as refused:
            other.add_evidence(forged, NOW_MS)
        assert refused.value.reason == "bad-vote-signature"
    finally:
        other.close()


def _double_vote(ledger: Ledger, relay: Relay):
    """Member 3 votes for two rival blocks at height 2: the rivals and the evidence."""
    first = add_line(ledger, 1, relay)[0]
    rivals = [add_line(ledger, 1, Relay(f"relay-r{i}"), parent=ledger.chain.get(first.hash))[0] for i in range(2)]
    changes = [ledger.add_vote(vote(3, ledger.finalized, Checkpoint(2, b.hash)), NOW_MS) for b in rivals]
    [evidence] = changes[1].evidence
    return rivals, evidence


def test_a_peers_evidence_on_votes_below_finality_catches_the_member(ledger, tmp_path):
    _, evidence = _double_vote(ledger, Relay())
    (tmp_path / "other").mkdir()
    other = Ledger.open(tmp_path / "other", FPARAMS, NOW_MS)
    try:
        finalized_line(other, 5, Relay("relay-other"))
        assert other.finalized.height == 4  # the evidence's votes (height 2) are below its horizon
        assert other.add_evidence(evidence, NOW_MS).evidence == (evidence,)
        assert other.finality_state.caught == {evidence.voter} and other.evidence() == [evidence]
        assert other.add_evidence(evidence, NOW_MS).evidence == ()
        other = reopen(other)
        assert other.finality_state.caught == {evidence.voter}
    finally:
        other.close()


def test_stored_evidence_catches_its_member_on_open_though_its_blocks_were_pruned(ledger):
    relay = Relay()
    rivals, evidence = _double_vote(ledger, relay)
    finalized_line(ledger, 4, relay)
    assert ledger.finalized.height >= 3 and ledger.chain.get(rivals[1].hash) is None  # the rival branch is pruned
    ledger = reopen(ledger)
    try:
        assert ledger.finality_state.caught == {evidence.voter} and ledger.evidence() == [evidence]
        assert ledger.add_vote(vote(3, ledger.finalized, cp(ledger.tip)), NOW_MS).status == "caught"
    finally:
        ledger.close()


# --- the member's own vote ---------------------------------------------------------------------
_KILLED_AFTER_RECORD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from gridchain.ledger.ledger import Ledger
    from gridchain.consensus.finality import Vote
    from tests.unit.test_ledger_finality import FPARAMS
    from tests.support.blocks import NOW_MS
    ledger = Ledger.open(Path(sys.argv[1]), FPARAMS, NOW_MS)
    ledger.record_own_vote(Vote.decode(bytes.fromhex(sys.argv[2])))
    print("recorded", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # killed between writing the vote and sending it
""")


def test_own_vote_is_durable_when_record_returns_and_the_guard_refuses_a_conflict(ledger):
    add_line(ledger, 2, Relay())
    path = ledger.store.path.parent
    mine = vote(0, ledger.finalized, cp(ledger.tip))
    ledger.close()
    run = subprocess.run([sys.executable, "-c", _KILLED_AFTER_RECORD, str(path), mine.encode().hex()], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL and run.stdout == "recorded\n", run.stderr
    reopened = Ledger.open(path, FPARAMS, NOW_MS)
    try:
        assert reopened.own_votes(MEMBERS[0].public_key) == [mine]
        rival = add_line(reopened, 1, Relay("relay-2"), parent=reopened.chain.main_at(1), signer=BOB)[0]
        guard = VoterGuard(FPARAMS, MEMBERS[0].public_key, reopened.own_votes(MEMBERS[0].public_key))
        with pytest.raises(FinalityError) as refused:
            guard.check(mine.source, Checkpoint(2, rival.hash))
        assert refused.value.reason == "would-double-vote"
        assert guard.last == mine
    finally:
        reopened.close()


def test_own_vote_keeps_only_the_newest_per_key(ledger):
    blocks = add_line(ledger, 2, Relay())
    first = vote(0, ledger.finalized, Checkpoint(1, blocks[0].hash))
    second = vote(0, Checkpoint(1, blocks[0].hash), Checkpoint(2, blocks[1].hash))
    ledger.record_own_vote(first)
    ledger.record_own_vote(second)
    ledger.record_own_vote(vote(1, ledger.finalized, Checkpoint(1, blocks[0].hash)))
    assert ledger.own_votes(MEMBERS[0].public_key) == [second] and len(ledger.own_votes()) == 2


# --- pending votes -----------------------------------------------------------------------------
def test_votes_for_a_block_not_yet_here_are_applied_when_it_arrives(ledger):
    add_line(ledger, 1, Relay())
    block = make_block(ledger.tip, Relay(start_seq=7).next())
    target = Checkpoint(2, block.hash)
    statuses = [ledger.add_vote(vote(i, ledger.finalized, target), NOW_MS).status for i in range(3)]
    assert statuses == ["unknown-checkpoint"] * 3 and len(ledger.pending) == 3
    update = ledger.add_block(block, NOW_MS)
    assert [j.checkpoint for j in update.finality.justified] == [target] and len(ledger.pending) == 0
    assert ledger.justified == target and count(ledger, "votes") == 3


def test_pending_votes_go_through_a_batch_too(ledger, tmp_path):
    blocks = finalized_line(ledger, 3, Relay())
    (tmp_path / "fresh").mkdir()
    fresh = Ledger.open(tmp_path / "fresh", FPARAMS, NOW_MS)
    try:
        for i in range(3):
            assert fresh.add_vote(vote(i, Checkpoint(2, blocks[1].hash), Checkpoint(3, blocks[2].hash)),
                                  NOW_MS).status == "unknown-checkpoint"
        cert = ledger.certificate_for(2)
        assert fresh.add_certificate(cert, NOW_MS).status == "unknown-checkpoint"
        batch = fresh.add_blocks(blocks, NOW_MS)
        assert batch.error is None and fresh.finalized == Checkpoint(2, blocks[1].hash)
        assert batch.finality.finalized and len(fresh.pending) == 0
    finally:
        fresh.close()


def test_the_pending_pool_is_bounded_by_count_bytes_and_age():
    pool = PendingPool(max_items=3, max_bytes=10_000, max_age_ms=1000)
    genesis = Checkpoint(0, bytes(32))
    votes = [vote(0, genesis, Checkpoint(h, bytes([h]) * 32)) for h in range(1, 6)]
    assert all(pool.add(v, 0) for v in votes) and len(pool) == 3 and not pool.add(votes[4], 0)
    assert pool.pop(votes[0].target.hash) == [] and pool.pop(votes[4].target.hash) == [votes[4]]
    pool.add(votes[0], 900)
    pool.expire(1500)
    assert len(pool) == 1 and pool.pop(votes[0].target.hash) == [votes[0]]
    small = PendingPool(max_bytes=400)
    assert small.add(votes[0], 0) and small.add(votes[1], 0) and small.add(votes[2], 0)
    assert len(small) == 2 and small.nbytes <= 400
    small.drop_below(3)
    assert len(small) == 1


# --- conflicts, pruning ------------------------------------------------------------------------
def test_a_secret_fork_with_100x_work_is_refused_and_the_readings_stay(ledger):
    honest = finalized_line(ledger, 20, Relay())
    assert ledger.finalized.height == 19
    readings_before, _ = ledger.store.readings_page(limit=10_000)
    scratch = Chain(make_genesis(FPARAMS), FPARAMS)
    for block in honest[:4]:
        scratch.add(block, NOW_MS)
    parent, relay, fork = scratch.tip, Relay(start_seq=25, start_ms=honest[4].capture.readings[0].timestamp_ms + 1), []
    for _ in range(100 * 16):
        block = make_block(parent, relay.next(), signer=BOB)
        parent = scratch.add(block, NOW_MS).entry
        fork.append(block)
    tip = ledger.tip
    batch = ledger.add_blocks(fork, NOW_MS)
    assert batch.rejected is fork[0] and batch.error.reason == "conflicts-finalized" and batch.updates == []
    for block in (fork[0], fork[15], fork[40]):
        with pytest.raises(RuleViolation) as refused:
            ledger.add_block(block, NOW_MS)
        assert refused.value.reason in ("conflicts-finalized", "unknown-parent")
    assert ledger.tip is tip and ledger.finalized.height == 19
    readings_after, _ = ledger.store.readings_page(limit=10_000)
    assert readings_after == readings_before


def test_side_branches_below_finality_are_pruned_in_the_finalizing_transaction(ledger):
    relay = Relay()
    main = finalized_line(ledger, 3, relay)
    for round_ in range(6):  # each round: a side branch of two from the tip's parent, then finality passes it
        parent = ledger.chain.get(main[-2].hash)
        side = add_line(ledger, 2, Relay(f"relay-s{round_}"), parent=parent, signer=BOB)
        assert all(b.hash in ledger.chain for b in side)
        stray = make_block(ledger.chain.get(side[-1].hash), Relay(f"relay-s{round_}", start_seq=13).next(), signer=BOB)
        ledger.orphans.add(stray, 1000)  # as if it had come before its parent: it waits for a side block
        main += finalized_line(ledger, 3, relay)
        assert all(b.hash not in ledger.chain and ledger.get_raw(b.hash) is None for b in side)
        assert len(ledger.orphans) == 0
    assert ledger.store.count_blocks() == ledger.height + 1, "only the main chain is stored"
    assert len(ledger.chain) == ledger.height + 1
    rows, _ = ledger.store.readings_page(limit=10_000)
    assert [r[1] for r in rows] == [r.seq for b in main for r in b.capture.readings]
    report = audit_store(ledger.store.path, FPARAMS)
    assert report.ok and report.certificates == ledger.finalized.height + 2, report.problems
    ledger = reopen(ledger)
    ledger.close()


def test_a_reorg_by_justification_prunes_the_old_branch_once_finalized(ledger):
    first = add_line(ledger, 1, Relay())[0]
    light = add_line(ledger, 2, Relay("relay-a"))
    heavy = add_line(ledger, 4, Relay("relay-b"), parent=ledger.chain.get(first.hash), signer=BOB)
    for i in range(3):
        ledger.add_vote(vote(i, ledger.finalized, cp(ledger.chain.get(light[0].hash))), NOW_MS)
    change = vote_tip(ledger)  # link light[0] -> light[1]: light[0] finalized, heavy forks below it
    assert ledger.finalized.hash == light[0].hash
    assert set(change.pruned) == {b.hash for b in heavy}
    assert ledger.store.count_blocks() == 4 and len(ledger.chain) == 4


def test_a_finality_certificate_outlives_its_pruned_target_in_open_and_audit(ledger):
    # a1 is finalized by the link a1 -> a2; a2 is only justified. The members then link
    # a1 -> b3 on another branch (no slashing condition: same source, another target
    # height), b3 is finalized, and a2 is pruned while a1's certificate still names it.
    relay = Relay()
    a1 = add_line(ledger, 1, relay)[0]
    vote_tip(ledger)
    a2 = add_line(ledger, 1, relay)[0]
    vote_tip(ledger)
    cert = ledger.certificate_for(1)
    assert ledger.finalized == Checkpoint(1, a1.hash) and cert.target == Checkpoint(2, a2.hash)
    side = add_line(ledger, 2, Relay("relay-b"), parent=ledger.chain.get(a1.hash), signer=BOB)
    for i in range(3):
        ledger.add_vote(vote(i, Checkpoint(1, a1.hash), cp(ledger.chain.get(side[1].hash))), NOW_MS)
    assert ledger.tip.hash == side[1].hash, "the higher justified branch wins fork choice"
    add_line(ledger, 1, Relay("relay-b", start_seq=13))
    change = vote_tip(ledger)
    assert ledger.finalized == Checkpoint(3, side[1].hash) and change.pruned == (a2.hash,)
    assert a2.hash not in ledger.chain and ledger.get_raw(a2.hash) is None
    report = audit_store(ledger.store.path, FPARAMS)
    assert report.ok and report.certificates == 2 + 2, report.problems  # a1, b3 finalized; b3, b4 justified
    ledger = reopen(ledger)
    try:
        assert ledger.finalized == Checkpoint(3, side[1].hash) and ledger.certificate_for(1) == cert
        assert ledger.proof_certificate(1) == cert, "still the proof that a1 is final"
    finally:
        ledger.close()


def test_a_justification_certificate_is_pruned_with_its_block(ledger):
    first, top = add_line(ledger, 2, Relay())
    side = add_line(ledger, 1, Relay("relay-s"), parent=ledger.chain.get(first.hash), signer=BOB)[0]
    assert ledger.tip.hash == top.hash
    link = Certificate.from_votes([vote(i, Checkpoint(1, first.hash), Checkpoint(2, side.hash)) for i in range(3)])
    db = ledger.store.db
    db.execute("BEGIN")
    finality_store.write(db, FinalityWrite(certificates=[(JUSTIFIES, link)]))
    db.execute("COMMIT")
    assert ledger.justification_for(side.hash) == link
    db.execute("BEGIN")
    finality_store.write(db, FinalityWrite(pruned=[side.hash]))
    db.execute("COMMIT")
    assert ledger.justification_for(side.hash) is None and ledger.get_raw(side.hash) is None


def test_a_failed_finality_write_changes_nothing_and_is_retried(ledger):
    first = add_line(ledger, 1, Relay())[0]
    light = add_line(ledger, 2, Relay("relay-a"))
    heavy = add_line(ledger, 4, Relay("relay-b"), parent=ledger.chain.get(first.hash), signer=BOB)
    target = cp(ledger.chain.get(light[0].hash))
    for i in range(2):
        ledger.add_vote(vote(i, ledger.finalized, target), NOW_MS)
    ledger.store.db.execute("CREATE TRIGGER fail BEFORE INSERT ON certificates BEGIN SELECT RAISE(ABORT, 'disk'); END")
    with pytest.raises(StoreError):
        ledger.add_vote(vote(2, ledger.finalized, target), NOW_MS)
    assert ledger.tip.hash == heavy[-1].hash and ledger.store.tip_hash() == heavy[-1].hash
    ledger.store.db.execute("DROP TRIGGER fail")
    change = ledger.add_vote(vote(3, ledger.finalized, target), NOW_MS)  # the next write takes the rows along
    assert change.reorg is not None and ledger.tip.hash == light[-1].hash == ledger.store.tip_hash()
    assert ledger.justification_for(light[0].hash) is not None


# --- damage, audit -----------------------------------------------------------------------------
def _tamper_certificate(path: Path, height: int, change) -> None:
    db = db_of(path)
    (data,) = db.execute("SELECT cert FROM certificates WHERE role = 'finalizes' AND height = ?", (height,)).fetchone()
    db.execute("UPDATE certificates SET cert = ? WHERE role = 'finalizes' AND height = ?", (change(data), height))
    db.close()


def _flip_last_signature_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _drop_a_signer(data: bytes) -> bytes:
    cert = Certificate.decode(data)
    return Certificate(cert.source, cert.target, cert.signatures[:-1]).encode()


@pytest.mark.parametrize("change, reason", [(_flip_last_signature_byte, "bad-vote-signature"),
                                            (_drop_a_signer, "short-certificate")])
def test_a_tampered_stored_certificate_is_damage_with_its_reason(ledger, change, reason):
    finalized_line(ledger, 5, Relay())
    path = ledger.store.path.parent
    ledger.close()
    _tamper_certificate(path, 3, change)
    with pytest.raises(LedgerDamaged) as damaged:
        Ledger.open(path, FPARAMS, NOW_MS)
    assert damaged.value.height == 3 and reason in damaged.value.reason
    report = audit_store(path / DB_FILE, FPARAMS)
    assert not report.ok and any(h == 3 and reason in why for h, _, why in report.problems), report.problems


def test_audit_checks_every_certificate_beyond_what_open_rechecks(ledger, monkeypatch):
    import gridchain.ledger.finality_keeper as keeper
    finalized_line(ledger, 6, Relay())
    path = ledger.store.path.parent
    ledger.close()
    _tamper_certificate(path, 1, _flip_last_signature_byte)
    monkeypatch.setattr(keeper, "RECHECK_CERTIFICATES", 2)
    Ledger.open(path, FPARAMS, NOW_MS).close()  # the old certificate is outside the window
    report = audit_store(path / DB_FILE, FPARAMS)
    assert not report.ok and [h for h, _, _ in report.problems] == [1]


def test_audit_of_tampered_evidence_is_a_problem(ledger):
    first = add_line(ledger, 1, Relay())[0]
    rivals = [add_line(ledger, 1, Relay(f"relay-r{i}"), parent=ledger.chain.get(first.hash))[0] for i in range(2)]
    for b in rivals:
        ledger.add_vote(vote(3, ledger.finalized, Checkpoint(2, b.hash)), NOW_MS)
    path = ledger.store.path.parent
    ledger.close()
    db = db_of(path)
    db.execute("UPDATE evidence SET voter = ?", (MEMBERS[1].public_key,))  # accuse an honest member
    db.close()
    report = audit_store(path / DB_FILE, FPARAMS)
    assert not report.ok and report.evidence == [] and "accuses" in report.problems[0][2]
    with pytest.raises(LedgerDamaged):
        Ledger.open(path, FPARAMS, NOW_MS)


# --- schema ------------------------------------------------------------------------------------
def test_a_schema_2_store_is_migrated_and_others_are_refused(ledger):
    blocks = add_line(ledger, 3, Relay())
    path = ledger.store.path.parent
    ledger.close()
    db = db_of(path)
    for table in ("votes", "certificates", "evidence", "own_vote"):
        db.execute(f"DROP TABLE {table}")
    db.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    db.close()
    assert audit_store(path / DB_FILE, FPARAMS).ok, "a schema-2 store is not damaged, only older"
    migrated = Ledger.open(path, FPARAMS, NOW_MS)
    try:
        assert migrated.tip.hash == blocks[-1].hash and migrated.store.meta()["schema_version"] == SCHEMA_VERSION == 3
        vote_tip(migrated)
        assert migrated.justified.height == 3
    finally:
        migrated.close()
    db = db_of(path)
    db.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StoreError) as refused:
        Ledger.open(path, FPARAMS, NOW_MS)
    assert refused.value.reason == "schema-version" and "has schema 1" in str(refused.value)


def test_an_open_network_ledger_has_no_finality(tmp_path):
    from tests.support.blocks import PARAMS
    led = Ledger.open(tmp_path, PARAMS, NOW_MS)
    try:
        assert led.finality_state is None and led.finalized.height == 0
        with pytest.raises(FinalityError) as refused:
            led.add_vote(vote(0, led.finalized, Checkpoint(1, bytes(32))), NOW_MS)
        assert refused.value.reason == "finality-off"
    finally:
        led.close()


def test_headers_between_come_from_the_index(ledger, monkeypatch):
    blocks = add_line(ledger, 5, Relay())
    monkeypatch.setattr(ledger.store, "get_block", lambda *a: pytest.fail("decoded a block"))
    assert ledger.headers_between(2, 4) == [b.header for b in blocks[1:4]]
    with pytest.raises(ValueError):
        ledger.headers_between(3, 9)


def test_deferred_peer_votes_go_to_the_store_in_one_commit(ledger):
    """With ``defer_votes`` (as a member node runs) a burst of other members' votes is counted at
    once and stored by one ``flush_votes``; what a quorum makes is still written at once."""
    finalized_line(ledger, 2, Relay())
    add_line(ledger, 1, Relay(start_seq=13))
    ledger.defer_votes = True
    commits = []
    ledger.store.db.set_trace_callback(lambda text: text == "COMMIT" and commits.append(text))
    source, target = ledger.justified, cp(ledger.tip)
    before = count(ledger, "votes")
    for i in (0, 1):
        assert ledger.add_vote(vote(i, source, target), NOW_MS).status == "counted"
    assert commits == [] and count(ledger, "votes") == before, "a vote was written alone"
    ledger.flush_votes()
    assert len(commits) == 1 and count(ledger, "votes") == before + 2
    ledger.flush_votes()
    assert len(commits) == 1, "nothing was due"
    change = ledger.add_vote(vote(2, source, target), NOW_MS)
    assert change.finalized and len(commits) == 2, "the step a quorum makes waits for no flush"
    ledger.store.db.set_trace_callback(None)
    ledger.add_vote(vote(3, source, target), NOW_MS)  # late, counted, kept for the next flush
    ledger = reopen(ledger)  # closing stores what was due
    try:
        stored = ledger.store.db.execute("SELECT count(*) FROM votes WHERE voter = ? AND target_height = ?",
                                         (MEMBERS[3].public_key, target.height)).fetchone()[0]
        assert stored == 1 and ledger.finalized == source
    finally:
        ledger.close()
