"""The node's status report (``gridchain status``): one map of plain values. Pure.

Built from the parts the node is made of, with the time as an argument; the operator API
sends it as it is (gridchain.api.messages.Status). docs/operations.md explains each field.

``peers`` lists the ready links, whoever dialled; ``configured_peers`` lists every peer the
node was told to keep connected to, up or down (as ``bitcoin-cli getaddednodeinfo`` does),
with since when it is in its state: ``ConfiguredPeerBook`` remembers that, fed the ready
links whenever one comes or goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from gridchain.consensus.block import short_hash
from gridchain.consensus.chain import ChainEntry
from gridchain.net.dialer import linked_peer
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


# --- configured peers ---------------------------------------------------------------------------
def configured_links(configured: Iterable[object], peers: Iterable[Peer]) -> dict[str, Peer | None]:
    """Each configured address (``Address`` or text) and its ready link, None when it has none."""
    ready = list(peers)
    return {str(address): linked_peer(str(address), ready) for address in configured}


@dataclass(frozen=True, slots=True)
class PeerLinkState:
    """One configured peer's link as last seen: up or not since ``since`` (monotonic seconds).

    ``name`` and ``node_key`` are those of its newest link (kept while it is down; empty if it
    never linked); ``ended`` is when its last link went away (None: never, or up now)."""

    connected: bool
    since: float
    ended: float | None = None
    name: str = ""
    node_key: bytes = b""


class ConfiguredPeerBook:
    """The configured peers' link states and since when each holds. Pure: fed the ready links
    (``configured_links``) and the time; a state begins at the first look that sees it."""

    def __init__(self, addresses: Iterable[object], now: float) -> None:
        # Until a link is up, a peer has been down since the node started.
        self._states = {str(address): PeerLinkState(False, now) for address in addresses}

    def observe(self, links: Mapping[str, Peer | None], now: float) -> None:
        for address, peer in links.items():
            old = self._states.get(address) or PeerLinkState(False, now)
            if peer is not None:
                since = old.since if old.connected else now
                name = peer.hello.name if peer.hello else ""
                self._states[address] = PeerLinkState(True, since, None, name, peer.node_key)
            elif old.connected:
                self._states[address] = replace(old, connected=False, since=now, ended=now)

    def connected(self) -> dict[str, bool]:
        return {address: state.connected for address, state in self._states.items()}

    def rows(self, now: float) -> list[dict]:
        return configured_peer_rows(self._states, now)


def configured_peer_rows(states: Mapping[str, PeerLinkState], now: float) -> list[dict]:
    """``status["configured_peers"]``, sorted by address: ``since_s`` is how long the peer has been
    in its state; ``last_connected_s_ago`` is 0 while it is connected, None if it never was."""
    rows = []
    for address, state in sorted(states.items()):
        last = 0.0 if state.connected else (None if state.ended is None else _seconds(now - state.ended))
        rows.append({"address": address, "connected": state.connected, "name": state.name,
                     "node_key": state.node_key.hex(), "since_s": _seconds(now - state.since),
                     "last_connected_s_ago": last})
    return rows


def _seconds(elapsed: float) -> float:
    return round(max(0.0, elapsed), 3)  # never negative: a look just after ``now`` started a state


# --- the report -----------------------------------------------------------------------------------
def build_status(facts: NodeFacts, *, now: float, port: int, tip: ChainEntry, peers: Iterable[Peer],
                 relays: list[dict], mining: bool, orphans: int, syncing: bool, loop_lag_ms: dict,
                 finality: dict | None = None, alerts: list[dict] | None = None,
                 clock: dict | None = None, configured_peers: list[dict] | None = None) -> dict:
    """``finality``: the voter's report (gridchain.node.voter.Voter.status), None on an open network;
    ``alerts``: the active alerts (gridchain.web.alerts.Alert.as_dict), critical first; ``clock``:
    whether this node's own clock looks off (gridchain.node.clock.ClockWatch.status);
    ``configured_peers``: ``ConfiguredPeerBook.rows``."""
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
        "configured_peers": list(configured_peers or ()),
    }
