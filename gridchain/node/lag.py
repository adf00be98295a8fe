"""Event-loop lag: how late a short sleep wakes up, the loop's own measure of responsiveness."""

from __future__ import annotations

import asyncio
import time
from collections import deque

PROBE_INTERVAL_S = 0.05  # 20 probes a second: fine-grained enough to see a mining hiccup
WINDOW = 1200  # the last minute of probes


class LoopLagMonitor:
    """Samples loop lag continuously; ``summary()`` gives recent p50/p99/max in ms."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S, window: int = WINDOW) -> None:
        self.interval_s = interval_s
        self.samples: deque[float] = deque(maxlen=window)

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.samples.append(max(0.0, time.perf_counter() - started - self.interval_s) * 1000)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "samples": 0}
        ordered = sorted(self.samples)
        pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)  # noqa: E731
        return {"p50": pick(0.50), "p99": pick(0.99), "max": round(ordered[-1], 3), "samples": len(ordered)}
