"""Real nodes and relays run inside the test's own event loop, on 127.0.0.1.

For tests that need a node's internals (its ledger, its gossip) while it runs; tests that
need separate processes (kills, restarts) use ``cluster`` or ``processes`` instead.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from gridchain.config import Address, NodeConfig
from gridchain.node.node import Node
from gridchain.relay.server import RelayServer
from gridchain.relay.simulator import RelaySimulator

from .ports import free_port
from .wait import wait_until

TEST_DIFFICULTY = 8  # 256 expected hashes: real proof of work at test speed


async def start_relay(interval_s: float = 0.1, seed: int = 7, relay_id: str = "Relay 1",
                      start_ms: int | None = None) -> RelayServer:
    simulator = RelaySimulator(relay_id, "Test Substation", round(interval_s * 1000), seed,
                               start_ms=start_ms if start_ms is not None else int(time.time() * 1000) - 5_000,
                               fault_probability=0.0)
    server = RelayServer(simulator, "127.0.0.1", 0, interval_s)
    await server.start()
    return server


@dataclass
class RunningNode:
    node: Node
    stop: asyncio.Event
    task: asyncio.Task
    config: NodeConfig

    @property
    def ledger(self):
        return self.node.ledger

    @property
    def height(self) -> int:
        return self.node.ledger.height

    async def shutdown(self, timeout: float = 10.0) -> None:
        self.stop.set()
        async with asyncio.timeout(timeout):
            await self.task


def node_config(data_dir: Path, port: int, peers: list[int] = (), relays: list[int] = (), *,
                interval_s: float = 0.2, difficulty: int = TEST_DIFFICULTY, name: str = "",
                network: str = "test-net", **extra) -> NodeConfig:
    return NodeConfig(data_dir=data_dir, host="127.0.0.1", port=port,
                      peers=tuple(Address("127.0.0.1", p) for p in peers),
                      relays=tuple(Address("127.0.0.1", r) for r in relays), network=network,
                      difficulty=difficulty, capture_interval_s=interval_s, name=name or f"node-{port}", **extra)


async def start_node(config: NodeConfig) -> RunningNode:
    node = Node(config)
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    running = RunningNode(node, stop, task, config)
    await wait_until(lambda: node.listener.listening or task.done(), 5.0, what="node listening")
    if task.done():
        task.result()
    return running


async def start_network(tmp_path: Path, count: int, relay_port: int | None, **options) -> list[RunningNode]:
    """``count`` nodes, each configured to dial every other (a full mesh, as in the prototype)."""
    ports = [free_port() for _ in range(count)]
    nodes = []
    for i, port in enumerate(ports):
        config = node_config(tmp_path / f"n{i}", port, [p for p in ports if p != port],
                             [relay_port] if relay_port else [], **options)
        nodes.append(await start_node(config))
    return nodes


async def settle(nodes: list[RunningNode], relay: RelayServer, timeout: float = 20.0) -> None:
    """Freeze the relay, then wait until every node has the same tip.

    Two nodes that mine the same last capture at once end on equal-work tips, and a tie
    keeps the block each saw first, so with no new readings they would disagree for ever.
    As on a live network, the next block settles it: one more reading is released.
    """
    relay.pause()
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.sleep(0.5)
        tips = {n.ledger.tip.hash for n in nodes}
        if len(tips) == 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no single tip after {timeout}s: {len(tips)} tips")
        if len({n.ledger.tip.work for n in nodes}) == 1:
            relay.tick()


def main_chain(running: RunningNode) -> list[bytes]:
    chain = running.ledger.chain
    return [chain.main_at(h).hash for h in range(chain.height + 1)]


def chain_readings(running: RunningNode) -> list[tuple[str, int]]:
    """(relay, timestamp) of every reading on the main chain, in chain order."""
    out = []
    for block_hash in main_chain(running)[1:]:
        block = running.ledger.get_block(block_hash)
        out.extend((block.capture.relay_id, r.timestamp_ms) for r in block.capture.readings)
    return out
