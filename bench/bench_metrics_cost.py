"""What a Prometheus scrape costs a live network: block propagation with and without /metrics read.

Four ``gridchaind`` processes in a full mesh on 127.0.0.1, fed by a relay process, mine as in
bench_node's propagation run (a fast relay and capture, 12 bits: several blocks a second).
One run alternates windows: in the "scraped" ones every node's ``/metrics`` is read once a
second, as Prometheus would (``Accept-Encoding: gzip``, the four targets spread over the
second), in the others nobody reads it. Propagation is ``block.mined`` on one node to
``block.accepted`` on each of the other three, for the blocks mined in each window, from the
nodes' JSON logs (bench.nodes.spread); the scraped rows carry the unscraped figure as their
``limit`` and the ratio to it. The scrapes' own round trips on live nodes are a row too.

    python -m bench metrics_cost                        # in `make bench`'s table
    BENCH_QUICK=1 python -m bench.bench_metrics_cost    # shorter windows, same measurements
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import uvloop

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import QUICK, guarded, percentile, row, run_alone, spread, workdir
from tests.support.ports import api_port, free_port
from tests.support.processes import Proc, Processes, statuses, wait_all
from tests.support.web import http_get

RESULTS = Path(__file__).with_name("results_metrics_cost.json")
NODES = 4  # the prototype's network
READY_S = 30.0  # four processes start and connect in ~1 s; 30 s means something is broken
WARMUP_S = 1.0  # the first captures race before the mesh is up; they are not measured
SETTLE_S = 1.5  # after the last window, time for its last blocks to reach everyone
RELAY_S, CAPTURE_S, BITS = 0.1, 0.25, 12  # as bench_node's propagation: ~4-6 blocks a second
WINDOW_S = 8.0 if QUICK else 15.0
PAIRS = 2 if QUICK else 6  # (unscraped, scraped) window pairs, alternating, so drift hits both alike
SCRAPE_EVERY_S = 1.0  # Prometheus' shortest common scrape interval
SCRAPE_TIMEOUT_S = 5.0  # a node answers /metrics in ~1 ms; five seconds means it is stuck
PROMETHEUS_HEADERS = {"Accept": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1", "Accept-Encoding": "gzip"}


async def _scrape(procs: list[Proc], stop: asyncio.Event, trips: list[float], sizes: list[int]) -> None:
    """Read each node's /metrics every SCRAPE_EVERY_S, node i at i/N of each second, until ``stop``."""
    async def one(index: int, proc: Proc) -> None:
        port = api_port(proc.port)
        tick = time.monotonic() + SCRAPE_EVERY_S * index / len(procs)
        while not stop.is_set():
            delay = tick - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            started = time.perf_counter()
            status, _, body = await http_get(port, "/metrics", PROMETHEUS_HEADERS, timeout=SCRAPE_TIMEOUT_S)
            trips.append((time.perf_counter() - started) * 1000)
            sizes.append(len(body))
            if status != 200:
                raise RuntimeError(f"/metrics on {proc.name} answered {status}")
            tick += SCRAPE_EVERY_S

    await asyncio.gather(*(one(i, p) for i, p in enumerate(procs)))


async def _window(procs: list[Proc], scraped: bool, trips: list[float], sizes: list[int]) -> tuple[float, float]:
    """One window of WINDOW_S, scraped or not: its (start, end) in epoch seconds."""
    start = time.time()
    if not scraped:
        await asyncio.sleep(WINDOW_S)
        return start, time.time()
    stop = asyncio.Event()
    scraper = asyncio.create_task(_scrape(procs, stop, trips, sizes))
    try:
        await asyncio.sleep(WINDOW_S)
    finally:
        stop.set()
    end = time.time()
    await scraper
    return start, end


async def _cost() -> list[dict]:
    with workdir("bench-metrics-cost-") as root, Processes(root, "bench-metrics-cost", BITS) as cluster:
        relay = cluster.relay(RELAY_S)
        ports = [free_port() for _ in range(NODES)]
        nodes = [cluster.node(f"n{i}", port=port, peers=[p for p in ports if p != port], relays=[relay.port],
                              capture_interval_s=CAPTURE_S) for i, port in enumerate(ports)]
        await wait_all(nodes, lambda s: len(s["peers"]) == NODES - 1, READY_S, "a full mesh")
        await asyncio.sleep(WARMUP_S)
        windows: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        trips: list[float] = []
        sizes: list[int] = []
        for _ in range(PAIRS):
            for scraped in (False, True):
                windows[scraped].append(await _window(nodes, scraped, trips, sizes))
        await asyncio.sleep(SETTLE_S)
        heights = [s["height"] for s in await statuses(nodes) if s]
        await cluster.stop_all()
        seen = {scraped: [spread(nodes, start, end) for start, end in spans] for scraped, spans in windows.items()}
    per_peer = {scraped: [ms for s in spreads for ms in s.per_peer] for scraped, spreads in seen.items()}
    missing = {scraped: sum(s.missing for s in spreads) for scraped, spreads in seen.items()}
    rows = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        quiet, busy = percentile(per_peer[False], q), percentile(per_peer[True], q)
        rows.append(row(f"propagation mined -> accepted per peer, {label}, /metrics not scraped", quiet, "ms",
                        samples=len(per_peer[False]), never_arrived=missing[False], windows=PAIRS,
                        window_s=WINDOW_S))
        rows.append(row(f"propagation mined -> accepted per peer, {label}, each node's /metrics scraped every 1 s",
                        busy, "ms", "-", limit=round(quiet, 3), ratio=round(busy / quiet, 2),
                        samples=len(per_peer[True]), never_arrived=missing[True], scrapes=len(trips)))
    rows.append(row("/metrics scrape of a live node (gzip, as Prometheus asks), round trip p50",
                    percentile(trips, 0.5), "ms", "<= 2 ms", p99=round(percentile(trips, 0.99), 3),
                    max=round(max(trips), 3), bytes=sizes[-1] if sizes else None, scrapes=len(trips),
                    final_height=max(heights) if heights else None, unclean_stops=cluster.unclean))
    return rows


def run() -> list[dict]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(guarded("/metrics scrape cost", _cost))


def main() -> None:
    run_alone(run, RESULTS)


if __name__ == "__main__":
    main()
