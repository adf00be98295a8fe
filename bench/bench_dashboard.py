"""Dashboard benchmarks: a day of readings (8,640 at 10 s x 10 series) from page load to drawn
plots in headless Chromium, the readings API for that day, and a /metrics scrape.

The server is gridchain.web on a real ledger (tests/support/web.py), on 127.0.0.1; times
are wall-clock round trips as a client sees them, median of several, plus the cold first
one (the relay's series read from the store) where it differs.

    python -m bench.bench_dashboard    # prints a table, writes bench/results_dashboard.json
"""

from __future__ import annotations

import asyncio
import http.client
import shutil
import statistics
import time
from pathlib import Path

from bench.nodes import QUICK, row, run_alone, workdir
from tests.support.web import DashboardSite, fill_day, next_block

RESULTS = Path(__file__).with_name("results_dashboard.json")
CHROMIUM = "/usr/bin/chromium"
ROUNDS = 5 if QUICK else 15
DAY = 86_400_000


def _get(port: int, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return (time.perf_counter() - started) * 1000, len(body)


async def _timed(port: int, path: str) -> tuple[float, int]:
    return await asyncio.get_running_loop().run_in_executor(None, _get, port, path)


async def _api(site: DashboardSite) -> list[dict]:
    rows = []
    path = "/api/readings?relay=relay-1&span=86400000"
    for fmt in ("f64", "json"):
        site.dashboard.readings._series.clear()  # cold: the day read from the store
        site.dashboard.readings._answers.clear()
        cold, size = await _timed(site.port, f"{path}&format={fmt}")
        followed = []
        for _ in range(ROUNDS):  # a block arrives, the page asks again: the series follows, a new answer
            site.add_block(next_block(site.ledger))
            followed.append((await _timed(site.port, f"{path}&format={fmt}"))[0])
        cached = [(await _timed(site.port, f"{path}&format={fmt}"))[0] for _ in range(ROUNDS)]
        goal = "<= 50 ms" if fmt == "f64" else "-"
        rows.append(row(f"readings API, a day, {fmt}: after a new block (median)", statistics.median(followed), "ms",
                        goal, bytes=size))
        rows.append(row(f"readings API, a day, {fmt}: same tip again (median)", statistics.median(cached), "ms", goal))
        rows.append(row(f"readings API, a day, {fmt}: cold (series read from the store)", cold, "ms", "-"))
    return rows


async def _metrics(site: DashboardSite) -> list[dict]:
    for _ in range(200):
        site.metrics.on_block_accepted(6, "peer", 0.004)
    trips = [(await _timed(site.port, "/metrics"))[0] for _ in range(ROUNDS * 4)]
    started = time.perf_counter()
    for _ in range(200):
        body = site.metrics.exposition()
    inside = (time.perf_counter() - started) / 200 * 1000
    return [row("/metrics scrape, round trip (median)", statistics.median(trips), "ms", "<= 2 ms", bytes=len(body)),
            row("/metrics exposition, in the node's loop", inside, "ms", "-")]


async def _browser(site: DashboardSite) -> list[dict]:
    if shutil.which(CHROMIUM) is None:
        return [row("page load -> plots drawn (chromium missing)", None, "ms", "<= 300 ms")]
    from playwright.async_api import async_playwright
    times = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(ROUNDS + 1):
                page = await browser.new_page(viewport={"width": 1500, "height": 1300})
                await page.goto(f"http://127.0.0.1:{site.port}/")
                await page.wait_for_function("() => document.body.dataset.drawn === '1'", timeout=30_000)
                drawn = await page.evaluate("window.gridchain.timings.drawn")  # ms since navigation start
                points = await page.evaluate("window.gridchain.charts[0].data[0].length")
                assert points >= 8_640, points
                times.append(drawn)
                await page.close()
        finally:
            await browser.close()
    return [row("page load -> plots drawn, a day x 10 series (median)", statistics.median(times[1:]), "ms",
                "<= 300 ms", points=points),
            row("page load -> plots drawn, first load", times[0], "ms", "-")]


async def _run() -> list[dict]:
    with workdir("bench-dashboard") as base:
        site = DashboardSite(base)
        fill_day(site.ledger)
        await site.start()
        try:
            return await _browser(site) + await _api(site) + await _metrics(site)
        finally:
            await site.stop()


def run() -> list[dict]:
    return asyncio.run(_run())


if __name__ == "__main__":
    run_alone(run, RESULTS)
