"""The node's status report (``gridchain status``): one map of plain values. Pure.

Built from the parts the node is made of, with the time as an argument; the operator API
sends it as it is (gridchain.api.messages.Status). docs/operations.md explains each field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gridchain.consensus.block import short_hash
from gridchain.consensus.chain import ChainEntry
from gridchain.net.peer import Peer


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What never changes while a node runs."""

    network: str
    name: str
    node_key: bytes
    genesis_hash: bytes
    difficulty: int
    capture_interval_s: float
    started_at: float  # monotonic


def peer_rows(peers: Iterable[Peer], now: float) -> list[dict]:
    """One row per ready peer; ``state`` is ``stale`` while its pong is overdue (the link may be dead)."""
    return [{"address": p.listen_address, "node_key": p.node_key.hex(), "name": p.hello.name if p.hello else "",
             "state": p.link_state(now), "inbound": p.inbound, "height": p.height, "tip": short_hash(p.tip) if p.tip else ""}
            for p in peers]


def build_status(facts: NodeFacts, *, now: float, port: int, tip: ChainEntry, peers: Iterable[Peer],
                 relays: list[dict], mining: bool, orphans: int, syncing: bool, loop_lag_ms: dict,
                 finality: dict | None = None, alerts: list[dict] | None = None,
                 clock: dict | None = None) -> dict:
    """``finality``: the voter's report (gridchain.node.voter.Voter.status), None on an open network;
    ``alerts``: the active alerts (gridchain.web.alerts.Alert.as_dict), critical first; ``clock``:
    whether this node's own clock looks off (gridchain.node.clock.ClockWatch.status)."""
    return {
        "network": facts.network, "name": facts.name, "node_key": facts.node_key.hex(),
        "port": port, "height": tip.height, "tip": tip.hash.hex(), "work": tip.work,
        "genesis": facts.genesis_hash.hex(), "difficulty": facts.difficulty,
        "peers": peer_rows(peers, now), "relays": relays,
        "mining": "busy" if mining else "idle", "orphans": orphans,
        "syncing": syncing, "uptime_s": round(now - facts.started_at, 3),
        "loop_lag_ms": loop_lag_ms, "capture_interval_s": facts.capture_interval_s,
        "finality": finality,
        "alerts": list(alerts or ()), "clock": clock or {"state": "ok"},
    }
