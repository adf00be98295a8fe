"""The web dashboard, /metrics and alerts of live nodes, over their operator ports.

Real nodes (in this test's event loop, on 127.0.0.1) mine a simulated relay's readings and
gossip blocks; the HTTP requests go to the same operator port as the operator API. A relay
behind a proxy goes down and comes back: the node must raise ``alert.relay_down`` (its log
event, ``status``, ``gridchain status``, the ``gridchain_alerts`` gauge) and clear it.
Alert hold times are shortened on the node (a relay is "down" after 0.5 s, not 30 s).
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from structlog.testing import capture_logs

from gridchain.api.client import NodeClient
from gridchain.cli.commands.chain import print_status
from gridchain.config import Address
from gridchain.node.node import Node
from gridchain.web.alerts import RELAY_DOWN, Thresholds
from tests.support.nodes import RunningNode, node_config, start_relay
from tests.support.ports import free_port
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_until
from tests.support.web import http_get, metric_value

WAIT_S = 30.0  # blocks come every 0.2 s on an idle box; a loaded CI box is far slower, never this slow
RELAY_ID = "Relay 1"
METRIC_FAMILIES = (  # (name, type) as the exposition's "# TYPE" lines give them
    ("gridchain_chain_height", "gauge"), ("gridchain_finalized_height", "gauge"), ("gridchain_peers", "gauge"),
    ("gridchain_relays", "gauge"), ("gridchain_blocks_accepted_total", "counter"),
    ("gridchain_blocks_rejected_total", "counter"), ("gridchain_blocks_mined_total", "counter"),
    ("gridchain_reorgs_total", "counter"), ("gridchain_reorg_depth", "histogram"),
    ("gridchain_mining_seconds", "histogram"), ("gridchain_block_propagation_seconds", "histogram"),
    ("gridchain_readings_stored_total", "counter"), ("gridchain_relay_signature_failures_total", "counter"),
    ("gridchain_reading_gaps", "gauge"), ("gridchain_event_loop_lag_seconds", "gauge"),
    ("gridchain_store_bytes", "gauge"), ("gridchain_alerts", "gauge"),
)
QUICK = Thresholds(relay_down_s=0.5, peer_down_s=0.5)
MONITOR_INTERVAL_S = 0.1


async def start(config, thresholds: Thresholds = QUICK) -> RunningNode:
    """A node whose alerts hold for fractions of a second and are looked at ten times a second."""
    node = Node(config)
    node.observability.alerts.thresholds = thresholds
    node.observability.monitor.interval_s = MONITOR_INTERVAL_S
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    running = RunningNode(node, stop, task, config)
    await wait_until(lambda: node.api.port or task.done(), 5.0, what="operator port")
    if task.done():
        task.result()
    return running


async def metrics(port: int) -> bytes:
    status, headers, body = await http_get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return body


@pytest.fixture
async def relay():
    server = await start_relay(interval_s=0.1, relay_id=RELAY_ID)
    yield server
    await server.close()


async def test_the_operator_port_serves_the_page_metrics_and_readings(tmp_path, relay):
    miner_port, follower_port = free_port(), free_port()
    miner = await start(node_config(tmp_path / "miner", miner_port, relays=[relay.port], api_port=0))
    follower = await start(node_config(tmp_path / "follower", follower_port, peers=[miner_port], api_port=0))
    try:
        await wait_until(lambda: follower.height >= 2, WAIT_S, what="the follower has two blocks")
        port = follower.node.api.port

        status, headers, body = await http_get(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"app.js" in body and "default-src 'self'" in headers["content-security-policy"]

        before = await metrics(port)
        for name, kind in METRIC_FAMILIES:
            assert f"# TYPE {name} {kind}\n".encode() in before, name
        height = metric_value(before, "gridchain_chain_height")
        accepted = metric_value(before, "gridchain_blocks_accepted_total", 'source="peer"')
        stored = metric_value(before, "gridchain_readings_stored_total")
        propagated = metric_value(before, "gridchain_block_propagation_seconds_count")
        assert height >= 2 and accepted >= 1 and stored >= 1 and propagated >= 1
        assert metric_value(before, "gridchain_peers", 'state="ready"') == 1
        assert metric_value(before, "gridchain_store_bytes") > 0

        await wait_until(lambda: follower.height > height, WAIT_S, what="one more block at the follower")
        after = await metrics(port)
        assert metric_value(after, "gridchain_chain_height") > height
        assert metric_value(after, "gridchain_blocks_accepted_total", 'source="peer"') > accepted
        assert metric_value(after, "gridchain_readings_stored_total") > stored
        assert metric_value(after, "gridchain_block_propagation_seconds_count") > propagated
        mined = await metrics(miner.node.api.port)
        assert metric_value(mined, "gridchain_blocks_mined_total") >= 1
        assert metric_value(mined, "gridchain_mining_seconds_count") >= 1
        assert metric_value(mined, "gridchain_relays", 'state="ok"') == 1
        assert metric_value(mined, "gridchain_relay_signature_failures_total", f'relay="{RELAY_ID}"') == 0
        assert metric_value(mined, "gridchain_reading_gaps", f'relay="{RELAY_ID}"') == 0  # set by the alert loop

        status, headers, body = await http_get(port, "/api/readings?relay=Relay%201&span=3600000")
        assert status == 200
        answer = json.loads(body)
        assert answer["count"] >= 1 and len(answer["columns"]["ia"]) == answer["count"]
        newest = follower.node.chain.newest_reading_ms(RELAY_ID)
        assert answer["columns"]["t"][-1] <= newest

        # The page's access rule is the API's: loopback reads without a token, not with a wrong one.
        status, _, body = await http_get(port, "/api/status?token=" + "0" * 64)
        assert status == 403 and b"bad-token" in body
        read_token = (tmp_path / "follower" / "read.token").read_text().strip()
        status, _, body = await http_get(port, "/api/status", {"Authorization": f"Bearer {read_token}"})
        assert status == 200 and json.loads(body)["height"] >= 2
        # Over TLS too (as from another host), where the first bytes are read, not peeked.
        status, _, body = await http_get(port, f"/api/blocks?limit=1&token={read_token}", tls=True)
        assert status == 200 and len(json.loads(body)["blocks"]) == 1
        # ... and the operator API still answers on the same port, in plaintext and over TLS.
        async with NodeClient(Address("127.0.0.1", port), 5.0) as client:
            assert (await client.status())["height"] >= 2
        async with NodeClient(Address("127.0.0.1", port), 5.0, node_key=follower.node.key.public_key,
                              tls=True) as client:
            assert (await client.status())["height"] >= 2
    finally:
        await follower.shutdown()
        await miner.shutdown()


async def test_a_relay_down_raises_an_alert_and_its_return_clears_it(tmp_path, relay):
    proxy = await FaultProxy(relay.port).start()
    with capture_logs() as events:
        running = await start(node_config(tmp_path / "n", free_port(), relays=[proxy.port], api_port=0))
        node = running.node
        node.watches[0].client.retry.max_delay = 0.5  # the relay's return is noticed within half a second
        port = node.api.port
        try:
            await wait_until(lambda: node.ledger.height >= 1, WAIT_S, what="a first block")
            assert node.status()["alerts"] == []
            assert metric_value(await metrics(port), "gridchain_alerts", f'name="{RELAY_DOWN}"') == 0

            proxy.cut()
            await wait_until(lambda: any(a["name"] == RELAY_DOWN for a in node.status()["alerts"]), WAIT_S,
                             what="alert.relay_down raised")
            raised = [e for e in events if e["event"] == "alert.raised"]
            assert [(e["alert"], e["log_level"]) for e in raised] == [(RELAY_DOWN, "warning")]
            assert raised[0]["subject"] == RELAY_ID
            assert metric_value(await metrics(port), "gridchain_alerts", f'name="{RELAY_DOWN}"') == 1
            async with NodeClient(Address("127.0.0.1", port), 5.0) as client:
                info = await client.status()
            assert [(a["name"], a["subject"]) for a in info["alerts"]] == [(RELAY_DOWN, RELAY_ID)]
            out = io.StringIO()
            print_status(info, out)
            assert "alerts (1)" in out.getvalue() and RELAY_DOWN in out.getvalue()
            status, _, body = await http_get(port, "/api/status")
            assert [a["name"] for a in json.loads(body)["alerts"]] == [RELAY_DOWN]

            proxy.heal()
            await wait_until(lambda: node.status()["alerts"] == [], WAIT_S, what="alert.relay_down cleared")
            cleared = [e for e in events if e["event"] == "alert.cleared"]
            assert [(e["alert"], e["subject"]) for e in cleared] == [(RELAY_DOWN, RELAY_ID)]
            assert metric_value(await metrics(port), "gridchain_alerts", f'name="{RELAY_DOWN}"') == 0
        finally:
            await running.shutdown()
            await proxy.close()
    assert any(e["event"] == "node.stopped" for e in events)
