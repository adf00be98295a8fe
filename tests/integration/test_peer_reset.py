"""A configured peer whose link is reset is redialled, every time.

Regression: on Python 3.11 a TaskGroup whose child dies of a connection reset left the
peer's task marked as cancelling, and the dialler took that for a shutdown and stopped for
good, so a partition never healed.
"""

from __future__ import annotations

from tests.support.nodes import node_config, start_node
from tests.support.ports import free_port
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_until

RESETS = 5


def linked(running) -> bool:
    return any(peer.state == "ready" for peer in running.node.gossip.peers.values())


async def test_dialler_survives_repeated_resets(tmp_path):
    listener = await start_node(node_config(tmp_path / "a", free_port()))
    proxy = await FaultProxy(listener.config.port).start()
    dialler = await start_node(node_config(tmp_path / "b", free_port(), peers=[proxy.port],
                                           redial_max_s=0.5))
    try:
        for round_no in range(RESETS):
            await wait_until(lambda: linked(dialler) and linked(listener), 10.0,
                             what=f"link up before reset {round_no}")
            proxy.cut(reset=True)
            await wait_until(lambda: not linked(dialler), 10.0, what=f"link down after reset {round_no}")
            proxy.heal()
        await wait_until(lambda: linked(dialler) and linked(listener), 10.0, what="link up after the last reset")
    finally:
        await proxy.close()
        await dialler.shutdown()
        await listener.shutdown()
