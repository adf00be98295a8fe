"""The `gridchain` client and the daemons' entry points against real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridchain.api.client import NodeClient, NodeUnavailable
from gridchain.cli.commands import main
from gridchain.config import Address
from gridchain.consensus.provenance import Reading, verify_sealed_reading

from tests.support.ports import api_port, free_port

NETWORK, BITS = "client-net", 6
MIN_HEIGHT = 4  # blocks the node has mined before the tests look at it
START_TIMEOUT_S = 20.0


def spawn(argv: list[str], log_path: Path) -> subprocess.Popen:
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
    return subprocess.Popen([sys.executable, "-m", "gridchain", *argv], stdout=log_file, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def node_height(port: int) -> int | None:
    async def ask() -> int | None:
        try:
            async with NodeClient(Address("127.0.0.1", api_port(port)), timeout=1.0) as node:
                return (await node.status())["height"]
        except NodeUnavailable:
            return None
    return asyncio.run(ask())


def node_proof(port: int, relay: str, timestamp_ms: int):
    async def ask():
        async with NodeClient(Address("127.0.0.1", api_port(port))) as node:
            return await node.proof(relay, timestamp_ms)
    return asyncio.run(ask())


def wait_height(port: int, height: int, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while (current := node_height(port)) is None or current < height:
        if time.monotonic() > deadline:
            raise AssertionError(f"node on {port} did not reach height {height} within {timeout} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """A relay and one node (as `python -m gridchain` processes) of a network file, a few blocks mined."""
    root = tmp_path_factory.mktemp("client")
    relay_port, port = free_port(), free_port()
    net = root / "network.toml"
    assert main(["network", "init", "--name", NETWORK, "--difficulty", str(BITS), "--member-data-dir",
                 f"operator={root / 'n'}@127.0.0.1:{port}", "--relay-key-file", f"Relay 1={root / 'relay' / 'relay.key'}",
                 "--out", str(net)]) == 0
    relay = spawn(["relay", "--port", str(relay_port), "--interval", "0.1", "--seed", "5", "--data-dir",
                   str(root / "relay"), "--key-file", str(root / "relay" / "relay.key"), "--log-format", "json"],
                  root / "relay.log")
    node = spawn(["node", "--port", str(port), "--relay", f"127.0.0.1:{relay_port}", "--data-dir", str(root / "n"),
                  "--network-file", str(net), "--capture-interval", "0.2", "--log-format", "json"], root / "node.log")
    try:
        wait_height(port, MIN_HEIGHT)
        # The operator API has a port of its own (the peer port + 1000); verify needs the admin token.
        yield {"port": port, "node": ["--node", f"127.0.0.1:{api_port(port)}"], "root": root, "proc": node,
               "net": net, "admin": ["--token-file", str(root / "n" / "admin.token")]}
    finally:
        stop(node)
        stop(relay)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_table_and_json(network, capsys):
    code, out, _ = run(capsys, *network["node"], "status")
    assert code == 0 and out.startswith("node       node-") and "relays (1)" in out
    code, out, _ = run(capsys, "status", *network["node"], "--json")
    info = json.loads(out)
    assert code == 0 and info["network"] == NETWORK and info["height"] >= MIN_HEIGHT
    for key in ("tip", "work", "peers", "relays", "mining", "uptime_s"):
        assert key in info


def test_blocks_and_block(network, capsys):
    code, out, _ = run(capsys, *network["node"], "--json", "blocks", "--from", "1", "--to", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["height"] for r in rows] == [1, 2, 3]
    code, out, _ = run(capsys, *network["node"], "--json", "block", "2")
    by_height = json.loads(out)
    code2, out2, _ = run(capsys, *network["node"], "--json", "block", rows[1]["hash"])
    assert code == code2 == 0 and json.loads(out2) == by_height and by_height["hash"] == rows[1]["hash"]
    assert by_height["main"] and by_height["header"]["bits"] == BITS
    code, out, _ = run(capsys, *network["node"], "blocks", "--from", "1", "--to", "2")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["HEIGHT", "HASH", "TIME"] and len(out.splitlines()) == 3
    code, _, err = run(capsys, *network["node"], "block", "999999")
    assert code == 1 and err.count("\n") == 1 and "not-found" in err


def test_readings_stream_in_pages_identically(network, capsys):
    wait_height(network["port"], MIN_HEIGHT)
    code, out, _ = run(capsys, *network["node"], "--json", "blocks", "--from", "1", "--to", "3")
    last = [json.loads(line) for line in out.splitlines()][-1]
    until = str(last["newest_ms"])  # a fixed window: the chain keeps growing meanwhile
    code, whole, _ = run(capsys, *network["node"], "readings", "--until", until, "--format", "csv")
    code2, paged, _ = run(capsys, *network["node"], "readings", "--until", until, "--format", "csv", "--page", "2")
    assert code == code2 == 0 and whole == paged
    rows = list(csv.DictReader(io.StringIO(whole)))
    assert len(rows) >= 3 and {r["height"] for r in rows} == {"1", "2", "3"}
    stamps = [int(r["timestamp_ms"]) for r in rows]
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "one relay: every reading, in sequence"
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    code, out, _ = run(capsys, *network["node"], "readings", "--until", until, "--format", "json", "--relay", "Relay 1")
    assert [json.loads(line)["timestamp_ms"] for line in out.splitlines()] == stamps


def test_proof_round_trip(network, capsys, tmp_path):
    code, out, _ = run(capsys, *network["node"], "--json", "block", "2")
    reading = json.loads(out)["capture"]["readings"][-1]
    proof_file = tmp_path / "proof.json"
    code, _, err = run(capsys, *network["node"], "proof", "--relay", "Relay 1", "--timestamp",
                       str(reading["timestamp_ms"]), "--out", str(proof_file))
    assert code == 0, err
    assert json.loads(proof_file.read_text())["reading"] == reading
    code, out, _ = run(capsys, "proof", "--check", str(proof_file))
    assert code == 0 and out.startswith(f"OK: reading seq {reading['seq']} of Relay 1") and "block 2 " in out
    saved = json.loads(proof_file.read_text())
    reply = node_proof(network["port"], "Relay 1", reading["timestamp_ms"])
    # The node's reply alone proves the reading is the relay's: its seal and the row's path to it.
    row = Reading.from_bytes(reply.leaf)
    verify_sealed_reading(reply.relay_key, reply.relay_id, row, reply.seal, reply.seal_path)
    assert reply.seq == row.seq == reading["seq"] and reply.height == 2
    assert saved["seal"] == {"first_seq": reply.seal.first_seq, "count": reply.seal.count,
                             "signature": reply.seal.signature.hex(), "path": [p.hex() for p in reply.seal_path]}
    assert saved["metadata"]["relay_key"] == reply.relay_key.hex()
    code, out, _ = run(capsys, "proof", "--check", str(proof_file), "--network-file", str(network["net"]))
    assert code == 0 and "mined by member 'operator'" in out and "signed by relay Relay 1" in out
    doc = json.loads(proof_file.read_text())
    doc["reading"]["vab"] += 1.0
    proof_file.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "proof", "--check", str(proof_file))
    assert code == 1 and out.startswith("FAILED:")


def test_verify_on_the_node_and_offline(network, capsys):
    code, out, err = run(capsys, *network["node"], "verify")
    assert code == 1 and "admin-required" in err, "a whole-store audit needs the admin token, even locally"
    code, out, _ = run(capsys, *network["node"], *network["admin"], "verify")
    assert code == 0 and out.startswith("OK: ") and "gap" not in out
    # The relay's key was made before it first started, so its first block carries a notice
    # at a clock-derived seq: the start of its sequence, not a gap.
    code, out, _ = run(capsys, *network["node"], "--json", "block", "1")
    assert code == 0 and json.loads(out)["capture"]["gap"] is not None
    code, out, _ = run(capsys, *network["node"], *network["admin"], "--json", "verify")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["checked"] >= MIN_HEIGHT
    assert report["gaps"] == [] and report["gaps_omitted"] == 0
    code, out, _ = run(capsys, "--json", "verify", "--data-dir", str(network["root"] / "n"), "--network-file",
                       str(network["net"]))
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["checked"] >= MIN_HEIGHT and report["gaps"] == []
    code, out, _ = run(capsys, "verify", "--data-dir", str(network["root"] / "n"), "--network", "another-net")
    assert code == 1 and out.startswith("FAILED")


def test_tail_prints_new_blocks_and_ends_cleanly_on_ctrl_c(network):
    proc = subprocess.Popen([sys.executable, "-m", "gridchain", *network["node"], "--json", "tail"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = [json.loads(proc.stdout.readline()) for _ in range(2)]  # the node mines every 0.2 s
        assert events[1]["height"] == events[0]["height"] + 1 or events[1]["note"] == "reorg"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_a_node_that_is_down_is_one_line_and_exit_3(capsys):
    port = free_port()
    code, out, err = run(capsys, "--node", f"127.0.0.1:{port}", "status")
    assert code == 3 and out == ""
    assert err == f"gridchain: node 127.0.0.1:{port} is not reachable (connection refused)\n"


def test_gridchaind_refuses_a_port_in_use_with_one_line(network):
    result = subprocess.run([sys.executable, "-m", "gridchain", "node", "--port", str(network["port"]),
                             "--data-dir", str(network["root"] / "other"), "--network", NETWORK,
                             "--difficulty", str(BITS), "--log-format", "json"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"gridchaind: error: cannot listen on 127.0.0.1:{network['port']}")
    assert result.stderr.count("\n") == 1


def test_gridchaind_stops_on_sigterm_with_exit_0(tmp_path):
    port = free_port()
    proc = spawn(["node", "--port", str(port), "--data-dir", str(tmp_path / "n"), "--network", NETWORK,
                  "--difficulty", str(BITS), "--log-format", "json"], tmp_path / "node.log")
    try:
        wait_height(port, 0)
    finally:
        assert stop(proc) == 0
    events = [json.loads(line)["event"] for line in (tmp_path / "node.log").read_text().splitlines()]
    assert events[-1] == "node.stopped" and events.index("network.open") < events.index("node.started")


def test_gridchain_relay_stops_on_sigterm_and_refuses_a_busy_port(tmp_path):
    port = free_port()
    proc = spawn(["relay", "--port", str(port), "--interval", "0.5", "--log-format", "json"], tmp_path / "relay.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "relay.started" not in (tmp_path / "relay.log").read_text():
            assert time.monotonic() < deadline and proc.poll() is None, "relay did not start"
            time.sleep(0.05)
        busy = subprocess.run([sys.executable, "-m", "gridchain", "relay", "--port", str(port)],
                              capture_output=True, text=True, timeout=30)
        assert busy.returncode == 1 and busy.stderr.startswith(f"gridchain-relay: error: cannot listen on 127.0.0.1:{port}")
    finally:
        assert stop(proc) == 0
    assert json.loads((tmp_path / "relay.log").read_text().splitlines()[-1])["event"] == "relay.stopped"
