"""Checks every source applies to a decoded sample before anyone may sign it. Pure.

Two things no single poll can judge on its own: whether the device's clock moved on since
the last accepted sample, and whether the device is still the one this source was pointed
at (a relay swapped behind the same address must not continue another relay's record).

- A timestamp older than the last accepted one, or the same timestamp with different
  content, is `stale-timestamp`: the device's clock is stuck or it replays old data.
- The same timestamp with the same content is `no-new-sample` (`NoNewSample`): the device
  has not measured anything since (polled faster than it updates, or an IEC 61850 value
  whose `t` only moves on a change). Benign: the caller skips the tick, it is no failure.
- An identity other than the pinned one is `identity-changed`.

The guard remembers only what it accepted, so a device that recovers passes again.
"""

from __future__ import annotations

from gridchain.relay.sources.base import DeviceSample, SourceError


class NoNewSample(SourceError):
    """The device repeated its last sample exactly: nothing to record this tick."""

    def __init__(self, detail: str) -> None:
        super().__init__("no-new-sample", detail)


class SampleGuard:
    """Accepts a sample only if its timestamp advances and its identity is the pinned one.

    The identity is pinned to `expected_identity` if given, else to the first accepted
    sample's. Samples without a device timestamp (gateway clock) skip the time checks.
    """

    def __init__(self, expected_identity: str | None = None) -> None:
        self.identity = expected_identity
        self.last: DeviceSample | None = None

    def check(self, sample: DeviceSample) -> DeviceSample:
        if self.identity is not None and sample.identity != self.identity:
            raise SourceError("identity-changed",
                              f"device says it is {sample.identity!r}, expected {self.identity!r}")
        last = self.last
        stamp = sample.timestamp_ms
        last_stamp = last.timestamp_ms if last is not None else None
        if stamp is not None and last_stamp is not None and stamp <= last_stamp:
            if stamp < last_stamp:
                raise SourceError("stale-timestamp", f"device timestamp {stamp} goes back from {last_stamp}")
            if sample == last:
                raise NoNewSample(f"device repeats its sample of {stamp}")
            raise SourceError("stale-timestamp", f"device timestamp {stamp} repeats with new values")
        self.identity = sample.identity
        self.last = sample
        return sample
