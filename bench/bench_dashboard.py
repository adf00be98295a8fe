"""Dashboard benchmarks: a day of readings (8,640 at 10 s x 10 series) from page load to drawn
plots in headless Chromium, the readings API for that day, and a /metrics scrape.

The server is gridchain.web on a real ledger (tests/support/web.py) in a process of its own,
on 127.0.0.1, as a node's operator listener is; this process is the client (the browser's
driver, or a plain HTTP client). Times are wall-clock round trips as a client sees them,
median of several, plus the cold first one (the relay's series read from the store).

Page load is navigation start to the ``gridchain.plots-drawn`` performance mark, which the
page sets when the last of its six plots has run its draw hook with the day's data; each
load is in a new browser context (nothing cached) after a new block (the answer is made
again, as on a live node). The rows carry where the time went (medians, ms since navigation
start): the page, app.js and uPlot fetched, the readings fetched, DOMContentLoaded, the
readings in the page's hands, the six uPlot instances constructed, the first of them drawn,
and the first frame painted after the last draw.

    python -m bench dashboard          # in `make bench`'s table
    python -m bench.bench_dashboard    # on its own: writes bench/results_dashboard.json
"""

from __future__ import annotations

import asyncio
import http.client
import multiprocessing
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.nodes import QUICK, row, run_alone, workdir

RESULTS = Path(__file__).with_name("results_dashboard.json")
CHROMIUM = "/usr/bin/chromium"
ROUNDS = 5 if QUICK else 15
SITE_START_S = 120.0  # a day of blocks is built and stored in ~5 s; two minutes means it is stuck
COMMAND_S = 30.0  # a command to the site (a block, a cache drop) takes milliseconds
DRAWN_MARK = "gridchain.plots-drawn"
READINGS_PATH = "/api/readings?relay=relay-1&span=86400000"
# What the page's own timeline says (ms since navigation start), read once its plots are drawn.
TIMELINE_JS = """(mark) => {
  const nav = performance.getEntriesByType("navigation")[0];
  const done = {};
  for (const r of performance.getEntriesByType("resource")) {
    done[new URL(r.name).pathname.split("/").pop()] = r.responseEnd;
  }
  const t = window.gridchain.timings;
  return { drawn: performance.getEntriesByName(mark)[0].startTime, painted: t.painted, html: nav.responseEnd,
           app_js: done["app.js"], uplot_js: done["uPlot.iife.min.js"], readings_fetched: done["readings"],
           dom_ready: nav.domContentLoadedEventStart, readings_in_page: t.readings, plots_made: t.made,
           first_plot_drawn: t.plots[0],
           points: Math.min(...window.gridchain.charts.map((c) => c.data[0].length)),
           plots: window.gridchain.charts.length };
}"""
BREAKDOWN = ("html", "app_js", "uplot_js", "readings_fetched", "dom_ready", "readings_in_page", "plots_made",
             "first_plot_drawn", "painted")


# --- the site, in a process of its own -----------------------------------------------------------
def _site_main(conn, base: str) -> None:
    import uvloop

    from gridchain.cli.logs import configure_logging
    configure_logging("json", "info", sys.stderr)  # as a node logs: web.request is a debug event
    uvloop.run(_serve_site(conn, Path(base)))


async def _serve_site(conn, base: Path) -> None:
    from tests.support.web import DashboardSite, fill_day
    site = DashboardSite(base)
    fill_day(site.ledger)
    await site.start()
    conn.send(site.port)
    loop = asyncio.get_running_loop()
    try:
        while (command := await loop.run_in_executor(None, conn.recv)) is not None:
            conn.send(_command(site, command))  # on the site's loop, between requests
    finally:
        await site.stop()


def _command(site, command: str) -> object:
    from tests.support.web import next_block
    if command == "block":  # the chain moves: the series follows, the next answer is made again
        site.add_block(next_block(site.ledger))
    elif command == "cold":  # forget the series: the next answer reads the day from the store
        site.dashboard.readings._series.clear()
        site.dashboard.readings._answers.clear()
    elif command == "exposition":  # ms of one /metrics body, in the site's loop
        for _ in range(200):
            site.metrics.on_block_accepted(6, "peer", 0.004)
        started = time.perf_counter()
        for _ in range(200):
            site.metrics.exposition()
        return (time.perf_counter() - started) / 200 * 1000
    return None


class Site:
    """The dashboard site in a child process: ``port``, and ``ask`` to run a command there."""

    def __init__(self, base: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_site_main, args=(child, str(base)), daemon=True)
        self.proc.start()
        self.port = self._answer(SITE_START_S)

    def _answer(self, timeout: float) -> object:
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.1):
            if not self.proc.is_alive():
                raise RuntimeError(f"the dashboard site exited ({self.proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dashboard site did not answer within {timeout} s")
        return self.conn.recv()

    async def ask(self, command: str) -> object:
        self.conn.send(command)
        return await asyncio.get_running_loop().run_in_executor(None, self._answer, COMMAND_S)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# --- measurements ------------------------------------------------------------------------------
def _get(port: int, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return (time.perf_counter() - started) * 1000, len(body)


async def _timed(port: int, path: str) -> tuple[float, int]:
    return await asyncio.get_running_loop().run_in_executor(None, _get, port, path)


async def _api(site: Site) -> list[dict]:
    rows = []
    for fmt in ("f64", "json"):
        await site.ask("cold")  # cold: the day read from the store
        cold, size = await _timed(site.port, f"{READINGS_PATH}&format={fmt}")
        followed = []
        for _ in range(ROUNDS):  # a block arrives, the page asks again: the series follows, a new answer
            await site.ask("block")
            followed.append((await _timed(site.port, f"{READINGS_PATH}&format={fmt}"))[0])
        cached = [(await _timed(site.port, f"{READINGS_PATH}&format={fmt}"))[0] for _ in range(ROUNDS)]
        goal = "<= 50 ms" if fmt == "f64" else "-"
        rows.append(row(f"readings API, a day, {fmt}: after a new block (median)", statistics.median(followed), "ms",
                        goal, bytes=size))
        rows.append(row(f"readings API, a day, {fmt}: same tip again (median)", statistics.median(cached), "ms", goal))
        rows.append(row(f"readings API, a day, {fmt}: cold (series read from the store)", cold, "ms", "-"))
    return rows


async def _metrics(site: Site) -> list[dict]:
    inside = await site.ask("exposition")
    trips = [await _timed(site.port, "/metrics") for _ in range(ROUNDS * 4)]
    return [row("/metrics scrape, round trip (median)", statistics.median(t for t, _ in trips), "ms", "<= 2 ms",
                bytes=trips[-1][1]),
            row("/metrics exposition, in the node's loop", inside, "ms", "-")]


async def _load(page, url: str | None) -> dict:
    """Open ``url`` (None: reload) and wait until every plot has drawn and the frame after it."""
    if url is None:
        await page.reload()
    else:
        await page.goto(url)
    await page.wait_for_function(
        "() => document.body.dataset.drawn === '1' && window.gridchain.timings.painted != null", timeout=30_000)
    timeline = await page.evaluate(TIMELINE_JS, DRAWN_MARK)
    assert timeline["plots"] == 6 and timeline["points"] >= 8_640, timeline
    return timeline


def _medians(timelines: list[dict]) -> dict:
    return {f"{key}_ms": round(statistics.median(t[key] for t in timelines if t.get(key) is not None), 1)
            for key in BREAKDOWN if any(t.get(key) is not None for t in timelines)}


async def _browser(site: Site) -> list[dict]:
    if shutil.which(CHROMIUM) is None:
        return [row("page load -> plots drawn (chromium missing)", None, "ms", "<= 300 ms")]
    from playwright.async_api import async_playwright
    url = f"http://127.0.0.1:{site.port}/"
    loads, reloads = [], []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(ROUNDS + 1):
                await site.ask("block")
                page = await browser.new_page(viewport={"width": 1500, "height": 1300})  # a new context
                loads.append(await _load(page, url))
                await site.ask("block")
                reloads.append(await _load(page, None))  # the same tab: static files revalidated (304)
                await page.close()
        finally:
            await browser.close()
    first, warm = loads[0], loads[1:]
    drawn = [t["drawn"] for t in warm]
    return [
        row("page load -> plots drawn, a day x 10 series (median)", statistics.median(drawn), "ms", "<= 300 ms",
            points=first["points"], p90=round(sorted(drawn)[int(0.9 * (len(drawn) - 1))], 1), loads=len(drawn),
            **_medians(warm)),
        row("page load -> first frame painted with the plots (median)",
            statistics.median(t["painted"] for t in warm), "ms", "-"),
        row("page reload -> plots drawn, static files revalidated (median)",
            statistics.median(t["drawn"] for t in reloads[1:]), "ms", "-", **_medians(reloads[1:])),
        row("page load -> plots drawn, first load (new browser, series read from the store)", first["drawn"], "ms",
            "-", **_medians([first])),
    ]


async def _run() -> list[dict]:
    with workdir("bench-dashboard") as base:
        site = Site(base)
        try:
            return await _browser(site) + await _api(site) + await _metrics(site)
        finally:
            site.close()


def run() -> list[dict]:
    return asyncio.run(_run())


if __name__ == "__main__":
    run_alone(run, RESULTS)
