"""A member down for an hour's worth of blocks catches up on blocks and finality, and votes again.

Real ``gridchain relay`` (a gateway of three simulated relays) and four ``gridchain node``
processes on one network file naming the four members n0..n3. The test holds every member's
key (it writes the key files before the first start) and checks what it sees as an outsider
would (tests/support/outsider.py: the operator port's status, block and finality requests,
certificates checked with the documented vote message; `gridchain verify`).

At the default capture interval (10 s) an hour is 360 captures: here the relays tick every
0.1 s and the nodes capture every 0.05 s, so the three members left behind mine and finalize
360 blocks in seconds instead of an hour. The member is killed with SIGKILL and stays away
for longer than every timer that bears on a peer that went away (the redial cap, the ban
given here, the ping and TCP timeouts, the sync timeout: ABSENT_S). Back, it must:

- within CATCH_UP_S, hold the others' main chain and their finalized checkpoint;
- prove every block it missed final from its own store: a finality certificate (a quorum of
  member signatures, checked here) at or above each, with the headers up to it, and
  `gridchain verify` checks its stored certificates;
- vote again, counting toward new certificates: with another member stopped, finality goes
  on only if its votes make the quorum of three;
- never have signed two conflicting votes (its recorded votes over both runs, and no
  ``member.equivocation`` anywhere).

Three members alone need all three votes on one block for each link; at these block rates
a loaded host makes them justify many checkpoints in a row without finalizing, and the
member came back to more justified checkpoints than a greeting then carried (16): it voted
from a stale source and never finalized again while connected. Greetings now carry the
chain to the highest justified checkpoint, and a member two rounds behind adopts the
others' quorum as a finality certificate (tests/unit/test_finality_catchup.py pins both).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import struct
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration import test_finality_live as live
from tests.support import outsider as o
from tests.support.logs import log_tail
from tests.support.ports import listen_port
from tests.support.processes import Processes
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)

NETWORK = "finality-catchup-net"
DIFFICULTY = 8
SUBSTATION = "Test Substation"
RELAYS = ("R1", "R2", "R3")  # one gateway: three relays' readings give three blocks a capture round
RELAY_INTERVAL_S = 0.1  # the relay's finest tick
CAPTURE_INTERVAL_S = 0.05  # the node's finest: an hour of 10 s captures (360) in well under a minute
HOUR_OF_BLOCKS = 360
REDIAL_MAX_S = 1.0
BAN_S = 5.0
# Longer than every timer about a peer gone away: the redial cap and the ban above, the ping
# timeout (3 s) and TCP user timeout (10 s) of a link, a sync round's timeout (20 s).
ABSENT_S = 21.0
START_TIMEOUT_S = 20.0
SETTLE_S = 3.0  # with the relays paused, the last block's votes land within milliseconds
SETTLE_TRIES = 5
CATCH_UP_S = 20.0  # back on the others' chain and finality: a 500-block sync round is well under a second
NAMES = ("n0", "n1", "n2", "n3")
AWAY = "n3"

VOTE_DOMAIN = b"gridchain/finality-vote/v1\x00"
CERT_HEAD = struct.Struct(">32sQ32sQH")
SIGNER = struct.Struct(">32s64s")
HEADER = struct.Struct(">IQ32s32sQI32sQ")  # the 128-byte header (docs/protocol.md, "Header")


class Net:
    """The gateway, four members' keys in the network file, their nodes in a full mesh."""

    def __init__(self, root: Path, procs: Processes) -> None:
        self.root = root
        self.procs = procs
        self.relay_port = listen_port()
        self.nodes: dict[str, live.Node] = {}
        self.network: o.Network | None = None
        self.file: Path | None = None

    def spawn(self, node: live.Node) -> None:
        relays = [arg for relay_id in RELAYS for arg in ("--relay", f"127.0.0.1:{self.relay_port}/{relay_id}")]
        node.proc = self.procs.node(node.name, peers=node.dials, capture_interval_s=CAPTURE_INTERVAL_S,
                                    data_dir=node.data_dir, port=node.port,
                                    extra=["--network-file", str(self.file), "--redial-max", str(REDIAL_MAX_S),
                                           "--ban-seconds", str(BAN_S), *relays])

    async def ready(self, node: live.Node) -> None:
        async def answers() -> bool:
            if not node.proc.alive():
                raise AssertionError(f"{node.name} exited: {log_tail(node.proc.log_path)}")
            with contextlib.suppress(OSError, TimeoutError, AssertionError):
                return bool(await o.status(node.port))
            return False

        await wait_until(answers, START_TIMEOUT_S, 0.05, what=f"{node.name} to answer")

    def running(self) -> list[live.Node]:
        return [n for n in self.nodes.values() if n.proc is not None and n.proc.alive()]


def distinct_ports(count: int, taken: set[int]) -> list[int]:
    """Restartable ports (listen_port) none of which is another's operator port (+1000)."""
    ports: list[int] = []
    while len(ports) < count:
        port = listen_port()
        if not {port, port + 1000} & taken:
            ports.append(port)
            taken |= {port, port + 1000}
    return ports


async def relay_key(port: int) -> bytes:
    conn = await o.Conn.open(port)
    try:
        reply = await conn.request({"type": "info", "relay_id": RELAYS[0]})
    finally:
        await conn.close()
    assert isinstance(reply, dict) and reply.get("type") == "info", reply
    return reply["relay_key"]


@contextlib.asynccontextmanager
async def network(root: Path) -> AsyncIterator[Net]:
    with Processes(root, NETWORK, DIFFICULTY) as procs:
        net = Net(root, procs)
        devices = [arg for relay_id in RELAYS for arg in ("--device", f"{relay_id}=sim")]
        relay = procs.spawn("relay", net.relay_port, [
            "relay", "--port", str(net.relay_port), "--interval", f"{RELAY_INTERVAL_S:g}", "--seed", "1",
            "--fault-probability", "0", "--substation", SUBSTATION, "--data-dir", str(root / "relay"),
            "--log-format", "json", *devices])
        key = b""

        async def relay_up() -> bool:
            nonlocal key
            if not relay.alive():
                raise AssertionError(f"the relay exited: {log_tail(relay.log_path)}")
            with contextlib.suppress(OSError, TimeoutError, AssertionError):
                key = await relay_key(net.relay_port)
            return bool(key)

        await wait_until(relay_up, START_TIMEOUT_S, 0.05, what="the relay to answer info")
        ports = dict(zip(NAMES, distinct_ports(len(NAMES), {net.relay_port, net.relay_port + 1000})))
        for name in NAMES:
            member_key = Ed25519PrivateKey.generate()
            o.write_key_file(root / name / "node.key", member_key)
            dials = [ports[other] for other in NAMES if other != name]
            net.nodes[name] = live.Node(name, member_key, ports[name], root / name, dials)
        members = tuple(o.Member(n.name, n.public) for n in net.nodes.values())
        net.network = o.Network(NETWORK, DIFFICULTY, members,
                                tuple(o.RelayEntry(relay_id, SUBSTATION, key) for relay_id in RELAYS))
        net.file = net.network.write(root / "network.toml")
        for node in net.nodes.values():
            net.spawn(node)
        for node in net.nodes.values():
            await net.ready(node)
        try:
            yield net
        finally:
            await procs.stop_all()


async def finality_at(node: live.Node, since: int) -> tuple[bytes, bytes, list[bytes]]:
    """(checkpoint header, certificate, headers since+1 .. checkpoint) of the node's finality_reply."""
    reply = await o.operator(node.port, ["finality_request", {"since": since}])
    assert reply and reply[0] == "finality_reply", f"{node.name}: no finalized checkpoint at or above {since}: {reply}"
    body = reply[1]
    return body["header"], body["certificate"], list(body["headers"])


def check_certificate(net: Net, cert: bytes) -> tuple[tuple[int, bytes], tuple[int, bytes], set[bytes]]:
    """(source, target, signers) of a finality certificate whose every signature is a member's
    vote for its link; fails unless it has a quorum (3 of 4) and its target is the next block."""
    source_hash, source_height, target_hash, target_height, count = CERT_HEAD.unpack_from(cert)
    assert len(cert) == CERT_HEAD.size + count * SIGNER.size
    message = VOTE_DOMAIN + net.network.network_hash() + source_hash + struct.pack(">Q", source_height) + \
        target_hash + struct.pack(">Q", target_height)
    members = {n.public for n in net.nodes.values()}
    signers = set()
    for i in range(count):
        key, signature = SIGNER.unpack_from(cert, CERT_HEAD.size + i * SIGNER.size)
        assert key in members and o.verifies(key, signature, message), "a certificate signature does not verify"
        signers.add(key)
    assert len(signers) >= 3 and target_height == source_height + 1, (len(signers), source_height, target_height)
    return (source_height, source_hash), (target_height, target_hash), signers


async def pause_until_settled(relay, nodes: Sequence[live.Node]) -> None:
    """Stop the relays (SIGSTOP: no readings, no blocks) until every node has one tip and one
    finalized checkpoint. Two blocks at the top splitting the votes leave a tie no vote breaks:
    then let the relays tick once more and look again."""
    async def settled() -> bool:
        info = [await o.status(n.port) for n in nodes]
        return len({(i["tip"], i["finality"]["finalized_hash"]) for i in info}) == 1

    for _ in range(SETTLE_TRIES):
        relay.popen.send_signal(signal.SIGSTOP)
        with contextlib.suppress(AssertionError):
            await wait_until(settled, SETTLE_S, 0.1, what="every member to agree on the tip and finality")
            return
        relay.popen.send_signal(signal.SIGCONT)
        await asyncio.sleep(RELAY_INTERVAL_S * 3)
    raise AssertionError(f"the members did not agree on one tip and one finalized checkpoint in {SETTLE_TRIES} "
                         f"pauses: {[await o.status(n.port) for n in nodes]}")


async def status_of(node: live.Node) -> dict:
    return await live.finality(node)


async def test_a_member_down_for_an_hour_of_blocks_catches_up_and_votes_again(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        nodes = list(net.nodes.values())
        away, others = net.nodes[AWAY], [n for n in nodes if n.name != AWAY]
        await live.wait_finalized(nodes, 3, timeout=30.0)
        before = await status_of(away)
        net.procs.kill([away.proc])  # SIGKILL: no clean shutdown, whatever it was writing
        left_at = time.monotonic()
        votes_before = away.events(["finality.vote_recorded"])

        # The three mine and finalize an hour's worth of blocks without it.
        target = before["height"] + HOUR_OF_BLOCKS

        async def an_hour_later() -> bool:
            info = [await status_of(n) for n in others]
            return min(i["finalized_height"] for i in info) >= target + 1

        await wait_until(an_hour_later, 60.0, 0.2, what=f"the three to finalize {HOUR_OF_BLOCKS} blocks")
        await asyncio.sleep(max(0.0, ABSENT_S - (time.monotonic() - left_at)))
        n0 = net.nodes["n0"]
        missed = await status_of(n0)
        assert missed["finalized_height"] - before["finalized_height"] >= HOUR_OF_BLOCKS

        # Back: within CATCH_UP_S it holds the others' chain and finality, mining going on.
        net.spawn(away)
        back_at = time.monotonic()
        await net.ready(away)

        async def caught_up() -> bool:
            mine = await status_of(away)
            return mine["finalized_height"] >= missed["height"] and mine["height"] >= missed["height"]

        await wait_until(caught_up, CATCH_UP_S, 0.1, what=f"{AWAY} to finalize past height {missed['height']}")
        catch_up_s = time.monotonic() - back_at
        # The same chain and the same finalized checkpoint everywhere, once the relays pause.
        relay = next(p for p in net.procs.procs if p.name == "relay")
        try:
            await pause_until_settled(relay, nodes)
            chains = {n.name: await live.main_hashes(n) for n in (away, n0)}
            assert chains[AWAY] == chains["n0"], f"{AWAY}'s main chain differs from n0's"
            final = await status_of(away)
            # Every block it missed is provably final from its own store: a finality certificate
            # of a quorum at or above it on its main chain, and the headers from it up to there.
            hashes = chains[AWAY]
            held: set[int] = set()
            for height in range(before["finalized_height"] + 1, missed["finalized_height"] + 1):
                header, cert, headers = await finality_at(away, height)
                (source_height, source_hash), _, _ = check_certificate(net, cert)
                assert source_height >= height and hashes[source_height] == source_hash
                assert header[12:44] == hashes[source_height - 1]  # the header's parent hash
                assert len(headers) == source_height - height
                prev = hashes[height]
                for raw in headers:
                    assert raw[12:44] == prev, "the headers do not link"
                    prev = hashlib.sha256(raw).digest()
                held.add(source_height)
            verified = live.cli("verify", "--node", live.node_arg(away), "--token-file",
                                str(away.data_dir / "admin.token"), timeout=60.0)
            assert verified.returncode == 0 and "certificates checked" in verified.stdout, \
                verified.stdout + verified.stderr
        finally:
            relay.popen.send_signal(signal.SIGCONT)

        # It votes again, and its votes count: with n0 stopped, the quorum of three needs it.
        cast = final["votes_cast"]
        await live.wait_finalized([away], final["height"] + 2, timeout=20.0)
        assert (await status_of(away))["votes_cast"] > cast, f"{AWAY} did not vote after catching up"
        await net.procs.stop([n0.proc])
        three = net.running()
        assert away in three and len(three) == 3
        top = await live.top_height(three)
        await live.wait_finalized(three, top + 5, timeout=30.0)
        n1 = net.nodes["n1"]
        signed = [e for e in n1.events(["finality.finalized"]) if e["height"] > top]
        assert signed and all(AWAY in e["signers"] for e in signed), signed

        # It never signed two conflicting votes: target heights rise, sources never fall.
        votes = away.events(["finality.vote_recorded"])
        assert len(votes) > len(votes_before)
        targets = [v["target"] for v in votes]
        sources = [v["source"] for v in votes]
        assert targets == sorted(set(targets)), f"{AWAY} voted twice at one height: {targets}"
        assert sources == sorted(sources), f"{AWAY}'s vote sources went back: {sources}"
        for node in net.running():
            assert not node.events(["member.equivocation"]), f"{node.name} caught a member equivocating"
            assert (await status_of(node))["evidence"] == []
        print(f"catch-up {catch_up_s:.2f} s; {len(held)} certificates cover the "
              f"{missed['finalized_height'] - before['finalized_height']} blocks finalized while away")
