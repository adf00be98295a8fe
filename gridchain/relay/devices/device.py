"""A simulated relay as a device publishes it: measurements, quality, clock, identity, faults.

The protocol servers never look at the simulator; they serve the `DeviceSnapshot` this
module makes, so the three protocols publish the very same numbers. Time is an argument
(`refresh(now_ms)`); the servers publish the newest snapshot whenever they are asked.

Bad-device behaviours are switched with `device.fault = Fault.X` (the servers act on them
per request: exception responses, stalls, disconnects) or baked into the snapshot here
(out-of-range values, a stale or repeating timestamp, a changed identity). Per-value
quality overrides (`device.quality["ia"] = Quality.QUESTIONABLE`) let a test check that a
questionable or invalid value keeps its flag all the way through the gateway.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gridchain.relay.simulator import RelaySimulator
from gridchain.relay.sources.base import READING_VALUES, Quality

OUT_OF_RANGE_FACTOR = 1000.0  # a voltage 1000x nominal: beyond any map's declared range


class Fault(enum.Enum):
    """What a bad device does. Request-time faults are acted on by each protocol server."""

    NONE = "none"
    EXCEPTION = "exception"              # answer reads with a protocol error response
    STALL = "stall"                      # accept the request, never answer
    DISCONNECT = "disconnect"            # drop the connection in the middle of a poll
    OUT_OF_RANGE = "out-of-range"        # publish a voltage no relay can measure
    STALE_TIMESTAMP = "stale-timestamp"  # keep publishing the same device timestamp
    CHANGED_IDENTITY = "changed-identity"  # a different relay behind the same address


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """What the device publishes right now."""

    values: tuple[float, ...]
    quality: tuple[Quality, ...]
    openings: int
    timestamp_ms: int
    identity: str


@dataclass
class SimulatedDevice:
    """One simulated relay and its switchable faults."""

    simulator: RelaySimulator
    identity: str = "GRIDSIM-751 SN0001"
    fault: Fault = Fault.NONE
    other_identity: str = "GRIDSIM-751 SN0099"  # who answers under Fault.CHANGED_IDENTITY
    quality: dict[str, Quality] = field(default_factory=dict)  # value name -> forced quality
    _snapshot: DeviceSnapshot | None = None

    @classmethod
    def create(cls, relay_id: str = "Relay 1", *, seed: int = 1, interval_ms: int = 1000,
               start_ms: int = 0, identity: str = "GRIDSIM-751 SN0001") -> SimulatedDevice:
        return cls(RelaySimulator(relay_id, "Substation", interval_ms, seed, start_ms), identity)

    @property
    def snapshot(self) -> DeviceSnapshot:
        if self._snapshot is None:
            raise RuntimeError("refresh(now_ms) the device before serving it")
        return self._snapshot

    def refresh(self, now_ms: int) -> DeviceSnapshot:
        """Advance the simulator to `now_ms` and publish its newest reading."""
        previous = self._snapshot
        self.simulator.advance(now_ms)
        latest = self.simulator.latest
        if latest is None:
            raise RuntimeError(f"the simulator has no measurement at {now_ms} ms (it starts at "
                               f"{self.simulator.next_tick_ms} ms)")
        values = list(latest.values())
        openings = latest.openings
        if self.fault is Fault.OUT_OF_RANGE:
            values[0] *= OUT_OF_RANGE_FACTOR
        stamp = latest.timestamp_ms
        if self.fault is Fault.STALE_TIMESTAMP and previous is not None:
            stamp = previous.timestamp_ms
        identity = self.other_identity if self.fault is Fault.CHANGED_IDENTITY else self.identity
        quality = tuple(self.quality.get(name, Quality.GOOD) for name in READING_VALUES)
        self._snapshot = DeviceSnapshot(tuple(values), quality, openings, stamp, identity)
        return self._snapshot
