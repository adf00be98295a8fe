"""Gateway benchmarks: one poll through the gateway vs the bare library read, and 16 relays.

Poll cost: a simulated device (``python -m gridchain device``, its own process, so its
server work is not on our core) serves Modbus TCP, IEC 61850 MMS and DNP3 (two of them: a
DNP3 outstation serves one master). In this process,
for each protocol, the same library's bare client reads every value one poll needs (the same
Modbus spans, the same two MMS Read requests, one DNP3 integrity poll) on a kept connection,
and the gateway's channel takes one poll (source.poll: read, decode, checks; then numbering
and the signed row into an in-memory feed), interleaved, in the same run. The ratio is
bare / gateway time per poll (goal >= 0.8: the gateway costs at most a quarter more).

16 relays: one gateway process (``python -m gridchain relay``) reading 16 devices at a 1 s
poll (6 Modbus, 5 IEC 61850, 5 DNP3, each its own connection to one of 5 device processes), with a
data dir (every row journaled and fsync'd). Its CPU (user + system, from /proc) over a
window after warm-up, as % of one core, and its RSS.

    python bench/bench_gateway.py      # prints a table, writes bench/results_gateway.json
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import QUICK, percentile, row, run_alone
from gridchain.identity.keys import RelayKey
from gridchain.relay.channels import DeviceChannel
from gridchain.relay.signed_feed import SignedFeed
from gridchain.relay.sources import open_source, parse_source_url

POLLS = 100 if QUICK else 400  # per protocol and side
WINDOW_S = 10.0 if QUICK else 30.0  # the 16-relay CPU window
WARMUP_S = 3.0
RELAYS = 16
RESULTS = Path(__file__).with_name("results_gateway.json")
ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def run() -> list[dict]:
    with _devices(count=2) as ports:  # a DNP3 outstation serves one master: bare and gateway get one each
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rows = runner.run(_poll_costs(ports[0], ports[1]))
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
