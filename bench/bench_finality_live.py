"""Finality on live nodes: latency from a block mined to finalized on every member, vote
traffic, CPU per member idle and mining, sync of a fresh node with certificates, proof checks.

Real processes on 127.0.0.1 (a relay and member nodes on one network file, as
tests/integration/test_finality_live.py starts them); timings come from the JSON log lines
of every process (one machine, one clock).

- **Latency.** With a checkpoint every block, block ``h`` is finalized by the link
  ``h -> h+1``: one round of votes after the *next* block. Two numbers: ``round`` is from
  block ``h+1`` mined to ``h`` finalized on every member (what finality itself costs: the
  votes' validate-sign-write-send-count round); ``block`` is from ``h`` mined to ``h``
  finalized everywhere (adds the wait for the next block, i.e. the block interval).
- **Traffic.** Bytes of vote, evidence and certificate frames each member sent, per block.
- **CPU.** utime+stime of each member over a window with the relay paused (idle: no
  readings, so no mining) and one with it running (mining and voting).
- **Sync.** A fresh member syncs a chain of CHAIN_BLOCKS built offline, every block
  finalized with its certificate stored, from one peer: blocks/s and one certificate
  checked per 500-block batch.
- **proof --check.** ``check_proof`` of a bundle with its finality part, in-process.

    python -m bench.bench_finality_live      # BENCH_QUICK=1 for a shorter run
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.nodes import QUICK, percentile, row, run_alone, workdir
from gridchain.consensus.finality import Certificate, Checkpoint, sign_vote
from gridchain.consensus.params import NetworkParams, RelayInfo
from gridchain.identity.keys import NodeKey
from gridchain.ledger.ledger import Ledger
from tests.integration import test_finality_live as live
from tests.support import outsider as o
from tests.support.blocks import RELAY_KEY, line, tip_of
from tests.support.ports import listen_port
from tests.support.processes import Processes, answers, wait_status

RESULTS = Path(__file__).with_name("results_finality_live.json")
RUN_S = 10.0 if QUICK else 25.0  # of mining with four members: ~3 blocks a second
CPU_WINDOW_S = 3.0 if QUICK else 6.0
CHAIN_BLOCKS = 1_000 if QUICK else 3_000
CHAIN_RELAY = "Archive relay"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_percent(procs, seconds: float) -> list[float]:
    before = [_cpu_s(p.pid) for p in procs]
    time.sleep(seconds)
    return [100 * (_cpu_s(p.pid) - b) / seconds for p, b in zip(procs, before)]


async def _cpu_window(procs, seconds: float) -> list[float]:
    return await asyncio.to_thread(_cpu_percent, procs, seconds)


def _latencies(nodes, main: set[str]) -> tuple[list[float], list[float]]:
    """(round, block) latencies in ms over the main-chain blocks (``main``: short hashes) every
    member finalized (module docstring)."""
    mined = {}
    for node in nodes:
        for e in node.events(["block.mined"]):
            if e["hash"] in main:
                mined.setdefault(e["height"], []).append((e["t"], e["hash"]))
    finals = {node.name: [(e["height"], e["t"]) for e in node.events(["finality.finalized"])] for node in nodes}

    def final_at(name: str, height: int) -> float | None:
        return next((t for h, t in finals[name] if h >= height), None)

    rounds, blocks = [], []
    top = min(max((h for h, _ in f), default=0) for f in finals.values())
    for height in range(2, top):
        times = [final_at(node.name, height) for node in nodes]
        if None in times or height not in mined or height + 1 not in mined:
            continue
        done = max(times)
        blocks.append(1000 * (done - min(t for t, _ in mined[height])))
        rounds.append(1000 * (done - min(t for t, _ in mined[height + 1])))
    return [r for r in rounds if r >= 0], blocks


async def _live(tmp: Path) -> list[dict]:
    rows = []
    async with live.network(tmp) as net:
        nodes = list(net.nodes.values())
        await live.wait_finalized(nodes, 3)
        start = {n.name: await live.finality(n) for n in nodes}
        await asyncio.sleep(RUN_S)
        end = {n.name: await live.finality(n) for n in nodes}
        main = {b.hash.hex()[:12] for b in await o.main_chain(nodes[0].port)}
        rounds, blocks = _latencies(nodes, main)
        rows.append(row("4 members: block h+1 mined -> h finalized on all, p50", percentile(rounds, 0.5), "ms",
                        "<= 50", samples=len(rounds)))
        rows.append(row("4 members: block h+1 mined -> h finalized on all, p99", percentile(rounds, 0.99), "ms",
                        "<= 150", samples=len(rounds)))
        rows.append(row("4 members: block h mined -> h finalized on all, p50", percentile(blocks, 0.5), "ms",
                        "- (adds the block interval)", samples=len(blocks)))
        rows.append(row("4 members: block h mined -> h finalized on all, p99", percentile(blocks, 0.99), "ms", "-",
                        samples=len(blocks)))
        blocks_made = max(end[n]["height"] for n in end) - max(start[n]["height"] for n in start)
        sent = [end[n]["sent_bytes"] - start[n]["sent_bytes"] for n in end]
        rows.append(row("vote traffic per block per member", sum(sent) / len(sent) / max(1, blocks_made), "bytes",
                        "-", blocks=blocks_made))
        procs = [n.proc for n in nodes]
        mining = await _cpu_window(procs, CPU_WINDOW_S)
        os.kill(net.relay.pid, signal.SIGSTOP)  # no readings: nothing to mine, nothing to vote on
        try:
            await asyncio.sleep(1.0)
            idle = await _cpu_window(procs, CPU_WINDOW_S)
        finally:
            os.kill(net.relay.pid, signal.SIGCONT)
        rows.append(row("CPU per member, mining and voting (mean)", sum(mining) / len(mining), "% of a core", "-"))
        rows.append(row("CPU per member, idle (mean)", sum(idle) / len(idle), "% of a core", "-"))
        rows += await _proof_check(tmp, net)
    return rows


async def _proof_check(tmp: Path, net) -> list[dict]:
    from gridchain.cli.commands.proof import check_proof
    from gridchain.identity.network_file import load_network_file

    n0 = net.nodes["n0"]
    bundle = tmp / "bundle.json"
    block = (await o.main_chain(n0.port))[1]
    timestamp = o.Row.unpack(block.rows[0]).timestamp_ms
    made = await asyncio.to_thread(live.cli, "proof", "--node", live.node_arg(n0), "--relay", live.RELAY_ID,
                                   "--timestamp", str(timestamp), "--out", str(bundle))
    if made.returncode != 0:
        return [row("proof --check of a bundle (in-process)", None, "ms", "< 10", error=made.stderr)]
    doc, network = json.loads(bundle.read_text()), load_network_file(net.file)
    runs = 200
    started = time.perf_counter()
    for _ in range(runs):
        problems, facts = check_proof(doc, network)
    per = (time.perf_counter() - started) / runs * 1000
    assert not problems and facts["final"], problems
    started = time.perf_counter()
    await asyncio.to_thread(live.cli, "proof", "--check", str(bundle), "--network-file", str(net.file))
    wall = (time.perf_counter() - started) * 1000
    return [row("proof --check of a bundle (in-process)", per, "ms", "< 10"),
            row("proof --check, the whole CLI process", wall, "ms", "- (interpreter start)")]


def _built_chain(data_dir: Path, params: NetworkParams, keys: list[NodeKey]) -> None:
    """CHAIN_BLOCKS blocks, each finalized by a certificate of three members' votes."""
    now_ms = int(time.time() * 1000)
    ledger = Ledger.open(data_dir, params, now_ms)
    try:
        while ledger.height < CHAIN_BLOCKS:
            run = list(line(tip_of(ledger.chain, CHAIN_RELAY), min(500, CHAIN_BLOCKS - ledger.height), keys[0],
                            params.bits, relay_id=CHAIN_RELAY, substation="Bench Substation", miner_name="m0"))
            batch = ledger.add_blocks(run, now_ms)
            assert batch.error is None, batch.error
        chain = ledger.chain
        for height in range(1, CHAIN_BLOCKS + 1):
            source = Checkpoint(height - 1, chain.main_at(height - 1).hash)
            target = Checkpoint(height, chain.main_at(height).hash)
            votes = [sign_vote(k.sign, k.public_key, params, source, target) for k in keys[:3]]
            ledger.add_certificate(Certificate.from_votes(votes), now_ms)
    finally:
        ledger.close()


async def _sync(tmp: Path) -> list[dict]:
    seeds = [bytes([170 + i]) * 32 for i in range(4)]
    keys = [NodeKey.from_seed(seed) for seed in seeds]
    members = tuple(o.Member(f"m{i}", k.public_key) for i, k in enumerate(keys))
    network = o.Network("bench-finality-sync", 8, members, (o.RelayEntry(CHAIN_RELAY, "Bench Substation",
                                                                         RELAY_KEY.public_key),))
    file = network.write(tmp / "network.toml")
    params = NetworkParams(network.name, 8, members=frozenset(k.public_key for k in keys),
                           network_hash=network.network_hash(), member_names={m.key: m.name for m in members},
                           relays={CHAIN_RELAY: RelayInfo(RELAY_KEY.public_key, "Bench Substation")})
    for i, seed in enumerate(seeds[:2]):
        o.write_key_file(tmp / f"m{i}" / "node.key", Ed25519PrivateKey.from_private_bytes(seed))
    built = time.perf_counter()
    await asyncio.to_thread(_built_chain, tmp / "m0", params, keys)
    built = time.perf_counter() - built
    with Processes(tmp, network.name, 8) as procs:
        ports = [listen_port(), listen_port()]
        extra = ["--network-file", str(file), "--redial-max", "1"]
        source = procs.node("m0", port=ports[0], data_dir=tmp / "m0", extra=extra)
        await wait_status(source, answers, 30.0, "the source node to answer")
        fresh = procs.node("m1", port=ports[1], peers=[ports[0]], data_dir=tmp / "m1", extra=extra)
        await wait_status(fresh, lambda i: i["height"] >= CHAIN_BLOCKS, 120.0, "the fresh node to sync")
        await wait_status(fresh, lambda i: (i.get("finality") or {}).get("finalized_height", 0) >= CHAIN_BLOCKS - 1,
                          30.0, "the fresh node to take the finality certificates")
        events = fresh.events(("peer.connected", "sync.progress"))
        connected = next(e["t"] for e in events if e["event"] == "peer.connected")
        done = next(e["t"] for e in events if e["event"] == "sync.progress" and e["height"] >= CHAIN_BLOCKS)
        await procs.stop_all()
    seconds = done - connected
    return [row(f"fresh member syncs {CHAIN_BLOCKS} finalized blocks with certificates", CHAIN_BLOCKS / seconds,
                "blocks/s", ">= 3000", seconds=round(seconds, 3), build_s=round(built, 1))]


def run() -> list[dict]:
    rows = []
    with workdir("bench-finality-live") as tmp:
        rows += asyncio.run(_live(tmp))
    with workdir("bench-finality-sync") as tmp:
        rows += asyncio.run(_sync(tmp))
    return rows


if __name__ == "__main__":
    run_alone(run, RESULTS)
