"""Reconnect with a doubling delay: the one backoff of every dialler (peers, relays, captures).

As ElectrumX's daemon client does, a caller that keeps failing to reach something waits a
little longer each time (doubling from ``first_delay`` up to ``max_delay``, each wait
jittered by +-20 % so many diallers restarted together do not retry in lock step), logs the
failure at most once a minute, and logs "restored" once when a try succeeds again. The
class decides *when*; the caller logs its own event names and does its own connecting::

    backoff = Reconnect(first_delay=0.25, max_delay=30.0)
    while True:
        try:
            conn = await connect()
        except OSError as exc:
            if backoff.failed(time.monotonic()):       # the first failure, then once a minute
                log.info("thing.unreachable", error=str(exc), retry_s=round(backoff.delay, 2))
            await backoff.wait()                       # sleep the jittered delay, then double it
            continue
        if backoff.succeeded():                        # True once after a run of failures
            log.info("thing.restored")
        await use(conn)
        backoff.reset()                                # it worked: come back quickly next time
        await backoff.wait()

``failed``/``succeeded``/``reset``/``next_wait`` are pure (time is an argument, the random
source injectable), so the schedule is unit-testable; only ``wait`` sleeps.
"""

from __future__ import annotations

import asyncio
import random
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
        self._last_logged: float | None = None
        self._uniform = uniform

    def failed(self, now: float) -> bool:
        """Note a failed try; True when this one should be logged."""
        self.failing = True
        if self._last_logged is None or now - self._last_logged >= self.log_every_s:
            self._last_logged = now
            return True
        return False

    def succeeded(self) -> bool:
        """Note a successful try; True (once) when it ends a run of failures."""
        restored, self.failing = self.failing, False
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
