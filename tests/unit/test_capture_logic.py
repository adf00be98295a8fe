"""The capture task: plans of whole verified seals that continue the chain's sequence, the one
buffer of displaced seals, and the task against a fake relay."""

from __future__ import annotations

import dataclasses

import pytest
from structlog.testing import capture_logs

from gridchain.consensus.block import MAX_READINGS_PER_BLOCK
from gridchain.consensus.provenance import MAX_SEALS_PER_BLOCK, seal_readings
from gridchain.ledger.ledger import Ledger
from gridchain.node.capture import (
    CaptureTask, DisplacedSeals, RelayWatch, plan_capture,
)
from gridchain.node.miner import Miner
from gridchain.relay.feed import FeedBatch, SealedRun
from gridchain.wire.reconnect import Reconnect

from tests.support.blocks import (
    ALICE, BOB, NOW_MS, OTHER_RELAY_KEY, PARAMS, RELAY_KEY, capture, gap_notice, make_block, reading,
)

KEY = RELAY_KEY.public_key


def runs_of(*spans: tuple[int, int]) -> list:
    """Sealed runs over seq spans (first, count)."""
    out = []
    for first, count in spans:
        rows = tuple(reading(first + i) for i in range(count))
        out.append((seal_readings(RELAY_KEY, "relay-1", rows), rows))
    return out


# --- planning ------------------------------------------------------------------------------------

def test_plan_continues_the_chain_and_stops_at_a_hole():
    plan = plan_capture("relay-1", "North", KEY, 6, runs_of((7, 3), (10, 2), (13, 4)))
    assert [s.first_seq for s in plan.seals] == [7, 10] and plan.first_seq == 7 and plan.last_seq == 11
    assert plan.gap is None


def test_plan_of_a_new_relay_starts_at_one():
    assert plan_capture("relay-1", "North", KEY, None, runs_of((1, 2))).first_seq == 1
    assert plan_capture("relay-1", "North", KEY, None, runs_of((2, 2))) is None


def test_plan_never_splits_a_seal_nor_starts_inside_one():
    """The chain holds up to seq 8 from another node's seal; our seal 7..12 cannot be cut."""
    assert plan_capture("relay-1", "North", KEY, 8, runs_of((7, 6))) is None
    assert plan_capture("relay-1", "North", KEY, 8, runs_of((7, 6), (13, 2))) is None


def test_plan_resumes_at_a_gap_the_relay_signed():
    notice = gap_notice("relay-1", 500)
    plan = plan_capture("relay-1", "North", KEY, 6, runs_of((500, 3), (503, 1)), [notice])
    assert plan.gap == notice and plan.first_seq == 500 and plan.last_seq == 503
    # The notice is only used where nothing continues the sequence as it is.
    assert plan_capture("relay-1", "North", KEY, 6, runs_of((7, 1), (500, 3)), [notice]).gap is None
    assert plan_capture("relay-1", "North", KEY, 6, runs_of((500, 3))) is None, "no notice, no skip"


def test_plan_fills_an_open_gap_first_with_whole_seals_and_no_notice():
    """The branch jumped from 18 to 5_000 at the relay's notice; 19..4_999 are open, and
    displaced seals inside that range are mined as a fill before the sequence goes on."""
    notice = gap_notice("relay-1", 5_000)
    runs = runs_of((5_006, 2), (22, 3), (19, 3), (25, 2), (30, 2))
    plan = plan_capture("relay-1", "North", KEY, 5_005, runs, [notice], ((19, 4_999),))
    assert [s.first_seq for s in plan.seals] == [19, 22, 25] and plan.gap is None  # stops at the hole 27..29
    assert [r.seq for r in plan.readings] == list(range(19, 27))
    # A run that leaves the open range, or starts below it, is never a fill.
    assert plan_capture("relay-1", "North", KEY, 5_005, runs_of((4_998, 3)), [], ((19, 4_999),)) is None
    assert plan_capture("relay-1", "North", KEY, 5_005, runs_of((17, 4)), [], ((19, 4_999),)) is None
    # A fill stays inside one range: the next run, in another range, waits for the next block.
    two = plan_capture("relay-1", "North", KEY, 5_005, runs_of((19, 2), (21, 2)), [], ((19, 20), (21, 4_999)))
    assert [s.first_seq for s in two.seals] == [19]
    # With nothing to fill, the sequence goes on.
    assert plan_capture("relay-1", "North", KEY, 5_005, runs, [notice], ()).first_seq == 5_006


def test_plan_keeps_to_the_block_limits():
    many = runs_of(*[(1 + i, 1) for i in range(MAX_SEALS_PER_BLOCK + 5)])
    assert len(plan_capture("relay-1", "North", KEY, 0, many).seals) == MAX_SEALS_PER_BLOCK
    big = runs_of((1, MAX_READINGS_PER_BLOCK - 2), (MAX_READINGS_PER_BLOCK - 1, 5))
    assert plan_capture("relay-1", "North", KEY, 0, big).last_seq == MAX_READINGS_PER_BLOCK - 2


# --- the displaced buffer ----------------------------------------------------------------------

def test_displaced_buffer_keeps_whole_seals_and_prunes_what_the_chain_holds():
    buffer = DisplacedSeals()
    first, second = capture(count=3), capture(count=3, start_seq=4)
    buffer.add([first, second])
    assert [s.first_seq for s, _ in buffer.runs("relay-1")] == [1, 4] and buffer.count() == 6
    buffer.prune("relay-1", 3)
    assert [s.first_seq for s, _ in buffer.runs("relay-1")] == [4]
    buffer.prune("relay-1", 5)  # seal 4..6 is only partly on the chain: kept whole, unusable
    assert buffer.count("relay-1") == 3
    buffer.prune("relay-1", 6)
    assert buffer.relays() == []


def test_displaced_buffer_keeps_what_an_open_gap_could_take():
    buffer = DisplacedSeals()
    buffer.add([capture(count=3, start_seq=7), capture(count=3, start_seq=10), capture(count=3, start_seq=17)])
    buffer.prune("relay-1", 5_005, ((7, 9), (12, 4_999)))  # 10..12 straddles held 10..11: never fillable
    assert [s.first_seq for s, _ in buffer.runs("relay-1")] == [7, 17]
    buffer.prune("relay-1", 5_005, ((12, 4_999),))  # 7..9 was filled by another block
    assert [s.first_seq for s, _ in buffer.runs("relay-1")] == [17]


def test_displaced_buffer_is_bounded():
    buffer = DisplacedSeals(max_readings=10)
    buffer.add([capture(count=6), capture(count=6, start_seq=7)])
    assert buffer.count() == 6 and buffer.runs("relay-1")[0][0].first_seq == 1


# --- the task against a fake relay ---------------------------------------------------------------

class FakeRelay:
    """Signs on demand what follows ``after_seq``, as the relay does; may be told to lie."""

    address = "fake:1"
    backoff_s = 0.0
    clock_skew_ms = 0

    def __init__(self, readings, signer=RELAY_KEY, gap=None, now_ms=NOW_MS, forge=False):
        self.retry = Reconnect(first_delay=0.1, max_delay=1.0)
        self.readings = list(readings)
        self.signer, self.gap, self.now_ms, self.forge = signer, gap, now_ms, forge
        self.reads: list[int] = []

    async def info(self):
        return type("Info", (), {"relay_id": "relay-1"})()

    async def read(self, after_seq: int, limit: int = 10_000) -> FeedBatch:
        self.reads.append(after_seq)
        rows = tuple(r for r in self.readings if r.seq > after_seq)[:limit]
        runs = ()
        if rows:
            seal = seal_readings(self.signer, "relay-1", rows)
            if self.forge:  # a client bug or a relay that lies: the capture must still refuse it
                rows = (dataclasses.replace(rows[0], ia=rows[0].ia + 1),) + rows[1:]
            runs = (SealedRun(rows, seal),)
        gap = self.gap if self.gap is not None and after_seq < self.gap.resume_seq else None
        return FeedBatch("relay-1", "North", self.signer.public_key, runs, gap, self.now_ms,
                         self.readings[-1].seq if self.readings else None)


class Host:
    name = "alice"

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.task: CaptureTask | None = None
        self.mined: list = []
        self.cut_off: float | None = None  # seconds without any configured peer ready (None: not cut off)
        self.behind = 0  # blocks the peer it syncs from is ahead

    def connected_peers(self) -> int:
        return 0

    def cut_off_s(self) -> float | None:
        return self.cut_off

    def blocks_behind(self) -> int:
        return self.behind

    def accept_own_block(self, block, mined_ms: float) -> None:
        update = self.ledger.add_block(block, NOW_MS)
        self.mined.append(block)
        self.task.displaced.add(update.displaced)


@pytest.fixture
def ledger(tmp_path):
    led = Ledger.open(tmp_path, PARAMS, NOW_MS)
    yield led
    led.close()


def task_for(ledger: Ledger, relay: FakeRelay) -> tuple[CaptureTask, Host]:
    host = Host(ledger)
    task = CaptureTask(host, ledger, ALICE, PARAMS, Miner(), [RelayWatch(relay, "alice")], 1.0,
                       clock=lambda: NOW_MS / 1000)
    host.task = task
    return task, host


async def test_task_mines_what_follows_the_chain_and_continues_it(ledger):
    relay = FakeRelay([reading(i) for i in range(1, 7)])
    task, host = task_for(ledger, relay)
    await task.capture_once()
    relay.readings += [reading(i) for i in range(7, 10)]
    await task.capture_once()
    await task.capture_once()  # nothing new: no block
    task.miner.shutdown()
    assert relay.reads == [0, 6, 9]
    assert [(b.capture.first_seq, b.capture.last_seq) for b in host.mined] == [(1, 6), (7, 9)]
    assert ledger.last_seq("relay-1") == 9


async def test_a_node_just_cut_off_from_its_peers_waits_a_grace_before_mining(ledger):
    from gridchain.node.capture import CUT_OFF_GRACE_S
    task, host = task_for(ledger, FakeRelay([reading(i) for i in range(1, 7)]))
    host.cut_off = CUT_OFF_GRACE_S - 0.5  # its peers just dropped: its tip may be stale
    with capture_logs() as logs:
        await task.capture_once()
    assert host.mined == []
    assert [e["reason"] for e in logs if e["event"] == "capture.waiting_for_peers"] == ["cut-off"]
    host.cut_off = CUT_OFF_GRACE_S  # on its own for longer: it records the relay's readings
    await task.capture_once()
    task.miner.shutdown()
    assert [(b.capture.first_seq, b.capture.last_seq) for b in host.mined] == [(1, 6)]


async def test_a_node_syncing_far_behind_a_peer_does_not_mine_on_its_old_tip(ledger):
    from gridchain.node.capture import SYNC_BEHIND_BLOCKS
    relay = FakeRelay([reading(i) for i in range(1, 7)])
    task, host = task_for(ledger, relay)
    host.behind = SYNC_BEHIND_BLOCKS  # back from a long absence: the others are far ahead
    with capture_logs() as logs:
        await task.capture_once()
    assert host.mined == [] and relay.reads == [], "it neither mined nor asked the relay"
    assert [e["blocks_behind"] for e in logs if e["event"] == "capture.waiting_for_sync"] == [SYNC_BEHIND_BLOCKS]
    host.behind = SYNC_BEHIND_BLOCKS - 1  # a block or two behind is the ordinary race: it mines
    await task.capture_once()
    task.miner.shutdown()
    assert [(b.capture.first_seq, b.capture.last_seq) for b in host.mined] == [(1, 6)]


async def test_task_never_mines_what_does_not_verify(ledger):
    task, host = task_for(ledger, FakeRelay([reading(i) for i in range(1, 7)], forge=True))
    with capture_logs() as logs:
        await task.capture_once()
    task.miner.shutdown()
    assert host.mined == [] and ledger.height == 0
    assert [e["reason"] for e in logs if e["event"] == "capture.unverified"] == ["bad-relay-signature"]


async def test_task_mines_a_relay_restart_with_its_gap_notice(ledger):
    ledger.add_block(make_block(ledger.tip, capture(count=5)), NOW_MS)  # seq 1..5 on the chain
    notice = gap_notice("relay-1", 1_000)
    relay = FakeRelay([reading(i) for i in range(1_000, 1_004)], gap=notice)
    task, host = task_for(ledger, relay)
    await task.capture_once()
    task.miner.shutdown()
    [block] = host.mined
    assert block.capture.gap == notice and block.capture.first_seq == 1_000
    assert [(g.first_seq, g.last_seq) for g in ledger.gaps()] == [(6, 999)]


async def test_a_relays_first_block_starting_at_a_notice_is_no_gap(ledger):
    notice = gap_notice("relay-1", 1_000)
    task, host = task_for(ledger, FakeRelay([reading(i) for i in range(1_000, 1_004)], gap=notice))
    await task.capture_once()
    task.miner.shutdown()
    [block] = host.mined
    assert block.capture.first_seq == 1_000 and ledger.gaps() == []


async def test_a_skipping_relay_without_a_notice_is_named_not_mined(ledger):
    task, host = task_for(ledger, FakeRelay([reading(i) for i in range(5, 8)]))
    with capture_logs() as logs:
        await task.capture_once()
    task.miner.shutdown()
    assert host.mined == [] and any(e["event"] == "capture.sequence_gap" for e in logs)


async def test_displaced_seals_are_mined_again_where_they_continue(ledger):
    relay = FakeRelay([])  # the relay no longer holds them: only the displaced buffer does
    task, host = task_for(ledger, relay)
    old = [make_block(ledger.tip, capture(count=6))]
    ledger.add_block(old[0], NOW_MS)
    # A rival branch of two blocks without relay-1 wins; relay-1's seal 1..6 is displaced.
    rival = make_block(ledger.chain.genesis, capture("relay-2"), "bob", BOB)
    ledger.add_block(rival, NOW_MS)
    update = ledger.add_block(make_block(ledger.chain.get(rival.hash), capture("relay-2", start_seq=7), "bob", BOB),
                              NOW_MS)
    task.displaced.add(update.displaced)
    assert ledger.last_seq("relay-1") is None and task.displaced.count("relay-1") == 6
    await task.capture_once()
    task.miner.shutdown()
    [block] = host.mined
    assert block.capture.seals == old[0].capture.seals and block.capture.readings == old[0].capture.readings
    assert task.displaced.count() == 0


async def test_displaced_seals_inside_an_open_gap_are_mined_again_as_a_fill(ledger):
    """The relay lost its buffer and resumed at 1_000; the main chain held 1..12 before its
    notice. A member forks off after seq 6, jumps straight to the notice and outmines it:
    7..12 are displaced, the relay can no longer serve them, and the capture mines them back
    into the gap the new tip left open, as the very seals they were, before going on."""
    notice = gap_notice("relay-1", 1_000)
    relay = FakeRelay([reading(i) for i in range(1_000, 1_030)], gap=notice)
    task, host = task_for(ledger, relay)
    a1 = make_block(ledger.tip, capture(count=6))
    ledger.add_block(a1, NOW_MS)
    a2 = make_block(ledger.chain.get(a1.hash), capture(start_seq=7))
    ledger.add_block(a2, NOW_MS)
    ledger.add_block(make_block(ledger.chain.get(a2.hash), capture(start_seq=1_000, gap=notice)), NOW_MS)
    parent, cap, updates = ledger.chain.get(a1.hash), capture(start_seq=1_000, gap=notice), []
    for _ in range(3):
        block = make_block(parent, cap, "mallory", BOB)
        updates.append(ledger.add_block(block, NOW_MS))
        parent, cap = updates[-1].result.entry, capture(start_seq=cap.last_seq + 1)
    assert updates[-1].result.status == "reorg" and ledger.last_seq("relay-1") == 1_017
    for update in updates:
        task.displaced.add(update.displaced)
    assert [(g.first_seq, g.last_seq) for g in ledger.gaps()] == [(7, 999)]
    assert [s.first_seq for s, _ in task.displaced.runs("relay-1")] == [7]
    await task.capture_once()
    [fill] = host.mined
    assert fill.capture.seals == a2.capture.seals and fill.capture.readings == a2.capture.readings
    assert fill.capture.gap is None and ledger.tip.hash == fill.hash and task.displaced.count() == 0
    assert ledger.chain.open_gaps("relay-1") == ((13, 999),)
    resumed_ms = ledger.store.relay_readings("relay-1", 999, 1_000)[0][0][2]
    assert [(g.first_seq, g.last_seq, g.after_ms, g.resume_ms) for g in ledger.gaps()] == [
        (13, 999, a2.capture.newest_ms, resumed_ms)]  # the hole that is left, and its time range
    await task.capture_once()  # then the sequence goes on from the relay
    task.miner.shutdown()
    assert (host.mined[-1].capture.first_seq, host.mined[-1].capture.last_seq) == (1_018, 1_029)
    assert ledger.last_seq("relay-1") == 1_029 and ledger.chain.open_gaps("relay-1") == ((13, 999),)


async def test_displaced_seals_that_do_not_continue_are_fetched_again(ledger):
    """The new branch holds seq 1..3 under another seal: our 1..6 cannot be cut, so ask the relay."""
    relay = FakeRelay([reading(i) for i in range(1, 7)])  # still holds 1..6, signs 4..6 on demand
    task, host = task_for(ledger, relay)
    head = capture(count=3)
    ledger.add_block(make_block(ledger.tip, head, "bob", BOB), NOW_MS)
    task.displaced.add([capture(count=6)])
    task.watches[0].relay_id = "relay-1"
    await task.mine_relay("relay-1", None, task.watches[0])
    task.miner.shutdown()
    assert relay.reads == [3]
    [block] = host.mined
    assert (block.capture.first_seq, block.capture.last_seq) == (4, 6)


async def test_a_relay_clock_minutes_off_is_still_mined_and_capture_does_not_warn(ledger):
    """Reading times are the relay's signed word; the one clock warning is the relay client's."""
    skew = 5 * 60_000
    relay = FakeRelay([reading(i, NOW_MS + skew) for i in range(1, 4)], now_ms=NOW_MS + skew)
    task, host = task_for(ledger, relay)
    with capture_logs() as logs:
        await task.capture_once()
        relay.readings.append(reading(4, NOW_MS + skew))
        await task.capture_once()
    task.miner.shutdown()
    assert len(host.mined) == 2
    assert not [e for e in logs if e["event"] == "relay.clock_skew"]


async def test_a_relay_whose_key_differs_from_the_branch_is_not_mined(ledger):
    ledger.add_block(make_block(ledger.tip, capture(count=3)), NOW_MS)
    task, host = task_for(ledger, FakeRelay([reading(i) for i in range(1, 7)], signer=OTHER_RELAY_KEY))
    await task.capture_once()
    task.miner.shutdown()
    assert host.mined == []
