"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

A live node whose data dir holds a day of one relay's readings (8,640 at 10 s, made with
tests.support.web) serves the page on its operator port; the page must draw all of them on
every plot, mark the breaker openings, show a block a peer pushes afterwards without a
reload (server-sent events), list the configured peer that never answers as not connected,
and show the node's own alert about it as a banner. Screenshots go to tests/artifacts/. Playwright drives the browser at
``executable_path`` and never downloads one. On CI the browser must be there (.ci/run
installs it): the test fails rather than skips; elsewhere it skips saying why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from gridchain.node.node import Node
from gridchain.web.alerts import PEER_DOWN, Thresholds
from tests.support.blocks import BITS, PARAMS
from tests.support.nodes import RunningNode, node_config
from tests.support.ports import free_port
from tests.support.wait import wait_until
from tests.support.web import DAY_READINGS, OPENING_EVERY, next_block, prefill_day

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")  # Debian's chromium, never a download

CHROMIUM = os.environ.get("GRIDCHAIN_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_MS = 20_000  # a loaded CI box takes a second or two; nothing should take twenty

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None


def _require_browser() -> None:
    missing = [what for what, ok in (("playwright (pip)", async_playwright is not None),
                                     (CHROMIUM, shutil.which(CHROMIUM) is not None)) if not ok]
    if missing:
        message = f"dashboard browser test needs {', '.join(missing)} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
async def live(tmp_path):
    """A node on the day's data dir (network "test" at the blocks' difficulty), configured with
    a peer nobody answers at, so it raises alert.peer_down within a second."""
    data_dir = tmp_path / "node"
    prefill_day(data_dir)
    config = node_config(data_dir, free_port(), peers=[free_port()], network=PARAMS.name, difficulty=BITS,
                         api_port=0, name="web-node")
    node = Node(config)
    node.observability.alerts.thresholds = Thresholds(peer_down_s=1.0)
    node.observability.monitor.interval_s = 0.2
    stop = asyncio.Event()
    running = RunningNode(node, stop, asyncio.create_task(node.run(stop)), config)
    await wait_until(lambda: node.api.port or running.task.done(), 10.0, what="operator port")
    running.url = f"http://127.0.0.1:{node.api.port}"
    yield running
    await running.shutdown()


async def test_the_page_draws_a_day_and_follows_new_blocks_live(live):
    _require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1300})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            await page.goto(live.url + "/")
            await page.wait_for_function("() => document.body.dataset.drawn === '1'", timeout=WAIT_MS)

            lengths = await page.evaluate("window.gridchain.charts.map(c => c.data[0].length)")
            assert lengths == [DAY_READINGS] * 6
            series = await page.evaluate("window.gridchain.charts.map(c => c.series.map(s => s.label).slice(1))")
            assert series == [["Vab", "Vbc", "Vca"], ["Ia", "Ib", "Ic"], ["f"], ["PF"], ["P"], ["Q"]]
            first_ia = await page.evaluate("window.gridchain.charts[1].data[1][0]")
            stored, _ = live.ledger.store.readings_page("relay-1", None, None, None, 1)
            assert first_ia == stored[0][8]  # the plotted value is the stored one
            openings = await page.evaluate("window.gridchain.state.openings.length")
            assert openings == DAY_READINGS // OPENING_EVERY
            assert "Breaker openings (4)" in await page.inner_text("#openings")
            assert await page.locator("#blocks tbody tr").count() == 20
            drawn = await page.evaluate("performance.getEntriesByName('gridchain.plots-drawn').map(m => m.startTime)")
            assert len(drawn) == 1 and drawn[0] > 0  # the mark the benchmark reads, set once
            # The configured peer nobody answers at is listed though no link to it is up.
            await page.wait_for_selector("#peers tr.peer-down", timeout=WAIT_MS)
            down = await page.inner_text("#peers tr.peer-down")
            assert "not connected for" in down and str(live.config.peers[0].port) in down
            await page.wait_for_function("() => document.getElementById('live').textContent === 'live'",
                                         timeout=WAIT_MS)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-day.png"), full_page=True)

            block = next_block(live.ledger)  # as a peer pushes it: the node's own receive path
            result = await live.node.chain.receive_blocks([block], "127.0.0.1:1", via_sync=False)
            assert result.accepted == (block,)
            await page.wait_for_selector(f'#blocks tbody tr[data-height="{block.height}"]', timeout=WAIT_MS)
            newest_s = block.capture.newest_ms / 1000
            await page.wait_for_function(
                "(newest) => { const x = window.gridchain.charts[0].data[0]; return x[x.length - 1] === newest; }",
                arg=newest_s, timeout=WAIT_MS)
            assert await page.inner_text("#height") == str(block.height)

            await page.wait_for_selector("#alerts:not([hidden])", timeout=WAIT_MS)
            assert PEER_DOWN in await page.inner_text("#alerts")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)

            await page.mouse.move(300, 400)  # a drag across the first plot zooms every plot
            box = await page.locator(".plot .u-over").first.bounding_box()
            await page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2)
            await page.mouse.down()
            await page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2, steps=5)
            await page.mouse.up()
            spans = await page.evaluate("window.gridchain.charts.map(c => c.scales.x.max - c.scales.x.min)")
            assert len(set(round(s) for s in spans)) == 1 and spans[0] < 86400 * 0.3
            await page.screenshot(path=str(ARTIFACTS / "dashboard-zoom.png"), full_page=True)
            assert problems == []
        finally:
            await browser.close()
