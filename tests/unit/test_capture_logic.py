"""The capture task's pure pieces: what counts as fresh, and merging displaced readings."""

from __future__ import annotations

from gridchain.node.capture import fresh_readings, merge_readings
from gridchain.consensus.block import Reading


def reading(ts: int, v: float = 115.0) -> Reading:
    return Reading(ts, v, v, v, 300.0, 300.0, 300.0, 60.0, 0.95, 50.0, 15.0)


def test_fresh_readings_keeps_only_newer_than_chain():
    readings = tuple(reading(t) for t in (10, 20, 30))
    assert fresh_readings(readings, None) == readings
    assert fresh_readings(readings, 20) == (reading(30),)
    assert fresh_readings(readings, 30) == ()


def test_merge_readings_orders_and_deduplicates_by_timestamp():
    displaced = (reading(10), reading(30))
    relay = (reading(20), reading(30, v=116.0), reading(40))
    merged = merge_readings(displaced, relay)
    assert [r.timestamp_ms for r in merged] == [10, 20, 30, 40]
    assert merged[2].vab == 115.0  # the first copy seen wins: displaced readings were on a chain
