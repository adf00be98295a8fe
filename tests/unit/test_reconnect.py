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


def test_a_failure_with_a_new_reason_is_logged_at_once_and_the_run_is_counted():
    backoff = Reconnect(first_delay=0.25, max_delay=30.0)
    logged = [backoff.failed(now, reason) for now, reason in
              ((0.0, "closed"), (1.0, "closed"), (2.0, "refused"), (3.0, "refused"), (62.5, "refused"))]
    assert logged == [True, False, True, False, True]
    assert backoff.failures == 5
    assert backoff.succeeded() and backoff.failures == 0


def test_failure_reasons_are_named():
    import asyncio
    import socket
    import ssl

    from gridchain.consensus.errors import GridchainError
    from gridchain.wire.reconnect import failure_reason

    cases = [(ConnectionRefusedError(111, "refused"), "refused"), (TimeoutError(), "timeout"),
             (ConnectionResetError(104, "reset"), "closed"), (ssl.SSLEOFError(8, "EOF"), "closed"),
             (asyncio.IncompleteReadError(b"", 4), "closed"), (BrokenPipeError(), "closed"),
             (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls-certificate"),
             (ssl.SSLError(1, "bad record"), "tls-failed"), (socket.gaierror(-2, "unknown"), "unresolved"),
             (OSError(113, "no route"), "unreachable"), (GridchainError("not-a-member", "x"), "not-a-member")]
    assert [failure_reason(exc) for exc, _ in cases] == [name for _, name in cases]
