"""Prometheus metrics of one node, in a registry of its own (never prometheus_client's global one).

Names follow node ecosystems (CometBFT's ``cometbft_consensus_height``, EIP-2159's
``chain_head_block``): a ``gridchain_`` prefix, base units (seconds, bytes), ``_total`` on
counters. The node feeds the counters and histograms from what happens (``on_block_accepted``,
``on_block_rejected``, ``on_reorg``, ``on_block_mined``, ...); the gauges are read from the
node's status map at scrape time (``status`` callable), so they are never stale and cost
nothing between scrapes. Several nodes in one process (tests) each have their own Metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from gridchain.web.alerts import ALERT_NAMES

CONTENT_TYPE = CONTENT_TYPE_LATEST
PEER_STATES = ("handshake", "ready", "down")  # "down": configured, not connected
RELAY_STATES = ("starting", "ok", "unreachable", "bad-data")
LAG_QUANTILES = (("0.5", "p50"), ("0.99", "p99"), ("1", "max"))
# Buckets: a reorg is 1-2 blocks when honest; deep ones are attacks or partitions healing.
REORG_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 500, 1000)
# Mining at the default 16 bits takes tens of ms on one core; a slow machine or a high difficulty seconds.
MINING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Propagation on a LAN is milliseconds (goal p50 <= 5 ms); across sites tens to hundreds.
PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One node's metrics; ``exposition()`` is the body of a ``/metrics`` answer."""

    def __init__(self, status: Callable[[], dict] | None = None, store_path: Path | None = None,
                 configured_peers: Callable[[], Mapping[str, bool]] | None = None) -> None:
        self.status = status
        self.store_path = None if store_path is None else Path(store_path)
        self.configured_peers = configured_peers  # address -> connected, for peers{state="down"}
        self.registry = CollectorRegistry(auto_describe=True)
        self._peer_states, self._relay_states = set(PEER_STATES), set(RELAY_STATES)
        r = self.registry
        self.chain_height = Gauge("gridchain_chain_height", "Height of the main chain's tip", registry=r)
        self.finalized_height = Gauge("gridchain_finalized_height", "Height of the newest finalized checkpoint",
                                      registry=r)
        self.peers = Gauge("gridchain_peers", "Peer connections by state", ["state"], registry=r)
        self.relays = Gauge("gridchain_relays", "Relays this node polls, by state", ["state"], registry=r)
        self.blocks_accepted = Counter("gridchain_blocks_accepted_total", "Blocks added to the ledger",
                                       ["source"], registry=r)
        self.blocks_rejected = Counter("gridchain_blocks_rejected_total", "Blocks refused, by rule reason",
                                       ["reason"], registry=r)
        self.blocks_mined = Counter("gridchain_blocks_mined_total", "Blocks this node mined", registry=r)
        self.reorgs = Counter("gridchain_reorgs_total", "Main-chain reorganisations", registry=r)
        self.reorg_depth = Histogram("gridchain_reorg_depth", "Blocks disconnected per reorganisation",
                                     buckets=REORG_BUCKETS, registry=r)
        self.mining_seconds = Histogram("gridchain_mining_seconds", "Time to find a block's proof of work",
                                        buckets=MINING_BUCKETS, registry=r)
        self.propagation_seconds = Histogram(
            "gridchain_block_propagation_seconds", "From a block's header time to its acceptance here",
            buckets=PROPAGATION_BUCKETS, registry=r)
        self.readings_stored = Counter("gridchain_readings_stored_total", "Readings in the blocks added to the ledger",
                                       registry=r)
        self.signature_failures = Counter("gridchain_relay_signature_failures_total",
                                          "Relay readings or keys that failed their signature check",
                                          ["relay"], registry=r)
        self.reading_gaps = Gauge("gridchain_reading_gaps", "Unfilled holes in each relay's readings on the main chain",
                                  ["relay"], registry=r)
        self.loop_lag = Gauge("gridchain_event_loop_lag_seconds", "Event-loop lag over the last minute",
                              ["quantile"], registry=r)
        self.store_bytes = Gauge("gridchain_store_bytes", "Size of the ledger's SQLite files", registry=r)
        self.alerts = Gauge("gridchain_alerts", "Active alerts by name", ["name"], registry=r)
        for name in ALERT_NAMES:
            self.alerts.labels(name=name).set(0)
        for state in PEER_STATES:
            self.peers.labels(state=state).set(0)
        for state in RELAY_STATES:
            self.relays.labels(state=state).set(0)
        self.blocks_rejected.labels(reason="bad-pow")  # a zero series: rate() has a start
        for source in ("own", "peer", "sync"):
            self.blocks_accepted.labels(source=source)

    # --- events the node reports -------------------------------------------------------------
    def on_block_accepted(self, readings: int, source: str = "peer", propagation_s: float | None = None) -> None:
        """A block joined the ledger (``source`` own, peer or sync); its readings are stored."""
        self.blocks_accepted.labels(source=source).inc()
        self.readings_stored.inc(readings)
        if propagation_s is not None and propagation_s >= 0:
            self.propagation_seconds.observe(propagation_s)

    def on_block_rejected(self, reason: str) -> None:
        self.blocks_rejected.labels(reason=reason).inc()

    def on_reorg(self, depth: int) -> None:
        self.reorgs.inc()
        self.reorg_depth.observe(depth)

    def on_block_mined(self, seconds: float) -> None:
        self.blocks_mined.inc()
        self.mining_seconds.observe(seconds)

    def on_relay_signature_failure(self, relay: str) -> None:
        self.signature_failures.labels(relay=relay).inc()

    def set_reading_gaps(self, per_relay: Mapping[str, int]) -> None:
        for relay, count in per_relay.items():
            self.reading_gaps.labels(relay=relay).set(count)

    def set_alerts(self, counts: Mapping[str, int]) -> None:
        for name, count in counts.items():
            self.alerts.labels(name=name).set(count)

    # --- scrape ------------------------------------------------------------------------------
    def observe_status(self, status: Mapping) -> None:
        """Set the gauges from the node's status map (gridchain.node.status.build_status)."""
        self.chain_height.set(status.get("height", 0))
        finality = status.get("finality") if isinstance(status.get("finality"), Mapping) else {}
        finalized = status.get("finalized_height", finality.get("finalized_height"))
        if finalized is not None:
            self.finalized_height.set(finalized)
        peers = _count(p.get("state", "?") for p in status.get("peers", ()))
        if self.configured_peers is not None:
            peers["down"] = sum(1 for up in self.configured_peers().values() if not up)
        # Every state once seen keeps a series (at 0 when none is in it), so a panel never goes blank.
        self._peer_states.update(peers)
        _set_states(self.peers, self._peer_states, peers)
        for relay in status.get("relays", ()):
            if relay.get("relay_id"):  # a zero series for each polled relay: rate() has a start
                self.signature_failures.labels(relay=relay["relay_id"])
        relays = _count(r.get("state", "?") for r in status.get("relays", ()))
        self._relay_states.update(relays)
        _set_states(self.relays, self._relay_states, relays)
        lag = status.get("loop_lag_ms") or {}
        for quantile, key in LAG_QUANTILES:
            self.loop_lag.labels(quantile=quantile).set(float(lag.get(key, 0.0)) / 1000)

    def exposition(self) -> bytes:
        """The text exposition format (version 0.0.4), gauges refreshed first."""
        if self.status is not None:
            self.observe_status(self.status())
        if self.store_path is not None:
            self.store_bytes.set(store_size(self.store_path))
        return exposition_text(self.registry)


def exposition_text(registry: CollectorRegistry) -> bytes:
    """The bytes prometheus_client's ``generate_latest`` makes of ``registry`` (a test holds them
    equal), in a third less of the node's loop: its per-sample checks for names outside the legacy
    character set are skipped, every name here being a fixed legacy one (and only the kinds made
    here, counter, gauge and histogram, are mapped). Counters are named with ``_total``; their and
    histograms' ``_created`` samples follow as a gauge family of their own."""
    out: list[str] = []
    for metric in registry.collect():
        name, kind = metric.name, metric.type
        if kind == "counter":
            name += "_total"
        elif kind == "unknown":
            kind = "untyped"
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        created_name, created = metric.name + "_created", []
        for sample in metric.samples:
            labels = sample.labels
            key = sample.name + ("{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items())) + "}"
                                 if labels else "")
            stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
            (created if sample.name == created_name else out).append(f"{key} {floatToGoString(sample.value)}{stamp}\n")
        if created:
            out.append(f"# HELP {created_name} {doc}\n# TYPE {created_name} gauge\n")
            out.extend(created)
    return "".join(out).encode()


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def store_size(path: Path) -> int:
    """Bytes of an SQLite database with its WAL and shared-memory files (0 for any missing)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return total


def _count(states) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return counts


def _set_states(gauge: Gauge, known: set[str], counts: Mapping[str, int]) -> None:
    for state in known:
        gauge.labels(state=state).set(counts.get(state, 0))
