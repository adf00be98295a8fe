"""The alert loop: each edge logged once under its stable name, published, and counted in the gauges."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from gridchain.web.alerts import AlertBook, GapFacts, Observation, RelayFacts, Thresholds
from gridchain.web.metrics import Metrics
from gridchain.web.monitor import AlertMonitor

T0 = 1_700_000_000_000


class Pages:
    def __init__(self):
        self.edges = []

    def publish_alerts(self, edges):
        self.edges += edges


def test_edges_are_logged_published_and_counted():
    metrics, pages = Metrics(), Pages()
    monitor = AlertMonitor(AlertBook(Thresholds(relay_down_s=0)), lambda: None, metrics=metrics, dashboard=pages)
    down = Observation(T0, (RelayFacts("relay-1", "unreachable", T0),), gaps=(GapFacts("relay-1", 3, 4, T0),))
    with capture_logs() as logs:
        monitor.tick(down)
        monitor.tick(down)
        monitor.tick(Observation(T0 + 9000, (RelayFacts("relay-1", "ok", T0 + 9000),)))
    raised = [e for e in logs if e["event"] == "alert.raised"]
    cleared = [e for e in logs if e["event"] == "alert.cleared"]
    assert sorted(e["alert"] for e in raised) == ["alert.reading_gap", "alert.relay_down"]
    assert sorted(e["alert"] for e in cleared) == ["alert.reading_gap", "alert.relay_down"]
    assert all(e["log_level"] == "warning" for e in raised) and cleared[0]["lasted_s"] == 9.0
    assert len(pages.edges) == 4
    assert metrics.registry.get_sample_value("gridchain_alerts", {"name": "alert.relay_down"}) == 0
    assert metrics.registry.get_sample_value("gridchain_reading_gaps", {"relay": "relay-1"}) == 0


async def test_a_failing_observation_is_logged_and_the_loop_goes_on():
    calls = []

    def observe():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("store busy")
        return Observation(T0, equivocators=("carol",))

    book = AlertBook()
    monitor = AlertMonitor(book, observe, interval_s=0.01)
    with capture_logs() as logs:
        task = asyncio.create_task(monitor.run())
        async with asyncio.timeout(5):
            while not book.active():
                await asyncio.sleep(0.01)
        task.cancel()
    assert any(e["event"] == "alert.check_failed" and "store busy" in e["error"] for e in logs)
    assert book.active()[0].name == "alert.member_equivocation"
