"""`gridchain demo`: four nodes and a relay come up, make blocks, and all go away at the end."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

from .harness import free_port

DURATION_S = 8


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_demo(*extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    base = free_port()
    while any(not _free(base + i) for i in range(4)):
        base = free_port()
    return subprocess.run(
        [sys.executable, "-m", "gridchain", "demo", "--base-port", str(base), "--relay-port", str(free_port()),
         "--capture-interval", "1", "--relay-interval", "0.5", "--difficulty", "8", *extra],
        capture_output=True, text=True, timeout=timeout)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_demo_runs_four_nodes_that_make_blocks_and_leaves_nothing_running(tmp_path):
    result = run_demo("--duration", str(DURATION_S), "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    pids = [int(p) for p in re.findall(r"=(\d+)", next(line for line in lines if line.startswith("demo: pids")))]
    assert len(pids) == 5
    updates = [line for line in lines if line.startswith("demo: t=")]
    heights = [int(h) for h in re.findall(r"node-\d+=(\d+)", updates[-1])]
    assert len(heights) == 4 and min(heights) >= 2, updates[-1]
    assert lines[-1].startswith("demo: stopped") and lines[-1].count("(exit 0)") == 5, lines[-1]
    assert not [pid for pid in pids if alive(pid)]
    assert sorted(p.name for p in tmp_path.glob("*.log"))[-1] == "relay.log"  # one log per process
    assert len(list(tmp_path.glob("node-*.log"))) == 4


def test_demo_stops_everything_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridchain", "demo", "--base-port", str(free_port()), "--nodes", "1",
         "--relay-port", str(free_port()), "--capture-interval", "1", "--difficulty", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        pids: list[int] = []
        for line in proc.stdout:
            if line.startswith("demo: pids"):
                pids = [int(p) for p in re.findall(r"=(\d+)", line)]
            if line.startswith("demo: t="):
                break
            assert time.monotonic() < deadline
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert len(pids) == 2 and not [pid for pid in pids if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
