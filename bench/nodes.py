"""What the multi-process benchmarks measure with: block spread and sync times from the logs,
percentiles, the loopback round trip, long chains built fast, and the result rows.

The processes themselves (``tests.support.processes``: every node and relay a separate
``python -m gridchain`` process on 127.0.0.1 writing JSON log lines to its own file, as an
operator runs it), their logs, memory, ports, the fault proxy and the blocks come from
``tests.support``, shared with the tests. Timings come from the log lines' ISO timestamps
(one machine, one clock), so measuring adds no work to the processes measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridchain.consensus.block import Block
from gridchain.consensus.params import NetworkParams
from gridchain.identity.keys import NodeKey
from gridchain.ledger.ledger import Ledger
from gridchain.ledger.store import DB_FILE
from tests.support.blocks import line, tip_of
from tests.support.processes import STOP_TIMEOUT_S, Proc

READY_TIMEOUT_S = 20.0  # a process starts and listens in about a second; 20 s means it is broken
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")  # shorter runs, same measurements
KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")  # keep data dirs and logs for a look afterwards

# Synthetic chains (build_chain): one relay, a minute of readings per block as the prototype.
# Not the live relay's id ("Relay 1" by default): that relay signs with its own key and starts
# its own sequence, so blocks of it on top of a chain built under its id would be refused
# (relay-key-mismatch); under another id they simply start that relay's sequence.
CHAIN_RELAY = "Archive relay"
CHAIN_READINGS = 6
CHAIN_BATCH = 500  # blocks per add_blocks call: the size of one sync answer
CHAIN_KEY_SEED = b"\x5b" * 32


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


# --- from the logs -----------------------------------------------------------------------------
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
    return line(tip_of(ledger.chain, CHAIN_RELAY), count, key, bits, relay_id=CHAIN_RELAY,
                substation="Bench Substation", miner_name="builder", per_block=CHAIN_READINGS)


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


CHAIN_SUBSTATION = "Bench Substation"  # the substation chain_blocks' readings name


def build_network_chain(data_dir: Path, params: NetworkParams, length: int, key: NodeKey,
                        miner_name: str = "builder") -> float:
    """``build_chain`` for any network's rules (a network file's: its members, relays and hash),
    every block mined and signed by ``key`` (on a member network, a member's key); returns seconds.

    The network must name CHAIN_RELAY, substation CHAIN_SUBSTATION, with the test relay key
    (tests.support.blocks.RELAY_KEY), which signs the readings.
    """
    started = time.perf_counter()
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    ledger = Ledger.open(data_dir, params, now_ms)
    try:
        while ledger.height < length:
            run = list(line(tip_of(ledger.chain, CHAIN_RELAY), min(CHAIN_BATCH, length - ledger.height), key,
                            params.bits, relay_id=CHAIN_RELAY, substation=CHAIN_SUBSTATION, miner_name=miner_name,
                            per_block=CHAIN_READINGS))
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


def run_alone(run: Callable[[], list[dict]], results: Path) -> None:
    """Run one module's benchmarks on their own: print the table, write its results file."""
    rows = run()
    print_rows(rows)
    results.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {results}")
