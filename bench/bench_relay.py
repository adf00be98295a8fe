"""Relay feed benchmarks: request rate and the latency of a one-hour read, on loopback.

The relay and the client run in one process on one uvloop event loop, so every number
includes both sides' work on a single core: the figures are a floor for a real deployment.

    python bench/bench_relay.py      # prints a table, writes bench/results_relay.json
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import uvloop

from gridchain.relay.client import RelayClient
from gridchain.relay.feed import ReadingsResponse, parse_readings_response
from gridchain.relay.server import RelayServer
from gridchain.relay.simulator import RelaySimulator

RATE_SECONDS = 2.0  # long enough to smooth scheduling noise, short enough for `make bench`
HOUR_READINGS = 360  # one hour at the prototype's 10 s interval
LATENCY_SAMPLES = 2000
RESULTS = Path(__file__).with_name("results_relay.json")


def run() -> list[dict]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rows = runner.run(_bench())
    return rows + [_validation_only()]


async def _bench() -> list[dict]:
    now_ms = int(time.time() * 1000)
    sim = RelaySimulator("relay-1", "Bench", 10_000, seed=1, start_ms=now_ms - 24 * 3600 * 1000)
    server = RelayServer(sim, "127.0.0.1", 0)
    await server.start()
    client = RelayClient("127.0.0.1", server.port, "relay-1")
    try:
        newest = sim.snapshot().newest_ms
        await client.read_since(newest)  # connect outside the measurement
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < RATE_SECONDS:
            for _ in range(100):
                await client.read_since(newest - 10_000, limit=10)  # one reading per answer
            count += 100
        rate = count / elapsed

        since = newest - HOUR_READINGS * 10_000
        samples = []
        for _ in range(LATENCY_SAMPLES):
            t0 = time.perf_counter()
            capture = await client.read_since(since, limit=HOUR_READINGS)
            samples.append((time.perf_counter() - t0) * 1000)
        assert len(capture.readings) == HOUR_READINGS
    finally:
        await client.close()
        await server.close()
    samples.sort()
    return [
        {"name": "relay reads/s, one client, small answers", "value": round(rate), "unit": "req/s",
         "goal": ">= 5000"},
        {"name": f"read of {HOUR_READINGS} readings incl. validation, median", "value":
         round(statistics.median(samples), 3), "unit": "ms", "goal": "< 5"},
        {"name": f"read of {HOUR_READINGS} readings incl. validation, p99", "value":
         round(samples[int(len(samples) * 0.99)], 3), "unit": "ms", "goal": "< 5"},
    ]


def _validation_only() -> dict:
    """Client-side checking of a decoded 360-reading answer, without the network."""
    sim = RelaySimulator("relay-1", "Bench", 10_000, seed=1, start_ms=0)
    rows = sim.advance_rows((HOUR_READINGS - 1) * 10_000)
    message = ReadingsResponse("relay-1", "Bench", 0, 0, tuple(rows)).encode()
    message["readings"] = [list(row) for row in rows]  # as msgpack hands it back
    rounds, start = 500, time.perf_counter()
    for _ in range(rounds):
        parse_readings_response(message, -1, HOUR_READINGS, "relay-1")
    per_read = (time.perf_counter() - start) / rounds * 1000
    return {"name": f"validation of {HOUR_READINGS} readings into a Capture", "value": round(per_read, 3),
            "unit": "ms", "goal": "-"}


def main() -> None:
    rows = run()
    width = max(len(row["name"]) for row in rows)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'unit':<6}  goal")
    for row in rows:
        print(f"{row['name']:<{width}}  {row['value']:>10}  {row['unit']:<6}  {row['goal']}")
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
