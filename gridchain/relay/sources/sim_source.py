"""The built-in simulator as a source (`sim`): no protocol, the same sample shape.

Each poll advances the simulator to `now_ms` and returns its newest measurement, stamped
by the simulated device's clock, all values good. It is what the gateway reads when no
real relay is configured, and the baseline the protocol sources are compared with.
"""

from __future__ import annotations

from gridchain.relay.simulator import RelaySimulator
from gridchain.relay.sources.base import READING_VALUES, DeviceSample, Quality, SourceError
from gridchain.relay.sources.guard import SampleGuard

_GOOD = (Quality.GOOD,) * len(READING_VALUES)


class SimSource:
    """`sim`: one RelaySimulator."""

    def __init__(self, simulator: RelaySimulator) -> None:
        self.simulator = simulator
        self.description = f"sim ({simulator.relay_id})"
        self.guard = SampleGuard()

    async def poll(self, now_ms: int) -> DeviceSample:
        self.simulator.advance(now_ms)
        latest = self.simulator.latest
        if latest is None:
            raise SourceError("device-unreachable", f"{self.description}: no measurement yet at {now_ms} ms")
        sample = DeviceSample(latest.values(), _GOOD, latest.openings, latest.timestamp_ms,
                              f"sim {self.simulator.relay_id}")
        return self.guard.check(sample)

    async def close(self) -> None:
        return None
