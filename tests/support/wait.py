"""Waiting on live processes and sockets: poll a condition until it holds, or fail with a name."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
                     what: str = "condition") -> float:
    """Poll ``predicate`` (plain or async) until it holds; the seconds it took. Fails the
    test after ``timeout`` seconds."""
    started = time.monotonic()
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
