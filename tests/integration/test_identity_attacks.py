"""Identity attacks against live nodes: a claimed key counts for nothing until it is proven.

Every case runs real nodes on 127.0.0.1 on one network file naming the members, so every peer
link is TLS 1.3 (docs/security.md). The attacker is this test, speaking TLS with certificates
it makes as docs/security.md documents them, and the peer handshake exactly as
docs/protocol.md documents it (Peer protocol: Handshake, Identity proof, with the session
binding), with its frames built here from msgpack, struct and cryptography; nothing it sends
comes from gridchain's encoders. A stranger never gets past TLS; an insider (a member whose
key the attacker holds, "eve") gets to the handshake, where claiming any key but its own, or a
proof that does not verify, is refused. Each case checks the named
refusal on the wire and in the node's log, and that the honest members are untouched: not
banned, their link not displaced, still peering (and redialling) afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from gridchain.identity.keys import NodeKey
from gridchain.identity.network_file import Member, NetworkDocument, RelayEntry

from tests.support import outsider as o
from tests.support.nodes import TEST_DIFFICULTY, RunningNode, node_config, start_node
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(60)

NETWORK = "identity-net"
PROOF_REASON = "bad-handshake-proof"
IO_TIMEOUT_S = 5.0  # a node on loopback answers a handshake message in milliseconds
REDIAL_MAX_S = 0.3  # a refused dial is retried within a third of a second


# --- the documented handshake, written from docs/protocol.md -----------------------------------
TAG = b"gridchain/hello-proof/v1"
DIALLER, LISTENER = 1, 2


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def statement(genesis: bytes, role: int, signer_key: bytes, other_key: bytes, signer_nonce: bytes,
              other_nonce: bytes, binding: bytes = b"") -> bytes:
    """The proof statement: 186 bytes, then the channel binding (docs/security.md on a TLS link)."""
    return (TAG + genesis + bytes([role]) + signer_key + other_key + signer_nonce + other_nonce
            + bytes([len(binding)]) + binding)


def hello(genesis: bytes, node_key: bytes, nonce: bytes | None, name: str = "mallory",
          network: str = NETWORK) -> list:
    body = {"version": 1, "network": network, "genesis": genesis, "node_key": node_key, "listen_port": 0,
            "height": 0, "tip": genesis, "work": b"", "agent": "attacker/1", "name": name}
    if nonce is not None:
        body["nonce"] = nonce
    return ["hello", body]


def proof(signer: Ed25519PrivateKey, message: bytes) -> list:
    return ["hello_proof", {"signature": signer.sign(message)}]


class Conn:
    """One TLS (or TCP) connection of frames; ``recv`` is None once the other side closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, key: Ed25519PrivateKey | None = None) -> Conn:
        """A TLS connection presenting ``key``'s node certificate (plaintext with None)."""
        pem = o.node_certificate(key) if key is not None else None
        tls = o.tls_client(key, pem) if key is not None else None
        async with asyncio.timeout(IO_TIMEOUT_S):
            conn = cls(*await asyncio.open_connection("127.0.0.1", port, ssl=tls))
        conn.own_cert = o.cert_der(pem) if pem is not None else b""
        return conn

    def binding(self) -> bytes:
        """The session binding: SHA-256 over both certificates, ours (the dialler's) first."""
        return o.tls_binding(self.own_cert, self.writer.get_extra_info("ssl_object").getpeercert(True))

    async def send(self, obj: object) -> None:
        self.writer.write(frame(obj))
        await self.writer.drain()

    async def recv(self, timeout: float = IO_TIMEOUT_S) -> object | None:
        try:
            async with asyncio.timeout(timeout):
                (length,) = struct.unpack(">I", await self.reader.readexactly(4))
                return msgpack.unpackb(await self.reader.readexactly(length), raw=False)
        except (asyncio.IncompleteReadError, OSError):
            return None

    async def closed(self) -> bool:
        """The other side closes within the timeout (what it sends first is read and dropped)."""
        try:
            async with asyncio.timeout(IO_TIMEOUT_S):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


# --- the network ---------------------------------------------------------------------------------
@dataclass
class Party:
    """One member of the test network: its key (made before the network file), dir and port."""

    name: str
    key: bytes
    data_dir: Path
    port: int
    running: RunningNode | None = None

    @property
    def gossip(self):
        return self.running.node.gossip


def member(tmp_path: Path, name: str) -> Party:
    data_dir = tmp_path / name
    data_dir.mkdir()
    return Party(name, NodeKey.load_or_create(data_dir).public_key, data_dir, free_port())


def network_file(path: Path, members: list[Party], insiders: dict[str, Ed25519PrivateKey] | None = None) -> Path:
    """A network file naming ``members`` (and ``insiders``: members whose keys the attacker holds)."""
    relay = RelayEntry("Relay 1", "Test Substation", raw_public(Ed25519PrivateKey.generate()))
    names = tuple(Member(m.name, m.key) for m in members) + tuple(
        Member(name, raw_public(key)) for name, key in (insiders or {}).items())
    path.write_text(NetworkDocument(NETWORK, TEST_DIFFICULTY, names, (relay,)).to_toml())
    return path


async def start(node: Party, file: Path, dials: list[int] = ()) -> Party:
    node.running = await start_node(node_config(node.data_dir, node.port, list(dials), name=node.name,
                                                network=NETWORK, network_file=file, redial_max_s=REDIAL_MAX_S))
    return node


async def stop(*nodes: Party) -> None:
    for node in nodes:
        if node.running is not None:
            await node.running.shutdown()


def peers(a: Party, b: Party) -> bool:
    return b.key in a.gossip.peers and a.key in b.gossip.peers


def events(logs: list[dict], node: Party, name: str, **fields: object) -> list[dict]:
    return [e for e in logs if e.get("node") == node.name and e["event"] == name
            and all(e.get(k) == v for k, v in fields.items())]


def banned_anything(logs: list[dict], node: Party) -> list[dict]:
    return events(logs, node, "peer.banned")


async def their_hello(conn: Conn) -> dict:
    reply = await conn.recv()
    assert reply and reply[0] == "hello", f"expected the node's hello, got {reply}"
    body = reply[1]
    assert len(body["nonce"]) == 32, "the node's hello carries a 32-byte nonce"
    return body


async def refusal(conn: Conn) -> str:
    reply = await conn.recv()
    assert reply and reply[0] == "reject", f"expected a reject, got {reply}"
    assert await conn.closed(), "the node kept the link after its reject"
    return reply[1]["code"]


# --- 1. a third party claiming a member's key ---------------------------------------------------
async def test_a_third_party_claiming_a_members_key_is_refused_and_the_member_still_peers(tmp_path):
    alice, bob = member(tmp_path, "alice"), member(tmp_path, "bob")
    eve = Ed25519PrivateKey.generate()  # an insider: a member whose key the attacker holds
    eve_key = raw_public(eve)
    file = network_file(tmp_path / "network.toml", [alice, bob], {"eve": eve})
    with capture_logs() as logs:
        await start(bob, file)
        await start(alice, file, [bob.port])
        try:
            await wait_until(lambda: peers(alice, bob), 10, what="alice and bob to peer")
            link = bob.gossip.peers[alice.key]
            genesis = bob.running.node.genesis_hash
            mallory = Ed25519PrivateKey.generate()  # knows alice's public key only

            # A stranger does not finish TLS: no member key signed its certificate.
            with contextlib.suppress(OSError):
                conn = await Conn.open(bob.port, mallory)
                await conn.send(hello(genesis, alice.key, os.urandom(32), name="alice"))
                assert await conn.recv() is None, "a stranger's hello was answered"
                await conn.close()
            # Nor does a plaintext one: it is told so.
            conn = await Conn.open(bob.port)
            await conn.send(hello(genesis, alice.key, os.urandom(32), name="alice"))
            assert await refusal(conn) == "tls-required"
            await conn.close()

            # The insider, over TLS as itself, claiming alice's key: refused before any proof.
            conn = await Conn.open(bob.port, eve)
            await conn.send(hello(genesis, alice.key, os.urandom(32), name="alice"))
            assert await refusal(conn) == "tls-key-mismatch"
            await conn.close()

            # Its own key, and a proof over the right statement (binding and all) signed with the wrong key.
            conn = await Conn.open(bob.port, eve)
            nonce = os.urandom(32)
            await conn.send(hello(genesis, eve_key, nonce, name="eve"))
            theirs = await their_hello(conn)
            assert theirs["node_key"] == bob.key
            await conn.send(proof(mallory, statement(genesis, DIALLER, eve_key, bob.key, nonce, theirs["nonce"],
                                                     conn.binding())))
            assert await refusal(conn) == PROOF_REASON
            await conn.close()

            # The claim, then what bans a proven peer (a frame breaking the rules, an unknown
            # type): with nothing proven, nothing is held against the claimed key.
            for breach in (struct.pack(">I", 1) + b"\xc1", frame(["no-such-message", {}])):
                conn = await Conn.open(bob.port, eve)
                await conn.send(hello(genesis, eve_key, os.urandom(32), name="eve"))
                await their_hello(conn)
                conn.writer.write(breach)
                assert await refusal(conn) in ("bad-msgpack", "unknown-type")
                await conn.close()

            # A hello without a nonce (a peer that proves nothing) is refused before bob says hello.
            conn = await Conn.open(bob.port, eve)
            await conn.send(hello(genesis, eve_key, None, name="eve"))
            assert await refusal(conn) == PROOF_REASON
            await conn.close()

            await wait_until(lambda: len(events(logs, bob, "peer.refused", claimed_key=eve_key.hex()[:16])) >= 4,
                             IO_TIMEOUT_S, what="bob to log each refusal")
            refusals = events(logs, bob, "peer.refused", claimed_key=eve_key.hex()[:16])
            assert [e["reason"] for e in refusals] == [PROOF_REASON, "bad-msgpack", "unknown-type", PROOF_REASON]
            assert not any(e["proven"] for e in refusals)
            for reason in ("not-a-member", "tls-required", "tls-key-mismatch"):
                assert events(logs, bob, "peer.refused", reason=reason), f"bob logged no {reason}"
            assert not banned_anything(logs, bob), "bob banned somebody on an unproven claim"
            assert not bob.gossip.is_banned(alice.key.hex()) and not bob.gossip.is_banned(eve_key.hex())
            assert bob.gossip.peers.get(alice.key) is link, "the impostor displaced alice's link"
            assert len(events(logs, bob, "peer.connected")) == 1

            # Alice still gets in: her link dropped, she redials and bob takes her back.
            link.writer.transport.abort()
            await wait_until(lambda: peers(alice, bob) and bob.gossip.peers[alice.key] is not link, 10,
                             what="alice to peer with bob again")
            assert not banned_anything(logs, bob) and not banned_anything(logs, alice)
        finally:
            await stop(alice, bob)


# --- 2. a listener answering a dial with the dialler's own bytes, or a stranger's certificate -----
async def test_an_echo_or_stranger_listener_never_stops_the_dialler_and_the_real_member_connects(tmp_path):
    alice, bob = member(tmp_path, "alice"), member(tmp_path, "bob")
    file = network_file(tmp_path / "network.toml", [alice, bob])
    answers: dict[str, list] = {"echo": [], "stranger": []}
    mode = "echo"
    # A TLS server with a certificate no member key signed (it cannot make alice's: it lacks her key).
    stranger = Ed25519PrivateKey.generate()
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "c").write_bytes(o.node_certificate(stranger))
        (Path(scratch) / "k").write_bytes(stranger.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        server_tls.load_cert_chain(Path(scratch) / "c", Path(scratch) / "k")

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if mode == "echo":  # every byte back as it came: alice's own ClientHello, and all after
                answers["echo"].append(True)
                while data := await reader.read(65536):
                    writer.write(data)
                return
            answers["stranger"].append(True)
            await writer.start_tls(server_tls)
            answers["stranger"].append(await reader.read(65536))  # alice sends nothing over it
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(impostor, "127.0.0.1", bob.port)
    with capture_logs() as logs:
        try:
            await start(alice, file, [bob.port])
            await wait_until(lambda: len(answers["echo"]) >= 3, 10, what="alice to dial the echo three times")
            mode = "stranger"
            await wait_until(lambda: answers["stranger"].count(True) >= 2, 10, what="alice to dial the impostor again")
            server.close()
            await server.wait_closed()
            assert not events(logs, alice, "peer.dial_stopped"), "alice gave up on the address for good"
            assert not any(isinstance(a, bytes) and a for a in answers["stranger"]), "alice spoke to a stranger"
            assert not events(logs, alice, "peer.connected")
            # The real member starts where the impostor was: alice is still dialling, and peers.
            await start(bob, file)
            await wait_until(lambda: peers(alice, bob), 10, what="alice to peer with bob")
            assert not events(logs, alice, "peer.dial_stopped")
        finally:
            server.close()
            await stop(alice, bob)


# --- 3. a key that is not a member ---------------------------------------------------------------
async def test_a_key_not_in_the_network_file_is_refused_at_tls(tmp_path):
    alice, bob = member(tmp_path, "alice"), member(tmp_path, "bob")
    file = network_file(tmp_path / "network.toml", [alice, bob])
    carol = Ed25519PrivateKey.generate()
    carol_key = raw_public(carol)
    with capture_logs() as logs:
        await start(bob, file)
        try:
            genesis = bob.running.node.genesis_hash
            answered = None
            with contextlib.suppress(OSError):
                conn = await Conn.open(bob.port, carol)
                await conn.send(hello(genesis, carol_key, os.urandom(32), name="carol"))
                answered = await conn.recv()
                await conn.close()
            assert answered is None, f"a non-member's hello was answered: {answered}"
            await wait_until(lambda: events(logs, bob, "peer.refused", reason="not-a-member"), IO_TIMEOUT_S,
                             what="bob to log not-a-member")
            assert carol_key not in bob.gossip.peers and not banned_anything(logs, bob)
            # A member is taken on the same node, the same way.
            await start(alice, file, [bob.port])
            await wait_until(lambda: peers(alice, bob), 10, what="alice to peer with bob")
        finally:
            await stop(alice, bob)


# --- 4. a node with another network file ---------------------------------------------------------
async def test_a_node_with_another_network_file_never_peers(tmp_path):
    alice, bob, dave = member(tmp_path, "alice"), member(tmp_path, "bob"), member(tmp_path, "dave")
    eve = Ed25519PrivateKey.generate()
    # The same name, difficulty and members (so TLS passes both ways), another relay: another
    # network (another genesis), which the handshake refuses.
    ours = network_file(tmp_path / "network.toml", [alice, bob, dave], {"eve": eve})
    other = network_file(tmp_path / "other.toml", [alice, bob, dave], {"eve": eve})
    with capture_logs() as logs:
        await start(bob, ours)
        await start(alice, ours, [bob.port, dave.port])
        await start(dave, other, [alice.port, bob.port])
        try:
            assert dave.running.node.genesis_hash != bob.running.node.genesis_hash
            await wait_until(lambda: peers(alice, bob), 10, what="alice and bob to peer")

            def refused_everywhere() -> bool:
                return all(events(logs, n, "peer.refused", reason="wrong-network") for n in (alice, bob, dave))

            await wait_until(refused_everywhere, 10, what="wrong-network refusals on alice, bob and dave")
            await asyncio.sleep(1.0)  # several redials each way, none of them a peer
            assert not dave.gossip.peers and dave.key not in alice.gossip.peers and dave.key not in bob.gossip.peers
            assert not events(logs, dave, "peer.connected")
            assert not any(banned_anything(logs, n) for n in (alice, bob, dave))
            # An insider's hello with our genesis but another network name is refused alike.
            conn = await Conn.open(bob.port, eve)
            await conn.send(hello(bob.running.node.genesis_hash, raw_public(eve), os.urandom(32),
                                  network="identity-net-2"))
            assert await refusal(conn) == "wrong-network"
            await conn.close()
        finally:
            await stop(alice, bob, dave)
