"""A ledger holding a day of one relay's readings, and the dashboard served from it over real sockets.

The readings follow a daily load curve (currents and power rise by day, fall at night) with
noise, and the breaker opens a few times (the openings counter rises), so the plots have
something to show and the openings marks somewhere to go. ``DashboardSite`` mounts
gridchain.web on the node's own chain view (gridchain.node.chain_view.LedgerView) and status
builder, on 127.0.0.1 and an ephemeral port, as the node's operator listener does (the
benchmark's stand-in; the live tests use a node's own operator port). ``http_get`` and
``metric_value`` read a live node's dashboard; ``prefill_day`` gives a node's data dir a day.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from gridchain.consensus.block import BLOCK_VERSION, Block, Header
from gridchain.consensus.merkle import payload_root
from gridchain.ledger.ledger import Ledger
from gridchain.node.chain_view import LedgerView
from gridchain.node.status import NodeFacts, build_status
from gridchain.web.alerts import AlertBook
from gridchain.web.metrics import Metrics
from gridchain.web.server import Dashboard, looks_like_http, serve_http
from tests.support.blocks import ALICE, BITS, GENESIS, NOW_MS, PARAMS, READING_INTERVAL_MS, finish, reading, sealed

DAY_READINGS = 8_640  # a day at the relay's 10 s interval
PER_BLOCK = 60  # ten minutes of readings a block: 144 blocks a day
OPENING_EVERY = 2_000  # the breaker opens every ~5.5 hours


def day_values(seq: int, t_ms: int, rng: random.Random) -> dict[str, float]:
    """Plausible 115 kV feeder values at ``t_ms``: a daily load curve with noise."""
    day = 2 * math.pi * ((t_ms / 1000) % 86400) / 86400
    load = 0.65 + 0.3 * math.sin(day - math.pi / 2) ** 2
    n = rng.gauss
    amps = 420 * load
    return dict(vab=115.0 + n(0, 0.15), vbc=115.2 + n(0, 0.15), vca=114.9 + n(0, 0.15),
                ia=amps + n(0, 2), ib=amps * 0.99 + n(0, 2), ic=amps * 1.01 + n(0, 2),
                frequency=60.0 + 0.02 * math.sin(seq / 37) + n(0, 0.003),
                power_factor=min(1.0, 0.95 + 0.03 * load + n(0, 0.002)),
                active_power=80.0 * load + n(0, 0.4), reactive_power=20.0 * load + n(0, 0.3))


def day_blocks(count: int = DAY_READINGS, relay_id: str = "relay-1", per_block: int = PER_BLOCK,
               start_ms: int = GENESIS.header.time_ms + READING_INTERVAL_MS, seed: int = 7,
               parent: tuple[int, bytes, int] | None = None, first_seq: int = 1) -> Iterator[Block]:
    """Blocks carrying ``count`` readings from ``start_ms`` on, ``per_block`` each, on ``parent``
    (height, hash, time; genesis by default)."""
    rng = random.Random(seed)
    height, prev, prev_time = parent or (0, GENESIS.hash, GENESIS.header.time_ms)
    seq = first_seq
    for offset in range(0, count, per_block):
        rows = []
        for i in range(min(per_block, count - offset)):
            t_ms = start_ms + (offset + i) * READING_INTERVAL_MS
            rows.append(reading(seq, t_ms, openings=seq // OPENING_EVERY, **day_values(seq, t_ms, rng)))
            seq += 1
        cap = sealed(relay_id, rows)
        time_ms = max(prev_time + 1, rows[-1].timestamp_ms)
        header = Header(BLOCK_VERSION, height + 1, prev, payload_root(cap, "alice"), time_ms, BITS,
                        ALICE.public_key, 0)
        block = finish(header, cap, "alice", ALICE)
        height, prev, prev_time = block.height, block.hash, time_ms
        yield block


def fill_day(ledger: Ledger, count: int = DAY_READINGS) -> None:
    """Add a day of readings to a fresh ledger, in one transaction."""
    batch = ledger.add_blocks(list(day_blocks(count)), NOW_MS)
    assert batch.error is None, batch.error


def next_block(ledger: Ledger, per_block: int = PER_BLOCK, relay_id: str = "relay-1") -> Block:
    """The block after the ledger's tip, continuing the relay's readings."""
    tip = ledger.tip
    last = ledger.last_seq(relay_id) or 0
    newest = ledger.newest_reading_ms(relay_id) or GENESIS.header.time_ms
    return next(day_blocks(per_block, relay_id, per_block, newest + READING_INTERVAL_MS, seed=last,
                           parent=(tip.height, tip.hash, tip.header.time_ms), first_seq=last + 1))


async def http_get(port: int, target: str, headers: dict[str, str] | None = None, timeout: float = 10.0,
                   tls: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One GET on 127.0.0.1:``port`` (over TLS, the node's certificate unchecked, with ``tls``):
    (status, headers with lower-case names, body)."""
    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            raw = await reader.read()  # every answer closes its connection
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, body


def metric_value(exposition: bytes, name: str, labels: str = "") -> float | None:
    """The value of one sample (``labels`` as written: ``state="ok"``) in a /metrics answer."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in exposition.decode().splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None


def prefill_day(data_dir: Path, count: int = DAY_READINGS) -> None:
    """A node's data dir holding a day of readings on the test network (PARAMS: network "test",
    difficulty BITS), as if the node had run for a day."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(data_dir, PARAMS, NOW_MS)
    try:
        fill_day(ledger, count)
    finally:
        ledger.close()


class DashboardSite:
    """A dashboard on a real ledger, listening on 127.0.0.1 (HTTP only: the operator listener's job)."""

    def __init__(self, data_dir: Path) -> None:
        self.ledger = Ledger.open(data_dir, PARAMS, NOW_MS)
        self.log = structlog.get_logger().bind(node="web-test")
        self.view = LedgerView(self.ledger, PARAMS, lambda: NOW_MS, self.log, on_reorg=lambda update: None,
                               on_tip_moved=self._tip_moved)
        self.facts = NodeFacts(PARAMS.name, "web-test", ALICE.public_key, GENESIS.hash, BITS, 60.0,
                               time.monotonic())
        self.relays = [{"address": "127.0.0.1:5010", "relay_id": "relay-1", "state": "ok", "last_seq": None,
                        "newest_ms": None, "clock_skew_ms": 0, "last_error": ""}]
        self.alerts = AlertBook()
        self.metrics = Metrics(self.status, self.ledger.store.path)
        self.dashboard = Dashboard(self.view, self.status, metrics=self.metrics, alerts=self.alerts, name="web-test")
        self.server: asyncio.Server | None = None
        self.port = 0

    def status(self) -> dict:
        return build_status(self.facts, now=time.monotonic(), port=self.port, tip=self.ledger.tip, peers=[],
                            relays=self.relays, mining=False, orphans=0, syncing=False,
                            loop_lag_ms={"p50": 0.1, "p99": 0.4, "max": 1.0, "samples": 10})

    def _tip_moved(self, tip_before) -> None:
        self.dashboard.publish_blocks(self.view.joined_main_since(tip_before))

    def add_block(self, block: Block) -> None:
        tip_before = self.ledger.tip
        self.view.add_own_block(block)
        self.metrics.on_block_accepted(len(block.capture.readings), "own")
        self.view.tip_moved_since(tip_before)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # As the operator listener routes: four bytes decide HTTP or a frame.
        try:
            first = await asyncio.wait_for(reader.readexactly(4), 10)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            return
        if not looks_like_http(first):
            writer.close()
            return
        await serve_http(reader, writer, self.dashboard, first)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.dashboard.close()
        if self.server is not None:
            self.server.close()
            async with asyncio.timeout(2):
                await self.server.wait_closed()
        self.ledger.close()
