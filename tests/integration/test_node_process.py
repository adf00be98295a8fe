"""gridchaind as real processes: SIGKILL and restart, clean SIGTERM shutdown, JSON log lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridchain.api.client import NodeClient, NodeUnavailable
from gridchain.config import Address

from tests.support.nodes import start_relay
from tests.support.ports import api_port, free_port

STOP_TIMEOUT_S = 5.0  # the bound for a clean stop


def spawn_node(data_dir: Path, port: int, peers: list[int], relay_port: int, log_path: Path,
               network_file: Path | None = None) -> subprocess.Popen:
    network = ["--network", "proc-net", "--difficulty", "8"] if network_file is None else \
        ["--network-file", str(network_file)]
    args = [sys.executable, "-m", "gridchain", "node", "--port", str(port), "--data-dir", str(data_dir),
            "--relay", f"127.0.0.1:{relay_port}", *network,
            "--capture-interval", "0.2", "--log-format", "json", "--name", f"p{port}"]
    for peer in peers:
        args += ["--peer", f"127.0.0.1:{peer}"]
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
    return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)


async def status(port: int) -> dict | None:
    try:
        async with NodeClient(Address("127.0.0.1", api_port(port)), timeout=2.0) as client:
            return await client.status()
    except (NodeUnavailable, OSError, TimeoutError):
        return None


async def wait_status(port: int, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await status(port)
        if info is not None and predicate(info):
            return info
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop_process(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise AssertionError("node did not stop within 5 s of SIGTERM") from None
    return proc.returncode


async def test_sigkill_and_restart_keeps_chain_and_rejoins(tmp_path):
    relay = await start_relay(interval_s=0.1)
    ports = [free_port(), free_port()]
    procs = {}
    try:
        for i, port in enumerate(ports):
            procs[i] = spawn_node(tmp_path / f"n{i}", port, [p for p in ports if p != port], relay.port,
                                  tmp_path / f"n{i}.log")
        await wait_status(ports[1], lambda s: s["height"] >= 5, 30, "height 5 on node 1")
        procs[1].kill()  # SIGKILL: no chance to flush anything
        procs[1].wait(5)
        before = await wait_status(ports[0], lambda s: True, 5, "node 0 alive")
        procs[1] = spawn_node(tmp_path / "n1", ports[1], [ports[0]], relay.port, tmp_path / "n1.log")
        after = await wait_status(ports[1], lambda s: s["height"] >= 1, 20, "restarted node answers")
        assert after["height"] >= 5, "the chain survived SIGKILL"
        # Rejoined: it catches up past where node 0 was, and both agree on that block.
        mark = before["height"]
        await wait_status(ports[1], lambda s: s["height"] >= mark + 3, 30, "restarted node catches up")
        await wait_status(ports[0], lambda s: s["height"] >= mark + 3, 30, "node 0 goes on")
        hashes = []
        for port in ports:
            async with NodeClient(Address("127.0.0.1", api_port(port)), timeout=2.0) as client:
                hashes.append((await client.block(height=mark)).block.hash)
        assert hashes[0] == hashes[1], "both nodes hold the same chain below their tips"
        for proc in procs.values():
            assert stop_process(proc) == 0
        lines = (tmp_path / "n1.log").read_text().splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        names = {e["event"] for e in events}
        assert {"node.started", "node.stopped", "peer.connected"} <= names
        assert all("timestamp" in e and "." in e["timestamp"] for e in events)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if relay is not None:
            await relay.close()


def test_node_refuses_a_busy_port_with_one_line(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gridchain", "node", "--port", str(port), "--data-dir", str(tmp_path / "d"),
             "--network", "proc-net", "--difficulty", "8", "--log-format", "json"],
            capture_output=True, text=True, timeout=30, env={**os.environ})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{port}" in result.stderr.strip().splitlines()[-1]


def log_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def event_time(events: list[dict], name: str) -> float:
    """The wall-clock time of the first ``name`` event (its ISO timestamp, as time.time())."""
    from datetime import datetime
    stamp = next(e["timestamp"] for e in events if e["event"] == name)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def try_connect(port: int) -> bool:
    """Whether a TCP connection to ``port`` is accepted (False: refused)."""
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True


def tls_network(tmp_path: Path, ports: list[int]) -> Path:
    """A network file naming two members on ``ports`` (their links are TLS 1.3) and a relay key."""
    out = tmp_path / "network.toml"
    argv = [sys.executable, "-m", "gridchain", "network", "init", "--name", "proc-tls", "--difficulty", "8",
            "--relay", f"Relay 1={os.urandom(32).hex()}", "--out", str(out)]
    for i, port in enumerate(ports):
        argv += ["--member-data-dir", f"n{i}={tmp_path / f'n{i}'}@127.0.0.1:{port}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_sigterm_with_a_peer_stops_accepting_first_and_logs_no_error(tmp_path, tls):
    relay = await start_relay(interval_s=0.1)
    ports = [free_port(), free_port()]
    logs = [tmp_path / "n0.log", tmp_path / "n1.log"]
    network_file = tls_network(tmp_path, ports) if tls else None
    procs = [spawn_node(tmp_path / "n0", ports[0], [], relay.port, logs[0], network_file),
             spawn_node(tmp_path / "n1", ports[1], [ports[0]], relay.port, logs[1], network_file)]
    try:
        await wait_status(ports[0], lambda s: any(p["state"] == "ready" for p in s["peers"]), 30,
                          "node 0 with its peer ready")
        assert await try_connect(ports[0]), "the peer port accepts while the node runs"
        procs[0].send_signal(signal.SIGTERM)
        # Knock on the peer port from the moment the signal is sent until the process is gone.
        attempts: list[tuple[float, bool]] = []
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while procs[0].poll() is None and time.monotonic() < deadline:
            attempts.append((time.time(), await try_connect(ports[0])))
            await asyncio.sleep(0.002)
        assert stop_process(procs[0]) == 0
        events = log_events(logs[0])
        stopping, stopped = event_time(events, "node.stopping"), event_time(events, "node.stopped")
        # A shutdown can take under 2 ms; the process lives on for its interpreter teardown, so
        # attempts after node.stopping (up to the exit) are what show the listener is closed.
        after = [ok for at, ok in attempts if at > stopping]
        assert after, f"no connection attempt landed after node.stopping (shutdown took {stopped - stopping:.4f} s)"
        assert not any(after), "a stopping node accepted a connection"
        loud = [e for e in events if e.get("level") in ("error", "critical")]
        assert not loud, f"error-level lines on a clean shutdown: {loud}"
        assert stop_process(procs[1]) == 0
        peer_events = log_events(logs[1])
        loud = [e for e in peer_events if e.get("level") in ("error", "critical")]
        assert not loud, f"error-level lines on the peer of a node that stopped: {loud}"
        # Nothing is written on a link once its other end has closed it (TLS would warn per frame).
        closed = [e for e in events + peer_events if "SSL connection is closed" in str(e.get("event"))]
        assert not closed, f"writes after the link closed: {closed[:3]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        await relay.close()
