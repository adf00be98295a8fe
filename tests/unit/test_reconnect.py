"""The one reconnect schedule: doubling, jittered, capped; failures logged once a minute, "restored" once."""

from __future__ import annotations

from gridchain.wire.reconnect import JITTER, Reconnect


def test_delay_doubles_up_to_the_cap_with_bounded_jitter():
    low = Reconnect(first_delay=0.25, max_delay=2.0, uniform=lambda a, b: a)
    assert [round(low.next_wait(), 3) for _ in range(6)] == [0.2, 0.4, 0.8, 1.6, 1.6, 1.6]
    high = Reconnect(first_delay=0.25, max_delay=2.0, uniform=lambda a, b: b)
    assert round(high.next_wait(), 3) == round(0.25 * (1 + JITTER), 3)


def test_reset_after_a_good_connection_comes_back_quickly():
    backoff = Reconnect(first_delay=0.25, max_delay=30.0, uniform=lambda a, b: 1.0)
    for _ in range(5):
        backoff.next_wait()
    backoff.reset()
    assert backoff.next_wait() == 0.25


def test_failures_are_logged_at_most_once_a_minute_and_restored_once():
    backoff = Reconnect(first_delay=0.25, max_delay=30.0)
    assert not backoff.succeeded(), "nothing to restore before a failure"
    logged = [backoff.failed(now) for now in (0.0, 1.0, 59.9, 60.0, 61.0, 120.5)]
    assert logged == [True, False, False, True, False, True]
    assert backoff.succeeded() and not backoff.succeeded()
