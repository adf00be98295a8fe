"""Relay feed benchmarks: the relay's signing rate, request rate, and a one-hour read checked.

Signing: seals over runs the relay has not signed before (its seal cache missed), for
answers of one reading (the rate of fresh seals: one Ed25519 signature each) and of 360
readings (readings/s signed: interior hashes over the kept leaves plus one signature). The
read rows run the relay and the client in one process on one uvloop event loop, so they
include both sides' work on a single core: a floor for a real deployment. The answer of 360
readings (one hour at the 10 s interval) is checked by the client in full: decode, flags,
finite values, sequence, and the seal's Ed25519 verify against the expected key.

    python bench/bench_relay.py      # prints a table, writes bench/results_relay.json
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import msgpack
import uvloop

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import QUICK, percentile, row, run_alone
from gridchain.identity.keys import RelayKey
from gridchain.relay.client import RelayClient
from gridchain.relay.feed import ReadingsResponse, check_readings
from gridchain.relay.server import RelayServer
from gridchain.relay.signed_feed import SignedFeed
from gridchain.relay.simulator import RelaySimulator

RATE_SECONDS = 0.5 if QUICK else 2.0  # long enough to smooth scheduling noise, short enough for `make bench`
HOUR_READINGS = 360  # one hour at the prototype's 10 s interval
LATENCY_SAMPLES = 300 if QUICK else 2000
DAY_MS = 24 * 3600 * 1000
RESULTS = Path(__file__).with_name("results_relay.json")


def run() -> list[dict]:
    rows = _signing()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rows += runner.run(_reads())
    return rows + _checking_only()


def _day_feed() -> SignedFeed:
    """A relay feed holding a day of readings at 10 s, as a relay has after a day's running."""
    sim = RelaySimulator("relay-1", "Bench", 10_000, seed=1, start_ms=0)
    feed = SignedFeed("relay-1", "Bench", RelayKey.from_seed(b"\x01" * 32), sim.capacity)
    feed.boot(0, key_created=True)
    feed.record([(m.timestamp_ms, m.openings, 0, m.values()) for m in sim.advance(DAY_MS - 1)])
    return feed


def _signing() -> list[dict]:
    feed = _day_feed()
    rows = []
    for size, name in ((1, "relay seals/s signed, 1-reading answers (cache missed)"),
                       (HOUR_READINGS, f"relay readings/s signed, {HOUR_READINGS}-reading answers (cache missed)")):
        after, signed, start = 0, feed.seals_signed, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < RATE_SECONDS:
            for _ in range(20):
                feed.read(after % (8640 - size), size, 0)  # a new first seq each time: a fresh seal
                after += 1
        seals = (feed.seals_signed - signed) / elapsed
        rows.append(row(name, seals * size, "readings/s" if size > 1 else "seals/s", "-", 0,
                        seals_per_s=round(seals)))
    return rows


async def _reads() -> list[dict]:
    now_ms = int(time.time() * 1000)
    sim = RelaySimulator("relay-1", "Bench", 10_000, seed=1, start_ms=now_ms - DAY_MS + 1)
    server = RelayServer(sim, "127.0.0.1", 0)
    await server.start()
    server.pause()  # the answers stay the same, as between two relay ticks
    client = RelayClient("127.0.0.1", server.port, "relay-1", expected_key=server.key.public_key)
    try:
        newest = server.feed.buffer.newest_seq
        await client.read(newest - 1)  # connect outside the measurement
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < RATE_SECONDS:
            for _ in range(100):
                await client.read(newest - 1, limit=10)  # one reading per answer
            count += 100
        rate = count / elapsed

        after = newest - HOUR_READINGS
        samples = []
        for _ in range(LATENCY_SAMPLES):
            t0 = time.perf_counter()
            batch = await client.read(after, limit=HOUR_READINGS)
            samples.append((time.perf_counter() - t0) * 1000)
        assert len(batch.readings) == HOUR_READINGS
    finally:
        await client.close()
        await server.close()
    return [
        row("relay reads/s, one client, 1-reading answers, verified", rate, "req/s", ">= 5000", 0),
        row(f"read of {HOUR_READINGS} readings, verified, median", percentile(samples, 0.5), "ms", "< 5"),
        row(f"read of {HOUR_READINGS} readings, verified, p99", percentile(samples, 0.99), "ms", "< 5"),
    ]


def _checking_only() -> list[dict]:
    """The client's check of a 360-reading answer, from its msgpack bytes, without the network."""
    feed = _day_feed()
    response = feed.read(1000, HOUR_READINGS, 0)
    wire = msgpack.packb(response.encode())
    samples = []
    for _ in range(LATENCY_SAMPLES):
        t0 = time.perf_counter()
        batch = check_readings(ReadingsResponse.decode(msgpack.unpackb(wire)), 1000, HOUR_READINGS,
                               feed.public_key, "relay-1")
        samples.append((time.perf_counter() - t0) * 1000)
    assert len(batch.readings) == HOUR_READINGS
    return [
        row(f"check of a {HOUR_READINGS}-reading answer (decode + seal verify), median", percentile(samples, 0.5),
            "ms", "< 5"),
        row(f"check of a {HOUR_READINGS}-reading answer (decode + seal verify), p99", percentile(samples, 0.99),
            "ms", "< 5"),
    ]


def main() -> None:
    run_alone(run, RESULTS)


if __name__ == "__main__":
    main()
