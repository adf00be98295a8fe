"""Encrypted peer links, the operator's own port and its roles, and no cheap lockout: live nodes.

Every case runs real nodes on 127.0.0.1 on one network file. The other side is this test,
speaking as docs/protocol.md and docs/security.md document it, with the outsider codec
(tests.support.outsider: msgpack, struct, cryptography and the standard library's ssl; no
gridchain encoders): TLS 1.3 with a node certificate it makes for a key it holds, the
session binding in the handshake proof, the operator port (peer port + 1000) and its
``auth`` frame. Each case checks the refusal by name, on the wire and in the node's log, and
that the members are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from gridchain.identity.keys import NodeKey, RelayKey
from gridchain.identity.network_file import Member, NetworkDocument, RelayEntry
from gridchain.relay.server import RelayServer
from gridchain.relay.simulator import RelaySimulator

from tests.support import outsider as o
from tests.support.nodes import TEST_DIFFICULTY, RunningNode, main_chain, node_config, settle, start_node
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)

NETWORK = "links-net"
RELAY_ID = "Relay 1"
IO_TIMEOUT_S = 5.0  # a node on loopback answers in milliseconds
FLOOD_SOCKETS = 200  # per port, refilled as the node closes them
FLOOD_SECONDS = 6.0
FLOOD_RAMP_S = 1.0  # the flood opens its sockets within this
STATUS_BOUND_S = 1.0  # each `status` during a flood answers within this
JOIN_BOUND_S = 5.0  # a new member peers within this during a flood


@dataclass
class Party:
    name: str
    key: bytes
    data_dir: Path
    port: int
    running: RunningNode | None = None

    @property
    def node(self):
        return self.running.node

    @property
    def api(self) -> int:
        return o.operator_port(self.port)


@dataclass
class Net:
    file: Path
    relay: RelayServer
    alice: Party
    bob: Party
    carol: Party  # a member not started by the fixture
    eve: Ed25519PrivateKey  # a member's key the attacker holds (an insider)

    @property
    def genesis(self) -> bytes:
        return self.bob.node.genesis_hash


def member(tmp_path: Path, name: str) -> Party:
    data_dir = tmp_path / name
    data_dir.mkdir()
    return Party(name, NodeKey.load_or_create(data_dir).public_key, data_dir, free_port())


async def start(party: Party, net_file: Path, dials: list[int], relays: list[int]) -> Party:
    party.running = await start_node(node_config(party.data_dir, party.port, dials, relays, name=party.name,
                                                 network=NETWORK, network_file=net_file, redial_max_s=0.3,
                                                 interval_s=0.2))
    return party


@pytest.fixture
async def net(tmp_path):
    alice, bob, carol = (member(tmp_path, n) for n in ("alice", "bob", "carol"))
    eve = Ed25519PrivateKey.generate()
    relay_key = RelayKey.generate()
    members = tuple(Member(p.name, p.key) for p in (alice, bob, carol)) + (Member("eve", o.raw_public(eve)),)
    file = tmp_path / "network.toml"
    file.write_text(NetworkDocument(NETWORK, TEST_DIFFICULTY, members,
                                    (RelayEntry(RELAY_ID, "Test Substation", relay_key.public_key),)).to_toml())
    simulator = RelaySimulator(RELAY_ID, "Test Substation", 100, 7, start_ms=int(time.time() * 1000) - 5_000,
                               fault_probability=0.0)
    relay = RelayServer(simulator, "127.0.0.1", 0, 0.1, key=relay_key)
    await relay.start()
    await start(bob, file, [], [relay.port])
    await start(alice, file, [bob.port], [relay.port])
    try:
        await wait_until(lambda: bob.key in alice.node.gossip.peers and alice.key in bob.node.gossip.peers, 10,
                         what="alice and bob to peer")
        yield Net(file, relay, alice, bob, carol, eve)
    finally:
        for party in (alice, bob, carol):
            if party.running is not None:
                await party.running.shutdown()
        await relay.close()


def events(logs: list[dict], party: Party, name: str, **fields: object) -> list[dict]:
    return [e for e in logs if e.get("node") == party.name and e["event"] == name
            and all(e.get(k) == v for k, v in fields.items())]


async def tls_conn(port: int, key: Ed25519PrivateKey | None) -> o.Conn:
    return await o.Conn.open(port, tls=o.tls_client(key))


async def handshake(conn: o.Conn, net: Net, signer: Ed25519PrivateKey, *, claimed: bytes | None = None,
                    binding: bytes | None = None, own_pem: bytes | None = None) -> object:
    """The dialler's documented handshake on a TLS link (binding: both certificates, ours first)."""
    if binding is None:
        binding = o.tls_binding(o.cert_der(own_pem), conn.peer_cert)
    return await o.dial_handshake(conn, network=NETWORK, genesis=net.genesis, name="outsider", signer=signer,
                                  claimed_key=claimed, binding=binding)


# --- 1. members over TLS --------------------------------------------------------------------------
async def test_members_link_over_tls_13_and_gossip_blocks(net):
    alice, bob = net.alice, net.bob
    # What the peer port presents: TLS 1.3, a certificate holding bob's node key.
    started = time.perf_counter()
    conn = await tls_conn(bob.port, net.eve)
    handshake_ms = (time.perf_counter() - started) * 1000
    ssl_object = conn.writer.get_extra_info("ssl_object")
    assert ssl_object.version() == "TLSv1.3"
    assert ssl_object.cipher()[0] in ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")
    assert o.cert_key(conn.peer_cert) == bob.key
    await conn.close()
    print(f"TLS handshake (connect to Finished, loopback): {handshake_ms:.1f} ms")
    # The members' own link is TLS, and blocks cross it both ways.
    link = bob.node.gossip.peers[alice.key]
    assert link.writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    await wait_until(lambda: min(alice.running.height, bob.running.height) >= 4, 20, what="both at height 4")
    await settle([alice.running, bob.running], net.relay)
    assert main_chain(alice.running) == main_chain(bob.running)
    assert (tls := alice.node.gossip.peers[bob.key].link) is not None and tls.peer_key == bob.key


# --- 2. strangers on the peer port ----------------------------------------------------------------
async def test_a_plaintext_client_on_the_peer_port_is_refused_by_name(net):
    bob = net.bob
    with capture_logs() as logs:
        conn = await o.Conn.open(bob.port)
        reply = await conn.request(o.hello(network=NETWORK, genesis=net.genesis, node_key=net.alice.key,
                                           name="alice", nonce=os.urandom(32)))
        assert reply and reply[0] == "reject" and reply[1]["code"] == "tls-required", reply
        assert await conn.closed_within(IO_TIMEOUT_S)
        await conn.close()
        # An operator request on the peer port fares no better: this port speaks the peer protocol only.
        conn = await o.Conn.open(bob.port)
        reply = await conn.request(["status_request", {}])
        assert reply and reply[0] == "reject" and reply[1]["code"] == "tls-required", reply
        await conn.close()
        await wait_until(lambda: len(events(logs, bob, "peer.refused", reason="tls-required")) >= 2, IO_TIMEOUT_S,
                         what="bob to log both refusals")
    assert not events(logs, bob, "peer.banned") and not bob.node.gossip.banned
    assert net.alice.key in bob.node.gossip.peers


async def test_a_tls_client_with_a_key_not_in_the_network_file_is_refused(net):
    bob = net.bob
    mallory = Ed25519PrivateKey.generate()
    with capture_logs() as logs:
        refused = False
        try:
            conn = await tls_conn(bob.port, mallory)
            # TLS 1.3: the client's certificate is judged after the client's Finished; the
            # refusal arrives as an alert on the first read.
            await conn.send(o.hello(network=NETWORK, genesis=net.genesis, node_key=o.raw_public(mallory),
                                    name="mallory", nonce=os.urandom(32)))
            refused = await conn.recv() is None
            await conn.close()
        except (OSError, ConnectionError):
            refused = True
        assert refused, "the node answered a certificate no member key signed"
        # Without any certificate at all, likewise.
        try:
            conn = await tls_conn(bob.port, None)
            await conn.send(["status_request", {}])
            assert await conn.recv() is None
        except (OSError, ConnectionError):
            pass
        await wait_until(lambda: events(logs, bob, "peer.refused", reason="not-a-member")
                         and events(logs, bob, "peer.refused", reason="tls-no-certificate"), IO_TIMEOUT_S,
                         what="bob to log not-a-member and tls-no-certificate")
    assert not bob.node.gossip.banned, "a stranger's refusal is remembered against nobody"
    # And the node does not dial it either: a listener whose certificate is no member's.
    assert net.alice.key in bob.node.gossip.peers


async def test_a_members_certificate_with_a_hello_claiming_another_key_is_refused(net):
    bob, alice = net.bob, net.alice
    eve_pem = o.node_certificate(net.eve)
    with capture_logs() as logs:
        # Eve's certificate, alice's key in the hello: refused before any proof.
        conn = await o.Conn.open(bob.port, tls=o.tls_client(net.eve, eve_pem))
        await conn.send(o.hello(network=NETWORK, genesis=net.genesis, node_key=alice.key, name="alice",
                                nonce=os.urandom(32)))
        reply = await conn.recv()
        assert reply and reply[0] == "reject" and reply[1]["code"] == "tls-key-mismatch", reply
        assert await conn.closed_within(IO_TIMEOUT_S)
        # Eve as herself, but her proof without the session binding (as on a plaintext link): refused.
        conn = await o.Conn.open(bob.port, tls=o.tls_client(net.eve, eve_pem))
        reply = await handshake(conn, net, net.eve, binding=b"")
        assert reply and reply[0] == "reject" and reply[1]["code"] == "bad-handshake-proof", reply
        await conn.close()
        # With the documented binding (SHA-256 over both certificates) the handshake completes,
        # and the node's own proof verifies over the same binding.
        conn = await o.Conn.open(bob.port, tls=o.tls_client(net.eve, eve_pem))
        reply = await handshake(conn, net, net.eve, own_pem=eve_pem)
        assert reply and reply[0] == "hello_proof", reply
        await conn.close()
        await wait_until(lambda: events(logs, bob, "peer.refused", reason="tls-key-mismatch"), IO_TIMEOUT_S,
                         what="bob to log tls-key-mismatch")
    assert not events(logs, bob, "peer.banned")
    assert bob.node.gossip.peers.get(alice.key) is not None, "the claim displaced alice's link"


# --- 3. the operator port ----------------------------------------------------------------------------
async def test_the_operator_port_serves_reads_and_keeps_admin_for_the_admin_token(net):
    bob = net.bob
    read_token = (bob.data_dir / "read.token").read_text().strip()
    admin_token = (bob.data_dir / "admin.token").read_text().strip()
    assert (bob.data_dir / "read.token").stat().st_mode & 0o777 == 0o600
    assert (bob.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    # From 127.0.0.1 a session without a token reads; admin needs its token.
    assert (await o.status(bob.port))["height"] >= 0
    conn = await o.Conn.open(bob.api)
    reply = await conn.request(["verify_request", {}])
    assert reply[0] == "error" and reply[1]["reason"] == "admin-required", reply
    assert (await conn.request(["status_request", {}]))[0] == "status", "a refused request ends nothing"
    await conn.close()
    # The read token: reads, never verify.
    conn = await o.Conn.open(bob.api)
    assert await conn.request(["auth", {"token": read_token}]) == ["auth_ok", {"role": "read"}]
    assert (await conn.request(["block_request", {"hash": None, "height": 0}]))[0] == "block_reply"
    reply = await conn.request(["verify_request", {}])
    assert reply[0] == "error" and reply[1]["reason"] == "admin-required", reply
    await conn.close()
    # The admin token, over TLS (what a remote operator must use): verify is answered.
    conn = await o.Conn.open(bob.api, tls=o.tls_client(None))
    assert o.cert_key(conn.peer_cert) == bob.key, "the operator port's certificate holds the node key"
    assert await conn.request(["auth", {"token": admin_token}]) == ["auth_ok", {"role": "admin"}]
    reply = await conn.request(["verify_request", {}], timeout=30)
    assert reply[0] == "verify_reply" and reply[1]["ok"], reply
    await conn.close()
    # A wrong token is refused and the session closed.
    conn = await o.Conn.open(bob.api)
    reply = await conn.request(["auth", {"token": "00" * 32}])
    assert reply[0] == "error" and reply[1]["reason"] == "bad-token", reply
    assert await conn.closed_within(IO_TIMEOUT_S)
    # The operator port does not speak the peer protocol.
    conn = await o.Conn.open(bob.api)
    reply = await conn.request(o.hello(network=NETWORK, genesis=net.genesis, node_key=net.alice.key, name="alice",
                                       nonce=os.urandom(32)))
    assert reply[0] == "error" and reply[1]["reason"] in ("unexpected-message", "unknown-type"), reply
    await conn.close()


# --- 4. no cheap lockout ---------------------------------------------------------------------------
def start_flood(*ports: int) -> subprocess.Popen:
    """FLOOD_SOCKETS silent sockets to each port, refilled, from another process (tests.support.flood)."""
    args = [str(a) for port in ports for a in (port, FLOOD_SOCKETS)]
    return subprocess.Popen([sys.executable, "-m", "tests.support.flood", *args], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])


def flood_counts(proc: subprocess.Popen) -> dict[int, int]:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    counts: dict[int, int] = {}
    for line in out.splitlines():
        _, port, opened = line.split()
        counts[int(port)] = int(opened)
    return counts


async def test_silent_socket_floods_on_both_ports_lock_out_neither_a_member_nor_the_operator(net):
    bob, carol = net.bob, net.carol
    flood = start_flood(bob.port, bob.api)
    try:
        # The kernel holds silent sockets until they speak (deferred accept, docs/security.md) and
        # the budgets evict those it lets through: the flood is in place once its sockets are open.
        await asyncio.sleep(FLOOD_RAMP_S)
        joined_at = time.monotonic()
        await start(carol, net.file, [bob.port], [])
        waits: list[float] = []
        joined = None
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            asked = time.monotonic()
            async with asyncio.timeout(STATUS_BOUND_S):
                info = await o.status(bob.port)
            waits.append(time.monotonic() - asked)
            assert info["height"] >= 0
            if joined is None and carol.key in bob.node.gossip.peers:
                joined = time.monotonic() - joined_at
            await asyncio.sleep(0.05)
        assert joined is not None and joined <= JOIN_BOUND_S, "carol did not peer with bob during the flood"
        # The budgets held: strangers never took more than their share of either port.
        assert bob.node.listener.unidentified <= 16
        assert all(api.unidentified <= 8 for api in bob.node.api.listeners)
        evicted = (bob.node.listener.evicted, sum(api.evicted for api in bob.node.api.listeners))
    finally:
        counts = flood_counts(flood)
    assert min(counts.get(bob.port, 0), counts.get(bob.api, 0)) >= FLOOD_SOCKETS, f"the flood opened {counts}"
    p99 = statistics.quantiles(waits, n=100)[98]
    print(f"floods of {FLOOD_SOCKETS} silent sockets on each port ({counts.get(bob.port)} + {counts.get(bob.api)} "
          f"opened, {evicted[0]} + {evicted[1]} evicted): carol peered in {joined:.2f} s; {len(waits)} status "
          f"answers, p50 {statistics.median(waits) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(waits) * 1000:.0f} ms")
    assert net.alice.key in bob.node.gossip.peers and carol.key in bob.node.gossip.peers


async def test_a_4_mib_first_frame_is_refused_from_its_length_prefix(net):
    bob = net.bob
    prefix = struct.pack(">I", 4 * 1024 * 1024)
    # The operator port: the prefix alone is answered; not one byte of the body is read or decoded.
    conn = await o.Conn.open(bob.api)
    conn.writer.write(prefix)
    await conn.writer.drain()
    reply = await conn.recv()
    assert reply and reply[0] == "error" and reply[1]["reason"] == "frame-too-large", reply
    await conn.close()
    # The peer port, as a member over TLS before the handshake: the same.
    conn = await o.Conn.open(bob.port, tls=o.tls_client(net.eve))
    conn.writer.write(prefix)
    await conn.writer.drain()
    reply = await conn.recv()
    assert reply and reply[0] == "reject" and reply[1]["code"] == "frame-too-large", reply
    await conn.close()
    # A frame of 4 MiB of empty maps, sent whole, is refused the same way and the node stays responsive.
    conn = await o.Conn.open(bob.api)
    conn.writer.write(prefix + b"\x80" * 65536)
    with contextlib.suppress(ConnectionError):
        await conn.writer.drain()
    reply = await conn.recv()
    assert reply and reply[1]["reason"] == "frame-too-large", reply
    await conn.close()
    assert (await o.status(bob.port))["height"] >= 0


def test_the_operator_port_is_never_the_peer_port_and_listens_on_loopback_by_default(tmp_path):
    from gridchain.cli.settings import SettingError, resolve_node_settings

    config = resolve_node_settings({"data_dir": str(tmp_path)}, {}, None).config
    assert (config.port, config.operator_port, config.api_host) == (5004, 6004, "127.0.0.1")
    with pytest.raises(SettingError, match="peer port"):
        resolve_node_settings({"port": "5004", "api_port": "5004"}, {}, None)
