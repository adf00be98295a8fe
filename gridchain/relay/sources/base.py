"""What a relay device reports, protocol apart: one sample, its quality, and the source API.

A source speaks one device protocol (Modbus TCP, IEC 61850 MMS, DNP3, or the built-in
simulator) and turns one poll into a `DeviceSample`: the ten reading values in
`READING_VALUES` order, each with its own quality, the device's breaker-openings counter,
the device's timestamp where the protocol carries one, and the device's identity. The
gateway signs what a sample says and nothing else, so everything a poll cannot vouch for
is either a quality flag on the value or a `SourceError` that stops the sample.

Quality and flags follow the provenance contract (two bits per value, 00 good,
01 questionable, 10 invalid; bit 31 = timestamp from the gateway clock).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

try:
    from gridchain.consensus.errors import GridchainError
except ImportError:  # the shared base lands in consensus; same (reason, detail) constructor
    class GridchainError(Exception):  # type: ignore[no-redef]
        """Stand-in for gridchain.consensus.errors.GridchainError until it exists."""

        def __init__(self, reason: str, detail: str = "") -> None:
            super().__init__(f"{reason}: {detail}" if detail else reason)
            self.reason, self.detail = reason, detail

# The reading's value fields, in row order (provenance contract, READING_FIELDS minus time).
READING_VALUES = (
    "vab", "vbc", "vca", "ia", "ib", "ic",
    "frequency", "power_factor", "active_power", "reactive_power",
)
GATEWAY_CLOCK_FLAG = 1 << 31  # the row's timestamp is the gateway's, not the device's
QUALITY_BITS = 2

# One poll, whatever the protocol: long enough for a loaded relay CPU on a LAN, short
# enough that a 1 s poll loop notices a stalled device within a couple of periods.
DEFAULT_POLL_TIMEOUT_S = 2.0


class Quality(enum.IntEnum):
    """A value's quality, with the two-bit code the signed row carries."""

    GOOD = 0
    QUESTIONABLE = 1
    INVALID = 2


class SourceError(GridchainError):
    """A poll that produced no trustworthy sample; `reason` names what went wrong.

    Reasons: bad-source-url, bad-map, unknown-map, wrong-map, wrong-model,
    device-unreachable, device-timeout, device-disconnected, device-exception,
    value-out-of-range, stale-timestamp, identity-changed.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        # Kept here too, so the class works the same before and after the shared base lands.
        self.reason, self.detail = reason, detail


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One poll of one device: values in READING_VALUES order, each with its quality."""

    values: tuple[float, ...]
    quality: tuple[Quality, ...]
    openings: int
    timestamp_ms: int | None  # the device's own clock; None when the protocol has none
    identity: str

    def __post_init__(self) -> None:
        if len(self.values) != len(READING_VALUES) or len(self.quality) != len(READING_VALUES):
            raise ValueError(f"a sample has {len(READING_VALUES)} values and qualities")
        if self.openings < 0:
            raise ValueError(f"openings must not be negative, got {self.openings}")

    def value(self, name: str) -> float:
        return self.values[READING_VALUES.index(name)]

    def quality_of(self, name: str) -> Quality:
        return self.quality[READING_VALUES.index(name)]

    @property
    def flags(self) -> int:
        """The row's u32 flags word: two quality bits per value, bit 31 for the gateway clock."""
        word = 0
        for index, quality in enumerate(self.quality):
            word |= int(quality) << (QUALITY_BITS * index)
        return word | (GATEWAY_CLOCK_FLAG if self.timestamp_ms is None else 0)

    def timestamp_or(self, gateway_now_ms: int) -> int:
        """The row's timestamp: the device's if it gave one, else the gateway's clock."""
        return gateway_now_ms if self.timestamp_ms is None else self.timestamp_ms


@runtime_checkable
class Source(Protocol):
    """One device. `poll` returns a sample or raises SourceError; it reconnects by itself
    on the next call after a failure, so the caller only has to keep calling it."""

    description: str

    async def poll(self, now_ms: int) -> DeviceSample: ...

    async def close(self) -> None: ...
