"""A simulated protection relay: physically consistent readings and a ring buffer. Pure.

The prototype drew every value independently at random (a power factor of 0.3 beside a
P of 600 MW). Here the quantities hang together the way a feeder's do:

- the three phase-to-phase voltages share one slow mean-reverting walk around 115 kV,
  stay within 109-118 kV, and each phase differs from their mean by less than 1 %;
- the line currents follow one slowly varying load (100-600 A) with a small per-phase
  imbalance; the power factor wanders between 0.85 and 0.99 lagging;
- P = sqrt(3) * V * I * PF and Q = sqrt(3) * V * I * sin(acos PF) from the average V (kV)
  and I (A) of the published (rounded) values, in MW and MVAr;
- the frequency jitters within +/-0.05 Hz of 60 Hz;
- now and then a fault trips the breaker: the openings counter goes up by one, currents,
  P and Q are zero for a dead time of a few readings, then the breaker recloses.

Time is an argument: ``advance(now_ms)`` produces one measurement per interval tick up to
now, and the same seed and the same calls give the same measurements. Values are rounded to
3 decimals like the prototype's capture files. The simulator only measures: numbering,
buffering and signing are the relay's (gridchain/relay/signed_feed.py), as they would be
for a real device behind a gateway.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

DEFAULT_INTERVAL_MS = 10_000  # the prototype's capture interval
# A node may be down for up to a day and still catch up without a gap (8640 at 10 s): the
# relay buffers this span, and a simulator asleep for longer makes only its newest day.
BUFFER_SPAN_MS = 24 * 60 * 60 * 1000
MIN_BUFFER_READINGS = 8640
# On average one fault every half hour: frequent enough to see in a demo, rare in the data.
DEFAULT_MEAN_MS_BETWEEN_FAULTS = 30 * 60 * 1000
DEAD_TIME_READINGS = (2, 5)  # the breaker stays open this many readings (inclusive range)

NOMINAL_KV, KV_LIMITS = 115.0, (109.0, 118.0)
PHASE_SPREAD = 0.004  # each phase within +/-0.4 % of the common level: imbalance well < 1 %
LOAD_LIMITS_A = (100.0, 600.0)
CURRENT_SPREAD = 0.05  # per-phase current imbalance, +/-5 %
PF_LIMITS = (0.85, 0.99)
NOMINAL_HZ, HZ_JITTER = 60.0, 0.05
SQRT3 = math.sqrt(3.0)

# Kept to 3 decimals like the prototype's files; P and Q are computed from these values.
_DECIMALS = 3


class Measurement(NamedTuple):
    """One measurement instant as the device makes it: its clock, its counter, ten values."""

    timestamp_ms: int
    openings: int  # breaker openings caused by faults, as of this measurement
    vab: float
    vbc: float
    vca: float
    ia: float
    ib: float
    ic: float
    frequency: float
    power_factor: float
    active_power: float
    reactive_power: float

    def values(self) -> tuple[float, ...]:
        return tuple(self[2:])


class _Wander:
    """A mean-reverting (Ornstein-Uhlenbeck) walk, exact for any step, clamped to limits.

    Parameters are in time units, so the same relay looks the same at 0.1 s or 10 s ticks.
    """

    def __init__(self, rng: random.Random, mean: float, sd: float, tau_s: float,
                 low: float, high: float) -> None:
        self._rng, self.mean, self.sd, self.tau_s = rng, mean, sd, tau_s
        self.low, self.high = low, high
        self.value = min(high, max(low, rng.gauss(mean, sd / 2)))

    def step(self, dt_s: float) -> float:
        keep = math.exp(-dt_s / self.tau_s)
        noise = self.sd * math.sqrt(1.0 - keep * keep) * self._rng.gauss(0.0, 1.0)
        self.value = min(self.high, max(self.low, self.mean + (self.value - self.mean) * keep + noise))
        return self.value


class RelaySimulator:
    """One relay's measurements: ``advance(now_ms)`` makes those due up to ``now_ms``."""

    def __init__(self, relay_id: str, substation: str, interval_ms: int = DEFAULT_INTERVAL_MS,
                 seed: int | None = None, start_ms: int = 0, *,
                 fault_probability: float | None = None, buffer_size: int | None = None) -> None:
        if interval_ms < 1:
            raise ValueError(f"interval_ms must be at least 1, got {interval_ms}")
        if fault_probability is None:
            fault_probability = min(1.0, interval_ms / DEFAULT_MEAN_MS_BETWEEN_FAULTS)
        if not 0.0 <= fault_probability <= 1.0:
            raise ValueError(f"fault_probability must be in [0, 1], got {fault_probability}")
        self.relay_id, self.substation, self.interval_ms = relay_id, substation, interval_ms
        self.fault_probability = fault_probability
        # How many readings the relay buffers: a day's worth, and at least 8640.
        self.capacity = buffer_size or max(MIN_BUFFER_READINGS, -(-BUFFER_SPAN_MS // interval_ms))
        self.next_tick_ms = start_ms
        self.latest: Measurement | None = None
        self._openings = 0
        self._dead_left = 0  # readings the breaker stays open for; 0 = closed
        rng = self._rng = random.Random(seed)
        self._voltage = _Wander(rng, NOMINAL_KV, 1.2, 900.0,
                                KV_LIMITS[0] / (1 - PHASE_SPREAD), KV_LIMITS[1] / (1 + PHASE_SPREAD))
        self._phase = [_Wander(rng, 0.0, PHASE_SPREAD / 2, 1800.0, -PHASE_SPREAD, PHASE_SPREAD)
                       for _ in range(3)]
        self._load = _Wander(rng, 350.0, 120.0, 7200.0, LOAD_LIMITS_A[0] / (1 - CURRENT_SPREAD),
                             LOAD_LIMITS_A[1] / (1 + CURRENT_SPREAD))
        self._share = [_Wander(rng, 0.0, CURRENT_SPREAD / 2, 1800.0, -CURRENT_SPREAD, CURRENT_SPREAD)
                       for _ in range(3)]
        self._pf = _Wander(rng, 0.93, 0.03, 3600.0, *PF_LIMITS)
        self._hz = _Wander(rng, NOMINAL_HZ, HZ_JITTER / 3, 30.0, NOMINAL_HZ - HZ_JITTER, NOMINAL_HZ + HZ_JITTER)

    @property
    def openings(self) -> int:
        """Breaker openings caused by faults so far (never decreases)."""
        return self._openings

    @property
    def breaker_closed(self) -> bool:
        return self._dead_left == 0

    def resume(self, openings: int, after_ms: int) -> None:
        """Carry on after a restart: the counter where it was, the next tick after ``after_ms``.

        A relay that was down measured nothing meanwhile, so the ticks it missed are skipped
        (the signed sequence still runs on without a gap: it counts readings, not time).
        """
        self._openings = max(self._openings, openings)
        if after_ms >= self.next_tick_ms:
            self.next_tick_ms = after_ms + self.interval_ms

    def advance(self, now_ms: int) -> list[Measurement]:
        """The measurements of every tick up to ``now_ms``, oldest first."""
        if now_ms < self.next_tick_ms:
            return []
        due = (now_ms - self.next_tick_ms) // self.interval_ms + 1
        if due > self.capacity:
            # Asleep for longer than the buffer holds: only the newest ticks could be served.
            self.next_tick_ms += (due - self.capacity) * self.interval_ms
            due = self.capacity
        made = []
        for _ in range(due):
            made.append(self._measure(self.next_tick_ms, self.interval_ms / 1000.0))
            self.next_tick_ms += self.interval_ms
        self.latest = made[-1]
        return made

    def _measure(self, timestamp_ms: int, dt_s: float) -> Measurement:
        level = self._voltage.step(dt_s)
        vab, vbc, vca = (round(level * (1.0 + phase.step(dt_s)), _DECIMALS) for phase in self._phase)
        load = self._load.step(dt_s)
        shares = [share.step(dt_s) for share in self._share]
        pf = round(self._pf.step(dt_s), _DECIMALS)
        hz = round(self._hz.step(dt_s), _DECIMALS)
        self._update_breaker()
        if not self.breaker_closed:
            # No current flows, so the power factor is undefined; the relay reports 0.
            return Measurement(timestamp_ms, self._openings, vab, vbc, vca, 0.0, 0.0, 0.0, hz, 0.0, 0.0, 0.0)
        ia, ib, ic = (round(load * (1.0 + share), _DECIMALS) for share in shares)
        apparent = SQRT3 * (vab + vbc + vca) / 3.0 * (ia + ib + ic) / 3.0 / 1000.0  # MVA
        p = round(apparent * pf, _DECIMALS)
        q = round(apparent * math.sqrt(1.0 - pf * pf), _DECIMALS)
        return Measurement(timestamp_ms, self._openings, vab, vbc, vca, ia, ib, ic, hz, pf, p, q)

    def _update_breaker(self) -> None:
        # Always draw, so the random sequence does not depend on the breaker's state.
        trip = self._rng.random() < self.fault_probability
        dead_time = self._rng.randint(*DEAD_TIME_READINGS)
        if self._dead_left:
            self._dead_left -= 1  # counts down the open readings; 0 means reclosed
        elif trip:
            self._openings += 1
            self._dead_left = dead_time
