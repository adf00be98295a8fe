"""Whether a node's own clock looks off: the evidence and the verdict, with the time as an argument."""

from __future__ import annotations

from gridchain.node.clock import EVIDENCE_S, RELAY_SKEW_MS, ClockOff, ClockOk, ClockWatch

BEHIND_MS = 300_000  # five minutes


def test_blocks_of_two_miners_refused_as_too_new_say_our_clock_is_behind_once():
    watch = ClockWatch()
    watch.refused(b"miner-a", BEHIND_MS + 120, now=10.0)
    assert watch.update(10.0) is None, "one miner's fast clock is its own problem"
    watch.refused(b"miner-b", BEHIND_MS - 80, now=11.0)
    assert watch.update(11.0) == ClockOff(-BEHIND_MS + 80, "peers")
    watch.refused(b"miner-a", BEHIND_MS + 500, now=12.0)
    assert watch.update(12.0) is None, "said once, not on every refusal"
    assert watch.status() == {"state": "off", "offset_ms": -BEHIND_MS + 80, "source": "peers"}
    watch.refused(b"miner-c", 2 * BEHIND_MS, now=12.0)  # a miner with a fast clock of its own
    watch.update(12.0)
    assert watch.status()["offset_ms"] == -BEHIND_MS + 80, "the least ahead is the estimate"
    # The clock is set right: no more refusals, and the verdict clears once they are old.
    assert watch.update(12.0 + EVIDENCE_S - 1) is None
    assert watch.update(12.0 + EVIDENCE_S + 1) == ClockOk()
    assert watch.update(12.0 + EVIDENCE_S + 2) is None and watch.status() == {"state": "ok"}


def test_every_relay_skewed_the_same_way_says_our_clock_is_off():
    watch = ClockWatch()
    watch.relays([-BEHIND_MS])  # the relay's clock is five minutes behind ours: ours is ahead
    assert watch.update(1.0) == ClockOff(BEHIND_MS, "relays")
    watch.relays([-RELAY_SKEW_MS + 1])
    assert watch.update(2.0) == ClockOk()


def test_relays_that_disagree_say_nothing_about_us():
    watch = ClockWatch()
    watch.relays([-BEHIND_MS, 50])
    assert watch.update(1.0) is None
    watch.relays([])
    assert watch.update(2.0) is None
