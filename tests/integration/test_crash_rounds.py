"""Crash and restart: gridchaind processes SIGKILLed at random moments, round after round.

Four nodes mine from one fast relay while, for CRASH_ROUNDS rounds, a random node is killed
with SIGKILL and restarted: at a random moment, just as it starts mining a capture, two nodes
at once, or once and then again while it restarts and catches up. Then the relay's feed is
frozen and the network must settle on one tip (Cluster.settle), every node must stop cleanly
on SIGTERM, and the stores must show that nothing was lost:

* every store passes the full audit (every block, every reading row, the main table);
* every block a node logged as mined or accepted (it logs only after the commit) is in its
  store: a SIGKILL never takes back a committed block;
* the nodes hold one main chain with no reading twice and no gap in the relay's ticks, and
  every reading of every stored block, side branches included, is on it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from tests.support.cluster import Cluster, schedule_seed
from tests.support.wait import wait_until

NODES = 4
CRASH_ROUNDS = 20  # the issue asks for at least 20
CAPTURE_INTERVAL_S = 0.2
RELAY_INTERVAL_S = 0.1
# The default difficulty: 65,536 hashes, ~20 ms of mining a block, long enough that a kill
# timed on "capture.new" lands while mining or committing.
DIFFICULTY = 16
# With every node up again, the relay still running and blocks every ~0.1 s, one tip takes a
# sync round trip; 20 s is far past it, and it is only the failure bound.
CONVERGE_S = 20.0
SETTLE_S = 1.5


async def test_sigkill_rounds_lose_no_committed_block_or_reading(tmp_path):
    seed = schedule_seed("GRIDCHAIN_CRASH_SEED")
    rng = random.Random(seed)
    cluster = Cluster(tmp_path, NODES, capture_interval_s=CAPTURE_INTERVAL_S, relay_interval_s=RELAY_INTERVAL_S,
                      difficulty=DIFFICULTY, seed=seed % 1000)
    try:
        await cluster.start()
        await wait_until(lambda: _min_height(cluster, 3), 20, what="height 3 everywhere")
        kills = []
        for round_no in range(CRASH_ROUNDS):
            victims, moment = _choose(rng)
            await asyncio.sleep(rng.uniform(0.05, 0.7))
            if moment == "mid-mining":
                # Strike as a capture starts: mining, then the store commit, follow at once.
                event = await cluster.next_event(victims[0], ("capture.new",), 3.0)
                moment = "mid-mining" if event else "random"
            kills.append((round_no, moment, await _kill(cluster, victims)))
            if moment == "and-again":
                # Kill it again while it restarts: opening the store, dialling, syncing, mining.
                await asyncio.sleep(rng.uniform(0.0, 0.8))
                cluster.spawn(victims[0])
                await asyncio.sleep(rng.uniform(0.05, 1.0))
                kills.append((round_no, "restarting", await _kill(cluster, victims)))
            await asyncio.sleep(rng.uniform(0.0, 0.8))  # down a while: others mine on, it must sync
            for victim in victims:
                await cluster.restart(victim)
        print("kills (round, when, nodes):", *kills, sep="\n  ")
        print("last event each killed run logged:", dict(last_words(cluster)))
        await asyncio.sleep(SETTLE_S)  # relay feeding, every node up: what the kills left behind is mined
        live = await cluster.wait_converged(CONVERGE_S)  # one tip with the relay still feeding
        took = await cluster.settle(CONVERGE_S)
        print(f"one tip {live:.2f} s after the last restart (relay feeding); {took:.2f} s after freezing "
              f"the relay, {cluster.tie_breaks} equal-work tie(s) broken by one more batch of readings")
        snapshots, readings = await cluster.close_and_check()
        for i in range(NODES):
            # A sync batch logs the tip it reached (sync.progress), a pushed or mined block itself.
            logged = {e["hash"] for e in cluster.events(i, ("block.mined", "block.accepted", "sync.progress"))}
            stored = {h.hex()[:12] for h in snapshots[i].hashes}
            assert logged <= stored, f"n{i} logged {len(logged - stored)} committed block(s) its store lacks"
        starts = [n.starts for n in cluster.nodes]
        print(f"final height {len(snapshots[0].main) - 1}, {len(readings)} readings, "
              f"{max(s.blocks for s in snapshots)} blocks in the biggest store, starts per node {starts}")
        assert len(kills) >= CRASH_ROUNDS
    finally:
        await cluster.abort()


def _choose(rng: random.Random) -> tuple[list[int], str]:
    """Who dies this round: one node as it starts mining, one node and again while it restarts
    and catches up, two nodes at once, or one node at any moment."""
    roll = rng.random()
    if roll < 0.3:
        return [rng.randrange(NODES)], "mid-mining"
    if roll < 0.6:
        return [rng.randrange(NODES)], "and-again"
    if roll < 0.75:
        return rng.sample(range(NODES), 2), "two-at-once"
    return [rng.randrange(NODES)], "random"


async def _kill(cluster: Cluster, victims: list[int]) -> list[str]:
    for victim in victims:
        await cluster.kill(victim)
    return [f"n{v}" for v in victims]


def last_words(cluster: Cluster) -> Counter:
    """How each killed run of a node ended: the last event it logged before SIGKILL.

    "capture.new" last means the kill landed while mining (or committing) that capture;
    "peer.connected" or "sync.*", while catching up. Runs killed before they logged
    anything (still starting the interpreter) do not show.
    """
    ends: Counter = Counter()
    for i in range(cluster.count):
        runs: list[list[str]] = []
        for event in cluster.events(i):
            if event.get("event") == "node.started" or not runs:
                runs.append([])
            runs[-1].append(event.get("event", ""))
        for run in runs:
            if "node.stopped" not in run:
                ends[run[-1]] += 1
    return ends


async def _min_height(cluster: Cluster, height: int) -> bool:
    infos = await cluster.statuses()
    return all(info is not None and info["height"] >= height for info in infos)
