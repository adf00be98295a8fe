"""Scale benchmarks: cost as the chain grows, and sixteen nodes with a partition that heals.

Cost as work grows. One chain is built once (valid blocks at 8 bits, a minute of readings
each) and extended to each length in turn; at each length:
- adding one block: ``Ledger.add_block`` on a copy of the store, one durable commit each;
- one network update: four real nodes started on copies of the chain, in a full mesh and
  fed by a relay, mine on top of it; the time from ``block.mined`` until the block is held
  by all three peers (the prototype re-sent whole chains, so its update cost grew with N);
- memory: each node's resident set once it runs at that length;
- sync: a fresh node pulling the whole chain from one of them, in blocks/s.

Sixteen nodes. Two halves of eight (a ring plus chords, three links each), joined by four
bridge links that run through fault-injecting proxies in this process (so every node has
3-4 peers). Measured: the time until all sixteen hold each new block, each node's memory and
CPU, then the halves are cut apart, mine on their own, and are joined again: the time
until every bridge link is back and until all sixteen agree on one tip.

    python -m bench scale
    BENCH_QUICK=1 python bench/bench_scale.py    # 1k/10k/20k, shorter windows
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import uvloop

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import (
    CHAIN_KEY_SEED, CHAIN_READINGS, KEEP, QUICK, build_chain, chain_blocks, copy_chain, guarded, percentile, row,
    run_alone, spread, sync_seconds, workdir,
)
from gridchain.consensus.params import NetworkParams
from gridchain.identity.keys import NodeKey
from gridchain.ledger.ledger import Ledger
from tests.support.ports import free_port
from tests.support.processes import Proc, Processes, status, statuses, wait_all, wait_status
from tests.support.proxy import FaultProxy
from tests.support.rss import cpu_seconds

RESULTS = Path(__file__).with_name("results_scale.json")
READY_S = 60.0  # four nodes opening a 100,000-block store on two cores take a few seconds
WARMUP_S = 1.0  # captures raced before the mesh was up are not measured
SETTLE_S = 1.5  # after a window, time for its last blocks to reach everyone

# Cost as work grows.
GROWTH_NETWORK = "bench-scale"
GROWTH_BITS = 8  # 256 hashes a block: 100,000 blocks build in seconds, and the work is still checked
LENGTHS = (1_000, 10_000, 20_000) if QUICK else (1_000, 10_000, 100_000)
ADD_BLOCKS = 300  # single-block commits timed at each length
UPDATE_BLOCKS = 20 if QUICK else 60  # blocks mined on top at each length, each seen by three peers
UPDATE_TIMEOUT_S = 90.0
SYNC_TIMEOUT_S = 180.0
GROWTH_NODES = 4

# Sixteen nodes.
MESH_NETWORK = "bench-sixteen"
MESH_BITS = 12  # ~1 ms of mining, as in the four-node propagation benchmark
HALF = 8
BRIDGES = ((0, 8), (2, 10), (4, 12), (6, 14))  # dialled from the first node through a proxy
MESH_RELAY_S = 0.5  # two readings a second: quiet gaps between blocks in which tips can agree
MESH_CAPTURE_S = 0.25
MESH_BLOCKS = 30 if QUICK else 100
PARTITION_S = 5.0 if QUICK else 10.0
CONVERGE_TIMEOUT_S = 90.0  # above the 30 s redial cap, so a slow heal is measured, not cut off


def run() -> list[dict]:
    rows: list[dict] = []
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rows += runner.run(guarded("cost as the chain grows", _growth))
        rows += runner.run(guarded("sixteen nodes", _sixteen))
    return rows


# --- cost as work grows -----------------------------------------------------------------------------
async def _growth() -> list[dict]:
    rows: list[dict] = []
    with workdir("bench-scale-") as root:
        base = root / "base"
        for length in LENGTHS:
            built_s = build_chain(base, GROWTH_NETWORK, GROWTH_BITS, length)
            add_ms = _add_block_ms(base, root / "add")
            measured = await _network_at(base, root / f"net-{length}", length)
            rows += _growth_rows(length, add_ms, measured, built_s)
    return rows


def _add_block_ms(base: Path, scratch: Path) -> list[float]:
    """Milliseconds of each of ADD_BLOCKS single-block Ledger.add_block calls on a copy of ``base``."""
    copy_chain(base, scratch)
    params = NetworkParams(GROWTH_NETWORK, GROWTH_BITS)
    now_ms = int(time.time() * 1000)
    ledger = Ledger.open(scratch, params, now_ms)
    try:
        blocks = list(chain_blocks(ledger, ADD_BLOCKS, NodeKey.from_seed(CHAIN_KEY_SEED), GROWTH_BITS))
        times = []
        for block in blocks:
            start = time.perf_counter()
            ledger.add_block(block, now_ms)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        ledger.close()
        shutil.rmtree(scratch)
    return times


async def _network_at(base: Path, root: Path, length: int) -> dict:
    """Four nodes on copies of ``base`` mine UPDATE_BLOCKS on top; then a fresh node syncs from one."""
    root.mkdir()
    ports = [free_port() for _ in range(GROWTH_NODES)]
    try:
        with Processes(root, GROWTH_NETWORK, GROWTH_BITS) as cluster:
            relay = cluster.relay(0.1)
            nodes = []
            for i, port in enumerate(ports):
                copy_chain(base, root / f"n{i}")
                nodes.append(cluster.node(f"n{i}", port=port, peers=[p for p in ports if p != port],
                                          relays=[relay.port], capture_interval_s=0.25))
            await wait_all(nodes, lambda s: s["height"] >= length and len(s["peers"]) == GROWTH_NODES - 1,
                           READY_S, f"four nodes at height {length:,}")
            await asyncio.sleep(WARMUP_S)
            start = time.time()
            base_height = max(s["height"] for s in await statuses(nodes) if s)
            await wait_status(nodes[0], lambda s: s["height"] >= base_height + UPDATE_BLOCKS, UPDATE_TIMEOUT_S,
                              f"{UPDATE_BLOCKS} blocks on top of {length:,}")
            end = time.time()
            await cluster.stop([relay])  # no new blocks: the fresh node syncs to a fixed tip
            await asyncio.sleep(SETTLE_S)
            rss = [n.rss_mb() for n in nodes]
            top = await wait_status(nodes[0], lambda s: True, READY_S, "the sync source")
            fresh = cluster.node("fresh", peers=[nodes[0].port])
            await wait_status(fresh, lambda s: s["height"] >= top["height"], SYNC_TIMEOUT_S,
                              f"a fresh node synced to {top['height']:,}")
            fresh_rss = fresh.rss_mb()
            await cluster.stop_all()
            seen = spread(nodes, start, end)
        sync_s = sync_seconds(fresh, top["height"])
    finally:
        if not KEEP:  # four copies of a long chain are worth freeing before the next length
            shutil.rmtree(root, ignore_errors=True)
    return {"seen": seen, "rss": rss, "fresh_rss": fresh_rss, "sync_blocks": top["height"], "sync_s": sync_s,
            "unclean": cluster.unclean}


def _growth_rows(length: int, add_ms: list[float], m: dict, built_s: float) -> list[dict]:
    at = f"at {length:,} blocks"
    to_all = m["seen"].to_all
    return [
        row(f"Ledger.add_block {at} (one durable commit), p50", percentile(add_ms, 0.5), "ms", "flat",
            p99=round(percentile(add_ms, 0.99), 3), blocks=len(add_ms)),
        row(f"network update {at}: mined -> held by all 3 peers, p50", percentile(to_all, 0.5), "ms", "flat",
            blocks=len(to_all), per_peer_p50=round(percentile(m["seen"].per_peer, 0.5), 3),
            never_arrived=m["seen"].missing, unclean_stops=m["unclean"]),
        row(f"network update {at}: mined -> held by all 3 peers, p99", percentile(to_all, 0.99), "ms", "flat"),
        row(f"node RSS {at}, largest of 4", max(m["rss"]), "MiB", "< 150" if length >= 100_000 else "-", digits=1,
            all=[round(r, 1) for r in m["rss"]], fresh_node_after_sync=round(m["fresh_rss"], 1)),
        row(f"sync of {m['sync_blocks']:,} blocks ({CHAIN_READINGS} signed readings each) into a fresh node",
            m["sync_blocks"] / m["sync_s"], "blocks/s", ">= 3000", digits=0, seconds=round(m["sync_s"], 3),
            chain_build_s=round(built_s, 1)),
    ]


# --- sixteen nodes ---------------------------------------------------------------------------------
def _links() -> list[tuple[int, int]]:
    """Links inside each half of eight: a ring plus the four chords across it (three per node)."""
    links = []
    for offset in (0, HALF):
        for i in range(HALF):
            links.append((offset + i, offset + (i + 1) % HALF))
        for i in range(HALF // 2):
            links.append((offset + i, offset + i + HALF // 2))
    return links


async def _sixteen() -> list[dict]:
    count = 2 * HALF
    links = _links()
    degree = [sum(i in link for link in links + list(BRIDGES)) for i in range(count)]
    ports = [free_port() for _ in range(count)]
    proxies = [await FaultProxy(ports[b]).start() for _, b in BRIDGES]
    try:
        with workdir("bench-sixteen-") as root, Processes(root, MESH_NETWORK, MESH_BITS) as cluster:
            relay = cluster.relay(MESH_RELAY_S)
            nodes = []
            for i in range(count):
                peers = [ports[b] for a, b in links if a == i]
                peers += [proxy.port for (a, _), proxy in zip(BRIDGES, proxies) if a == i]
                nodes.append(cluster.node(f"n{i:02d}", port=ports[i], peers=peers, relays=[relay.port],
                                          capture_interval_s=MESH_CAPTURE_S))
            await asyncio.gather(*(wait_status(n, lambda s, d=d: len(s["peers"]) >= d, READY_S,
                                               f"{n.name} with {d} peers") for n, d in zip(nodes, degree)))
            await asyncio.sleep(WARMUP_S)
            steady = await _steady(nodes)
            partition = await _partition(nodes, proxies)
            await cluster.stop_all()
            seen = spread(nodes, steady["start"], steady["end"])
    finally:
        for proxy in proxies:
            await proxy.close()
    return [
        row("16 nodes (3-4 peers each): new block held by all 16, p50", percentile(seen.to_all, 0.5), "ms",
            blocks=len(seen.to_all), never_arrived=seen.missing, unclean_stops=cluster.unclean),
        row("16 nodes: new block held by all 16, p99", percentile(seen.to_all, 0.99), "ms",
            max=round(max(seen.to_all), 3), per_peer_p50=round(percentile(seen.per_peer, 0.5), 3)),
        row("16 nodes: RSS per node, largest", max(steady["rss"]), "MiB", digits=1,
            median=round(percentile(steady["rss"], 0.5), 1)),
        row("16 nodes: CPU per node while mining, mean", steady["cpu_percent"], "% core", digits=1,
            seconds=round(steady["end"] - steady["start"], 1)),
        row(f"16 nodes: 8|8 partition ({PARTITION_S:g} s) healed -> first bridge link back", partition["first_back_s"],
            "s", heights_at_heal=partition["heights"], diverged=partition["diverged"]),
        row("16 nodes: 8|8 partition healed -> all 4 bridge links back", partition["all_back_s"], "s"),
        row("16 nodes: 8|8 partition healed -> all 16 on one tip", partition["converged_s"], "s",
            reorgs_after_heal=partition["reorgs"]),
    ]


async def _steady(nodes: list[Proc]) -> dict:
    """Mine MESH_BLOCKS with every link up; CPU and memory of each node over that window."""
    cpu_before = [cpu_seconds(n.pid) for n in nodes]
    start = time.time()
    base_height = max(s["height"] for s in await statuses(nodes) if s)
    await wait_status(nodes[0], lambda s: s["height"] >= base_height + MESH_BLOCKS, 180.0, f"{MESH_BLOCKS} blocks")
    end = time.time()
    cpu = [cpu_seconds(n.pid) - b for n, b in zip(nodes, cpu_before)]
    await asyncio.sleep(SETTLE_S)
    return {"start": start, "end": end, "rss": [n.rss_mb() for n in nodes],
            "cpu_percent": 100 * sum(cpu) / len(cpu) / (end - start)}


async def _partition(nodes: list[Proc], proxies: list[FaultProxy]) -> dict:
    """Cut the bridges for PARTITION_S with mining on both sides, heal, time the way back."""
    for proxy in proxies:
        proxy.cut()
    await asyncio.sleep(PARTITION_S)
    infos = await statuses(nodes)
    heights = {"first_half": max(s["height"] for s in infos[:HALF] if s),
               "second_half": max(s["height"] for s in infos[HALF:] if s)}
    # Each half moved on by itself: no tip of one half is a tip of the other.
    diverged = not {s["tip"] for s in infos[:HALF] if s} & {s["tip"] for s in infos[HALF:] if s}
    reorgs_before = sum(len(n.events(("chain.reorg",))) for n in nodes)
    healed = time.time()
    for proxy in proxies:
        proxy.heal()
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    converged = None
    while converged is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"16 nodes did not agree on one tip within {CONVERGE_TIMEOUT_S:g} s of the heal")
        infos = await statuses(nodes)
        tips = {s["tip"] for s in infos if s}
        if len(tips) == 1 and all(infos) and infos[0]["height"] >= max(heights.values()):
            converged = time.time() - healed
        else:
            await asyncio.sleep(0.02)
    while not all(await asyncio.gather(*(_linked(nodes[a], nodes[b].name) for a, b in BRIDGES))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"bridge links not back within {CONVERGE_TIMEOUT_S:g} s of the heal")
        await asyncio.sleep(0.1)
    back = [_connected_at(nodes[a], nodes[b].name, healed) - healed for a, b in BRIDGES]
    reorgs = sum(len(n.events(("chain.reorg",))) for n in nodes) - reorgs_before
    return {"heights": heights, "diverged": diverged, "converged_s": converged, "first_back_s": min(back),
            "all_back_s": max(back), "reorgs": reorgs}


async def _linked(node: Proc, peer_name: str) -> bool:
    info = await status(node.port)
    return info is not None and any(p.get("name") == peer_name for p in info["peers"])


def _connected_at(node: Proc, peer_name: str, after: float) -> float:
    """When ``node`` logged its first connection to ``peer_name`` after ``after``."""
    return min(e["t"] for e in node.events(("peer.connected",)) if e["t"] >= after and e.get("name") == peer_name)


def main() -> None:
    run_alone(run, RESULTS)


if __name__ == "__main__":
    main()
