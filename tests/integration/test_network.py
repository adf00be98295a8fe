"""Nodes and a relay on 127.0.0.1: convergence, late sync, duplicates, partitions, bad peers."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

from structlog.testing import capture_logs

from gridchain.consensus.template import block_template, seal
from gridchain.identity.keys import NodeKey
from gridchain.net import handshake
from gridchain.net.messages import PROTOCOL_VERSION, BlockMessage, Hello, HelloProof, decode_message, encode_message
from gridchain.net.gossip import AGENT
from gridchain.wire.frames import FrameDecoder, encode_frame

from tests.support.nodes import (
    chain_readings, main_chain, node_config, settle, start_network, start_node, start_relay,
)
from tests.support.ports import free_port
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_until


async def _stop_all(nodes, relay=None) -> None:
    for node in nodes:
        await node.shutdown()
    if relay is not None:
        await relay.close()


def _same_tip(nodes) -> bool:
    return len({n.ledger.tip.hash for n in nodes}) == 1


async def test_four_nodes_converge_with_one_copy_of_every_reading(tmp_path):
    relay = await start_relay(interval_s=0.1)
    nodes = await start_network(tmp_path, 4, relay.port, interval_s=0.2)
    try:
        await wait_until(lambda: all(len(n.node.gossip.peers) == 3 for n in nodes), 10, what="full mesh")
        await wait_until(lambda: min(n.height for n in nodes) >= 5, 20, what="height 5 everywhere")
        await settle(nodes, relay)  # no new readings: the network must agree on one chain
        readings = chain_readings(nodes[0])
        assert readings, "the chain holds readings"
        assert all(chain_readings(n) == readings for n in nodes[1:])
        assert len(readings) == len(set(readings)), "every reading appears exactly once"
        miners = Counter(nodes[0].ledger.get_block(h).miner_name for h in main_chain(nodes[0])[1:])
        assert sum(miners.values()) == nodes[0].height
    finally:
        await _stop_all(nodes, relay)


async def test_late_node_syncs_whole_chain(tmp_path):
    relay = await start_relay(interval_s=0.1)
    nodes = await start_network(tmp_path, 2, relay.port, interval_s=0.1)
    try:
        await wait_until(lambda: nodes[0].height >= 15, 30, what="a chain to sync")
        await settle(nodes, relay)
        late = await start_node(node_config(tmp_path / "late", free_port(), [nodes[0].config.port]))
        nodes.append(late)
        await wait_until(lambda: _same_tip(nodes), 15, what="late node synced")
        assert main_chain(late) == main_chain(nodes[0])
        assert chain_readings(late) == chain_readings(nodes[0])
    finally:
        await _stop_all(nodes, relay)


async def test_partition_heals_without_losing_or_duplicating_readings(tmp_path):
    """2|2 split through fault-injecting proxies, mining on both sides, then healed."""
    relay = await start_relay(interval_s=0.1)
    ports = [free_port() for _ in range(4)]
    side = {0: "a", 1: "a", 2: "b", 3: "b"}
    proxies: list[FaultProxy] = []
    peers: dict[int, list[int]] = {i: [] for i in range(4)}
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            if side[i] == side[j]:
                peers[i].append(ports[j])
            else:
                proxy = await FaultProxy(ports[j]).start()
                proxies.append(proxy)
                peers[i].append(proxy.port)
    nodes = []
    try:
        for i in range(4):
            config = node_config(tmp_path / f"n{i}", ports[i], peers[i], [relay.port], interval_s=0.15,
                                 redial_max_s=0.5)
            nodes.append(await start_node(config))
        await wait_until(lambda: min(n.height for n in nodes) >= 3, 20, what="a shared start")
        for proxy in proxies:
            proxy.cut()
        start_heights = [n.height for n in nodes]
        await wait_until(lambda: all(n.height >= h + 4 for n, h in zip(nodes, start_heights)), 20,
                         what="mining on both sides")
        assert nodes[0].ledger.tip.hash != nodes[2].ledger.tip.hash, "the two sides diverged"
        for proxy in proxies:
            proxy.heal()
        await asyncio.sleep(0.5)
        await settle(nodes, relay, timeout=30)
        final = chain_readings(nodes[0])
        assert len(final) == len(set(final)), "no reading twice on the final chain"
        ever = set()
        for n in nodes:
            for raw_hash in _all_block_hashes(n):
                block = n.ledger.get_block(raw_hash)
                ever.update((block.capture.relay_id, r.timestamp_ms) for r in block.capture.readings)
        # Readings the relay no longer serves can only come back through the displaced set.
        missing = ever - set(final)
        assert not missing, f"{len(missing)} readings that were in some block are lost"
    finally:
        await _stop_all(nodes, relay)
        for proxy in proxies:
            await proxy.close()


def _all_block_hashes(running) -> list[bytes]:
    rows = running.ledger.store.db.execute("SELECT hash FROM blocks WHERE height > 0").fetchall()
    return [row[0] for row in rows]


async def test_peer_sending_invalid_block_is_banned_while_others_carry_on(tmp_path):
    relay = await start_relay(interval_s=0.1)
    nodes = await start_network(tmp_path, 2, relay.port, interval_s=0.2)
    try:
        await wait_until(lambda: nodes[0].height >= 2, 15, what="some chain")
        target = nodes[0]
        key = NodeKey.from_seed(b"\x07" * 32)
        reader, writer = await asyncio.open_connection("127.0.0.1", target.config.port)
        tip = target.ledger.tip
        hello = Hello(version=PROTOCOL_VERSION, network=target.node.network, genesis=target.node.genesis_hash,
                      node_key=key.public_key, listen_port=0, height=tip.height, tip=tip.hash, work=tip.work,
                      agent=AGENT, name="mallory", nonce=os.urandom(handshake.NONCE_SIZE))
        writer.write(encode_frame(encode_message(hello)))
        # The handshake's identity proof (docs/protocol.md): the node's hello, then ours.
        async with asyncio.timeout(5):
            theirs = decode_message(FrameDecoder().feed(await reader.read(65536))[0])
        writer.write(encode_frame(encode_message(HelloProof(key.sign(handshake.proof_statement(
            genesis=hello.genesis, role=handshake.DIALLER, signer_key=key.public_key, other_key=theirs.node_key,
            signer_nonce=hello.nonce, other_nonce=theirs.nonce))))))
        good = target.ledger.get_block(tip.hash)
        header = block_template(tip, good.capture, "mallory", key.public_key, target.node.params,
                                tip.header.time_ms + 1)
        # Sealed without proof of work: the hash will almost surely miss the target.
        bad = seal(header.with_nonce(0), 0, good.capture, "mallory", key.sign)
        if bad.hash[0] == 0:
            bad = seal(header.with_nonce(1), 1, good.capture, "mallory", key.sign)
        writer.write(encode_frame(encode_message(BlockMessage(block=bad))))
        await writer.drain()
        await wait_until(lambda: target.node.gossip.is_banned(key.public_key.hex()), 5, what="ban")
        async with asyncio.timeout(5):
            rest = await reader.read()  # the node closes the link (after a reject)
        assert isinstance(rest, bytes)
        writer.close()
        height = target.height
        await wait_until(lambda: nodes[1].node.gossip.peers and target.height > height, 15,
                         what="the honest peer and mining carry on")
        assert not target.node.has_block(bad.hash)
    finally:
        await _stop_all(nodes, relay)




async def test_min_peers_holds_mining_until_enough_peers_are_connected(tmp_path):
    relay = await start_relay(interval_s=0.1)
    ports = [free_port(), free_port()]
    waiting = await start_node(node_config(tmp_path / "w", ports[0], [ports[1]], [relay.port],
                                           interval_s=0.1, min_peers=1, redial_max_s=0.3))
    nodes = [waiting]
    try:
        await asyncio.sleep(1.0)
        assert waiting.height == 0, "no mining without the required peer"
        nodes.append(await start_node(node_config(tmp_path / "p", ports[1], [ports[0]], [], interval_s=0.1)))
        await wait_until(lambda: waiting.height >= 2, 15, what="mining once the peer is connected")
        await wait_until(lambda: nodes[1].height >= 2, 15, what="the peer receives the blocks")
    finally:
        await _stop_all(nodes, relay)


async def test_a_node_told_it_dialled_itself_stops_redialling(tmp_path):
    port = free_port()
    with capture_logs() as logs:
        running = await start_node(node_config(tmp_path / "self", port, [port], redial_max_s=0.2))
        try:
            await wait_until(lambda: any(e["event"] == "peer.dial_stopped" for e in logs), 10,
                             what="the dialler to give up on itself")
            await asyncio.sleep(0.5)
            refusals = [e for e in logs if e["event"] == "peer.refused"]
            assert refusals and all(e["reason"] == "self" for e in refusals)
            assert len(refusals) <= 2, "no redial after the node learnt the address is its own"
        finally:
            await running.shutdown()
