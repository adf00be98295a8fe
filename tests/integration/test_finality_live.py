"""Finality on live nodes: four members vote, a quorum finalizes, nothing finalized is ever replaced.

Real ``gridchain relay`` and ``gridchain node`` processes on one network file naming four
members (n0..n3) and the relay. The test writes every member's key file before the first
start, so it holds each member's key: the attacks are a member's, made from the documented
protocol (docs/protocol.md) with ``tests.support.outsider`` (msgpack, struct, cryptography;
no gridchain encoder), votes signed over the documented vote message.

- finality follows each block within seconds on all four, and the operator tools show it:
  `proof` writes a bundle that `proof --check` calls final (certified by 3 or 4 of 4 named
  members) offline, and refuses the same bundle with a forged or a short certificate by name;
  `checkpoint` notes verify and the later extends the earlier;
- a member with far more hash rate publishes a secret fork from 15 blocks below the tip:
  refused ``conflicts-finalized`` below the finalized height on every honest node, nothing
  finalized changes, every reading stays;
- 2|2 and 1|3 partitions (every link through its own proxy) heal with no finalized block
  reverted and finality resuming by itself; mining goes on throughout;
- a member killed between writing a vote and sending it, restarted, never equivocates;
- an equivocating member (two conflicting votes signed with its key, sent over a peer link)
  is caught: ``member.equivocation`` on every honest node, the evidence in their status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support import outsider as o
from tests.support.logs import log_tail, read_events
from tests.support.ports import listen_port
from tests.support.processes import Proc, Processes, answers, wait_status
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(150)

NETWORK = "finality-net"
DIFFICULTY = 8
RELAY_ID = "Relay 1"
SUBSTATION = "Test Substation"
RELAY_INTERVAL_S = 0.1
CAPTURE_INTERVAL_S = 0.3  # a few readings a block, three blocks a second across the network
REDIAL_MAX_S = 1.0
START_TIMEOUT_S = 20.0
FINALITY_TIMEOUT_S = 20.0  # finality follows each block in milliseconds; seconds on a loaded 2-core host
NAMES = ("n0", "n1", "n2", "n3")
REPO = Path(__file__).resolve().parents[2]
CRASH_HOOK = "GRIDCHAIND_TEST_EXIT_AFTER_VOTE"  # gridchain/node/voter.py: exit after writing that many votes
CRASH_STATUS = 75

# The documented vote (docs/protocol.md, "vote"): what a member signs, and the 176-byte wire form.
VOTE_DOMAIN = b"gridchain/finality-vote/v1\x00"
VOTE = struct.Struct(">32s32sQ32sQ64s")


def vote_bytes(key: Ed25519PrivateKey, network_hash: bytes, source: tuple[int, bytes],
               target: tuple[int, bytes]) -> bytes:
    message = VOTE_DOMAIN + network_hash + source[1] + struct.pack(">Q", source[0]) + target[1] + \
        struct.pack(">Q", target[0])
    return VOTE.pack(o.raw_public(key), source[1], source[0], target[1], target[0], key.sign(message))


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the network -------------------------------------------------------------------------------
@dataclass
class Node:
    name: str
    key: Ed25519PrivateKey
    port: int
    data_dir: Path
    dials: list[int]
    proc: Proc | None = None

    @property
    def public(self) -> bytes:
        return o.raw_public(self.key)

    def events(self, names: Sequence[str] | None = None) -> list[dict]:
        return read_events(self.proc.log_path, names) if self.proc else []


@dataclass
class Net:
    root: Path
    procs: Processes
    relay_port: int
    relay_key: bytes = b""
    relay: Proc | None = None
    network: o.Network | None = None
    file: Path | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    links: dict[tuple[str, str], FaultProxy] = field(default_factory=dict)
    genesis: bytes = b""

    def spawn(self, node: Node, env: dict | None = None) -> Proc:
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            node.proc = self.procs.node(node.name, peers=node.dials, relays=[self.relay_port],
                                        capture_interval_s=CAPTURE_INTERVAL_S, data_dir=node.data_dir, port=node.port,
                                        extra=["--network-file", str(self.file), "--redial-max", str(REDIAL_MAX_S)])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return node.proc

    async def ready(self, node: Node) -> dict:
        return await wait_status(node.proc, answers, START_TIMEOUT_S, f"{node.name} to answer")

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.proc is not None and n.proc.alive()]

    def partition(self, *groups: Sequence[str]) -> None:
        side = {name: g for g, names in enumerate(groups) for name in names}
        for (a, b), proxy in self.links.items():
            if side.get(a) != side.get(b):
                proxy.cut(reset=True)

    def heal(self) -> None:
        for proxy in self.links.values():
            proxy.heal()


@contextlib.asynccontextmanager
async def network(root: Path, start: Sequence[str] = NAMES, proxied: bool = False) -> AsyncIterator[Net]:
    """A relay, four members' keys in the network file, the ``start`` ones running in a full
    mesh (through a proxy per link when ``proxied``); all stopped at the end."""
    with Processes(root, NETWORK, DIFFICULTY) as procs:
        net = Net(root, procs, listen_port())
        net.relay = procs.spawn("relay", net.relay_port, [
            "relay", "--port", str(net.relay_port), "--interval", f"{RELAY_INTERVAL_S:g}", "--seed", "1",
            "--fault-probability", "0", "--relay-id", RELAY_ID, "--substation", SUBSTATION,
            "--data-dir", str(root / "relay"), "--log-format", "json"])
        info: dict = {}

        async def relay_up() -> bool:
            nonlocal info
            if not net.relay.alive():
                raise AssertionError(f"the relay exited: {log_tail(net.relay.log_path)}")
            try:
                info = await o.relay_info(net.relay_port)
            except (OSError, TimeoutError, AssertionError):
                return False
            return info.get("newest_seq") is not None

        await wait_until(relay_up, START_TIMEOUT_S, 0.05, what="the relay to answer info")
        net.relay_key = info["relay_key"]
        ports = {name: listen_port() for name in NAMES}
        for name in NAMES:
            key = Ed25519PrivateKey.generate()
            o.write_key_file(root / name / "node.key", key)
            dials = []
            for other in NAMES:
                if other == name:
                    continue
                if proxied:
                    proxy = await FaultProxy(ports[other]).start()
                    net.links[name, other] = proxy
                    dials.append(proxy.port)
                else:
                    dials.append(ports[other])
            net.nodes[name] = Node(name, key, ports[name], root / name, dials)
        members = tuple(o.Member(n.name, n.public) for n in net.nodes.values())
        net.network = o.Network(NETWORK, DIFFICULTY, members, (o.RelayEntry(RELAY_ID, SUBSTATION, net.relay_key),))
        net.file = net.network.write(root / "network.toml")
        net.genesis = net.network.genesis()
        for name in start:
            net.spawn(net.nodes[name])
        for name in start:
            await net.ready(net.nodes[name])
        try:
            yield net
        finally:
            codes = await procs.stop_all()
            for proxy in net.links.values():
                await proxy.close()
            assert all(code in (0, None, CRASH_STATUS) for code in codes.values()), f"exit status: {codes}"


async def finality(node: Node) -> dict:
    info = await o.status(node.port)
    assert info.get("finality"), f"{node.name} reports no finality: {info}"
    return {**info["finality"], "height": info["height"]}


async def wait_finalized(nodes: Sequence[Node], height: int, timeout: float = FINALITY_TIMEOUT_S) -> None:
    for node in nodes:
        async def done() -> bool:
            return (await finality(node))["finalized_height"] >= height

        await wait_until(done, timeout, 0.05, what=f"{node.name} to finalize height {height}")


async def top_height(nodes: Sequence[Node]) -> int:
    return max([(await finality(n))["height"] for n in nodes])


async def main_hashes(node: Node) -> list[bytes]:
    return [bytes(32)] + [b.hash for b in await o.main_chain(node.port)]


class FinalWatch:
    """Every (height, hash) any node ever reported finalized; none may ever change or go away."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = nodes
        self.seen: dict[int, bytes] = {}
        self.last: dict[str, int] = {}

    async def poll(self) -> None:
        for node in self.nodes:
            if node.proc is None or not node.proc.alive():
                continue
            with contextlib.suppress(OSError, TimeoutError, AssertionError):
                info = await finality(node)
                height, block_hash = info["finalized_height"], bytes.fromhex(info["finalized_hash"])
                assert height >= self.last.get(node.name, 0), f"{node.name}'s finalized height went back to {height}"
                self.last[node.name] = height
                known = self.seen.setdefault(height, block_hash)
                assert known == block_hash, f"two blocks finalized at height {height}"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll()
            await asyncio.sleep(0.1)

    async def check_chains(self) -> None:
        """Every finalized block seen is on every running node's main chain."""
        for node in self.nodes:
            if node.proc is None or not node.proc.alive():
                continue
            hashes = await main_hashes(node)
            for height, block_hash in self.seen.items():
                if height:
                    assert height < len(hashes) and hashes[height] == block_hash, \
                        f"{node.name} no longer holds the block finalized at height {height}"


async def connect_member(net: Net, node: Node, name: str, key: Ed25519PrivateKey) -> o.Conn:
    """A peer link to ``node`` as member ``name``: TLS 1.3 with the key's node certificate, then
    the documented handshake bound to both certificates (docs/security.md, docs/protocol.md)."""
    pem = o.node_certificate(key)
    conn = await o.Conn.open(node.port, tls=o.tls_client(key, pem))
    reply = await o.dial_handshake(conn, network=NETWORK, genesis=net.genesis, name=name, signer=key,
                                   binding=o.tls_binding(o.cert_der(pem), conn.peer_cert))
    assert reply and reply[0] == "hello_proof", f"{node.name} refused the member {name}'s handshake: {reply}"
    return conn


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridchain", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)


def node_arg(node: Node) -> str:
    return f"127.0.0.1:{o.operator_port(node.port)}"


# --- 1. finality follows every block; the operator's tools -------------------------------------
async def test_finality_follows_each_block_and_the_tools_prove_it_offline(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        nodes = list(net.nodes.values())
        await wait_finalized(nodes, 5)
        # Each node finalizes within a block or two of its tip, and logs it with the signers.
        for node in nodes:
            info = await finality(node)
            assert info["voter"] and info["quorum"] == 3 and info["members"] == 4
            assert info["finality_lag"] <= 6, f"{node.name} lags {info['finality_lag']} blocks behind its tip"
            events = node.events(["finality.finalized"])
            assert events and all(len(e["signers"]) >= 3 for e in events)
            assert set(events[-1]["signers"]) <= set(NAMES)
        # Latency: block mined -> finalized on every member (the block's time to the last log).
        mined = {e["hash"]: e["t"] for n in nodes for e in n.events(["block.mined"])}
        finals: dict[str, list[float]] = {}
        for node in nodes:
            for e in node.events(["finality.finalized"]):
                finals.setdefault(e["hash"][:12], []).append(e["t"])
        lags = [max(ts) - mined[h] for h, ts in finals.items() if h in mined and len(ts) == 4]
        assert lags and sorted(lags)[len(lags) // 2] < 5.0, f"finality latency p50 {sorted(lags)[len(lags) // 2]} s"

        # `gridchain proof` of a reading in a finalized block, checked offline.
        n0 = net.nodes["n0"]
        block = (await o.main_chain(n0.port))[2]
        timestamp = o.Row.unpack(block.rows[0]).timestamp_ms
        bundle = tmp_path / "proof.json"
        made = cli("proof", "--node", node_arg(n0), "--relay", RELAY_ID, "--timestamp", str(timestamp),
                   "--out", str(bundle))
        assert made.returncode == 0, made.stderr
        checked = cli("proof", "--check", str(bundle), "--network-file", str(net.file))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        verdict = [line for line in checked.stdout.splitlines() if line.startswith("final:")]
        assert verdict and ("certified by 3 of 4 members" in verdict[0] or "certified by 4 of 4" in verdict[0]), \
            checked.stdout
        doc = json.loads(bundle.read_text())
        cert = bytes.fromhex(doc["finality"]["certificate"])
        head, count = 82, struct.unpack(">H", cert[80:82])[0]
        # A forged signature: one byte of the first signer's signature flipped.
        forged = bytearray(cert)
        forged[head + 32] ^= 1
        assert "bad-vote-signature" in refused_bundle(tmp_path, net, doc, bytes(forged), "forged")
        # A short certificate: signers cut below the quorum of 3 (count and signatures).
        short = cert[:80] + struct.pack(">H", 2) + cert[head:head + 2 * 96]
        assert count >= 3 and "short-certificate" in refused_bundle(tmp_path, net, doc, short, "short")

        # `gridchain checkpoint`: two notes, each verifies, the later extends the earlier.
        old, new = tmp_path / "old.note", tmp_path / "new.note"
        assert cli("checkpoint", "--node", node_arg(n0), "--out", str(old)).returncode == 0
        height = (await finality(n0))["finalized_height"]
        await wait_finalized([n0], height + 3)
        assert cli("checkpoint", "--node", node_arg(n0), "--out", str(new)).returncode == 0
        ok = cli("checkpoint", "--check", str(new), "--network-file", str(net.file))
        assert ok.returncode == 0 and ok.stdout.startswith("OK: final at height"), ok.stdout + ok.stderr
        tampered = tmp_path / "tampered.note"
        tampered.write_text(new.read_text().replace("signer ", "signer 00", 1)[:-1] + "\n")
        bad = cli("checkpoint", "--check", str(tampered), "--network-file", str(net.file))
        assert bad.returncode == 1 and bad.stdout.startswith("FAILED: "), bad.stdout
        consistent = cli("checkpoint", "--node", node_arg(n0), "--consistency", str(old), str(new),
                         "--network-file", str(net.file))
        assert consistent.returncode == 0 and consistent.stdout.startswith("consistent:"), \
            consistent.stdout + consistent.stderr
        # `gridchain verify` checks every stored certificate and says how many.
        verified = cli("verify", "--node", node_arg(n0), "--token-file", str(n0.data_dir / "admin.token"), timeout=60.0)
        assert verified.returncode == 0 and "certificates checked" in verified.stdout, verified.stdout + verified.stderr
        status = cli("status", "--node", node_arg(n0))
        assert status.returncode == 0 and "finality   finalized" in status.stdout, status.stdout


def refused_bundle(tmp_path: Path, net: Net, doc: dict, cert: bytes, name: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**doc, "finality": {**doc["finality"], "certificate": cert.hex()}}))
    result = cli("proof", "--check", str(path), "--network-file", str(net.file))
    assert result.returncode == 1, f"a {name} certificate passed: {result.stdout}"
    assert any(line.startswith("not final:") for line in result.stdout.splitlines()), result.stdout
    return result.stdout


# --- 2. a secret fork from 15 blocks below the tip ---------------------------------------------
async def test_a_secret_fork_below_the_finalized_height_is_refused_everywhere(tmp_path: Path) -> None:
    async with network(tmp_path, start=("n0", "n1", "n2")) as net:  # n3, the attacker, mines in secret
        honest = net.running()
        await wait_finalized(honest, 20, timeout=40.0)
        n0 = net.nodes["n0"]
        before = await finality(n0)
        chain = await o.main_chain(n0.port)
        fork_at = chain[-16]  # 15 blocks below the tip
        assert fork_at.height < before["finalized_height"], "the fork point is not below finality"
        # The attacker's fork: the same relay readings after the fork point, one reading a
        # block (far more blocks, so far more work, than the honest chain holds above it),
        # each under a seal the relay signs for any run asked for.
        rows = []
        conn = await o.Conn.open(net.relay_port)
        try:
            for i in range(40):
                await conn.send({"type": "read", "after_seq": fork_at.seqs[-1] + i, "limit": 1})
            rows = [o.readings_answer(await conn.recv()) for _ in range(40)]
        finally:
            await conn.close()
        attacker = net.nodes["n3"]
        parent, height, t = fork_at.hash, fork_at.height, max(now_ms() - 60_000, fork_at.time_ms + 1)
        fork = []
        for answer in rows:
            t += 10
            block = o.make_block(parent=parent, height=height + 1, time_ms=t, bits=DIFFICULTY, miner=attacker.key,
                                 miner_name="n3", relay_id=RELAY_ID, substation=SUBSTATION, relay_key=net.relay_key,
                                 rows=list(answer.rows), seals=list(answer.seals))
            fork.append(block)
            parent, height = block.hash, height + 1
        assert len(fork) > len(chain) - fork_at.height, "the fork has no more work than the honest chain"
        for node in honest:
            conn = await connect_member(net, node, "n3", attacker.key)
            for block in fork:
                await conn.send(o.block_message(block))
            await asyncio.sleep(0.5)
            await conn.close()
        for node in honest:
            def refused() -> bool:
                return any(e.get("reason") == "conflicts-finalized" and e.get("hash") == fork[0].hash.hex()[:12]
                           for e in node.events(["block.rejected"]))
            await wait_until(refused, 10.0, 0.05, what=f"{node.name} to refuse the fork as conflicts-finalized")
        await asyncio.sleep(1.0)
        for node in honest:
            for block in fork:
                assert not await o.has_block(node.port, block.hash), f"{node.name} holds a fork block"
            after = await main_hashes(node)
            for b in chain[:before["finalized_height"]]:
                assert after[b.height] == b.hash, f"{node.name}: finalized block at {b.height} replaced"
            info = await finality(node)
            assert info["finalized_height"] >= before["finalized_height"]
        # The readings stay: every seq the honest chain held is still on it.
        held = {seq for b in chain for seq in b.seqs}
        now_held = {seq for b in await o.main_chain(n0.port) for seq in b.seqs}
        assert held <= now_held, f"readings lost: {sorted(held - now_held)[:10]}"


# --- 3. partitions -------------------------------------------------------------------------------
async def test_two_two_and_one_three_partitions_heal_with_nothing_finalized_reverted(tmp_path: Path) -> None:
    async with network(tmp_path, proxied=True) as net:
        nodes = list(net.nodes.values())
        watch = FinalWatch(nodes)
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch.run(stop))
        try:
            await wait_finalized(nodes, 3)
            # 2|2: no side holds a quorum, so finality stops; mining does not.
            net.partition(("n0", "n1"), ("n2", "n3"))
            await asyncio.sleep(1.0)  # votes in flight land
            split = {n.name: await finality(n) for n in nodes}
            await asyncio.sleep(4.0)
            for node in nodes:
                info = await finality(node)
                assert info["height"] > split[node.name]["height"], f"{node.name} stopped mining in the split"
                assert info["finalized_height"] <= split[node.name]["finalized_height"] + 1, \
                    f"{node.name} finalized without a quorum"
            top = await top_height(nodes)
            net.heal()
            await wait_finalized(nodes, top + 1, timeout=40.0)
            # 1|3: the three go on finalizing, the one cannot; then it catches up.
            net.partition(("n0",), ("n1", "n2", "n3"))
            await asyncio.sleep(1.0)
            lone = await finality(net.nodes["n0"])
            three = [net.nodes[n] for n in ("n1", "n2", "n3")]
            await wait_finalized(three, max(lone["finalized_height"], lone["height"]) + 5, timeout=40.0)
            assert (await finality(net.nodes["n0"]))["finalized_height"] <= lone["finalized_height"] + 1
            top = await top_height(nodes)
            net.heal()
            await wait_finalized(nodes, top + 1, timeout=40.0)
        finally:
            stop.set()
            await watcher
        await watch.poll()
        await watch.check_chains()
        assert len(watch.seen) > 5


# --- 4. killed between writing a vote and sending it ---------------------------------------------
async def test_a_member_killed_between_writing_and_sending_a_vote_never_equivocates(tmp_path: Path) -> None:
    async with network(tmp_path, start=("n0", "n1", "n2")) as net:
        n3 = net.nodes["n3"]
        net.spawn(n3, env={CRASH_HOOK: "3"})  # exits right after writing its third vote
        await wait_until(lambda: not n3.proc.alive(), 40.0, 0.1, what="n3 to exit after writing its third vote")
        assert n3.proc.returncode == CRASH_STATUS, log_tail(n3.proc.log_path)
        written = n3.events(["finality.vote_recorded"])
        assert len(written) == 3
        last = written[-1]
        await asyncio.sleep(1.0)  # the others mine on without it
        net.spawn(n3)
        await net.ready(n3)
        restored = n3.events(["finality.votes_restored"])
        assert restored and restored[-1]["target"] == last["target"] and \
            restored[-1]["target_hash"] == last["target_hash"]
        honest = net.running()
        height = await top_height(honest)
        await wait_finalized(honest, height + 3, timeout=40.0)
        votes = n3.events(["finality.vote_recorded"])
        assert len(votes) > 3, "n3 did not vote again after its restart"
        targets = [(v["target"], v["target_hash"]) for v in votes]
        assert len({t for t, _ in targets}) == len(targets), f"two votes of n3 at one height: {targets}"
        assert [t for t, _ in targets] == sorted(t for t, _ in targets)
        for node in honest:
            assert not node.events(["member.equivocation"]), f"{node.name} caught n3 equivocating"
            assert (await finality(node))["evidence"] == []


# --- 5. an equivocating member is caught -----------------------------------------------------------
async def test_an_equivocating_member_is_caught_on_every_honest_node(tmp_path: Path) -> None:
    async with network(tmp_path, start=("n0", "n1", "n2")) as net:
        honest = net.running()
        await wait_finalized(honest, 3, timeout=40.0)
        n0, cheat = net.nodes["n0"], net.nodes["n3"]
        info = await o.status(n0.port)
        tip = (info["height"], bytes.fromhex(info["tip"]))
        network_hash = net.network.network_hash()
        genesis = (0, net.genesis)
        one = vote_bytes(cheat.key, network_hash, genesis, tip)
        two = vote_bytes(cheat.key, network_hash, genesis, (tip[0], os.urandom(32)))  # same height, another block
        conn = await connect_member(net, n0, "n3", cheat.key)
        try:
            await conn.send(["vote", {"vote": one}])
            await conn.send(["vote", {"vote": two}])
            for node in honest:
                def caught() -> bool:
                    return any(e.get("member") == "n3" and e.get("kind") == "double-vote"
                               for e in node.events(["member.equivocation"]))
                await wait_until(caught, 10.0, 0.05, what=f"{node.name} to log member.equivocation of n3")
                evidence = (await finality(node))["evidence"]
                assert [e["member"] for e in evidence] == ["n3"], evidence
        finally:
            await conn.close()
        # Finality goes on with the three honest members.
        height = await top_height(honest)
        await wait_finalized(honest, height + 2, timeout=40.0)
