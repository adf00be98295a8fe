"""`gridchain demo`: four nodes and a relay come up, make blocks, and all go away at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

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
    heights = [int(h) for h in re.findall(r"node-\d+=(\d+) ", updates[-1].split("|")[0])]
    assert len(heights) == 4 and min(heights) >= 2, updates[-1]
    # Every node shows the relay's newest reading, also those whose peers mined it first.
    newest = re.findall(r"node-\d+=(\S+)", updates[-1].split("newest readings")[1])
    assert len(newest) == 4 and all(n.endswith("Z") for n in newest), updates[-1]
    assert not re.search(r"\b1 readings\b", result.stdout)
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


def test_demo_refuses_json_rather_than_ignoring_it():
    result = run_demo("--json", "--duration", "1", timeout=30)
    assert result.returncode == 2 and "demo has no JSON output" in result.stderr
    assert "demo: pids" not in result.stdout, "nothing was started"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_demo_stops_everything_on_ctrl_c(signum):
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
        proc.send_signal(signum)
        assert proc.wait(30) == 0
        assert len(pids) == 2 and not [pid for pid in pids if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# --- device -> gateway -> four nodes, over each protocol ---------------------------------------
PROTOCOL_READY_S = 60.0  # device, gateway and four nodes start and mine their first blocks in ~10 s
# Whether each protocol's readings carry the gateway's clock (it carries no device timestamp).
GATEWAY_CLOCK = {"modbus": True, "iec61850": False, "dnp3": True}


def chain_readings(node_dir) -> list:
    """(relay id, Reading) of every reading on the node's main chain, read from its stopped store."""
    import sqlite3

    from gridchain.consensus.block import Block
    from gridchain.ledger.store import DB_FILE

    db = sqlite3.connect(f"{(node_dir / DB_FILE).resolve().as_uri()}?mode=ro", uri=True)
    try:
        raws = [raw for (raw,) in db.execute("SELECT b.raw FROM main m JOIN blocks b ON b.hash = m.hash "
                                             "WHERE m.height > 0 ORDER BY m.height")]
    finally:
        db.close()
    return [(block.capture.relay_id, r) for block in map(Block.decode, raws) for r in block.capture.readings]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("protocol", ["modbus", "iec61850", "dnp3"])
def test_demo_over_a_relay_protocol_puts_the_devices_readings_on_every_chain(tmp_path, protocol):
    from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
    from tests.support.ports import api_port

    base = free_port()  # four nodes' peer ports and their operator ports (api_port) all free
    while any(not port_is_free(base + i) or not port_is_free(api_port(base + i)) for i in range(4)):
        base = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridchain", "demo", "--protocol", protocol, "--base-port", str(base),
         "--relay-port", str(free_port()), "--device-port", str(free_port()), "--capture-interval", "1",
         "--relay-interval", "0.5", "--difficulty", "8", "--data-dir", str(tmp_path),
         "--duration", str(PROTOCOL_READY_S + 10)],  # a cap: the demo ends by itself whatever happens here
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + PROTOCOL_READY_S
        for line in proc.stdout:  # one line a second from the live view
            lines.append(line.rstrip())
            if line.startswith("demo: t="):
                heights = [int(h) for h in re.findall(r"node-\d+=(\d+) ", line.split("|")[0])]
                newest = re.findall(r"node-\d+=(\S+)", line.split("newest readings")[-1])
                every_node_has_readings = len(newest) == 4 and all(n.endswith("Z") for n in newest)
                if len(heights) == 4 and min(heights) >= 3 and every_node_has_readings:
                    break
            assert time.monotonic() < deadline, "\n".join(lines[-5:])
        else:
            raise AssertionError(f"the demo ended before readings reached all four nodes: {lines[-5:]}, "
                                 f"{proc.stderr.read()[-800:]}")
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    pids_line = next(x for x in lines if x.startswith("demo: pids"))
    pids = [int(p) for p in re.findall(r"=(\d+)", pids_line)]
    assert len(pids) == 6 and "device=" in pids_line  # the device, the gateway and four nodes
    assert f"reading a {protocol} device" in lines[0]
    last = rest.strip().splitlines()[-1]
    assert last.startswith("demo: stopped") and last.count("(exit 0)") == 6, last
    assert not [pid for pid in pids if alive(pid)]
    gateway_events = [json.loads(x)["event"] for x in (tmp_path / "relay.log").read_text().splitlines()
                      if x.startswith("{")]
    assert "relay.started" in gateway_events and "device.failed" not in gateway_events
    node_dirs = sorted(p for p in tmp_path.glob("node-*") if p.is_dir())
    assert len(node_dirs) == 4
    for node_dir in node_dirs:
        readings = chain_readings(node_dir)
        assert len(readings) >= 3, node_dir
        assert {relay_id for relay_id, _ in readings} == {"Relay 1"}
        seqs = [r.seq for _, r in readings]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        for _, reading in readings:  # what the device served, carrying the clock its protocol gives
            assert 100 < reading.vab < 130 and 59 < reading.frequency < 61, reading
            assert bool(reading.flags & GATEWAY_CLOCK_FLAG) == GATEWAY_CLOCK[protocol], (protocol, reading.flags)
    assert_the_demo_was_a_closed_network(tmp_path)
