"""Provenance attacks against live nodes: nobody can invent, alter or withhold a relay's reading.

Every case runs real ``gridchain relay`` and ``gridchain node`` processes on one network
file that names the members (the honest nodes and, where the case needs one, a dishonest
member whose key the test holds) and the relay. The attacker is this test, speaking only
what docs/protocol.md documents, through ``tests.support.outsider`` (msgpack, struct and
cryptography; no gridchain encoder). Each case asserts:

- the attacker's block (or hello) is refused with the named reason, and the honest node
  logs that reason (``block.rejected`` and a peer event naming it);
- no honest node ever holds the attacker's block (asked over the operator API during the
  run, and looked up in every store once the nodes have stopped);
- no real reading is lost: afterwards every honest main chain holds the relay's readings
  byte for byte as the relay serves them, seals verifying under the relay's key, with
  consecutive sequence numbers and no gap except where the relay signed one, and no
  reading an honest main chain held before the attack missing (a gap notice does not
  excuse that: such readings come back as fills).

The identity cases attack the handshake instead (docs/protocol.md, Handshake): a third
party claiming a member's key, and a listener answering a dial with the dialler's own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support import outsider as o
from tests.support.logs import log_tail, read_events
from tests.support.ports import listen_port
from tests.support.processes import Proc, Processes, answers, wait_status
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(60)

NETWORK = "provenance-net"
DIFFICULTY = 8  # 256 expected hashes: real proof of work, mined by the test in a millisecond
RELAY_ID = "Relay 1"
SUBSTATION = "Test Substation"
RELAY_INTERVAL_S = 0.1  # the relay's finest tick: ten readings a second
CAPTURE_INTERVAL_S = 0.5  # about five readings a block
REDIAL_MAX_S = 1.0  # a refused or dropped link is retried within a second
START_TIMEOUT_S = 15.0  # interpreter start and imports; 2 cores shared by every process
CHAIN_TIMEOUT_S = 15.0  # a few blocks at a capture interval of 0.5 s, with room for a loaded machine
REFUSAL_TIMEOUT_S = 5.0  # a node refuses a bad block or hello in milliseconds
DB_FILE = "chain.sqlite3"  # where a node's data dir keeps its chain (docs/operations.md)
FUTURE_MS = 110_000  # the forged reading: dated 110 s ahead
# The reason a block is refused for carrying an old gap notice of the relay's that does not
# resume at its first reading (docs/protocol.md, consensus rules: checked on the block alone,
# before the branch's sequence is looked at).
OLD_GAP_REASON = "bad-gap-notice"
# The reason a hello is refused when its sender does not prove it holds the key it claims.
PROOF_REASON = "bad-handshake-proof"


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the network -------------------------------------------------------------------------------
@dataclass
class Node:
    name: str
    key: Ed25519PrivateKey
    port: int
    data_dir: Path
    peers: list[int]
    proc: Proc | None = None

    @property
    def public(self) -> bytes:
        return o.raw_public(self.key)

    def events(self, names: Sequence[str] | None = None) -> list[dict]:
        assert self.proc is not None
        return read_events(self.proc.log_path, names)


@dataclass
class Net:
    root: Path
    procs: Processes
    relay_port: int
    relay_dir: Path
    relay_key: bytes = b""
    relay: Proc | None = None
    network: o.Network | None = None
    file: Path | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    attackers: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    genesis: bytes = b""
    # Everything the attacker sent: no honest store may ever hold one of these.
    attacker_blocks: list[bytes] = field(default_factory=list)

    @property
    def honest(self) -> list[Node]:
        return list(self.nodes.values())

    # --- the relay ---------------------------------------------------------------------
    def spawn_relay(self) -> Proc:
        self.relay = self.procs.spawn("relay", self.relay_port, [
            "relay", "--port", str(self.relay_port), "--interval", f"{RELAY_INTERVAL_S:g}", "--seed", "1",
            "--fault-probability", "0", "--relay-id", RELAY_ID, "--substation", SUBSTATION,
            "--data-dir", str(self.relay_dir), "--log-format", "json"])
        return self.relay

    async def wait_relay(self) -> dict:
        info: dict = {}

        async def up() -> bool:
            nonlocal info
            if not self.relay.alive():
                raise AssertionError(f"the relay exited with {self.relay.returncode}: {log_tail(self.relay.log_path)}")
            try:
                info = await o.relay_info(self.relay_port)
            except (OSError, TimeoutError, AssertionError):
                return False
            return info.get("newest_seq") is not None

        await wait_until(up, START_TIMEOUT_S, 0.05, what="the relay to answer info")
        return info

    async def stop_relay(self) -> None:
        codes = await self.procs.stop([self.relay])
        assert codes["relay"] == 0, f"relay exit status {codes}: {log_tail(self.relay.log_path)}"

    # --- nodes -------------------------------------------------------------------------
    def spawn(self, node: Node, network_file: Path | None = None, relays: Sequence[int] | None = None) -> Proc:
        node.proc = self.procs.node(node.name, peers=node.peers, relays=[self.relay_port] if relays is None else relays,
                                    capture_interval_s=CAPTURE_INTERVAL_S, data_dir=node.data_dir, port=node.port,
                                    extra=["--network-file", str(network_file or self.file),
                                           "--redial-max", str(REDIAL_MAX_S)])
        return node.proc

    async def wait_height(self, height: int, nodes: Sequence[Node] | None = None) -> None:
        for node in nodes or self.honest:
            await wait_status(node.proc, lambda info: info["height"] >= height, CHAIN_TIMEOUT_S,
                              f"{node.name} at height {height}")


def make_node(root: Path, name: str, peers: Sequence[int] = (), port: int | None = None) -> Node:
    """A member's node with its key made now, before its first start, as the network file needs."""
    key = Ed25519PrivateKey.generate()
    data_dir = root / name
    o.write_key_file(data_dir / "node.key", key)
    return Node(name, key, port or listen_port(), data_dir, list(peers))


@contextlib.asynccontextmanager
async def network(root: Path, honest: Sequence[str] = ("n0", "n1"), attackers: Sequence[str] = ("mallory",),
                  start: bool = True) -> AsyncIterator[Net]:
    """A relay (its key made on its first start), honest members in a full mesh, and attacker
    members whose keys are in the network file; all stopped (and checked) at the end."""
    with Processes(root, NETWORK, DIFFICULTY) as procs:
        net = Net(root, procs, listen_port(), root / "relay")
        net.spawn_relay()
        info = await net.wait_relay()
        net.relay_key = info["relay_key"]
        ports = {name: listen_port() for name in honest}
        for name in honest:
            net.nodes[name] = make_node(root, name, [p for n, p in ports.items() if n != name], ports[name])
        net.attackers = {name: Ed25519PrivateKey.generate() for name in attackers}
        members = [o.Member(n.name, n.public) for n in net.honest]
        members += [o.Member(name, o.raw_public(key)) for name, key in net.attackers.items()]
        relays = (o.RelayEntry(RELAY_ID, SUBSTATION, net.relay_key),)
        net.network = o.Network(NETWORK, DIFFICULTY, tuple(members), relays)
        net.file = net.network.write(root / "network.toml")
        if start:
            for node in net.honest:
                net.spawn(node)
            for node in net.honest:
                info = await wait_status(node.proc, answers, START_TIMEOUT_S, f"{node.name} to answer")
                net.genesis = bytes.fromhex(info["genesis"])
        try:
            yield net
        finally:
            codes = await procs.stop_all()
            assert all(code in (0, None) for code in codes.values()), f"exit status after SIGTERM: {codes}"
        for block_hash in net.attacker_blocks:
            for node in net.honest:
                assert not stored(node, block_hash), f"{node.name}'s store holds the attacker's {block_hash.hex()[:12]}"


def stored(node: Node, block_hash: bytes) -> bool:
    path = node.data_dir / DB_FILE
    if not path.exists():
        return False
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT 1 FROM blocks WHERE hash = ?", (block_hash,)).fetchone() is not None
    finally:
        db.close()


# --- the attacker --------------------------------------------------------------------------------
@dataclass
class Tip:
    hash: bytes
    height: int
    time_ms: int
    last_seq: int


async def tip_of(node: Node) -> Tip:
    info = await o.status(node.port)
    tip = bytes.fromhex(info["tip"])
    reply = await o.operator(node.port, ["block_request", {"hash": tip, "height": None}])
    assert reply and reply[0] == "block_reply", reply
    block = o.Block.from_wire(reply[1]["block"])
    assert block.relay_id == RELAY_ID and block.rows, f"tip block {tip.hex()[:12]} holds no reading of {RELAY_ID}"
    return Tip(tip, block.height, block.time_ms, block.seqs[-1])


async def seq_held(node: Node) -> int:
    """The relay seq of the reading at ``node``'s tip, 0 while its tip is still genesis."""
    info = await o.status(node.port)
    if info["height"] == 0:
        return 0
    return (await tip_of(node)).last_seq


async def single_sealed_rows(net: Net, after_seq: int, count: int) -> list[o.Answer]:
    """The ``count`` readings after ``after_seq``, each alone under a seal of its own (the relay
    seals whatever run it is asked for): one request each, pipelined on one connection."""
    conn = await o.Conn.open(net.relay_port)
    try:
        for i in range(count):
            await conn.send({"type": "read", "after_seq": after_seq + i, "limit": 1})
        return [o.readings_answer(await conn.recv()) for _ in range(count)]
    finally:
        await conn.close()


async def relay_rows(net: Net, after_seq: int, count: int) -> o.Answer:
    """``count`` sealed rows after ``after_seq``, as the relay serves them to anybody."""
    answer: o.Answer | None = None

    async def ready() -> bool:
        nonlocal answer
        answer = await o.relay_read(net.relay_port, after_seq, count)
        return len(answer.rows) == count

    await wait_until(ready, 10.0, 0.05, what=f"{count} readings after seq {after_seq} at the relay")
    return answer


def attack_block(net: Net, tip: Tip, attacker: str, rows: list[bytes], seals: list, *, gap: list | None = None,
                 relay_id: str = RELAY_ID, substation: str = SUBSTATION, relay_key: bytes | None = None) -> o.Block:
    block = o.make_block(parent=tip.hash, height=tip.height + 1, time_ms=max(now_ms(), tip.time_ms + 1),
                         bits=DIFFICULTY, miner=net.attackers[attacker], miner_name=attacker, relay_id=relay_id,
                         substation=substation, relay_key=net.relay_key if relay_key is None else relay_key,
                         rows=rows, seals=seals, gap=gap)
    net.attacker_blocks.append(block.hash)
    return block


async def connect_as(net: Net, node: Node, name: str, key: Ed25519PrivateKey,
                     claimed_key: bytes | None = None) -> tuple[o.Conn, object]:
    """Open a peer link to ``node`` as ``name``, claiming ``claimed_key`` (default: ``key``'s own);
    the handshake as docs/protocol.md describes it, over TLS with ``key``'s certificate
    (docs/security.md). The link and the node's last answer."""
    conn = await o.Conn.peer(node.port, key)
    reply = await o.dial_handshake(conn, network=NETWORK, genesis=net.genesis, name=name, signer=key,
                                   claimed_key=claimed_key, timeout=REFUSAL_TIMEOUT_S)
    return conn, reply


async def push(net: Net, node: Node, attacker: str, block: o.Block) -> str:
    """Push ``block`` to ``node`` as member ``attacker``; the code of the node's ``reject``."""
    conn, reply = await connect_as(net, node, attacker, net.attackers[attacker])
    try:
        assert reply and reply[0] == "hello_proof", f"{node.name} refused the member {attacker}'s handshake: {reply}"
        await conn.send(o.block_message(block))
        deadline = time.monotonic() + REFUSAL_TIMEOUT_S
        while time.monotonic() < deadline:
            message = await conn.recv(deadline - time.monotonic())
            if message is None:
                raise AssertionError(f"{node.name} closed the link without a reject")
            if message[0] == "reject":
                assert await conn.closed_within(REFUSAL_TIMEOUT_S), f"{node.name} kept the link after its reject"
                return message[1]["code"]
        raise AssertionError(f"{node.name} did not refuse the block within {REFUSAL_TIMEOUT_S} s")
    finally:
        await conn.close()


async def refused(net: Net, node: Node, attacker: str, block: o.Block, reason: str) -> None:
    """The node refuses the block with ``reason`` on the wire and in its log, bans the sender,
    and no honest node holds the block."""
    code = await push(net, node, attacker, block)
    assert code == reason, f"{node.name} refused the block with {code!r}, expected {reason!r}"
    short, sender = block.hash.hex()[:12], o.raw_public(net.attackers[attacker]).hex()[:16]

    def logged() -> bool:
        rejected = [e for e in node.events(["block.rejected"]) if e.get("hash") == short]
        banned = [e for e in node.events(["peer.banned"]) if e.get("node_key") == sender]
        return bool(rejected) and bool(banned) and rejected[0]["reason"] == reason and banned[0]["reason"] == reason

    await wait_until(logged, REFUSAL_TIMEOUT_S, 0.05,
                     what=f"{node.name} to log block.rejected and peer.banned with {reason}")
    await never_held(net, block.hash)


async def never_held(net: Net, block_hash: bytes) -> None:
    for node in net.honest:
        assert not await o.has_block(node.port, block_hash), f"{node.name} holds the attacker's block"


# --- no reading lost -----------------------------------------------------------------------------
async def served_rows(net: Net, after_seq: int, upto: int) -> dict[int, bytes]:
    """The relay's own rows from ``after_seq`` + 1 up to ``upto`` (or as far as it holds)."""
    rows: dict[int, bytes] = {}
    while after_seq < upto:
        answer = await o.relay_read(net.relay_port, after_seq, 10_000)
        if not answer.rows:
            break
        for row in answer.rows:
            rows[o.Row.unpack(row).seq] = row
        after_seq = o.Row.unpack(answer.rows[-1]).seq
    return rows


async def nothing_lost(net: Net, past_seq: int, *, gaps: Sequence[int] = (),
                       relay_rows_before: dict[int, bytes] | None = None, kept_upto: int = 0) -> list[o.Block]:
    """Wait until every honest main chain holds the relay's readings beyond ``past_seq``, then
    audit each: a gap only where ``gaps`` (resume seqs of the relay's own notices) say, every
    row exactly the relay's (as served now, or ``relay_rows_before`` for rows it no longer
    holds), and, gap or not, every seq up to ``kept_upto`` (readings an honest main chain
    held before the attack: the relay's notice does not excuse losing those). The first
    honest node's main chain."""
    chains = {}
    for node in net.honest:
        async def beyond() -> bool:
            return await seq_held(node) > past_seq

        await wait_until(beyond, CHAIN_TIMEOUT_S, 0.1, what=f"{node.name}'s chain to hold readings past seq {past_seq}")
        blocks = await o.main_chain(node.port)
        rows, found_gaps = o.audit_chain(blocks, RELAY_ID, net.relay_key)
        assert [b for _, b in found_gaps] == list(gaps), \
            f"{node.name}: gaps (last seq, resume seq) {found_gaps}, expected the relay's resume seqs {list(gaps)}"
        assert min(rows) == 1, f"{node.name}: readings start at seq {min(rows)}, not 1"
        served = dict(relay_rows_before or {})
        served.update(await served_rows(net, 0, max(rows)))
        assert max(rows) > past_seq
        for seq, row in rows.items():
            if seq in served:
                assert row == served[seq], f"{node.name}: seq {seq} on the chain differs from the relay's reading"
        missing = [seq for seq in served if seq <= max(rows) and seq not in rows
                   and not any(a < seq < b for a, b in found_gaps)]
        assert not missing, f"{node.name}: relay readings missing from the chain: {missing[:10]}"
        dropped = [seq for seq in range(1, kept_upto + 1) if seq not in rows]
        assert not dropped, (f"{node.name}: readings that were on the honest main chain are gone from it for good: "
                             f"seqs {dropped[:10]}{'...' if len(dropped) > 10 else ''} (gaps {found_gaps})")
        chains[node.name] = blocks
    for block_hash in net.attacker_blocks:
        await never_held(net, block_hash)
    return list(chains.values())[0]


# --- 1. readings the relay never signed ----------------------------------------------------------
def invented_rows(first_seq: int, count: int) -> list[bytes]:
    t = now_ms()
    return [o.Row(first_seq + i, t - (count - i) * 100, 0, 0,
                  (115.0, 115.1, 114.9, 400.0 + i, 401.0, 399.0, 60.0, 0.97, 80.0, 20.0)).pack() for i in range(count)]


@pytest.mark.parametrize("named_key, reason", [("relay", "bad-relay-signature"), ("forger", "relay-key-mismatch")],
                         ids=["relay-key-named", "own-key-named"])
async def test_readings_signed_by_another_key_are_refused(tmp_path: Path, named_key: str, reason: str) -> None:
    async with network(tmp_path) as net:
        await net.wait_height(2)
        n0 = net.nodes["n0"]
        tip = await tip_of(n0)
        forger = Ed25519PrivateKey.generate()
        rows = invented_rows(tip.last_seq + 1, 5)
        block = attack_block(net, tip, "mallory", rows, [o.sign_seal(forger, RELAY_ID, rows)],
                             relay_key=net.relay_key if named_key == "relay" else o.raw_public(forger))
        await refused(net, n0, "mallory", block, reason)
        await nothing_lost(net, tip.last_seq + 5)


async def test_a_relay_not_in_the_network_file_is_refused(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        await net.wait_height(2)
        n0 = net.nodes["n0"]
        tip = await tip_of(n0)
        forger = Ed25519PrivateKey.generate()
        rows = invented_rows(1, 5)
        block = attack_block(net, tip, "mallory", rows, [o.sign_seal(forger, "Relay 9", rows)], relay_id="Relay 9",
                             relay_key=o.raw_public(forger))
        await refused(net, n0, "mallory", block, "unknown-relay")
        await nothing_lost(net, tip.last_seq + 5)


@pytest.mark.parametrize("announced, reason", [("relay", "bad-relay-signature"), ("forger", "relay-key-mismatch")],
                         ids=["announces-relay-key", "announces-own-key"])
async def test_a_node_pointed_at_a_fake_relay_never_mines_its_readings(tmp_path: Path, announced: str,
                                                                         reason: str) -> None:
    """A fake relay takes the real one's id and announces its public key (or its own), but can
    only sign with a key of its own: the node's relay client refuses every answer before a
    capture, checking against the network file's key."""
    async with network(tmp_path, attackers=(), start=False) as net:
        forger = Ed25519PrivateKey.generate()
        key = net.relay_key if announced == "relay" else o.raw_public(forger)

        async def fake_relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = o.Conn(reader, writer)
            try:
                while (request := await conn.recv(30.0)) is not None:
                    common = {"relay_id": RELAY_ID, "substation": SUBSTATION, "relay_key": key, "now_ms": now_ms()}
                    if request.get("type") == "info":
                        await conn.send({"type": "info", **common, "interval_ms": 100, "buffered": 5, "oldest_seq": 1,
                                         "newest_seq": 5, "newest_ms": now_ms(), "openings": 0, "gap": None})
                        continue
                    after = request["after_seq"]
                    rows = invented_rows(after + 1, 5)
                    await conn.send({"type": "readings", **common, "newest_seq": after + 5, "rows": b"".join(rows),
                                     "seals": [o.sign_seal(forger, RELAY_ID, rows)], "gap": None})
            finally:
                await conn.close()

        server = await asyncio.start_server(fake_relay, "127.0.0.1", 0)
        try:
            n0, n1 = net.nodes["n0"], net.nodes["n1"]
            net.spawn(n0, relays=[server.sockets[0].getsockname()[1]])
            net.spawn(n1)
            for node in (n0, n1):
                await wait_status(node.proc, answers, START_TIMEOUT_S, f"{node.name} to answer")

            def taken() -> list[dict]:  # the fake relay's readings or key got past n0's relay client
                return (n0.events(["block.mined", "capture.new"])
                        + [e for e in n0.events(["relay.key_pinned"]) if e.get("key") != net.relay_key.hex()])

            await wait_until(lambda: taken() or [e for e in n0.events(["relay.bad_data"]) if e.get("reason") == reason],
                             CHAIN_TIMEOUT_S, 0.05, what=f"n0 to refuse the fake relay's answers ({reason})")
            await net.wait_height(4)
            assert not taken(), f"n0 took the fake relay's key or readings: {taken()[:3]}"
            await nothing_lost(net, (await tip_of(n1)).last_seq)
        finally:
            server.close()
            await server.wait_closed()


# --- 2. a member altering the relay's signed word -----------------------------------------------
def forge(row: bytes, what: str) -> bytes:
    r = o.Row.unpack(row)
    if what == "value":
        values = list(r.values)
        values[o.VALUES.index("active_power")] += 0.5
        return replace(r, values=tuple(values)).pack()
    if what == "future-timestamp":
        return replace(r, timestamp_ms=now_ms() + FUTURE_MS).pack()
    assert what == "openings"
    return replace(r, openings=r.openings + 1000).pack()


@pytest.mark.parametrize("what", ["value", "future-timestamp", "openings"])
async def test_a_member_altering_a_signed_reading_is_refused(tmp_path: Path, what: str) -> None:
    async with network(tmp_path) as net:
        await net.wait_height(2)
        n0 = net.nodes["n0"]
        tip = await tip_of(n0)
        answer = await relay_rows(net, tip.last_seq, 6)
        assert o.seal_verifies(net.relay_key, RELAY_ID, answer.rows, answer.seals[0]), "the relay's own seal fails"
        rows = list(answer.rows)
        rows[-1] = forge(rows[-1], what)
        block = attack_block(net, tip, "mallory", rows, answer.seals)
        await refused(net, n0, "mallory", block, "bad-relay-signature")
        # The real reading the forger replaced reaches the chain as the relay signed it.
        await nothing_lost(net, o.Row.unpack(rows[-1]).seq)


# --- 3, 4. a member withholding readings ---------------------------------------------------------
async def test_a_member_skipping_readings_is_refused(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        await net.wait_height(2)
        n0 = net.nodes["n0"]
        tip = await tip_of(n0)
        # Genuine rows, sealed by the relay itself on request, but three readings later than due.
        answer = await relay_rows(net, tip.last_seq + 3, 5)
        assert answer.gap is None and o.seal_verifies(net.relay_key, RELAY_ID, answer.rows, answer.seals[0])
        block = attack_block(net, tip, "mallory", answer.rows, answer.seals)
        await refused(net, n0, "mallory", block, "sequence-gap")
        await nothing_lost(net, tip.last_seq + 8)


async def lose_relay_buffer(net: Net) -> tuple[int, int, dict[int, bytes]]:
    """Stop the relay, delete its journal (its buffer of signed rows), start it again. The
    honest chain's last seq before, the resume seq of the gap notice the relay signs at boot,
    and the rows it served before the loss."""
    chain_before = min([(await tip_of(node)).last_seq for node in net.honest])
    before = await served_rows(net, 0, 2**63)
    await net.stop_relay()
    (net.relay_dir / "relay.journal").unlink()
    net.spawn_relay()
    info = await net.wait_relay()
    assert info["relay_key"] == net.relay_key, "the relay came back with another key"
    notices = read_events(net.relay.log_path, ["relay.gap_signed"])
    assert len(notices) == 1, f"gap notices the relay logged: {notices}"
    resume = notices[0]["resume_seq"]
    assert resume > max(before), f"the relay resumes at {resume}, not past its last seq {max(before)}"
    assert info["gap"] is not None and info["gap"][0] == resume, f"the relay's info holds the gap {info['gap']}"
    return chain_before, resume, before


async def past(node: Node, seq: int) -> bool:
    return (await tip_of(node)).last_seq > seq


async def test_a_member_reusing_an_old_gap_notice_to_skip_readings_is_refused(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        await net.wait_height(2)
        _, resume, before = await lose_relay_buffer(net)
        n0 = net.nodes["n0"]
        # The honest chain takes the relay's gap, then goes on past it.
        await wait_until(lambda: past(n0, resume + 5), CHAIN_TIMEOUT_S, 0.1, what="the chain to pass the relay's gap")
        chain = await o.main_chain(n0.port)
        old_gap = next(b.gap for b in chain if b.gap is not None)
        assert old_gap[0] == resume and o.gap_verifies(net.relay_key, RELAY_ID, old_gap)
        kept = max(seq for b in chain for seq in b.seqs if seq < resume)
        tip = await tip_of(n0)
        answer = await relay_rows(net, tip.last_seq + 3, 5)
        block = attack_block(net, tip, "mallory", answer.rows, answer.seals, gap=old_gap)
        await refused(net, n0, "mallory", block, OLD_GAP_REASON)
        await nothing_lost(net, tip.last_seq + 8, gaps=[resume], relay_rows_before=before, kept_upto=kept)


async def test_a_member_reusing_an_old_gap_notice_on_a_fork_cannot_drop_readings(tmp_path: Path) -> None:
    """The relay lost its buffer; the readings it had made just before are on the honest chain
    and nowhere else. A member forks off below them, puts the relay's gap notice (genuine,
    already on the main chain) on its first block and outmines the honest branch. Those
    readings must not vanish from the chain for good."""
    async with network(tmp_path) as net:
        await net.wait_height(3)
        n0 = net.nodes["n0"]
        _, resume, before = await lose_relay_buffer(net)
        await wait_until(lambda: past(n0, resume + 5), CHAIN_TIMEOUT_S, 0.1, what="the chain to pass the relay's gap")
        chain = await o.main_chain(n0.port)
        old_gap = next(b.gap for b in chain if b.gap is not None)
        fork = chain[0]  # height 1: every reading after its last one is what the fork drops
        kept = max(seq for b in chain for seq in b.seqs if seq < resume)  # on the main chain before the attack
        assert kept > fork.seqs[-1], "no reading between the fork point and the gap"
        parent = Tip(fork.hash, fork.height, fork.time_ms, fork.seqs[-1])
        honest_height = (await o.status(n0.port))["height"]
        needed = honest_height - parent.height + 8  # a few blocks more than the honest branch, mined meanwhile
        await relay_rows(net, resume - 1 + needed - 1, 1)  # the relay has made that many readings since its restart
        blocks, gap = [], old_gap
        for answer in await single_sealed_rows(net, resume - 1, needed):
            block = o.make_block(parent=parent.hash, height=parent.height + 1,
                                 time_ms=max(now_ms(), parent.time_ms + 1), bits=DIFFICULTY,
                                 miner=net.attackers["mallory"], miner_name="mallory", relay_id=RELAY_ID,
                                 substation=SUBSTATION, relay_key=net.relay_key, rows=answer.rows,
                                 seals=answer.seals, gap=gap)
            blocks.append(block)
            parent, gap = Tip(block.hash, block.height, block.time_ms, block.seqs[-1]), None
        after_seq = parent.last_seq
        conn, reply = await connect_as(net, n0, "mallory", net.attackers["mallory"])
        try:
            assert reply and reply[0] == "hello_proof", reply
            for block in blocks:
                await conn.send(o.block_message(block))
            await conn.send(["ping", {"nonce": 7}])  # answered after every block before it was handled
            while (message := await conn.recv(REFUSAL_TIMEOUT_S)) is not None and message[0] != "pong":
                pass
        finally:
            await conn.close()
        await nothing_lost(net, after_seq + 5, gaps=[resume], relay_rows_before=before, kept_upto=kept)


# --- 5. another network file -----------------------------------------------------------------
async def test_a_node_with_another_network_file_never_peers(tmp_path: Path) -> None:
    async with network(tmp_path, attackers=()) as net:
        assert net.genesis == net.network.genesis(), "the genesis is not the one docs/protocol.md derives from the file"
        n0, n1 = net.nodes["n0"], net.nodes["n1"]
        # Same name, difficulty and relay; one more member: another network.
        other = make_node(tmp_path, "n2", [n0.port, n1.port])
        wider = replace(net.network, members=net.network.members + (o.Member("n2", other.public),))
        other_file = wider.write(tmp_path / "other-network.toml")
        net.spawn(other, other_file)
        info = await wait_status(other.proc, answers, START_TIMEOUT_S, "n2 to answer")
        assert bytes.fromhex(info["genesis"]) == wider.genesis() != net.genesis
        await net.wait_height(3, [n0, n1, other])

        def refusals(node: Node) -> list[dict]:
            # n2 is no member of n0's and n1's file: their TLS refuses its certificate (not-a-member);
            # a member with another file would get as far as the hello (wrong-network).
            return [e for e in node.events(["peer.refused", "peer.rejected_us"])
                    if {"wrong-network", "not-a-member"} & {e.get("reason"), e.get("code")}]

        await wait_until(lambda: refusals(n0) and refusals(n1), REFUSAL_TIMEOUT_S * 2, 0.1,
                         what="n0 and n1 to refuse n2 (not-a-member or wrong-network)")
        for _ in range(10):  # n2 keeps dialling; it never becomes anybody's peer
            for node in (n0, n1):
                peers = (await o.status(node.port))["peers"]
                keys = {p.get("node_key") for p in peers}
                assert other.public.hex() not in keys, f"{node.name} peers with n2: {peers}"
            peers = (await o.status(other.port))["peers"]
            assert not [p for p in peers if p.get("state") == "ready"], f"n2 has peers: {peers}"
            await asyncio.sleep(0.2)
        # Neither side ever holds the other's blocks.
        for block in await o.main_chain(other.port):
            for node in (n0, n1):
                assert not await o.has_block(node.port, block.hash), f"{node.name} holds n2's block {block.height}"
        for block in await o.main_chain(n0.port):
            assert not await o.has_block(other.port, block.hash), f"n2 holds n0's block {block.height}"
        await nothing_lost(net, (await tip_of(n0)).last_seq)


# --- 6. relay restarts -------------------------------------------------------------------------
async def test_a_relay_restart_that_keeps_its_sequence_leaves_no_gap(tmp_path: Path) -> None:
    async with network(tmp_path, attackers=()) as net:
        await net.wait_height(2)
        await net.stop_relay()
        last = last_served(net)
        net.spawn_relay()
        info = await net.wait_relay()
        assert info["relay_key"] == net.relay_key and info["gap"] is None, f"after a clean restart: {info}"
        resumed = read_events(net.relay.log_path, ["relay.sequence_resumed"])
        assert resumed[-1]["why"] == "continued" and resumed[-1]["next_seq"] == last + 1, resumed[-1]
        assert not read_events(net.relay.log_path, ["relay.gap_signed"])
        chain = await nothing_lost(net, last + 5)
        assert all(block.gap is None for block in chain), "a gap notice on the chain after a clean restart"


def last_served(net: Net) -> int:
    """The last seq the relay made before it stopped, from its final log line."""
    stopped = read_events(net.relay.log_path, ["relay.stopped"])
    assert stopped, f"the relay logged no relay.stopped: {log_tail(net.relay.log_path)}"
    return stopped[-1]["next_seq"] - 1


async def test_a_relay_restart_that_loses_its_buffer_shows_exactly_its_signed_gap(tmp_path: Path) -> None:
    async with network(tmp_path, attackers=()) as net:
        await net.wait_height(2)
        chain_before, resume, before = await lose_relay_buffer(net)
        await wait_until(lambda: past(net.nodes["n0"], resume), CHAIN_TIMEOUT_S, 0.1, what="the chain to take the gap")
        kept = max(seq for b in await o.main_chain(net.nodes["n0"].port) for seq in b.seqs if seq < resume)
        assert kept >= chain_before, "readings on the chain before the loss went missing"
        chain = await nothing_lost(net, resume + 5, gaps=[resume], relay_rows_before=before, kept_upto=kept)
        gap_block = next(b for b in chain if b.gap is not None)
        assert gap_block.seqs[0] == resume == gap_block.gap[0]


# --- 7. identities -----------------------------------------------------------------------------
async def test_a_third_party_claiming_a_members_key_is_refused_and_the_member_keeps_peering(tmp_path: Path) -> None:
    async with network(tmp_path, attackers=()) as net:
        # The victim n1 is the member with the smaller key: without a proof, a hello claiming it
        # would even displace its real link to n0 (the link dialled by the smaller key is kept).
        n0, n1 = sorted(net.honest, key=lambda n: n.public, reverse=True)
        await net.wait_height(2)
        await wait_until(lambda: _peers_with(n0, n1), REFUSAL_TIMEOUT_S, 0.1, what="n0 and n1 to peer")
        links = len([e for e in n0.events(["peer.connected"]) if e.get("node_key") == n1.public.hex()[:16]])
        impostor = Ed25519PrivateKey.generate()  # not n1's: the impostor only knows n1's public key
        conn, reply = await connect_as(net, n0, n1.name, impostor, claimed_key=n1.public)
        try:
            if reply and reply[0] == "hello_proof":
                # Anything but the proof it cannot make: a node that took the claim at its word
                # now bans the honest member's key for the impostor's offence.
                await conn.send(["no-such-message", {}])
                await conn.closed_within(REFUSAL_TIMEOUT_S)
        finally:
            await conn.close()

        def bans() -> list[dict]:
            return [e for e in n0.events(["peer.banned"]) if e.get("node_key") == n1.public.hex()[:16]]

        def refusals() -> list[dict]:
            # On a TLS network the impostor's certificate already fails (docs/security.md): not-a-member.
            return [e for e in n0.events(["peer.refused"]) if e.get("reason") in (PROOF_REASON, "not-a-member")]

        await wait_until(lambda: bans() or refusals(), REFUSAL_TIMEOUT_S, 0.05,
                         what=f"{n0.name} to refuse the impostor (not-a-member or {PROOF_REASON})")
        assert not bans(), (f"{n0.name} banned the honest member {n1.name} on the word of a party without its "
                            f"private key (it answered that party's hello with {reply[0] if reply else None!r}): "
                            f"{bans()}")
        relinked = len([e for e in n0.events(["peer.connected"]) if e.get("node_key") == n1.public.hex()[:16]])
        assert relinked == links, f"the impostor displaced {n1.name}'s link to {n0.name}"
        assert await _peers_with(n0, n1), f"{n1.name} no longer peers with {n0.name}"
        height = (await o.status(n1.port))["height"]
        await net.wait_height(height + 2, [n0])
        await nothing_lost(net, (await tip_of(n1)).last_seq)


async def test_a_listener_answering_with_the_diallers_own_key_does_not_stop_the_dialler(tmp_path: Path) -> None:
    async with network(tmp_path, honest=("n0",), attackers=(), start=False) as net:
        n0 = net.nodes["n0"]
        n1 = make_node(tmp_path, "n1")  # a member who will listen, later, where the impostor listens now
        net.network = replace(net.network, members=net.network.members + (o.Member("n1", n1.public),))
        net.network.write(net.file)
        n0.peers = [n1.port]
        dials: list[object] = []  # each dial's answer from n0 to the impostor's handshake
        forger = Ed25519PrivateKey.generate()
        # The peer link is TLS (docs/security.md): the impostor answers with a certificate of its
        # own key (it cannot make n1's), and n0 must refuse it there without giving up the address.
        impostor_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "c").write_bytes(o.node_certificate(forger))
            (Path(scratch) / "k").write_bytes(forger.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            impostor_tls.load_cert_chain(Path(scratch) / "c", Path(scratch) / "k")

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = o.Conn(reader, writer)
            try:
                try:
                    await writer.start_tls(impostor_tls)
                except (OSError, ConnectionError) as exc:
                    dials.append(("tls-refused", str(exc)))
                    return
                theirs = await conn.recv(REFUSAL_TIMEOUT_S)
                if not theirs or theirs[0] != "hello":
                    return
                body, nonce = theirs[1], os.urandom(32)
                await conn.send(o.hello(network=body["network"], genesis=body["genesis"], node_key=body["node_key"],
                                        name="n0", nonce=nonce))
                proof = await conn.recv(REFUSAL_TIMEOUT_S)  # n0 proves its key; the impostor cannot
                if proof and proof[0] == "hello_proof":
                    await conn.send(o.hello_proof(forger, genesis=body["genesis"], role=o.LISTENER,
                                                  signer_key=body["node_key"], other_key=body["node_key"],
                                                  signer_nonce=nonce, other_nonce=body["nonce"]))
                    proof = await conn.recv(REFUSAL_TIMEOUT_S)
                dials.append(proof)
            finally:
                await conn.close()

        server = await asyncio.start_server(impostor, "127.0.0.1", n1.port)
        try:
            net.spawn(n0)
            await wait_status(n0.proc, answers, START_TIMEOUT_S, "n0 to answer")
            await wait_until(lambda: len(dials) >= 2 or n0.events(["peer.dial_stopped"]),
                             4 * REDIAL_MAX_S + REFUSAL_TIMEOUT_S, 0.05, what="n0 to dial the impostor's address again")
        finally:
            server.close()
            await server.wait_closed()
        stopped = n0.events(["peer.dial_stopped"])
        assert not stopped, (f"n0 gave up dialling 127.0.0.1:{n1.port} for good, on the word of a listener "
                             f"without its key (n0 answered it {dials}): {stopped}")
        assert all(d and (d[0] == "tls-refused" or (d[0] == "reject" and d[1]["code"] == PROOF_REASON))
                   for d in dials), dials
        # The real member starts where the impostor was: n0 is still dialling, and peers.
        net.nodes["n1"] = n1
        net.spawn(n1)
        await wait_until(lambda: _peers_with(n0, n1), CHAIN_TIMEOUT_S, 0.1, what="n0 to peer with n1")
        await nothing_lost(net, await seq_held(n0))


async def test_a_listener_relaying_the_diallers_own_handshake_does_not_stop_the_dialler(tmp_path: Path) -> None:
    """The impostor cannot sign for n0, but it need not: listening where n0 dials, it opens a
    connection to n0 and passes the bytes through, so n0 proves its own key to itself. A
    squatter on a configured address must not make n0 give that address up for good."""
    async with network(tmp_path, honest=("n0",), attackers=(), start=False) as net:
        n0 = net.nodes["n0"]
        n1 = make_node(tmp_path, "n1")  # the member who will listen there once the squatter is gone
        net.network = replace(net.network, members=net.network.members + (o.Member("n1", n1.public),))
        net.network.write(net.file)
        n0.peers = [n1.port]
        relayed: list[int] = []

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        async def squatter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            relayed.append(1)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", n0.port)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        server = await asyncio.start_server(squatter, "127.0.0.1", n1.port)
        try:
            net.spawn(n0)
            await wait_status(n0.proc, answers, START_TIMEOUT_S, "n0 to answer")
            await wait_until(lambda: len(relayed) >= 2 or n0.events(["peer.dial_stopped"]),
                             4 * REDIAL_MAX_S + REFUSAL_TIMEOUT_S, 0.05, what="n0 to dial the squatted address again")
        finally:
            server.close()
            await server.wait_closed()
        stopped = n0.events(["peer.dial_stopped"])
        assert not stopped, (f"n0 gave up dialling 127.0.0.1:{n1.port} for good after a squatter relayed it to "
                             f"itself: {stopped}")
        net.nodes["n1"] = n1
        net.spawn(n1)
        await wait_until(lambda: _peers_with(n0, n1), CHAIN_TIMEOUT_S, 0.1, what="n0 to peer with n1")
        await nothing_lost(net, (await tip_of(n0)).last_seq)


async def _peers_with(node: Node, other: Node) -> bool:
    try:
        peers = (await o.status(node.port))["peers"]
    except (OSError, TimeoutError, AssertionError):
        return False
    return any(p.get("node_key") == other.public.hex() and p.get("state") == "ready" for p in peers)
