"""Requests that cost the node real work, made by an insider against live nodes: each is bounded.

Every case runs real nodes on 127.0.0.1 on one network file, with chains built beforehand
(tests.support.blocks, mined and signed by a member, readings sealed by the network's relay)
and copied into their data dirs. The attacker is this test speaking as docs/protocol.md and
docs/security.md document it (tests.support.outsider): an operator with the admin token, or
a member ("eve", whose key is in the network file) over TLS 1.3 with the handshake proof.
Each case measures what the attack costs the node now, prints it, and asserts a generous
bound that the attack broke before:

- 32 admin sessions looping `verify_request` on a 3,000-block chain: at most 16 admitted (the
  other operator slots stay free for `status`), one audit at a time in a worker thread,
  reused for the same tip (CPU off the event loop's thread, memory, and the `status`
  answers while it runs);
- `headers_request` for 1,000 heights of large blocks: answered from the block index;
- `get_blocks` with random locators, 4 in flight: throttled, then the peer is banned
  (`get-blocks-flood`), while a new member syncing from the node is never held back;
- a peer claiming huge work that answers every sync request with the same parentless block:
  the sync moves on, an honest peer's blocks arrive within seconds;
- a branch flip 1,000 blocks deep, back and forth, pushed one block at a time, and one that
  arrives in sync batches (a member with a heavier 1,001-block branch): the event loop is
  never held long (measured in the test's own loop, which the node runs in).

Run as ``python -m tests.integration.test_costly_requests verify-flood PORT TOKEN SECONDS
SESSIONS`` it is the verify flood itself, in a process of its own (as the attacker's would
be), printing ``answers N busy M``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from tests.support import outsider as o

pytestmark = pytest.mark.timeout(180)

NETWORK = "cost-net"
RELAY_ID = "relay-1"
SUBSTATION = "North"
CHAIN_BLOCKS = 3_000  # the audit flood ran on a 3,000-block chain
FLIP_DEPTH = 1_000  # the branch flip
FLOOD_SECONDS = 10.0
VERIFY_SESSIONS = 32  # MAX_CLIENTS: every operator session the node allows
STATUS_BOUND_S = 1.0  # each `status` during a flood answers within this (p99 asserted below)
IO_TIMEOUT_S = 5.0
SEEDS = {"alice": b"\x11" * 32, "bob": b"\x22" * 32, "carol": b"\x33" * 32, "eve": b"\xee" * 32}


# --- the network and its nodes ---------------------------------------------------------------------
def node_key(name: str):
    from gridchain.identity.keys import NodeKey

    return NodeKey.from_seed(SEEDS[name])


def private_key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEEDS[name])


def network_document():
    from gridchain.identity.network_file import Member, NetworkDocument, RelayEntry
    from tests.support.blocks import RELAY_KEY
    from tests.support.nodes import TEST_DIFFICULTY

    members = tuple(Member(name, node_key(name).public_key) for name in SEEDS)
    return NetworkDocument(NETWORK, TEST_DIFFICULTY, members, (RelayEntry(RELAY_ID, SUBSTATION, RELAY_KEY.public_key),))


@dataclass
class Party:
    name: str
    data_dir: Path
    port: int
    running: object | None = None

    @property
    def node(self):
        return self.running.node

    @property
    def api(self) -> int:
        return o.operator_port(self.port)

    @property
    def key(self) -> bytes:
        return node_key(self.name).public_key


def party(root: Path, name: str, store: Path | None = None) -> Party:
    """A member's data dir: its key file and, if given, a copy of a store built beforehand."""
    from gridchain.ledger.store import DB_FILE
    from tests.support.ports import free_port

    data_dir = root / name
    o.write_key_file(data_dir / "node.key", private_key(name))
    if store is not None:
        shutil.copy(store / DB_FILE, data_dir / DB_FILE)
    return Party(name, data_dir, free_port())


async def start(member: Party, net_file: Path, dials: list[int] = ()) -> Party:
    from tests.support.nodes import node_config, start_node

    member.running = await start_node(node_config(member.data_dir, member.port, list(dials), [], name=member.name,
                                                  network=NETWORK, network_file=net_file, redial_max_s=0.3))
    return member


def build_store(data_dir: Path, *branches: list) -> None:
    """A store holding ``branches`` (lists of blocks), added in order: the first is the main chain."""
    from gridchain.ledger.ledger import Ledger

    data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(data_dir, network_document().params())
    try:
        for blocks in branches:
            for i in range(0, len(blocks), 500):
                result = ledger.add_blocks(blocks[i:i + 500], int(time.time() * 1000))
                assert result.error is None, result.error
    finally:
        ledger.close()


def chain_line(count: int, seed: int, tip=None, per_block: int = 6) -> list:
    """``count`` valid blocks mined by alice (a member) on ``tip`` (genesis by default)."""
    from gridchain.consensus.chain import Chain
    from gridchain.consensus.genesis import make_genesis
    from tests.support.blocks import line, tip_of

    params = network_document().params()
    if tip is None:
        tip = tip_of(Chain(make_genesis(params), params), RELAY_ID)
    return list(line(tip, count, node_key("alice"), params.bits, relay_id=RELAY_ID, substation=SUBSTATION,
                     miner_name="alice", per_block=per_block, rng=random.Random(seed)))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Stores built once for the module: a 3,000-block chain, and two 1,000-block branches."""
    root = tmp_path_factory.mktemp("stores")
    main = chain_line(CHAIN_BLOCKS, 1)
    build_store(root / "long", main)
    branch_a = chain_line(FLIP_DEPTH + 2, 2)
    branch_b = chain_line(FLIP_DEPTH + 1, 3)
    build_store(root / "forked", branch_a[:FLIP_DEPTH], branch_b[:FLIP_DEPTH])
    build_store(root / "a_line", branch_a[:FLIP_DEPTH])
    build_store(root / "b_line", branch_b)
    assert branch_a[0].hash != branch_b[0].hash
    return {"long": root / "long", "long_blocks": main, "forked": root / "forked",
            "a_next": branch_a[FLIP_DEPTH:], "b_next": branch_b[FLIP_DEPTH:],
            "a_line": root / "a_line", "b_line": root / "b_line", "b_tip": branch_b[-1]}


@pytest.fixture
def net_file(tmp_path) -> Path:
    path = tmp_path / "network.toml"
    path.write_text(network_document().to_toml())
    return path


@pytest.fixture
async def nodes():
    """Every node a case starts, shut down at its end."""
    started: list[Party] = []
    yield started
    for member in started:
        if member.running is not None:
            await member.running.shutdown()


# --- measuring --------------------------------------------------------------------------------------
class StatusProbe:
    """Asks a node for `status` every 50 ms until stopped; each answer's latency."""

    def __init__(self, member: Party) -> None:
        self.member = member
        self.waits: list[float] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            asked = time.monotonic()
            async with asyncio.timeout(STATUS_BOUND_S):
                info = await o.status(self.member.port)
            assert info["height"] >= 0
            self.waits.append(time.monotonic() - asked)
            await asyncio.sleep(0.05)

    async def stop(self, least: int = 10) -> str:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        assert len(self.waits) >= least, "too few status answers"
        return (f"{len(self.waits)} status answers, p50 {statistics.median(self.waits) * 1000:.1f} ms, "
                f"p99 {self.p99 * 1000:.1f} ms, max {max(self.waits) * 1000:.0f} ms")

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.waits, n=100)[98]


class LoopStalls:
    """The longest the test's event loop (the one the in-process node runs in) went unserved:
    ``worst`` in wall time, ``worst_cpu`` in the loop thread's own CPU time over one gap (on a
    shared machine the wall time also counts the time the process waited for a core)."""

    def __init__(self) -> None:
        self.worst = self.worst_cpu = 0.0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now, cpu = time.perf_counter(), time.thread_time()
            self.worst = max(self.worst, now - last - 0.001)
            self.worst_cpu = max(self.worst_cpu, cpu - last_cpu)
            last, last_cpu = now, cpu

    def reset(self) -> None:
        self.worst = self.worst_cpu = 0.0

    def stop(self) -> None:
        self.task.cancel()


def thread_cpu_seconds() -> tuple[float, float]:
    """CPU time of this process: (its main thread, every other thread), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # a thread that ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        if int(task.name) == os.getpid():
            main += seconds
        else:
            others += seconds
    return main, others


def events(logs: list[dict], member: Party, name: str, **fields: object) -> list[dict]:
    return [e for e in logs if e.get("node") == member.name and e["event"] == name
            and all(e.get(k) == v for k, v in fields.items())]


# --- a member that misbehaves ----------------------------------------------------------------------
class Insider:
    """Eve over TLS: the documented handshake, then every message read by a task that answers
    pings and hands the rest to ``on_message`` (which may answer)."""

    def __init__(self, conn: o.Conn, on_message) -> None:
        self.conn = conn
        self.on_message = on_message
        self.received_bytes = 0
        self.messages: list[list] = []
        self.closed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, member: Party, *, work: int = 0, height: int = 0, on_message=None) -> Insider:
        conn = await o.Conn.peer(member.port, private_key("eve"))
        genesis = member.node.genesis_hash
        key = o.raw_public(private_key("eve"))
        nonce = os.urandom(32)
        await conn.send(o.hello(network=NETWORK, genesis=genesis, node_key=key, name="eve", nonce=nonce,
                                height=height, work=work))
        theirs = await conn.recv()
        assert theirs and theirs[0] == "hello", theirs
        binding = o.tls_binding(conn.own_cert, conn.peer_cert)
        await conn.send(o.hello_proof(private_key("eve"), genesis=genesis, role=o.DIALLER, signer_key=key,
                                      other_key=theirs[1]["node_key"], signer_nonce=nonce,
                                      other_nonce=theirs[1]["nonce"], binding=binding))
        answer = await conn.recv()
        assert answer and answer[0] == "hello_proof", answer
        return cls(conn, on_message or (lambda message: None))

    async def _read(self) -> None:
        reader = self.conn.reader
        try:
            while True:
                prefix = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(prefix, "big"))
                self.received_bytes += 4 + len(body)
                message = msgpack.unpackb(body, raw=False)
                if message[0] == "ping":
                    await self.conn.send(["pong", {"nonce": message[1]["nonce"]}])
                    continue
                self.messages.append(message if message[0] != "blocks" else ["blocks", {}])
                reply = self.on_message(message)
                if asyncio.iscoroutine(reply):
                    await reply
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def rejects(self) -> list[str]:
        return [m[1]["code"] for m in self.messages if m[0] == "reject"]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.conn.close()


# --- 1. expensive operator requests -----------------------------------------------------------------
def start_verify_flood(port: int, token: str, seconds: float, sessions: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.test_costly_requests", "verify-flood",
                             str(port), token, str(seconds), str(sessions)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])


async def test_32_admin_sessions_looping_verify_run_one_audit_and_status_stays_answered(stores, net_file, nodes,
                                                                                       tmp_path):
    from gridchain.ledger.audit import audit_store
    from gridchain.ledger.store import DB_FILE
    from tests.support.rss import rss_mb

    bob = party(tmp_path, "bob", stores["long"])
    # What one audit of this store costs, measured apart (its own thread, nothing else running).
    started = time.thread_time()
    report = audit_store(bob.data_dir / DB_FILE, network_document().params())
    one_audit_cpu = time.thread_time() - started
    assert report.ok and report.checked == CHAIN_BLOCKS + 1
    nodes.append(await start(bob, net_file))
    token = (bob.data_dir / "admin.token").read_text().strip()
    rss_before = rss_mb(os.getpid())
    main_before, others_before = thread_cpu_seconds()
    probe = StatusProbe(bob)
    flood = start_verify_flood(bob.api, token, FLOOD_SECONDS, VERIFY_SESSIONS)
    rss_peak = rss_before
    try:
        deadline = time.monotonic() + FLOOD_SECONDS + 30
        while flood.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            rss_peak = max(rss_peak, rss_mb(os.getpid()))
        out, _ = flood.communicate(timeout=10)
    finally:
        if flood.poll() is None:
            flood.kill()
        statuses = await probe.stop()
    main_after, others_after = thread_cpu_seconds()
    words = out.split()
    answers, busy, refused = (int(words[words.index(word) + 1]) for word in ("answers", "busy", "refused"))
    audits = bob.node.clients.audits.audits
    audit_cpu = others_after - others_before  # the audits run in worker threads, nothing else does here
    print(f"{VERIFY_SESSIONS} admin sessions looping verify for {FLOOD_SECONDS:.0f} s on {CHAIN_BLOCKS} blocks: "
          f"{VERIFY_SESSIONS - refused} sessions admitted ({refused} refused busy), {answers} verify answers "
          f"({busy} busy), {audits} audit(s) run; one audit alone {one_audit_cpu:.2f} "
          f"CPU-s; worker threads {audit_cpu:.2f} CPU-s, event loop thread {main_after - main_before:.2f} CPU-s; "
          f"memory {rss_before:.0f} -> peak {rss_peak:.0f} MB; {statuses}")
    assert audits == 1, "the same tip was audited again"
    assert audit_cpu <= 1.5 * one_audit_cpu + 1.0, "audits ran side by side"
    assert rss_peak - rss_before <= 25, "memory grew with the flood"
    assert refused == VERIFY_SESSIONS // 2, "admin sessions took every operator slot"
    assert answers >= VERIFY_SESSIONS, "the flood got too few answers to be a flood"
    assert probe.p99 <= STATUS_BOUND_S


async def test_headers_of_a_thousand_large_blocks_come_from_the_index(net_file, nodes, tmp_path):
    bob = party(tmp_path, "bob")
    build_store(bob.data_dir, chain_line(1000, 4, per_block=1000))  # 108 kB of readings a block
    nodes.append(await start(bob, net_file))
    stalls = LoopStalls()
    try:
        conn = await o.Conn.open(bob.api)
        asked = time.perf_counter()
        reply = await conn.request(["headers_request", {"start": 1, "stop": 1000}], timeout=60)
        took = time.perf_counter() - asked
        await conn.close()
    finally:
        stalls.stop()
    assert reply and reply[0] == "headers_reply", reply
    rows = reply[1]["rows"]
    assert [r["height"] for r in rows] == list(range(1, 1001))
    assert all(r["readings"] == 1000 and r["miner_name"] == "alice" and r["relay_id"] == RELAY_ID for r in rows)
    block = await o.block_at(bob.port, 500)
    assert rows[499]["hash"] == block.hash and rows[499]["newest_ms"] == o.Row.unpack(block.rows[-1]).timestamp_ms
    print(f"headers_request of 1,000 blocks of 1,000 readings: answered in {took * 1000:.1f} ms, "
          f"longest event loop stall {stalls.worst * 1000:.1f} ms ({stalls.worst_cpu * 1000:.1f} ms on the CPU)")
    assert stalls.worst_cpu <= 0.25, "the answer decoded whole blocks on the event loop"


# --- 2. get_blocks has a byte budget ----------------------------------------------------------------
async def test_get_blocks_with_random_locators_is_throttled_then_banned_and_honest_sync_is_not(
        stores, net_file, nodes, tmp_path):
    from tests.support.nodes import TEST_DIFFICULTY
    from tests.support.processes import Processes, wait_status
    from tests.support.wait import wait_until

    bob = party(tmp_path, "bob", stores["long"])
    carol = party(tmp_path, "carol")
    nodes.append(await start(bob, net_file))
    genesis = bob.node.genesis_hash
    answers = 0

    async def ask(eve_conn: o.Conn) -> None:
        await eve_conn.send(["get_blocks", {"locator": [os.urandom(32), genesis], "limit": 500}])

    async def on_message(message: list) -> None:
        nonlocal answers
        if message[0] == "blocks":
            answers += 1
            await ask(eve.conn)  # keep 4 in flight

    with capture_logs() as logs, Processes(tmp_path, NETWORK, TEST_DIFFICULTY) as procs:
        eve = await Insider.connect(bob, on_message=on_message)
        probe = StatusProbe(bob)
        started = time.monotonic()
        for _ in range(4):
            await ask(eve.conn)
        # Meanwhile a new member (a process of its own, as on its own host) syncs the whole chain from bob.
        await wait_until(lambda: events(logs, bob, "peer.rate_limited"), IO_TIMEOUT_S, what="eve to be throttled")
        carol_started = time.monotonic()
        carol_proc = procs.node("carol", peers=[bob.port], data_dir=carol.data_dir, port=carol.port,
                                extra=["--network-file", str(net_file)])
        try:
            async with asyncio.timeout(60):
                await eve.closed.wait()
        finally:
            statuses = await probe.stop(least=2)
        held_s = time.monotonic() - started
        sent = eve.received_bytes
        await eve.close()
        await wait_status(carol_proc, lambda info: info["height"] == CHAIN_BLOCKS, 60, "carol to sync from bob")
        synced = time.monotonic() - carol_started
        await procs.stop([carol_proc])
    eve_key = o.raw_public(private_key("eve")).hex()[:16]
    banned = events(logs, bob, "peer.banned", reason="get-blocks-flood")
    throttled = events(logs, bob, "peer.rate_limited", reason="get-blocks-flood")
    print(f"get_blocks flood (random locators, 4 in flight): {answers} answers, {sent / 1e6:.1f} MB sent in "
          f"{held_s:.1f} s before the ban; {statuses}; a new member synced {CHAIN_BLOCKS} blocks from the node "
          f"meanwhile, {synced:.1f} s from its start")
    assert "get-blocks-flood" in eve.rejects() or banned
    assert [e["node_key"] for e in banned] == [eve_key], banned
    assert len(throttled) == 1, throttled  # eve's, once: the honest member never was
    assert sent <= 64 * 1024 * 1024, "the budget let the flood through"
    assert probe.p99 <= STATUS_BOUND_S


# --- 3. sync is never held by one peer ----------------------------------------------------------------
async def test_a_peer_answering_sync_with_one_parentless_block_does_not_hold_the_sync(stores, net_file, nodes,
                                                                                      tmp_path):
    from gridchain.consensus.block import Header
    from gridchain.consensus.merkle import payload_root
    from tests.support.blocks import finish
    from tests.support.wait import wait_until

    alice = party(tmp_path, "alice", stores["long"])
    bob = party(tmp_path, "bob")
    nodes.append(await start(bob, net_file))
    # A valid block (eve's work and signature, a capture the relay really sealed) whose parent nobody has.
    real = stores["long_blocks"][100]
    header = Header(real.header.version, 10**6, os.urandom(32), payload_root(real.capture, "eve"),
                    real.header.time_ms, real.header.bits, node_key("eve").public_key, 0)
    orphan = finish(header, real.capture, "eve", node_key("eve"))
    asked = 0

    async def on_message(message: list) -> None:
        nonlocal asked
        if message[0] == "get_blocks":
            asked += 1
            await eve.conn.send(["blocks", {"blocks": [orphan.to_fields()], "more": True}])

    with capture_logs() as logs:
        eve = await Insider.connect(bob, work=2**200, height=10**6, on_message=on_message)
        await wait_until(lambda: asked >= 1, IO_TIMEOUT_S, what="bob to ask eve for blocks")
        nodes.append(await start(alice, net_file, [bob.port]))
        joined = time.monotonic()
        await wait_until(lambda: alice.key in bob.node.gossip.peers, IO_TIMEOUT_S, what="alice to peer with bob")
        await wait_until(lambda: bob.running.height == CHAIN_BLOCKS, 30, what="alice's blocks to reach bob")
        took = time.monotonic() - joined
        await eve.close()
    print(f"a peer claiming 2**200 work answering sync with one parentless block: asked {asked} times; "
          f"the honest peer's {CHAIN_BLOCKS} blocks reached the node {took:.2f} s after it joined")
    assert took <= 10.0
    assert events(logs, bob, "peer.banned", reason="empty-sync"), "the empty answers cost eve nothing"


# --- 4. a deep reorg never holds the event loop long ----------------------------------------------------
async def test_a_branch_flip_1000_blocks_deep_never_stalls_the_event_loop_for_long(stores, net_file, nodes, tmp_path):
    from tests.support.wait import wait_until

    bob = party(tmp_path, "bob", stores["forked"])
    nodes.append(await start(bob, net_file))
    first_tip = bob.node.ledger.tip.hash
    eve = await Insider.connect(bob)
    stalls = LoopStalls()
    flips = []
    try:
        # Each push makes the other branch the longer one: a reorg FLIP_DEPTH (then FLIP_DEPTH + 1) deep.
        for block in (stores["b_next"][0], stores["a_next"][0], stores["a_next"][1]):
            await asyncio.sleep(0.2)
            stalls.reset()
            tip_before = bob.node.ledger.tip.hash
            await eve.conn.send(["block", {"block": block.to_fields()}])
            await wait_until(lambda: bob.node.ledger.tip.hash == block.hash or
                             (block is stores["a_next"][0] and block.hash in bob.node.ledger.chain), 30,
                             what="the pushed block to be taken")
            await asyncio.sleep(0.05)
            if bob.node.ledger.tip.hash != tip_before:
                flips.append((stalls.worst, stalls.worst_cpu))
    finally:
        stalls.stop()
        await eve.close()
    assert first_tip != bob.node.ledger.tip.hash == stores["a_next"][1].hash
    status = await o.status(bob.port)
    assert status["height"] == FLIP_DEPTH + 2 and status["tip"] == stores["a_next"][1].hash.hex()
    print(f"branch flips {FLIP_DEPTH} and {FLIP_DEPTH + 1} blocks deep: longest event loop stall "
          + ", ".join(f"{wall * 1000:.1f} ms ({cpu * 1000:.1f} ms of it on the CPU)" for wall, cpu in flips))
    assert len(flips) == 2
    assert max(cpu for _, cpu in flips) <= 0.1, "a reorg held the event loop"


async def test_a_reorg_1000_blocks_deep_arriving_by_sync_never_stalls_the_event_loop_for_long(
        stores, net_file, nodes, tmp_path):
    """Bob holds branch A (1,000 blocks); alice, a member in a process of her own, holds the
    heavier branch B (1,001 blocks from genesis). Bob syncs B in batches of hundreds: each
    batch linked and committed, and the 1,000-deep reorg its last batch causes, while bob's
    event loop keeps being served."""
    from tests.support.nodes import TEST_DIFFICULTY
    from tests.support.processes import Processes, answers, wait_status
    from tests.support.wait import wait_until

    bob = party(tmp_path, "bob", stores["a_line"])
    alice = party(tmp_path, "alice", stores["b_line"])
    with Processes(tmp_path, NETWORK, TEST_DIFFICULTY) as procs:
        alice_proc = procs.node("alice", data_dir=alice.data_dir, port=alice.port,
                                extra=["--network-file", str(net_file)])
        await wait_status(alice_proc, answers, 30, "alice to answer")
        nodes.append(await start(bob, net_file, [alice.port]))
        assert bob.node.ledger.height == FLIP_DEPTH
        stalls = LoopStalls()
        try:
            await wait_until(lambda: bob.node.ledger.tip.hash == stores["b_tip"].hash, 60, 0.01,
                             what="bob to sync alice's heavier branch")
        finally:
            stalls.stop()
        await procs.stop_all()
    status = await o.status(bob.port)
    assert status["height"] == FLIP_DEPTH + 1 and status["tip"] == stores["b_tip"].hash.hex()
    print(f"a {FLIP_DEPTH}-block reorg by sync: longest event loop stall {stalls.worst * 1000:.1f} ms "
          f"({stalls.worst_cpu * 1000:.1f} ms of it on the CPU)")
    assert stalls.worst_cpu <= 0.1, "a sync batch or its reorg held the event loop"


# --- the verify flood, in a process of its own ------------------------------------------------------------
async def _verify_flood(port: int, token: str, seconds: float, sessions: int) -> tuple[int, int, int]:
    counts = {"answers": 0, "busy": 0, "refused": 0}
    deadline = time.monotonic() + seconds

    async def session(conn: o.Conn) -> None:
        try:
            while time.monotonic() < deadline:
                reply = await conn.request(["verify_request", {}], timeout=120)
                if reply is None:
                    return
                if reply[0] == "verify_reply":
                    assert reply[1]["ok"], reply
                    counts["answers"] += 1
                else:
                    assert reply[0] == "error" and reply[1]["reason"] == "busy", reply
                    counts["busy"] += 1
        finally:
            await conn.close()

    conns = []
    for _ in range(sessions):  # one after another: strangers beyond the port's budget are evicted
        conn = await o.Conn.open(port)
        reply = await conn.request(["auth", {"token": token}])
        if reply == ["auth_ok", {"role": "admin"}]:
            conns.append(conn)
            continue
        assert reply and reply[0] == "error" and reply[1]["reason"] == "busy", reply
        counts["refused"] += 1
        await conn.close()
    await asyncio.gather(*(session(conn) for conn in conns))
    return counts["answers"], counts["busy"], counts["refused"]


if __name__ == "__main__" and sys.argv[1:2] == ["verify-flood"]:
    got, busy, refused = asyncio.run(_verify_flood(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]),
                                                   int(sys.argv[5])))
    print(f"answers {got} busy {busy} refused {refused}", flush=True)
