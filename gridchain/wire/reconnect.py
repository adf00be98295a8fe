"""Reconnect with a doubling delay: the one backoff of every dialler (peers, relays, captures).

As ElectrumX's daemon client does, a caller that keeps failing to reach something waits a
little longer each time (doubling from ``first_delay`` up to ``max_delay``, each wait
jittered by +-20 % so many diallers restarted together do not retry in lock step), logs the
failure at most once a minute (and at once when the failure's reason changes), and logs
"restored" once when a try succeeds again. The class decides *when*; the caller logs its own
event names and does its own connecting::

    backoff = Reconnect(first_delay=0.25, max_delay=30.0)
    while True:
        try:
            conn = await connect()
        except OSError as exc:
            reason = failure_reason(exc)                 # "refused", "timeout", "closed", ...
            if backoff.failed(time.monotonic(), reason): # first, new reason, then once a minute
                log.info("thing.unreachable", reason=reason, failures=backoff.failures,
                         retry_s=round(backoff.delay, 2))
            await backoff.wait()                       # sleep the jittered delay, then double it
            continue
        if backoff.succeeded():                        # True once after a run of failures
            log.info("thing.restored")
        await use(conn)
        backoff.reset()                                # it worked: come back quickly next time
        await backoff.wait()

``failed``/``succeeded``/``reset``/``next_wait`` and ``failure_reason`` are pure (time is an
argument, the random source injectable), so the schedule is unit-testable; only ``wait`` sleeps.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import Callable

# Failures of one target are logged at most this often: the first, then once a minute.
LOG_EVERY_S = 60.0
# Each wait is the delay times a factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2


class Reconnect:
    """The retry schedule and failure-log throttle of one target."""

    def __init__(self, *, first_delay: float, max_delay: float, log_every_s: float = LOG_EVERY_S,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.log_every_s = log_every_s
        self.delay = first_delay  # the next wait, before jitter
        self.failing = False
        self.failures = 0  # failed tries in a row (the log line says how many it stands for)
        self._last_logged: float | None = None
        self._last_reason: str | None = None
        self._uniform = uniform

    def failed(self, now: float, reason: str = "") -> bool:
        """Note a failed try (why: ``reason``); True when this one should be logged: the first of
        a run, the first with another reason than the last logged, then once every ``log_every_s``."""
        self.failing = True
        self.failures += 1
        if self._last_logged is None or reason != self._last_reason or now - self._last_logged >= self.log_every_s:
            self._last_logged, self._last_reason = now, reason
            return True
        return False

    def succeeded(self) -> bool:
        """Note a successful try; True (once) when it ends a run of failures."""
        restored, self.failing = self.failing, False
        self.failures = 0
        return restored

    def reset(self) -> None:
        """Start the schedule again from the first delay (the target worked)."""
        self.delay = self.first_delay

    def next_wait(self) -> float:
        """The jittered wait for now; the delay after it doubles, up to the cap."""
        wait = self.delay * self._uniform(1 - JITTER, 1 + JITTER)
        self.delay = min(self.delay * 2, self.max_delay)
        return wait

    async def wait(self) -> None:
        await asyncio.sleep(self.next_wait())


def failure_reason(exc: BaseException) -> str:
    """A short stable name for why one connection attempt failed (the failure log's ``reason``).

    An error that names its own reason (a GridchainError) keeps it. ``closed``: the other side
    accepted the connection, then closed or reset it under our first bytes (a TLS ClientHello).
    """
    own = getattr(exc, "reason", None)
    if isinstance(own, str) and own:
        return own
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls-certificate"  # the other side's certificate failed our check
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError,
                        ssl.SSLZeroReturnError, asyncio.IncompleteReadError)):
        return "closed"
    if isinstance(exc, ssl.SSLError):
        return "tls-failed"
    if isinstance(exc, socket.gaierror):
        return "unresolved"  # the host name does not resolve
    return "unreachable"
