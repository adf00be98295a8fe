"""Soak (``make soak``): four gridchaind processes under random kills, restarts and partitions.

For GRIDCHAIN_SOAK_SECONDS (default 600) four nodes capture from one relay every second while
episodes follow one another at random: a node SIGKILLed and restarted after a while; a 2|2
or 1|3 partition held for several seconds (sometimes with a kill on one side); every link
slow and flaky; a quiet spell. Node n0 is never killed, so one process lives through the
whole soak and its memory says whether anything grows without bound.

After every episode (links healed, every node up) the nodes must agree on one tip within
HEAL_BOUND_S. Every CHECK_EVERY_S the stores are checked on the running network too: each
audits clean (read-only snapshots; the nodes keep writing), they agree on their main chain
but for its newest blocks, no reading is on a main chain twice, none of the relay's ticks is
skipped, and no reading any block ever held is missing below a chain's newest. At the end
the relay's feed is frozen, the nodes settle and stop cleanly, and the same checks run in
full on the stopped stores.

Nodes run the real CLI with a redial cap of cluster.REDIAL_MAX_S, so a healed link comes
back within a few seconds: HEAL_BOUND_S allows for it with room. Each node's RSS is sampled at the start, at
every check and at the end; they are printed and written to soak-report.json in the test's
tmp dir (and to GRIDCHAIN_SOAK_REPORT if set).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, check_readings, common_prefix, schedule_seed

SOAK_SECONDS = float(os.environ.get("GRIDCHAIN_SOAK_SECONDS", "600"))
NODES = 4
CAPTURE_INTERVAL_S = 1.0  # the soak rate
RELAY_INTERVAL_S = 0.5
DIFFICULTY = 16  # the default: ~20 ms of mining a block
CHECK_EVERY_S = 60.0
# A heal waits for the slowest dialler's backoff (cluster.REDIAL_MAX_S, with up to 20 %
# jitter), then a handshake, a sync, and a block to break an equal-work tie; 20 s covers it
# with room for a loaded machine.
HEAL_BOUND_S = 20.0
WARMUP_S = 10.0  # imports done, caches warm, a few blocks in: the RSS baseline
REORG_MARGIN = 10  # newest main-chain blocks the stores may still disagree on at a live check
KB_PER_MB = 1024
RSS_SLACK_KB = 20 * KB_PER_MB  # the "generous" allowance over 1.5x the start
LONG_LIVED = 0  # never killed: its RSS spans the whole soak


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 900)
async def test_soak_kills_restarts_partitions(tmp_path):
    print(f"soak {SOAK_SECONDS:.0f} s")
    seed = schedule_seed("GRIDCHAIN_SOAK_SEED")
    rng = random.Random(seed)
    cluster = Cluster(tmp_path, NODES, capture_interval_s=CAPTURE_INTERVAL_S, relay_interval_s=RELAY_INTERVAL_S,
                      difficulty=DIFFICULTY, proxied=True, seed=seed % 1000)
    rss: list[dict] = []
    recoveries: dict[str, list[float]] = {}  # episode kind -> seconds to one tip afterwards
    started = time.monotonic()
    try:
        await cluster.start()
        await cluster.wait_converged(HEAL_BOUND_S)
        await asyncio.sleep(WARMUP_S)
        rss.append(await _rss_sample(cluster, started, "start"))
        print(f"rss kB at start {rss[0]['kb']}")
        deadline = time.monotonic() + SOAK_SECONDS
        next_check = time.monotonic() + CHECK_EVERY_S
        while time.monotonic() < deadline:
            kind, name = await _episode(cluster, rng, min(deadline, next_check))
            took = await cluster.wait_converged(HEAL_BOUND_S)
            recoveries.setdefault(kind, []).append(took)
            print(f"[{time.monotonic() - started:6.0f} s] {name}: one tip {took:.2f} s later")
            if time.monotonic() >= next_check:
                await _check_live(cluster)
                rss.append(await _rss_sample(cluster, started, "check"))
                print(f"[{time.monotonic() - started:6.0f} s] stores check out; rss kB {rss[-1]['kb']}, "
                      f"orphans {rss[-1]['orphans']}")
                next_check = time.monotonic() + CHECK_EVERY_S

        rss.append(await _rss_sample(cluster, started, "end"))
        await _check_live(cluster)
        settled = await cluster.settle(HEAL_BOUND_S)
        snapshots, readings = await cluster.close_and_check()
        summary = {
            "soak_seconds": SOAK_SECONDS, "seed": seed, "starts": [n.starts for n in cluster.nodes],
            "one_tip_after_episode_s": {kind: {"count": len(times), "median": round(statistics.median(times), 2),
                                               "max": round(max(times), 2)} for kind, times in recoveries.items()},
            "settled_after_freeze_s": round(settled, 2), "tie_breaks": cluster.tie_breaks,
            "final_height": len(snapshots[0].main) - 1, "readings": len(readings),
            "blocks_stored": [s.blocks for s in snapshots],
            "rss_start_kb": rss[0]["kb"], "rss_end_kb": rss[-1]["kb"], "rss_samples": rss,
        }
        _report(tmp_path, summary)
        _assert_flat(rss[0], rss[-1])
    finally:
        await cluster.abort()


async def _episode(cluster: Cluster, rng: random.Random, until: float) -> tuple[str, str]:
    """One random trouble, over by ``until`` (monotonic) or soon after; (kind, description).

    Every episode ends with every link healed and every node running.
    """
    left = max(0.0, until - time.monotonic())
    roll = rng.random()
    victims = [i for i in range(NODES) if i != LONG_LIVED]
    if roll < 0.35:  # a crash: SIGKILL, down a while, restart
        victim = rng.choice(victims)
        down = min(left, rng.uniform(0.0, 6.0))
        await cluster.kill(victim)
        await asyncio.sleep(down)
        await cluster.restart(victim)
        return "kill", f"n{victim} killed, restarted after {down:.1f} s"
    if roll < 0.7:  # a partition, sometimes with a crash on one side
        lonely = rng.randrange(NODES)
        sides = rng.choice([({0, 1}, {2, 3}), ({0, 2}, {1, 3}), ({lonely}, set(range(NODES)) - {lonely})])
        hold = min(left, rng.uniform(5.0, 15.0))
        name = f"split {sorted(sides[0])}|{sorted(sides[1])} for {hold:.0f} s"
        cluster.partition(*sides)
        if rng.random() < 0.4:
            victim = rng.choice(victims)
            await asyncio.sleep(hold / 3)
            await cluster.kill(victim)
            await asyncio.sleep(hold / 3)
            await cluster.restart(victim)
            await asyncio.sleep(hold / 3)
            name += f", n{victim} killed inside"
        else:
            await asyncio.sleep(hold)
        cluster.heal()
        return "split", name
    if roll < 0.85:  # every link slow and flaky, none cut
        delay, drop = rng.choice((0.0, 0.05, 0.2)), rng.choice((0.0, 0.02, 0.05))
        for proxy in cluster.links.values():
            proxy.set_faults(delay_s=delay, drop_probability=drop)
        await asyncio.sleep(min(left, rng.uniform(5.0, 10.0)))
        cluster.heal()
        return "flaky", f"links delayed {delay} s, dropping {drop:.0%} of chunks"
    quiet = min(left, rng.uniform(2.0, 5.0))
    await asyncio.sleep(quiet)
    return "quiet", f"quiet for {quiet:.0f} s"


async def _check_live(cluster: Cluster) -> None:
    """The invariants on running nodes, from read-only snapshots of their stores (in a thread,
    so the relay and the proxies in this loop keep serving)."""
    for i in range(NODES):
        report = await asyncio.to_thread(cluster.audit, i)
        assert report.ok, f"n{i} store audit while running: {report.problems[:5]}"
    snapshots = [await asyncio.to_thread(cluster.snapshot, i) for i in range(NODES)]
    agreed = common_prefix(snapshots)
    shortest = min(len(s.main) for s in snapshots)
    assert agreed >= shortest - REORG_MARGIN, f"the stores disagree below their newest {REORG_MARGIN} blocks"
    check_readings(snapshots, cluster.relay_interval_ms, final=False)


async def _rss_sample(cluster: Cluster, started: float, when: str) -> dict:
    """Each node's RSS, with what it holds that could explain growth: blocks and orphans."""
    infos = await cluster.statuses()
    return {"when": when, "at_s": round(time.monotonic() - started, 1), "kb": cluster.rss(),
            "pids": {f"n{n.index}": n.proc.pid for n in cluster.nodes if n.running},
            "height": {f"n{i}": info and info["height"] for i, info in enumerate(infos)},
            "orphans": {f"n{i}": info and info["orphans"] for i, info in enumerate(infos)}}


def _report(tmp_path: Path, summary: dict) -> None:
    text = json.dumps(summary, indent=2)
    (tmp_path / "soak-report.json").write_text(text)
    extra = os.environ.get("GRIDCHAIN_SOAK_REPORT")
    if extra:
        Path(extra).write_text(text)
    print(f"soak report ({tmp_path / 'soak-report.json'}):")
    print(json.dumps({k: v for k, v in summary.items() if k != "rss_samples"}, indent=2))


def _assert_flat(start: dict, end: dict) -> None:
    """Each node's RSS at the end within 1.5x its start plus 20 MB. A node restarted since the
    start is a new process, so its comparison is lenient; n0's is the one that spans the soak."""
    assert start["pids"][f"n{LONG_LIVED}"] == end["pids"][f"n{LONG_LIVED}"], "the long-lived node was restarted"
    for name, begin in start["kb"].items():
        finish = end["kb"].get(name)
        assert begin is not None and finish is not None, f"{name} was not running at a sample"
        assert finish <= begin * 1.5 + RSS_SLACK_KB, f"{name} RSS grew from {begin} kB to {finish} kB"
