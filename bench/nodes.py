"""Shared machinery for the multi-process benchmarks: real relays and nodes, their logs, their chains.

Every node and relay is a separate ``python -m gridchain`` process on 127.0.0.1 writing JSON
log lines to its own file, exactly as an operator would run it. A ``Cluster`` owns what it
started and stops all of it on leaving its ``with`` block, however that block ends. Timings
come from the log lines' ISO timestamps (one machine, one clock), so measuring adds no work
to the processes measured.

Also here: percentiles, resident memory of a process, the loopback round trip (the physical
floor under any propagation figure), a chain builder that fills a data dir with a long
valid chain in seconds, and a fault-injecting TCP proxy for partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridchain.api.client import NodeClient, NodeUnavailable, RequestFailed
from gridchain.config import Address
from gridchain.consensus import pow
from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header, Reading
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.params import NetworkParams
from gridchain.identity.keys import NodeKey
from gridchain.ledger.ledger import Ledger
from gridchain.ledger.store import DB_FILE

ROOT = Path(__file__).resolve().parents[1]
# The bound for a clean stop; past it a process is killed (and that is reported).
STOP_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 2.0  # a node on loopback answers status in milliseconds
READY_TIMEOUT_S = 20.0  # a process starts and listens in about a second; 20 s means it is broken
POLL_S = 0.05  # status polling period: fine enough for second-scale waits, cheap for the nodes
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")  # shorter runs, same measurements
KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")  # keep data dirs and logs for a look afterwards

# Synthetic chains (build_chain): one relay, a minute of readings per block as the prototype.
CHAIN_RELAY = "Relay 1"
CHAIN_READINGS = 6
CHAIN_READING_MS = 10_000
CHAIN_BATCH = 500  # blocks per add_blocks call: the size of one sync answer
CHAIN_KEY_SEED = b"\x5b" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A scratch directory (under $BENCH_DIR if set), removed afterwards unless $BENCH_KEEP is set."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_DIR")))
    try:
        yield path
    finally:
        if KEEP:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- processes ------------------------------------------------------------------------------
@dataclass
class Proc:
    """One started process: its name, its port, its log file and (for a node) its data dir."""

    name: str
    port: int
    popen: subprocess.Popen
    log_path: Path
    data_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float:
        return rss_mb(self.popen.pid)

    def events(self, names: Iterable[str] | None = None) -> list[dict]:
        return read_events(self.log_path, names)


class Cluster:
    """Relays and nodes started for one benchmark; all of them stop when the ``with`` ends."""

    def __init__(self, root: Path, network: str, difficulty: int) -> None:
        self.root = Path(root)
        self.network = network
        self.difficulty = difficulty
        self.procs: list[Proc] = []
        self.unclean: list[str] = []  # processes that needed SIGKILL or exited non-zero

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def _spawn(self, name: str, port: int, args: list[str], data_dir: Path | None) -> Proc:
        log_path = self.root / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
            popen = subprocess.Popen([sys.executable, "-m", "gridchain", *args], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root)
        proc = Proc(name, port, popen, log_path, data_dir)
        self.procs.append(proc)
        return proc

    def relay(self, interval_s: float, seed: int = 1, name: str = "relay") -> Proc:
        port = free_port()
        return self._spawn(name, port, ["relay", "--port", str(port), "--interval", f"{interval_s:g}",
                                        "--seed", str(seed), "--fault-probability", "0", "--log-format", "json"],
                           None)

    def node(self, name: str, *, peers: Sequence[int] = (), relays: Sequence[int] = (),
             capture_interval_s: float = 60.0, data_dir: Path | None = None, port: int | None = None,
             extra: Sequence[str] = ()) -> Proc:
        port = port or free_port()
        data_dir = data_dir or self.root / name
        args = ["node", "--port", str(port), "--data-dir", str(data_dir), "--network", self.network,
                "--difficulty", str(self.difficulty), "--capture-interval", f"{capture_interval_s:g}",
                "--name", name, "--log-format", "json", *extra]
        for peer in peers:
            args += ["--peer", f"127.0.0.1:{peer}"]
        for relay in relays:
            args += ["--relay", f"127.0.0.1:{relay}"]
        return self._spawn(name, port, args, data_dir)

    def stop(self, procs: Sequence[Proc], timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM each, wait for all together, SIGKILL whatever outlives ``timeout``."""
        for proc in procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                code = proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
                self.unclean.append(f"{proc.name}: killed after {timeout:g} s")
                continue
            if code not in (0, -signal.SIGTERM):
                self.unclean.append(f"{proc.name}: exit status {code}")

    def stop_all(self) -> None:
        self.stop([p for p in self.procs if p.alive()])


# --- talking to nodes -------------------------------------------------------------------------
async def status(port: int, timeout: float = STATUS_TIMEOUT_S) -> dict | None:
    """The node's status, or None if it does not answer (yet)."""
    try:
        async with NodeClient(Address("127.0.0.1", port), timeout=timeout) as client:
            return await client.status()
    except (NodeUnavailable, RequestFailed, OSError, TimeoutError):
        return None


async def wait_status(proc: Proc, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
    """Poll ``proc``'s status until ``predicate`` holds; raise naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}; "
                               f"see {proc.log_path}")
        info = await status(proc.port)
        if info is not None and predicate(info):
            return info
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


async def wait_all(procs: Sequence[Proc], predicate: Callable[[dict], bool], timeout: float,
                   what: str) -> list[dict]:
    return list(await asyncio.gather(*(wait_status(p, predicate, timeout, f"{what} on {p.name}")
                                       for p in procs)))


async def statuses(procs: Sequence[Proc]) -> list[dict | None]:
    return list(await asyncio.gather(*(status(p.port) for p in procs)))


# --- logs -------------------------------------------------------------------------------------
def parse_time(stamp: str) -> float:
    """Seconds since the epoch of a log line's ISO-8601 timestamp."""
    return dt.datetime.fromisoformat(stamp).timestamp()


def read_events(path: Path, names: Iterable[str] | None = None) -> list[dict]:
    """The JSON log lines of ``path`` (optionally only these events), each with ``t`` in epoch seconds."""
    wanted = None if names is None else set(names)
    out = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if wanted is not None and event.get("event") not in wanted:
                continue
            if "timestamp" in event:
                event["t"] = parse_time(event["timestamp"])
                out.append(event)
    return out


def block_times(procs: Sequence[Proc]) -> tuple[dict[str, tuple[str, float]], dict[str, dict[str, float]]]:
    """From the logs: (hash -> (miner, block.mined time), node -> hash -> first time it held the block).

    A node holds a block from the moment it logs either ``block.mined`` or ``block.accepted``.
    """
    mined: dict[str, tuple[str, float]] = {}
    held: dict[str, dict[str, float]] = {}
    for proc in procs:
        mine = held.setdefault(proc.name, {})
        for event in proc.events(("block.mined", "block.accepted")):
            block_hash = event["hash"]
            if event["event"] == "block.mined":
                mined[block_hash] = (proc.name, event["t"])
            mine.setdefault(block_hash, event["t"])
    return mined, held


@dataclass(frozen=True, slots=True)
class Spread:
    """How the blocks mined in a window reached the other nodes, in ms after ``block.mined``."""

    per_peer: list[float]  # one figure per (block, other node)
    to_all: list[float]  # one per block that every other node got: when the last one had it
    missing: int  # (block, other node) pairs that never got there


def spread(procs: Sequence[Proc], start: float, end: float) -> Spread:
    """From the logs: the spread of every block mined between ``start`` and ``end`` (epoch s)."""
    mined, held = block_times(procs)
    per_peer, to_all, missing = [], [], 0
    for block_hash, (miner, at) in mined.items():
        if not start <= at <= end:
            continue
        arrivals = [held[p.name].get(block_hash) for p in procs if p.name != miner]
        late = [(t - at) * 1000 for t in arrivals if t is not None]
        per_peer += late
        missing += len(arrivals) - len(late)
        if len(late) == len(arrivals):
            to_all.append(max(late))
    return Spread(per_peer, to_all, missing)


def sync_seconds(fresh: Proc, height: int) -> float:
    """From a fresh node's first ``peer.connected`` to the ``sync.progress`` that reaches ``height``."""
    events = fresh.events(("peer.connected", "sync.progress"))
    connected = next(e["t"] for e in events if e["event"] == "peer.connected")
    done = next(e["t"] for e in events if e["event"] == "sync.progress" and e["height"] >= height)
    return done - connected


def mining_ms(procs: Sequence[Proc]) -> dict[str, float]:
    """hash -> milliseconds its miner spent on proof of work (``block.mined``'s ``ms``)."""
    return {e["hash"]: e["ms"] for p in procs for e in p.events(("block.mined",))}


# --- numbers ----------------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def rss_mb(pid: int) -> float:
    """Resident memory of a live process, in MiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_ECHO_SERVER = """
import asyncio, sys, uvloop
async def main():
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except ConnectionError:
            pass
        writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
uvloop.run(main())
"""


async def loopback_rtt_ms(samples: int = 2000, size: int = 64) -> list[float]:
    """Round trips of a ``size``-byte message to a TCP echo server in another process on 127.0.0.1.

    The floor under any one-hop latency between two nodes on this machine: the same
    sockets, the same uvloop, the same wake-up of another process, and no work in between.
    """
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", _ECHO_SERVER, stdin=subprocess.PIPE,
                                                  stdout=subprocess.PIPE)
    writer = None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            port = int(await server.stdout.readline())
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = os.urandom(size)
        out = []
        for i in range(samples + 100):  # the first hundred warm the path up and are dropped
            start = time.perf_counter()
            writer.write(payload)
            await reader.readexactly(size)
            if i >= 100:
                out.append((time.perf_counter() - start) * 1000)
        return out
    finally:
        if writer is not None:
            writer.close()
        server.stdin.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await server.wait()
        except TimeoutError:
            server.kill()
            await server.wait()


# --- long chains, fast --------------------------------------------------------------------------
def chain_blocks(ledger: Ledger, count: int, key: NodeKey, bits: int) -> Iterator[Block]:
    """``count`` valid blocks in a line on the ledger's tip, made lazily so memory stays flat."""
    tip = ledger.tip
    height, prev, time_ms = tip.height, tip.hash, tip.header.time_ms
    newest = ledger.newest_reading_ms(CHAIN_RELAY) or time_ms - CHAIN_READINGS * CHAIN_READING_MS
    for _ in range(count):
        readings = tuple(Reading(newest + (i + 1) * CHAIN_READING_MS, 115.0, 115.2, 114.9, 412.0 + i, 409.5,
                                 415.1, 60.0, 0.97, 80.1, 19.8) for i in range(CHAIN_READINGS))
        capture = Capture(CHAIN_RELAY, "Bench Substation", 0, readings)
        time_ms += CHAIN_READINGS * CHAIN_READING_MS
        header = Header(BLOCK_VERSION, height + 1, prev, payload_root(capture, "builder"), time_ms, bits,
                        key.public_key, 0)
        header = header.with_nonce(pow.mine(header.prefix(), bits))
        block = Block(header, key.sign(header.hash()), capture, "builder")
        height, prev, newest = block.height, block.hash, readings[-1].timestamp_ms
        yield block


def build_chain(data_dir: Path, network: str, bits: int, length: int) -> float:
    """Extend the chain stored in ``data_dir`` (created if new) to ``length`` blocks; returns seconds.

    Blocks are a minute apart starting from genesis (2021), so even 100,000 of them end long
    before today and a node started on the store mines on top at the real time.
    """
    started = time.perf_counter()
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    params = NetworkParams(network, bits)
    now_ms = int(time.time() * 1000)
    key = NodeKey.from_seed(CHAIN_KEY_SEED)
    ledger = Ledger.open(data_dir, params, now_ms)
    try:
        while ledger.height < length:
            run = list(chain_blocks(ledger, min(CHAIN_BATCH, length - ledger.height), key, bits))
            batch = ledger.add_blocks(run, now_ms)
            if batch.error is not None:
                raise RuntimeError(f"built block refused: {batch.error}")
    finally:
        ledger.close()
    return time.perf_counter() - started


def copy_chain(source: Path, target: Path) -> None:
    """Copy a closed store (not its node key) so another node starts with the same chain."""
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        path = source / (DB_FILE + suffix)
        if path.exists():
            shutil.copyfile(path, target / path.name)


# --- partitions -----------------------------------------------------------------------------------
class FaultProxy:
    """Forwards 127.0.0.1:<port> to a node's port; ``cut()`` drops every link and refuses new
    ones until ``heal()``. Runs on the benchmark's own event loop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_off = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._links: set[asyncio.Task] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def heal(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        """Cut every link and wait for their tasks to end (left running, the loop's shutdown
        would cancel them and asyncio would log a traceback for each)."""
        self.cut()
        if self._server is not None:
            self._server.close()
        if self._links:
            await asyncio.wait(self._links, timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._links.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._links.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(2):
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._pipe(reader, up_writer))
                tasks.create_task(self._pipe(up_reader, writer))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self.cut_off:
            data = await reader.read(65536)
            if not data or self.cut_off:
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


# --- rows -------------------------------------------------------------------------------------
async def guarded(name: str, step: Callable[[], Awaitable[list[dict]]]) -> list[dict]:
    """One measurement's rows, or one row saying why it failed (so the other rows still count);
    its duration goes to stderr, as progress for whoever is waiting on `make bench`."""
    started = time.monotonic()
    try:
        rows = await step()
    except Exception as exc:  # a broken run is a result too; it must not hide the others
        print(f"  {name}: failed after {time.monotonic() - started:.0f} s: {exc!r}", file=sys.stderr, flush=True)
        return [{"name": f"{name}: FAILED", "value": None, "unit": "", "goal": "-", "error": repr(exc)}]
    print(f"  {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def row(name: str, value: float | None, unit: str, goal: str = "-", digits: int = 3, **extra: object) -> dict:
    """One result row as ``make bench`` tables it; ``extra`` fields go to the JSON only."""
    if value is not None and not math.isnan(value):  # NaN means no samples: keep it visible
        value = round(value) if digits == 0 else round(value, digits)
    return {"name": name, "value": value, "unit": unit, "goal": goal, **extra}


def print_rows(rows: list[dict]) -> None:
    """A plain table for running one module on its own."""
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        extra = f"  limit {r['limit']}  ratio {r['ratio']}" if "limit" in r else ""
        print(f"{r['name']:<{width}}  {r['value']!s:>10}  {r['unit']:<9}  goal {r['goal']}{extra}")
