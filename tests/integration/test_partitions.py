"""Partitions: four gridchaind processes whose every link runs through a fault-injecting proxy.

The network is split 2|2, then 1|3, while both sides keep mining from the same relay; each
split is healed and the nodes must agree on one tip within HEAL_BOUND_S. A third phase makes
every link slow and flaky (delay, and connections dropped at random) instead of cut. At the
end the relay's feed is frozen, the nodes settle on one tip and stop cleanly, every store
audits clean, and the readings are all there: on one main chain, none twice, no gap in the
relay's ticks, and every reading any side ever put in a block is on it.
"""

from __future__ import annotations

import asyncio
import random
import time

from tests.support.cluster import Cluster, schedule_seed
from tests.support.wait import wait_until

NODES = 4
CAPTURE_INTERVAL_S = 0.2
RELAY_INTERVAL_S = 0.1
DIFFICULTY = 12
SPLIT_S = 3.0  # both sides mine this long apart: ~10-15 blocks each
# After a heal: the next redial of a cut link (at most cluster.REDIAL_MAX_S), a handshake,
# one sync of a few dozen blocks, and the next block to break a tie of equal-work tips.
# Measured under 2 s; 15 s is the stated bound.
HEAL_BOUND_S = 15.0
FLAKY_DELAY_S = 0.05
FLAKY_DROP = 0.03  # chance per forwarded chunk that its connection is reset


async def test_splits_heal_to_one_tip_without_losing_or_duplicating_readings(tmp_path):
    seed = schedule_seed("GRIDCHAIN_PARTITION_SEED")
    rng = random.Random(seed)
    cluster = Cluster(tmp_path, NODES, capture_interval_s=CAPTURE_INTERVAL_S, relay_interval_s=RELAY_INTERVAL_S,
                      difficulty=DIFFICULTY, proxied=True, seed=seed % 1000)
    heal_times: dict[str, float] = {}
    try:
        await cluster.start()
        await wait_until(lambda: _all_peered(cluster), 15, what="a full mesh")
        await cluster.wait_converged(10)
        lonely = rng.randrange(NODES)
        splits = {"2|2": ({0, 1}, {2, 3}), "1|3": ({lonely}, set(range(NODES)) - {lonely})}
        for name, sides in splits.items():
            # Inside each side the links stay up but slow, and now and then drop.
            for proxy in cluster.links.values():
                proxy.set_faults(delay_s=rng.choice((0.0, FLAKY_DELAY_S)), drop_probability=FLAKY_DROP / 3)
            await _split(cluster, sides)
            heal_times[name] = await _heal(cluster)
        for proxy in cluster.links.values():  # no cut: every link slow and flaky for a while
            proxy.set_faults(delay_s=FLAKY_DELAY_S, drop_probability=FLAKY_DROP)
        await asyncio.sleep(SPLIT_S)
        heal_times["flaky"] = await _heal(cluster)
        drops = sum(p.drops for p in cluster.links.values())
        print(f"one tip after heal (s): {({k: round(v, 2) for k, v in heal_times.items()})}; "
              f"bound {HEAL_BOUND_S} s; {drops} connections dropped by the proxies")

        took = await cluster.settle(HEAL_BOUND_S)
        print(f"one tip {took:.2f} s after freezing the relay ({cluster.tie_breaks} equal-work tie(s) broken)")
        snapshots, readings = await cluster.close_and_check()
        side_blocks = max(s.blocks for s in snapshots) - len(snapshots[0].main)
        print(f"final height {len(snapshots[0].main) - 1}, {len(readings)} readings, "
              f"{side_blocks} blocks off the main chain in the biggest store")
        assert side_blocks > 0, "the splits left no losing branch: the test proved nothing"
    finally:
        await cluster.abort()


async def _split(cluster: Cluster, sides: tuple[set[int], set[int]]) -> None:
    """Cut the links between the sides and wait until both sides have mined their own blocks."""
    before = [info["height"] for info in await cluster.statuses()]
    cluster.partition(*sides)
    await asyncio.sleep(SPLIT_S)
    infos = await cluster.statuses()
    assert all(info is not None for info in infos), "a node stopped answering during the split"
    for side in sides:
        assert all(infos[i]["height"] > before[i] for i in side), f"side {sorted(side)} did not mine"
    tips = [{infos[i]["tip"] for i in side} for side in sides]
    assert not tips[0] & tips[1], f"the sides {sides} share a tip: the split did not split"


async def _heal(cluster: Cluster) -> float:
    """Heal every link; seconds until every node reports one tip (the relay still feeding)."""
    cluster.heal()
    started = time.monotonic()
    await cluster.wait_converged(HEAL_BOUND_S)
    return time.monotonic() - started


async def _all_peered(cluster: Cluster) -> bool:
    infos = await cluster.statuses()
    return all(info is not None and len(info["peers"]) == NODES - 1 for info in infos)
