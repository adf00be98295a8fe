"""The simulated relay: physically consistent measurements, faults, reproducibility, restarts."""

from __future__ import annotations

import math
import time

import pytest

from gridchain.relay.simulator import MIN_BUFFER_READINGS, Measurement, RelaySimulator

DAY_MS = 24 * 60 * 60 * 1000


@pytest.fixture(scope="module")
def day() -> list[Measurement]:
    sim = RelaySimulator("relay-1", "Bogota", 10_000, seed=7, start_ms=0, fault_probability=0.01)
    return sim.advance(DAY_MS - 1)


def closed(readings: list[Measurement]) -> list[Measurement]:
    return [r for r in readings if r.ia > 0]


def test_a_day_has_one_reading_per_interval(day):
    assert len(day) == 8640
    stamps = [r.timestamp_ms for r in day]
    assert stamps[0] == 0 and all(b - a == 10_000 for a, b in zip(stamps, stamps[1:]))


def test_voltages_stay_in_band_with_small_imbalance(day):
    for r in day:
        volts = (r.vab, r.vbc, r.vca)
        assert all(109.0 <= v <= 118.0 for v in volts)
        mean = sum(volts) / 3
        assert max(abs(v - mean) for v in volts) / mean < 0.01


def test_voltage_is_a_slow_walk_not_noise(day):
    steps = [abs(b.vab - a.vab) for a, b in zip(day, day[1:])]
    assert max(steps) < 1.5  # kV per 10 s
    assert max(r.vab for r in day) - min(r.vab for r in day) > 1.0  # but it does move


def test_currents_follow_a_load_with_small_imbalance(day):
    for r in closed(day):
        amps = (r.ia, r.ib, r.ic)
        assert all(100.0 <= a <= 600.0 for a in amps)
        mean = sum(amps) / 3
        assert max(abs(a - mean) for a in amps) / mean < 0.1


def test_power_factor_and_frequency(day):
    assert all(0.85 <= r.power_factor <= 0.99 for r in closed(day))
    assert all(abs(r.frequency - 60.0) <= 0.05 for r in day)


def test_p_and_q_follow_from_v_i_and_pf(day):
    for r in closed(day):
        volts = (r.vab + r.vbc + r.vca) / 3
        amps = (r.ia + r.ib + r.ic) / 3
        apparent = math.sqrt(3) * volts * amps / 1000
        assert r.active_power == pytest.approx(apparent * r.power_factor, abs=0.0006)
        assert r.reactive_power == pytest.approx(apparent * math.sin(math.acos(r.power_factor)), abs=0.0006)


def test_values_have_three_decimals(day):
    for r in day[:500]:
        for value in r.values():
            assert round(value, 3) == value


def test_faults_open_the_breaker_for_a_few_readings():
    sim = RelaySimulator("r", "s", 10_000, seed=3, start_ms=0, fault_probability=0.05)
    openings_seen, runs, run = [], [], 0
    for step in range(2000):
        before = sim.openings
        (reading,) = sim.advance(step * 10_000)
        assert sim.openings in (before, before + 1)
        openings_seen.append(sim.openings)
        if reading.ia == 0:
            assert (reading.ib, reading.ic, reading.active_power, reading.reactive_power) == (0, 0, 0, 0)
            assert reading.vab > 100 and abs(reading.frequency - 60) <= 0.05  # bus still live
            if run == 0:
                assert sim.openings == before + 1  # the opening is counted on the first dead reading
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert openings_seen == sorted(openings_seen)
    assert sim.openings >= 20
    assert len(runs) in (sim.openings, sim.openings - 1)
    assert all(2 <= length <= 5 for length in runs)


def test_default_fault_rate_is_about_one_per_half_hour():
    sim = RelaySimulator("r", "s", 10_000, seed=11, start_ms=0)
    sim.advance(DAY_MS - 1)
    assert 20 <= sim.openings <= 80  # ~48 expected in a day


def test_same_seed_same_readings_other_seed_other_readings():
    def make(seed):
        sim = RelaySimulator("r", "s", 1000, seed=seed, start_ms=5)
        return sim.advance(3000) + sim.advance(100_000)

    assert make(42) == make(42)
    assert make(42) != make(43)


def test_advance_before_the_next_tick_gives_nothing():
    sim = RelaySimulator("r", "s", 1000, seed=1, start_ms=10_000)
    assert sim.advance(9_999) == []
    assert [r.timestamp_ms for r in sim.advance(12_500)] == [10_000, 11_000, 12_000]
    assert sim.advance(12_999) == []
    assert sim.next_tick_ms == 13_000


def test_buffer_holds_a_day_at_any_interval():
    assert RelaySimulator("r", "s", 10_000).capacity == MIN_BUFFER_READINGS == 8640
    assert RelaySimulator("r", "s", 60_000).capacity == 8640
    assert RelaySimulator("r", "s", 100).capacity == 864_000


def test_each_measurement_carries_the_openings_counter_as_of_itself():
    sim = RelaySimulator("r", "s", 1000, seed=5, start_ms=0, fault_probability=0.2)
    made = sim.advance(199_000)
    counts = [m.openings for m in made]
    assert sim.openings > 2 and counts == sorted(counts) and counts[-1] == sim.openings
    assert sim.latest == made[-1] and len(made[0].values()) == 10


def test_resume_skips_the_downtime_and_keeps_the_counter():
    sim = RelaySimulator("r", "s", 1000, seed=2, start_ms=0)
    sim.resume(openings=7, after_ms=50_000)  # the previous run's newest reading was at 50 s
    assert sim.openings == 7 and sim.next_tick_ms == 51_000
    made = sim.advance(53_000)
    assert [m.timestamp_ms for m in made] == [51_000, 52_000, 53_000]
    assert all(m.openings >= 7 for m in made)


def test_a_long_sleep_only_makes_what_the_buffer_can_hold():
    sim = RelaySimulator("r", "s", 1000, seed=2, start_ms=0, buffer_size=5)
    made = sim.advance(1_000_000)
    assert [r.timestamp_ms for r in made] == [996_000, 997_000, 998_000, 999_000, 1_000_000]
    assert sim.next_tick_ms == 1_001_000


def test_bad_arguments():
    with pytest.raises(ValueError):
        RelaySimulator("r", "s", 0)
    with pytest.raises(ValueError):
        RelaySimulator("r", "s", 1000, fault_probability=1.5)


def test_a_day_is_made_fast():
    sim = RelaySimulator("r", "s", 10_000, seed=1, start_ms=0)
    start = time.perf_counter()
    sim.advance(DAY_MS - 1)
    assert time.perf_counter() - start < 1.0  # 8640 measurements: a catch-up at boot stays short
