"""Finality on live nodes: latency from a block mined to finalized on every member, vote
traffic, CPU per member idle and mining, sync of a fresh node with certificates, proof checks.

Real processes on 127.0.0.1 (a relay and member nodes on one network file, as
tests/integration/test_finality_live.py starts them); timings come from the JSON log lines
of every process (one machine, one clock).

- **Latency.** With a checkpoint every block, block ``h`` is finalized by the link
  ``h -> h+1``: one round of votes after the *next* block. Two numbers: ``round`` is from
  block ``h+1`` mined to ``h`` finalized on every member (what finality itself costs: the
  votes' validate-sign-write-send-count round); ``block`` is from ``h`` mined to ``h``
  finalized everywhere (adds the wait for the next block, i.e. the block interval). The p99
  row says how many rounds had a rival block at ``h+1`` (two members mining the same readings
  at once): votes split between rivals may leave neither a quorum, and ``h`` is then
  finalized a block later, so the tail is the block interval, not the vote round.
- **Sixteen members** (quorum 11), in bench_scale's layout of sixteen nodes (3-4 peers
  each, votes relayed over up to four hops): the same round latency, split into "to the
  11th member's vote written" and "from there to finalized on all" (``_where_the_time_goes``).
  Sixteen interpreters on a small machine: the round is bound by the CPU all of them spend
  on it (every member checks, counts and stores sixteen votes a block), so this row says
  as much about the host as about the protocol.
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
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
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
from tests.support.ports import free_port, listen_port
from tests.support.processes import Processes, answers, wait_status

RESULTS = Path(__file__).with_name("results_finality_live.json")
RUN_S = 10.0 if QUICK else 25.0  # of mining with four members: ~3 blocks a second
# Sixteen members (quorum 11) laid out as bench_scale's sixteen nodes: two rings of eight with
# chords, four bridges between them, 3-4 peers each (members peer with the --peer addresses
# their operators give; the network file's member addresses are not dialled).
SIXTEEN = 16
SIXTEEN_RUN_S = 20.0 if QUICK else 40.0
# Each member captures every 8 s, so the sixteen capture every half second between them: about
# two blocks a second, rounds of votes that rarely overlap, and few competing blocks (each
# capture's block reaches the rest in tens of milliseconds). Cheap mining: 8 bits.
SIXTEEN_CAPTURE_S = 8.0
SIXTEEN_RELAY_S = 0.1
SIXTEEN_READY_S = 90.0  # sixteen interpreters starting on two cores
SIXTEEN_FINALITY_S = 60.0
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


def _raced(nodes, rounds: dict[int, float]) -> dict[str, object]:
    """The rounds whose block ``h+1`` had a rival at its height (members mining the same
    readings at once): votes split between the two may leave no quorum for either, and ``h``
    is then finalized one block later. Their count, and the p99 of the other rounds."""
    per_height: dict[int, set[str]] = {}
    for node in nodes:
        for e in node.events(["block.mined"]):
            per_height.setdefault(e["height"], set()).add(e["hash"])
    raced = {h for h in rounds if len(per_height.get(h + 1, ())) > 1}
    alone = [ms for h, ms in rounds.items() if h not in raced and ms >= 0]
    return {"rounds_with_a_rival_block": len(raced), "p99_without_rival": round(percentile(alone, 0.99), 1),
            "over_250ms_with_rival": sum(1 for h in raced if rounds[h] > 250),
            "over_250ms_without": sum(1 for ms in alone if ms > 250)}


def _latencies_by_height(nodes, main: set[str]) -> tuple[dict[int, float], list[float]]:
    """(round latency by height ``h``, block latencies) in ms over the main-chain blocks
    (``main``: short hashes) every member finalized (module docstring)."""
    mined = {}
    for node in nodes:
        for e in node.events(["block.mined"]):
            if e["hash"] in main:
                mined.setdefault(e["height"], []).append((e["t"], e["hash"]))
    finals = {node.name: [(e["height"], e["t"]) for e in node.events(["finality.finalized"])] for node in nodes}

    def final_at(name: str, height: int) -> float | None:
        return next((t for h, t in finals[name] if h >= height), None)

    rounds: dict[int, float] = {}
    blocks = []
    top = min(max((h for h, _ in f), default=0) for f in finals.values())
    for height in range(2, top):
        times = [final_at(node.name, height) for node in nodes]
        if None in times or height not in mined or height + 1 not in mined:
            continue
        done = max(times)
        blocks.append(1000 * (done - min(t for t, _ in mined[height])))
        rounds[height] = 1000 * (done - min(t for t, _ in mined[height + 1]))
    return rounds, blocks


async def _live(tmp: Path) -> list[dict]:
    rows = []
    async with live.network(tmp) as net:
        nodes = list(net.nodes.values())
        await live.wait_finalized(nodes, 3)
        start = {n.name: await live.finality(n) for n in nodes}
        await asyncio.sleep(RUN_S)
        end = {n.name: await live.finality(n) for n in nodes}
        main = {b.hash.hex()[:12] for b in await o.main_chain(nodes[0].port)}
        by_height, blocks = _latencies_by_height(nodes, main)
        rounds = [r for r in by_height.values() if r >= 0]
        rows.append(row("4 members: block h+1 mined -> h finalized on all, p50", percentile(rounds, 0.5), "ms",
                        "<= 50", samples=len(rounds)))
        rows.append(row("4 members: block h+1 mined -> h finalized on all, p99", percentile(rounds, 0.99), "ms",
                        "<= 150", samples=len(rounds), **_raced(nodes, by_height)))
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


@contextlib.asynccontextmanager
async def _sixteen_members(root: Path) -> AsyncIterator[list[live.Node]]:
    """A relay and sixteen member nodes on one network file, in bench_scale's layout."""
    from bench.bench_scale import BRIDGES, _links

    with Processes(root, "bench-finality-16", live.DIFFICULTY) as procs:
        relay_port, *ports = _distinct_ports(SIXTEEN + 1)
        procs.spawn("relay", relay_port, [
            "relay", "--port", str(relay_port), "--interval", f"{SIXTEEN_RELAY_S:g}", "--seed", "1",
            "--fault-probability", "0", "--relay-id", live.RELAY_ID, "--substation", live.SUBSTATION,
            "--data-dir", str(root / "relay"), "--log-format", "json"])
        info = await _relay_info(relay_port)
        links = _links() + list(BRIDGES)
        nodes = []
        for i in range(SIXTEEN):
            key = Ed25519PrivateKey.generate()
            o.write_key_file(root / f"m{i:02d}" / "node.key", key)
            dials = [ports[b] for a, b in links if a == i]
            nodes.append(live.Node(f"m{i:02d}", key, ports[i], root / f"m{i:02d}", dials))
        members = tuple(o.Member(n.name, n.public) for n in nodes)
        network = o.Network("bench-finality-16", live.DIFFICULTY, members,
                            (o.RelayEntry(live.RELAY_ID, live.SUBSTATION, info["relay_key"]),))
        file = network.write(root / "network.toml")
        for node in nodes:
            node.proc = procs.node(node.name, peers=node.dials, relays=[relay_port], port=node.port,
                                   capture_interval_s=SIXTEEN_CAPTURE_S, data_dir=node.data_dir,
                                   extra=["--network-file", str(file), "--redial-max", "1"])
        degree = [sum(i in link for link in links) for i in range(SIXTEEN)]
        await asyncio.gather(*(wait_status(n.proc, lambda st, d=d: len(st["peers"]) >= d, SIXTEEN_READY_S,
                                           f"{n.name} with {d} peers") for n, d in zip(nodes, degree)))
        try:
            yield nodes
        finally:
            await procs.stop_all()


def _distinct_ports(count: int) -> list[int]:
    """``count`` free ports none of which is another's operator port (+1000)."""
    taken: set[int] = set()
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if not {port, port + 1000} & taken:
            ports.append(port)
            taken |= {port, port + 1000}
    return ports


async def _relay_info(port: int) -> dict:
    deadline = time.monotonic() + 20.0
    while True:
        try:
            info = await o.relay_info(port)
            if info.get("newest_seq") is not None:
                return info
        except (OSError, TimeoutError, AssertionError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


def _where_the_time_goes(nodes, main: set[str], quorum: int) -> dict[str, float]:
    """p50s (ms) of the parts of a round, block ``h+1`` mined -> ``h`` finalized on all: to the
    ``quorum``-th member's vote for ``h+1`` written (the block's spread, its checks, the vote
    signed and synced), then to the last member's finalization (the votes' hops and counting)."""
    mined: dict[str, float] = {}
    for node in nodes:
        for e in node.events(["block.mined"]):
            if e["hash"] in main:
                mined[e["hash"]] = e["t"]
    votes: dict[str, list[float]] = {}
    for node in nodes:
        for e in node.events(["finality.vote_recorded"]):
            votes.setdefault(e["target_hash"][:12], []).append(e["t"])
    finals: dict[int, list[float]] = {}
    for node in nodes:
        for e in node.events(["finality.finalized"]):
            finals.setdefault(e["height"], []).append(e["t"])
    by_height = {}
    for node in nodes:
        for e in node.events(["block.mined"]):
            if e["hash"] in main:
                by_height[e["height"]] = e["hash"]
    to_quorum, to_all = [], []
    for height, block_hash in by_height.items():
        done = finals.get(height - 1, [])
        cast = sorted(votes.get(block_hash, []))
        if len(done) < len(nodes) or len(cast) < quorum:
            continue
        to_quorum.append(1000 * (cast[quorum - 1] - mined[block_hash]))
        to_all.append(1000 * (max(done) - cast[quorum - 1]))
    return {"to_quorum_vote_p50": round(percentile(to_quorum, 0.5), 1),
            "quorum_vote_to_all_final_p50": round(percentile(to_all, 0.5), 1), "rounds": len(to_all)}


async def _live_sixteen(tmp: Path) -> list[dict]:
    async with _sixteen_members(tmp) as nodes:
        await live.wait_finalized(nodes, 3, timeout=SIXTEEN_FINALITY_S)
        start = {n.name: await live.finality(n) for n in nodes}
        procs = [n.proc for n in nodes]
        cpu = await _cpu_window(procs, SIXTEEN_RUN_S)
        end = {n.name: await live.finality(n) for n in nodes}
        main = {b.hash.hex()[:12] for b in await o.main_chain(nodes[0].port)}
    by_height, blocks = _latencies_by_height(nodes, main)
    rounds = [r for r in by_height.values() if r >= 0]
    parts = _where_the_time_goes(nodes, main, end[nodes[0].name]["quorum"])
    blocks_made = max(e["height"] for e in end.values()) - max(s["height"] for s in start.values())
    sent = [end[n]["sent_bytes"] - start[n]["sent_bytes"] for n in end]
    return [
        row("16 members (11 of 16): block h+1 mined -> h finalized on all, p50", percentile(rounds, 0.5), "ms",
            "<= 200", samples=len(rounds), **parts),
        row("16 members: block h+1 mined -> h finalized on all, p99", percentile(rounds, 0.99), "ms", "-",
            samples=len(rounds), **_raced(nodes, by_height)),
        row("16 members: block h mined -> h finalized on all, p50", percentile(blocks, 0.5), "ms",
            "- (adds the block interval)", samples=len(blocks)),
        row("16 members: vote traffic per block per member", sum(sent) / len(sent) / max(1, blocks_made), "bytes",
            "-", blocks=blocks_made),
        row("16 members: CPU per member, mining and voting (mean)", sum(cpu) / len(cpu), "% of a core", "-"),
    ]


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
    with workdir("bench-finality-16") as tmp:
        rows += asyncio.run(_live_sixteen(tmp))
    with workdir("bench-finality-sync") as tmp:
        rows += asyncio.run(_sync(tmp))
    return rows


if __name__ == "__main__":
    run_alone(run, RESULTS)
