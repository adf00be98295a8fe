"""A cluster of real gridchaind processes on 127.0.0.1, fed by one relay in the test's process.

Crash, partition and soak tests drive it: start N nodes (a full mesh, every link optionally
through its own fault-injecting proxy), SIGKILL and restart any node, cut the links between
groups of nodes and heal them, poll each node's status, sample each process's RSS, settle
the network on one tip, and, once the nodes have stopped (or from a read-only snapshot
while they run), read every block of every store and audit it. The processes themselves
are started, polled and stopped by ``processes.Processes``, as the benchmarks' are.

The relay (a real RelayServer) and the proxies run in the test's own event loop, so every
wait here is asynchronous: a blocking ``Popen.wait`` would stall the traffic they carry.
Keeping the relay in-process lets ``settle`` freeze its feed and release one more batch of
readings, as ``nodes.settle`` does for in-process nodes.

Nodes run ``python -m gridchain node`` with the CLI's defaults except ``--redial-max``
(REDIAL_MAX_S): a healed link closes within that cap of the doubling redial backoff, not
the default 30 s an operator's node waits at most.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gridchain.consensus.block import Block
from gridchain.consensus.params import NetworkParams
from gridchain.ledger.audit import AuditReport, audit_store
from gridchain.ledger.store import DB_FILE
from gridchain.relay.server import RelayServer

from .logs import next_event, read_events
from .nodes import start_relay
from .ports import listen_port
from .processes import POLL_S, Proc, Processes, answers, status, wait_status
from .proxy import FaultProxy
from .wait import wait_until

NETWORK = "cluster-net"
STOP_TIMEOUT_S = 10.0  # SIGTERM to exit: the node's shutdown is bounded well inside this
START_TIMEOUT_S = 15.0  # interpreter start and imports take ~0.5 s; 2 cores shared by 5 processes
REDIAL_MAX_S = 2.0  # cap of each node's redial backoff: how long a healed link may stay down
# Beyond two capture intervals, how long one tip must hold before the network counts as settled.
QUIET_SLACK_S = 0.5

Reading = tuple[str, int]  # (relay id, timestamp ms): what identifies a reading


@dataclass
class NodeProc:
    """One node's slot in the cluster: its port, data dir and current process (if running)."""

    index: int
    port: int
    data_dir: Path
    log_path: Path
    dials: list[int]  # the ports it is configured to dial (peers directly, or their proxies)
    proc: Proc | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    @property
    def store_path(self) -> Path:
        return self.data_dir / DB_FILE


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything a store holds that the invariants are about, read in one transaction."""

    tip: bytes
    main: list[bytes]  # main-chain hashes by height, genesis first
    main_readings: list[Reading]  # every reading on the main chain, in chain order
    all_readings: set[Reading]  # every reading in any stored block, side branches included
    blocks: int  # stored blocks, genesis included
    hashes: set[bytes] = field(repr=False, default_factory=set)


def read_store(path: Path) -> StoreSnapshot:
    """A consistent read-only snapshot of the store at ``path`` (safe while its node runs)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")
        tip = db.execute("SELECT value FROM meta WHERE key = 'tip'").fetchone()[0]
        main = [row[0] for row in db.execute("SELECT hash FROM main ORDER BY height")]
        captures: dict[bytes, list[Reading]] = {}
        for block_hash, raw in db.execute("SELECT hash, raw FROM blocks WHERE height > 0"):
            capture = Block.decode(raw).capture
            captures[block_hash] = [(capture.relay_id, r.timestamp_ms) for r in capture.readings]
        db.execute("COMMIT")
    finally:
        db.close()
    main_readings = [reading for block_hash in main[1:] for reading in captures[block_hash]]
    every = {reading for readings in captures.values() for reading in readings}
    return StoreSnapshot(tip, main, main_readings, every, len(captures) + 1, set(captures) | {main[0]})


def schedule_seed(variable: str) -> int:
    """A random run's seed: from ``variable`` if set (to replay a run), else a fresh one; printed."""
    seed = int(os.environ.get(variable, time.time_ns() % 1_000_000))
    print(f"seed {seed} ({variable}={seed} replays this run's schedule)")
    return seed


class Cluster:
    """``count`` nodes dialling each other and one relay, each a subprocess of this test."""

    def __init__(self, root: Path, count: int, *, capture_interval_s: float = 0.2, relay_interval_s: float = 0.1,
                 difficulty: int = 8, proxied: bool = False, network: str = NETWORK, seed: int = 7) -> None:
        self.root = root
        self.count = count
        self.capture_interval_s = capture_interval_s
        self.relay_interval_s = relay_interval_s
        self.difficulty = difficulty
        self.proxied = proxied
        self.params = NetworkParams(network, difficulty)
        self.seed = seed
        self.relay: RelayServer | None = None
        self.tie_breaks = 0  # batches of readings ``settle`` released to break equal-work ties
        self.links: dict[tuple[int, int], FaultProxy] = {}  # (dialler, target) -> proxy
        self.nodes: list[NodeProc] = []
        self.processes = Processes(root, network, difficulty, stop_timeout_s=STOP_TIMEOUT_S)

    # --- starting and stopping -------------------------------------------------------------
    async def start(self) -> Cluster:
        await self.start_relay()
        ports = [listen_port() for _ in range(self.count)]
        for i, port in enumerate(ports):
            dials = []
            for j, other in enumerate(ports):
                if i == j:
                    continue
                if self.proxied:
                    self.links[i, j] = await FaultProxy(other, rng=random.Random(self.seed * 1000 + i * 10 + j)).start()
                    dials.append(self.links[i, j].port)
                else:
                    dials.append(other)
            self.nodes.append(NodeProc(i, port, self.root / f"n{i}", self.root / f"n{i}.log", dials))
        for i in range(self.count):
            self.spawn(i)
        for i in range(self.count):
            await self.wait_ready(i)
        return self

    async def start_relay(self) -> None:
        self.relay = await start_relay(self.relay_interval_s, self.seed)

    @property
    def relay_port(self) -> int:
        return self.relay.port

    @property
    def relay_interval_ms(self) -> int:
        return round(self.relay_interval_s * 1000)  # as start_relay makes its simulator

    def spawn(self, i: int) -> Proc:
        """Start node ``i`` again on its port, data dir and log (appended to)."""
        node = self.nodes[i]
        assert not node.running, f"node {i} is already running"
        node.proc = self.processes.node(f"n{i}", port=node.port, peers=node.dials, relays=[self.relay_port],
                                        capture_interval_s=self.capture_interval_s, data_dir=node.data_dir,
                                        extra=["--redial-max", str(REDIAL_MAX_S)])
        node.starts += 1
        return node.proc

    async def wait_ready(self, i: int, timeout: float = START_TIMEOUT_S) -> dict:
        """Wait until node ``i`` answers status; fails early if its process exits."""
        return await wait_status(self.nodes[i].proc, answers, timeout, f"node {i} to answer")

    async def restart(self, i: int) -> dict:
        self.spawn(i)
        return await self.wait_ready(i)

    async def kill(self, i: int) -> None:
        """SIGKILL node ``i``: no chance to flush, close or log anything."""
        node = self.nodes[i]
        if node.running:
            self.processes.kill([node.proc])

    async def close(self) -> dict[str, int | None]:
        """Stop every node (SIGTERM), the relay and the proxies; exit status by name. A node
        that does not stop within STOP_TIMEOUT_S is killed and fails the test."""
        codes = await self.processes.stop([node.proc for node in self.nodes if node.proc is not None])
        await self._close_relay_and_links()
        if self.processes.killed:
            raise AssertionError(f"{self.processes.killed} did not stop within {STOP_TIMEOUT_S} s of SIGTERM")
        return codes

    async def abort(self) -> None:
        """Cleanup after a test, passed or failed: SIGKILL any node still running, close the
        relay and the proxies."""
        self.processes.kill_all()
        await self._close_relay_and_links()

    async def _close_relay_and_links(self) -> None:
        if self.relay is not None:
            await self.relay.close()
            self.relay = None
        for proxy in self.links.values():
            await proxy.close()

    # --- links ------------------------------------------------------------------------------
    def partition(self, *groups: Iterable[int]) -> list[FaultProxy]:
        """Cut every link between different groups (links inside a group stay up)."""
        side = {i: g for g, members in enumerate(groups) for i in members}
        cut = [proxy for (a, b), proxy in self.links.items() if side.get(a) != side.get(b)]
        for proxy in cut:
            proxy.cut()
        return cut

    def heal(self) -> None:
        for proxy in self.links.values():
            proxy.heal()

    # --- observing --------------------------------------------------------------------------
    async def status(self, i: int) -> dict | None:
        return await status(self.nodes[i].port)

    async def statuses(self, indexes: Iterable[int] | None = None) -> list[dict | None]:
        indexes = range(self.count) if indexes is None else indexes
        return list(await asyncio.gather(*(self.status(i) for i in indexes)))

    async def converged(self, indexes: Iterable[int] | None = None) -> str | None:
        """The tip every node reports at (nearly) one moment, or None if they differ."""
        infos = await self.statuses(indexes)
        tips = {info["tip"] if info else None for info in infos}
        return tips.pop() if len(tips) == 1 and None not in tips else None

    async def wait_converged(self, timeout: float, indexes: Iterable[int] | None = None) -> float:
        """Seconds until the nodes report one tip; fails after ``timeout`` naming each tip."""
        indexes = list(range(self.count) if indexes is None else indexes)
        try:
            return await wait_until(lambda: self.converged(indexes), timeout, POLL_S, what="one tip everywhere")
        except AssertionError:
            infos = await self.statuses(indexes)
            summary = [(i, info and (info["height"], info["tip"][:12], info["work"]))
                       for i, info in zip(indexes, infos)]
            raise AssertionError(f"no single tip after {timeout} s: {summary}") from None

    async def settle(self, timeout: float) -> float:
        """Freeze the relay's feed and wait until every node has reported one unchanging tip
        for a while; the seconds it took.

        "A while" is two capture intervals (and a bit): long enough for every node to have
        fetched whatever the relay still held and mined what a reorg displaced. Equal-work
        tips that stay apart as long are a tie that, as on a live network, only the next
        block breaks: one more batch of readings is released (counted in ``tie_breaks``).
        """
        self.relay.pause()
        quiet_s = 2 * self.capture_interval_s + QUIET_SLACK_S
        started = time.monotonic()
        agreed: tuple[str, float] | None = None  # (tip, since)
        tied_since: float | None = None
        while True:
            infos = await self.statuses()
            now = time.monotonic()
            tips = {info["tip"] if info else None for info in infos}
            if len(tips) == 1 and None not in tips:
                tip = tips.pop()
                agreed = agreed if agreed and agreed[0] == tip else (tip, now)
                if now - agreed[1] >= quiet_s:
                    return agreed[1] - started
            else:
                agreed = None
            if now - started > timeout:
                summary = [info and (info["height"], info["tip"][:12], info["work"]) for info in infos]
                raise AssertionError(f"no single tip {timeout} s after freezing the relay: {summary}")
            tied = agreed is None and all(infos) and len({info["work"] for info in infos}) == 1
            tied_since = (tied_since or now) if tied else None
            if tied_since is not None and now - tied_since >= quiet_s:
                self.relay.tick()
                self.tie_breaks += 1
                tied_since = None
            await asyncio.sleep(POLL_S)

    async def close_and_check(self) -> tuple[list[StoreSnapshot], list[Reading]]:
        """The end of every run: each node stops cleanly on SIGTERM, each store audits clean,
        and the reading invariants hold in full; the snapshots and the main readings."""
        codes = await self.close()
        assert all(code == 0 for code in codes.values()), f"exit status after SIGTERM: {codes}"
        snapshots = [self.snapshot(i) for i in range(self.count)]
        for i in range(self.count):
            report = self.audit(i)
            assert report.ok, f"n{i} store audit: {report.problems[:5]} (+{report.omitted} more)"
        return snapshots, check_readings(snapshots, self.relay_interval_ms, final=True)

    def rss(self) -> dict[str, int | None]:
        """VmRSS (kB) of every running node, by name."""
        return {f"n{n.index}": n.proc.rss_kb() if n.running else None for n in self.nodes}

    def snapshot(self, i: int) -> StoreSnapshot:
        return read_store(self.nodes[i].store_path)

    def audit(self, i: int) -> AuditReport:
        return audit_store(self.nodes[i].store_path, self.params)

    def events(self, i: int, names: Iterable[str] | None = None) -> list[dict]:
        return read_events(self.nodes[i].log_path, names)

    async def next_event(self, i: int, names: Iterable[str], timeout: float) -> dict | None:
        """The first event named one of ``names`` that node ``i`` logs from now on (None: none
        within ``timeout``), to strike while it happens."""
        return await next_event(self.nodes[i].log_path, names, timeout)


def check_readings(snapshots: list[StoreSnapshot], interval_ms: int, final: bool) -> list[Reading]:
    """Assert the reading invariants over the stores' snapshots; the first store's main readings.

    For each store:
    * its main chain holds no reading twice, and its readings of each relay are one gap-free
      run of the relay's ticks (a gap would be a reading the relay served that no block kept);
    * every reading in any block of ANY store, side branches included, is on its main chain
      if it is not newer than that chain's newest reading of the relay. While the network
      runs, newer ones may be waiting to be mined again after a reorg; with ``final`` there
      is no such excuse: the stores must hold one main chain that has every reading.
    """
    if final:
        assert all(s.main == snapshots[0].main for s in snapshots), "the stores hold different main chains"
    ever = set().union(*(s.all_readings for s in snapshots))
    for number, snapshot in enumerate(snapshots):
        main = snapshot.main_readings
        twice = len(main) - len(set(main))
        assert not twice, f"store {number}: {twice} reading(s) twice on the main chain"
        newest: dict[str, int] = {}
        by_relay: dict[str, list[int]] = {}
        for relay, at in main:
            by_relay.setdefault(relay, []).append(at)
            newest[relay] = max(at, newest.get(relay, at))
        for relay, times in by_relay.items():
            gaps = [(a, b) for a, b in zip(times, times[1:]) if b - a != interval_ms]
            assert not gaps, f"store {number}: {relay}: the main chain skips relay readings between {gaps[:5]}"
        missing = {r for r in ever - set(main) if final or r[1] <= newest.get(r[0], -1)}
        assert not missing, (f"store {number}: {len(missing)} committed reading(s) missing from its main chain, "
                             f"e.g. {sorted(missing)[:5]}")
    return snapshots[0].main_readings


def common_prefix(snapshots: list[StoreSnapshot]) -> int:
    """How many main-chain blocks (genesis included) every store agrees on."""
    shortest = min(len(s.main) for s in snapshots)
    for height in range(shortest):
        if len({s.main[height] for s in snapshots}) > 1:
            return height
    return shortest
