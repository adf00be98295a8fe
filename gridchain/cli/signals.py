"""Turn SIGINT/SIGTERM into a stop event for a daemon's run function (one shutdown path)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]],
                              signals: Sequence[int] = STOP_SIGNALS) -> None:
    """Run ``run(stop)``; the first of ``signals`` sets ``stop``, a second one cancels it.

    The second signal is the operator's "stop now" for a shutdown that is taking too long.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set():
            task.cancel()
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    try:
        await run(stop)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
