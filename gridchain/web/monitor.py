"""The alert loop: observe the node now and then, update the AlertBook, report each edge.

Each tick takes an ``Observation`` from the node's ``observe`` callable and hands it to the
book (gridchain.web.alerts); every edge is logged once (``alert.raised`` at warning,
``alert.cleared`` at info, with the alert's stable name), sent to the dashboard's open
pages as an ``alert`` event, and the ``gridchain_alerts`` and ``gridchain_reading_gaps``
gauges are set. A failing observation is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gridchain.web.alerts import AlertBook, AlertRaised, Observation

CHECK_INTERVAL_S = 5.0  # alert hold times are 30 s and up: a few looks within each is enough

log = structlog.get_logger()


class AlertMonitor:
    """Runs ``tick`` every ``interval_s`` (``run`` is one task of the node's TaskGroup)."""

    def __init__(self, book: AlertBook, observe: Callable[[], Observation], *, metrics=None, dashboard=None,
                 logger=None, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.book = book
        self.observe = observe
        self.metrics = metrics  # gridchain.web.metrics.Metrics, optional
        self.dashboard = dashboard  # gridchain.web.server.Dashboard, optional
        self.log = logger or log
        self.interval_s = interval_s

    def tick(self, obs: Observation) -> list:
        """Apply one observation; returns its edges."""
        edges = self.book.update(obs)
        for edge in edges:
            alert = edge.alert
            if isinstance(edge, AlertRaised):
                self.log.warning("alert.raised", alert=alert.name, subject=alert.subject, detail=alert.detail,
                                 severity=alert.severity)
            else:
                self.log.info("alert.cleared", alert=alert.name, subject=alert.subject,
                              lasted_s=round((edge.at_ms - alert.since_ms) / 1000, 1))
        if self.dashboard is not None and edges:
            self.dashboard.publish_alerts(edges)
        if self.metrics is not None:
            self.metrics.set_alerts(self.book.counts())
            gaps: dict[str, int] = {relay.relay_id: 0 for relay in obs.relays}
            for gap in obs.gaps:
                gaps[gap.relay_id] = gaps.get(gap.relay_id, 0) + 1
            self.metrics.set_reading_gaps(gaps)
        return edges

    async def run(self) -> None:
        while True:
            try:
                self.tick(self.observe())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an observation that fails must not end alerting for good
                self.log.error("alert.check_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval_s)
