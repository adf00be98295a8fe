"""`gridchain health`: exit 0 only when the node is peered and synced (a container healthcheck).

Healthy means: at least ``--min-peers`` peers (default 1) have finished the handshake
(state ``ready``), the node is not catching up, and its tip is the best tip its ready
peers report: no ready peer is higher, and at the same height one of them has the same
tip. A node ahead of every peer (it has just mined) is healthy; the peers follow within
milliseconds. Exit status 0 healthy, 1 not (one line saying why), 3 the node is not reachable.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from gridchain.api.client import NodeClient
from gridchain.cli.commands.output import dumps, plural

DEFAULT_MIN_PEERS = 1


@dataclass(frozen=True, slots=True)
class Health:
    """The verdict on one status report."""

    healthy: bool
    reason: str
    ready_peers: int
    height: int
    best_peer_height: int | None


def judge(info: dict, min_peers: int = DEFAULT_MIN_PEERS) -> Health:
    """Peered and synced? Pure: from a status report (gridchain.node.status.build_status)."""
    ready = [p for p in info.get("peers", []) if p.get("state") == "ready" and p.get("height") is not None]
    height = int(info.get("height", -1))
    tip = str(info.get("tip", ""))
    best = max((int(p["height"]) for p in ready), default=None)

    def verdict(ok: bool, reason: str) -> Health:
        return Health(ok, reason, len(ready), height, best)

    if len(ready) < min_peers:
        return verdict(False, f"{plural(len(ready), 'ready peer')}, needs {min_peers}")
    if info.get("syncing"):
        return verdict(False, f"catching up (height {height})")
    if best is not None and height < best:
        return verdict(False, f"behind: height {height}, best peer at {best}")
    if best is not None and height == best:
        level = [str(p.get("tip", "")) for p in ready if int(p["height"]) == best]
        if not any(peer_tip and tip.startswith(peer_tip) for peer_tip in level):
            return verdict(False, f"tip {tip[:12]} at height {height} differs from the ready peers' ({', '.join(level)})")
    return verdict(True, f"{plural(len(ready), 'ready peer')}, height {height}, tip {tip[:12]}"
                   + (" = the best peer's" if best == height else ""))


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("health", parents=[common], help="exit 0 only when the node is peered and synced "
                                 "(for healthchecks)")
    parser.add_argument("--min-peers", type=_count, default=DEFAULT_MIN_PEERS, metavar="N",
                        help=f"ready peers needed (default: {DEFAULT_MIN_PEERS})")
    parser.set_defaults(func=health_command)


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


async def health_command(args: argparse.Namespace) -> int:
    async with NodeClient(args.node, args.timeout) as node:
        info = await node.status()
    health = judge(info, args.min_peers)
    if args.json:
        print(dumps({"healthy": health.healthy, "reason": health.reason, "ready_peers": health.ready_peers,
                     "height": health.height, "best_peer_height": health.best_peer_height}))
    else:
        # stdout either way: `docker inspect` shows a healthcheck's output, whichever stream.
        print(f"{'healthy' if health.healthy else 'unhealthy'}: {health.reason}")
    return 0 if health.healthy else 1
