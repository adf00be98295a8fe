"""`gridchain demo`: four nodes and a relay come up, make blocks, and all go away at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from gridchain.identity.keys import NodeKey, RelayKey
from gridchain.identity.network_file import load_network_file
from tests.support.ports import free_port, port_is_free

DURATION_S = 8


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_demo(*extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    base = free_port()
    while any(not port_is_free(base + i) for i in range(4)):
        base = free_port()
    return subprocess.run(
        [sys.executable, "-m", "gridchain", "demo", "--base-port", str(base), "--relay-port", str(free_port()),
         "--capture-interval", "1", "--relay-interval", "0.5", "--difficulty", "8", *extra],
        capture_output=True, text=True, timeout=timeout)


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
    assert_the_demo_was_a_closed_network(tmp_path)


def assert_the_demo_was_a_closed_network(data_dir):
    """The demo made every key, named them all in its network file, and the chain holds to it."""
    network = load_network_file(data_dir / "network.toml")
    node_dirs = sorted(p for p in data_dir.glob("node-*") if p.is_dir())
    assert len(node_dirs) == len(network.members) == 4
    for node_dir in node_dirs:
        assert network.member(NodeKey.load(node_dir / "node.key").public_key).name == node_dir.name
    (relay,) = network.relays
    assert relay.key == RelayKey.load(data_dir / "relay" / "relay.key").public_key
    assert not [p for p in data_dir.glob("node-*.log") if '"network.open"' in p.read_text()]
    pins = [event for p in data_dir.glob("node-*.log") for event in map(json.loads, p.read_text().splitlines())
            if event.get("event") == "relay.key_pinned"]
    assert pins and {(e["source"], e["key"]) for e in pins} == {("expected", relay.key.hex())}, \
        "with a network file the relay key comes from it, never from first use"
    audit = subprocess.run([sys.executable, "-m", "gridchain", "verify", "--data-dir", str(node_dirs[0]),
                            "--network-file", str(data_dir / "network.toml")], capture_output=True, text=True,
                           timeout=60)
    assert audit.returncode == 0 and audit.stdout.startswith("OK: "), audit.stdout + audit.stderr


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
