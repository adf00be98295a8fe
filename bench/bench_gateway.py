"""Gateway benchmarks: one poll through the gateway vs the bare library read, device value ->
stored on four nodes per protocol, and 16 relays.

Poll cost: a simulated device (``python -m gridchain device``, its own process, so its
server work is not on our core) serves Modbus TCP, IEC 61850 MMS and DNP3 (two of them: a
DNP3 outstation serves one master). In this process,
for each protocol, the same library's bare client reads every value one poll needs (the same
Modbus spans, the same two MMS Read requests, one DNP3 integrity poll) on a kept connection,
and the gateway's channel takes one poll (source.poll: read, decode, checks; then numbering
and the signed row into an in-memory feed), interleaved, in the same run. The ratio is
bare / gateway time per poll (goal >= 0.8: the gateway costs at most a quarter more).

Device value -> stored on all four nodes: per protocol, one device process, one gateway
process polling it every second and four ``gridchaind`` processes in a full mesh
(``tests.support.processes``: every one ``python -m gridchain``, JSON logs), capturing every
second at the default difficulty. The device measures every 0.1 s (a relay's registers
follow its measurement continuously; the 1 s poll is what decides the delay). For each
reading of the window, on each node: from the device's sample time to the moment that node
logged the block holding it on its final main chain (``block.mined`` or ``block.accepted``,
ISO timestamps of one machine's clock); "on all four" is the last of the four. The sample
time is the device's own timestamp where the protocol carries one (IEC 61850; Modbus with
the float32 map); DNP3 here has none, so its readings carry the gateway's poll time, and
the device's value may be up to one device step (0.1 s) older than that.
The gateway's polls and the nodes' captures both tick once a second, so within one run the
wait between a poll and the next capture is a phase fixed at start-up: it moves the p50 of
a run anywhere within about a second. "Of which first fetched -> stored on all four" (from
the first ``capture.new`` covering the reading) is the nodes' own share, free of that phase.

16 relays: one gateway process (``python -m gridchain relay``) reading 16 devices at a 1 s
poll (6 Modbus, 5 IEC 61850, 5 DNP3, each its own connection to one of 5 device processes), with a
data dir (every row journaled and fsync'd). Its CPU (user + system, from /proc) over a
window after warm-up, as % of one core, and its RSS.

    python bench/bench_gateway.py               # prints a table, writes bench/results_gateway.json
    BENCH_QUICK=1 python bench/bench_gateway.py # shorter runs of the same measurements
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import QUICK, block_times, guarded, percentile, row, run_alone, workdir
from gridchain.config import DEFAULT_DIFFICULTY
from gridchain.identity.keys import RelayKey
from gridchain.ledger.store import DB_FILE
from gridchain.relay.channels import DeviceChannel
from gridchain.relay.signed_feed import SignedFeed
from gridchain.relay.sources import open_source, parse_source_url
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
from tests.support.ports import free_port
from tests.support.processes import Proc, Processes, wait_all
from tests.support.wait import wait_until

POLLS = 100 if QUICK else 400  # per protocol and side
WINDOW_S = 10.0 if QUICK else 30.0  # the 16-relay CPU window
WARMUP_S = 3.0
RELAYS = 16
RESULTS = Path(__file__).with_name("results_gateway.json")
ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Device value -> stored on all four: each protocol's run is start-up (~5 s on 2 cores),
# warm-up, the window and the settle; ~35 s in all with BENCH_QUICK.
STORED_NODES = 4  # the prototype's network
STORED_POLL_S = 1.0  # the gateway's poll and the nodes' capture interval
STORED_DEVICE_STEP_S = 0.1  # the device's measurement period
STORED_WINDOW_S = 22.0 if QUICK else 90.0
STORED_WARMUP_S = 3.0  # the first captures race the mesh coming up; not measured
STORED_SETTLE_S = 3.0  # after the window, time for its last readings to be mined and spread
STORED_READY_S = 30.0  # four nodes start and connect in ~2 s; 30 s means something is broken
STORED_RELAY = "Relay 1"
# A value waits at most one device step, one poll and one capture interval, then ~0.1 s to be
# mined (16 bits) and spread to three peers.
STORED_GOAL = f"<= {round((STORED_DEVICE_STEP_S + 2 * STORED_POLL_S + 0.1) * 1000)}"
# (label, device flags, gateway source URL with {port}) per protocol.
STORED_PROTOCOLS = (
    ("modbus", ["--modbus-map", "float32"], "modbus://127.0.0.1:{port}?unit=1&map=float32"),
    ("iec61850", [], "iec61850://127.0.0.1:{port}/GRIDSIMLD0"),
    ("dnp3", [], "dnp3://127.0.0.1:{port}?outstation=10"),
)


def run() -> list[dict]:
    with _devices(count=2) as ports:  # a DNP3 outstation serves one master: bare and gateway get one each
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rows = runner.run(_poll_costs(ports[0], ports[1]))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for protocol, device_flags, url in STORED_PROTOCOLS:
            rows += runner.run(guarded(f"{protocol}: device -> stored on all {STORED_NODES}",
                                       lambda p=protocol, f=device_flags, u=url: _device_to_stored(p, f, u)))
    return rows + _sixteen_relays()


# --- processes ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCHAIN_")}
    return subprocess.Popen([sys.executable, "-m", "gridchain", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def _devices(count: int):
    """``count`` device processes, each serving all three protocols: [(modbus, mms, dnp3)]."""
    procs, ports = [], []
    try:
        for number in range(count):
            mb, mms, dnp3 = _free_port(), _free_port(), _free_port()
            procs.append(_spawn(["device", "--modbus", str(mb), "--iec61850", str(mms), "--dnp3", str(dnp3),
                                 "--interval", "0.1", "--seed", str(number + 1), "--log-level", "warning"]))
            ports.append((mb, mms, dnp3))
        for triple in ports:
            for port in triple:
                _wait_port(port)
        yield ports
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _urls(ports: tuple[int, int, int]) -> dict[str, str]:
    mb, mms, dnp3 = ports
    return {"modbus": f"modbus://127.0.0.1:{mb}?unit=1&map=sel751",
            "iec61850": f"iec61850://127.0.0.1:{mms}/GRIDSIMLD0",
            "dnp3": f"dnp3://127.0.0.1:{dnp3}?outstation=10"}


# --- one poll: gateway vs bare -----------------------------------------------------------------
async def _poll_costs(ports: tuple[int, int, int], bare_ports: tuple[int, int, int]) -> list[dict]:
    rows = []
    key = RelayKey.from_seed(b"\x07" * 32)
    for protocol, url in _urls(ports).items():
        bare, close_bare = await _bare_reader(protocol, bare_ports)
        feed = SignedFeed("bench", "Bench", key, 100_000)
        feed.boot(0, key_created=True)
        channel = DeviceChannel("bench", "Bench", open_source(parse_source_url(url)), feed, 1.0)
        try:
            for _ in range(10):  # connect and warm both sides
                await bare()
                await channel.step(int(time.time() * 1000))
            bare_ms, gateway_ms = [], []
            for _ in range(POLLS):  # interleaved, so both see the same machine load
                t0 = time.perf_counter()
                await bare()
                t1 = time.perf_counter()
                await channel.step(int(time.time() * 1000))
                t2 = time.perf_counter()
                bare_ms.append((t1 - t0) * 1000)
                gateway_ms.append((t2 - t1) * 1000)
            assert channel.health.reason is None, channel.health.reason
        finally:
            await channel.close()
            await close_bare()
        b, g = percentile(bare_ms, 0.5), percentile(gateway_ms, 0.5)
        rows += [
            row(f"{protocol}: one poll, bare library read, median", b, "ms", "-"),
            row(f"{protocol}: one poll through the gateway, median", g, "ms", "-",
                signed=channel.samples, polls=channel.polls),
            row(f"{protocol}: bare / gateway poll time", b / g, "ratio", ">= 0.8"),
        ]
    return rows


async def _bare_reader(protocol: str, ports: tuple[int, int, int]):
    mb, mms, dnp3 = ports
    if protocol == "modbus":
        from pymodbus.client import AsyncModbusTcpClient

        from gridchain.relay.sources.register_map import load_register_map
        spans = load_register_map("sel751").spans()
        client = AsyncModbusTcpClient("127.0.0.1", port=mb, timeout=2, retries=0, reconnect_delay=0)
        await client.connect()

        async def read():
            for start, count in spans:
                response = await client.read_holding_registers(start, count=count, device_id=1)
                assert not response.isError()

        async def close():
            client.close()
        return read, close
    if protocol == "iec61850":
        from open61850.mms.client import MmsClient
        from open61850.mms.pdu import ObjectName

        import gridchain.relay.sources.mms_model as mms_model
        client = MmsClient.connect("127.0.0.1", mms, timeout=2)
        identity = [ObjectName(i, "GRIDSIMLD0") for i in mms_model.identity_items()]
        values = [ObjectName(i, "GRIDSIMLD0") for i in mms_model.measurement_items()]

        async def read():  # the library's own blocking calls, on this thread: no hop at all
            client.read_many(identity)
            client.read_many(values)

        async def close():
            client.close()
        return read, close
    from dnp3.master import DefaultSOEHandler, Master, MasterConfig, MasterTcpRunner
    runner = MasterTcpRunner(master=Master(handler=DefaultSOEHandler(), config=MasterConfig(
        address=1, outstation_address=10)), host="127.0.0.1", port=dnp3, response_timeout=2)
    await runner.open()

    async def read():
        await runner.integrity_poll()

    async def close():
        await runner.close()
    return read, close


# --- device value -> stored on all four nodes ---------------------------------------------------
async def _device_to_stored(protocol: str, device_flags: list[str], url: str) -> list[dict]:
    with workdir(f"bench-device-{protocol}-") as root, \
            Processes(root, f"bench-device-{protocol}", DEFAULT_DIFFICULTY) as procs:
        device_port, gateway_port = free_port(), free_port()
        procs.spawn("device", device_port, ["device", f"--{protocol}", str(device_port), "--interval",
                                            f"{STORED_DEVICE_STEP_S:g}", *device_flags, "--log-format", "json"])
        await _listening(device_port)
        gateway = procs.spawn("gateway", gateway_port, [
            "relay", "--port", str(gateway_port), "--data-dir", str(root / "gateway"), "--poll-interval",
            f"{STORED_POLL_S:g}", "--interval", f"{STORED_POLL_S:g}", "--device",
            f"{STORED_RELAY}={url.format(port=device_port)}", "--log-format", "json"])
        await _listening(gateway_port)
        ports = [free_port() for _ in range(STORED_NODES)]
        nodes = [procs.node(f"n{i}", port=port, peers=[p for p in ports if p != port], relays=[gateway_port],
                            capture_interval_s=STORED_POLL_S) for i, port in enumerate(ports)]
        await wait_all(nodes, lambda s: len(s["peers"]) == STORED_NODES - 1, STORED_READY_S, "a full mesh")
        await asyncio.sleep(STORED_WARMUP_S)
        start = time.time()
        await asyncio.sleep(STORED_WINDOW_S)
        end = time.time()
        await asyncio.sleep(STORED_SETTLE_S)
        await procs.stop_all()
        _, held = block_times(nodes)
        stored = {n.name: _stored(n.data_dir) for n in nodes}
        failures = [e["reason"] for e in gateway.events(("device.failed",))]
        fetched = _first_fetched(nodes)
    window = {key: (ms, flags) for key, (ms, flags, _) in stored[nodes[0].name].items() if start <= ms / 1000 <= end}
    per_node, to_all, after_fetch, missing = [], [], [], 0
    for key, (sample_ms, _) in window.items():
        times = [_held_at(held[n.name], stored[n.name].get(key)) for n in nodes]
        late = [t * 1000 - sample_ms for t in times if t is not None]
        per_node += late
        if len(late) == len(nodes):
            to_all.append(max(late))
            if key[1] in fetched:
                after_fetch.append((max(times) - fetched[key[1]]) * 1000)
        else:
            missing += 1
    device_clock = bool(window) and not any(flags & GATEWAY_CLOCK_FLAG for _, flags in window.values())
    label = f"{protocol}: device value -> stored on all {STORED_NODES} nodes, {STORED_POLL_S:g} s poll"
    return [
        row(f"{label}, p50", percentile(to_all, 0.5), "ms", digits=1, readings=len(to_all),
            polls_in_window=int((end - start) / STORED_POLL_S), not_on_all_nodes=missing,
            sample_time="device timestamp" if device_clock else "gateway poll time", difficulty=DEFAULT_DIFFICULTY,
            device_failures=failures, unclean_stops=procs.unclean),
        row(f"{label}, p99", percentile(to_all, 0.99), "ms", STORED_GOAL, digits=1,
            max=round(max(to_all, default=math.nan), 1)),
        row(f"{protocol}: device value -> stored on one node, p50", percentile(per_node, 0.5), "ms", digits=1,
            p99=round(percentile(per_node, 0.99), 1)),
        row(f"{protocol}:   of which first fetched by a node -> stored on all {STORED_NODES}, p50",
            percentile(after_fetch, 0.5), "ms", digits=1, p99=round(percentile(after_fetch, 0.99), 1)),
    ]


async def _listening(port: int) -> None:
    async def up() -> bool:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        return False
    await wait_until(up, STORED_READY_S, 0.05, what=f"a listener on {port}")


def _stored(data_dir: Path) -> dict[tuple[str, int], tuple[int, int, str]]:
    """(relay id, seq) -> (timestamp ms, flags, short block hash) of every reading on the node's main chain."""
    db = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        return {(relay_id, seq): (ms, flags, block_hash.hex()[:12]) for relay_id, seq, ms, flags, block_hash in
                db.execute("SELECT relay_id, seq, timestamp_ms, flags, block_hash FROM readings")}
    finally:
        db.close()


def _first_fetched(nodes: list[Proc]) -> dict[int, float]:
    """seq -> when a node first took the reading from the gateway (its first ``capture.new`` covering it)."""
    first: dict[int, float] = {}
    for node in nodes:
        for event in node.events(("capture.new",)):
            if event.get("relay_id") != STORED_RELAY:
                continue
            for seq in range(event["first_seq"], event["last_seq"] + 1):
                first[seq] = min(first.get(seq, event["t"]), event["t"])
    return first


def _held_at(held: dict[str, float], reading: tuple[int, int, str] | None) -> float | None:
    """When the node first held the block its main chain keeps ``reading`` in (None: not stored)."""
    return None if reading is None else held.get(reading[2])


# --- 16 relays at a 1 s poll -------------------------------------------------------------------
def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _sixteen_relays() -> list[dict]:
    kinds = ["modbus"] * 6 + ["iec61850"] * 5 + ["dnp3"] * 5
    # One device process per DNP3 relay (an outstation serves one master); Modbus and MMS
    # relays share them, each on its own connection.
    with _devices(count=kinds.count("dnp3")) as ports, tempfile.TemporaryDirectory(prefix="bench-gateway-") as data:
        devices = []
        for number, kind in enumerate(kinds):
            url = _urls(ports[number % len(ports)])[kind]
            devices += ["--device", f"Feeder {number + 1}={url}"]
        port = _free_port()
        gateway = _spawn(["relay", "--port", str(port), "--data-dir", data, "--poll-interval", "1",
                          "--log-level", "warning", *devices])
        try:
            _wait_port(port)
            time.sleep(WARMUP_S)
            cpu0, t0, rows0 = _cpu_s(gateway.pid), time.monotonic(), _journal_rows(data)
            time.sleep(WINDOW_S)
            cpu1, t1, rows1 = _cpu_s(gateway.pid), time.monotonic(), _journal_rows(data)
            rss = _rss_mb(gateway.pid)
            journals = sum(1 for _ in Path(data).rglob("relay.journal"))
        finally:
            _stop([gateway])
    return [
        row(f"gateway, {RELAYS} relays at 1 s poll: CPU", (cpu1 - cpu0) / (t1 - t0) * 100, "% of a core", "< 25",
            journals=journals),
        row(f"gateway, {RELAYS} relays at 1 s poll: RSS", rss, "MB", "< 200"),
        row(f"gateway, {RELAYS} relays at 1 s poll: rows signed", (rows1 - rows0) / (t1 - t0), "rows/s",
            f"~{RELAYS}"),
    ]


def _journal_rows(data: str) -> int:
    """Rows journaled so far, every relay (each row record is 113 bytes; gap records are rare)."""
    return sum(p.stat().st_size // 113 for p in Path(data).rglob("relay.journal"))


def main() -> None:
    run_alone(run, RESULTS)


if __name__ == "__main__":
    main()
