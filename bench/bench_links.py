"""Peer links: what TLS 1.3 costs, and what the node still does for its own under each flood of issue 14.

Every figure comes from real ``gridchaind`` processes on 127.0.0.1, four nodes in a full mesh
per network, each network on a chain of CHAIN_BLOCKS built offline (bench.nodes) and fed by
a relay simulator served from this process (so it can be paused between windows):

- ``plaintext``: the open network (no network file), plaintext peer links;
- ``TLS``: a member network (a network file naming the four and a probe key), TLS 1.3 on
  every peer link and finality votes on every block, as deployed;
- ``TLS, no votes``: the same member network with checkpoints 10,080 blocks apart, so no
  vote is cast in the run: the difference to ``plaintext`` is TLS alone.

Block timings come from the nodes' JSON logs (one machine, one clock); the rest from this
process, which plays the operator and the outsider (tests.support.outsider: the documented
protocol only).

- propagation: ``block.mined`` on one node to ``block.accepted`` on each of the other three
  (the JSON also has the receivers' own validate + store share); the three networks run at
  once and take turns (only the measured one's relay runs), round after round, so the
  machine's other load falls on all three alike;
- handshake: the probe dialling a node, connect to TLS Finished, and on to the peer
  handshake's last proof (ready); the same on the open network without TLS;
- sync: a fresh member (the probe's key) pulling the chain from one idle node, TLS and plaintext;
- floods, on the ``TLS`` network, each against one node (n0) from a process of its own: 200
  refilled silent sockets on the peer port; the same on the operator port; 4 MiB first
  frames on both ports (the peer port's over TLS with the probe's certificate); 32 admin
  sessions looping ``verify_request``; the probe asking ``get_blocks`` with random
  locators, 4 in flight (n0 bans it for BAN_S, so it comes back for the whole window).
  Meanwhile: operator ``status`` round trips (a new connection each, as ``gridchain
  status`` makes) and the propagation of the blocks mined to and from the flooded node.

    python -m bench links                         # in `make bench`'s table
    BENCH_QUICK=1 python -m bench.bench_links     # shorter runs of the same measurements

Run as ``python -m bench.bench_links frame-flood|get-blocks-flood ...`` it is one of the
attackers, in a process of its own (``_attacker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import (
    CHAIN_RELAY, CHAIN_SUBSTATION, QUICK, block_times, build_network_chain, copy_chain, guarded, percentile, row,
    run_alone, spread, sync_seconds, workdir,
)
from tests.support import outsider as o

RESULTS = Path(__file__).with_name("results_links.json")
REPO = Path(__file__).resolve().parents[1]
NETWORK = "bench-links"
NODES = 4
BITS = 8  # ~256 hashes a block: the chain built offline costs ~1 ms a block, mining next to nothing
RELAY_ID = "Relay 1"
RELAY_S = 0.1
CAPTURE_S = 0.25  # about four blocks a second across the network
CHAIN_BLOCKS = 1_000 if QUICK else 3_000  # each network starts on it: the sync's load, the audits' work
KINDS = ("plaintext", "TLS", "TLS, no votes")
SPARSE_CHECKPOINTS = 10_080  # MAX_CHECKPOINT_INTERVAL: no checkpoint, so no vote, within a run
PROP_ROUNDS = 2 if QUICK else 4  # each network's turns at propagation
PROP_BLOCKS = 15 if QUICK else 40  # mined per turn, each seen by three peers
WARM_S = 0.5  # a relay resumed catches up on its paused readings: the first block is not measured
HANDSHAKES = 20 if QUICK else 100
FLOOD_S = 3.0 if QUICK else 10.0  # measured window of each flood
# The kernel lets silent sockets through after ~7 s (gridchain.node.listener.DEFER_ACCEPT_S):
# their windows take that moment in too.
SILENT_WINDOW_S = max(FLOOD_S, 8.0)
RAMP_S = 1.0  # a flood runs this long before its window: it has taken hold
STATUS_EVERY_S = 0.05
STATUS_TIMEOUT_S = 2.0  # a status not answered within this counts as this long (and unanswered)
SILENT_SOCKETS = 200  # per flooded port, refilled as the node closes them (tests.support.flood)
VERIFY_SESSIONS = 32  # MAX_CLIENTS: every operator session the node allows
FRAME_TASKS = 4  # 4 MiB first frames in flight per port
BAN_S = 2.0  # n0's ban: the get_blocks flooder (a member key) is back for another round soon
READY_S = 30.0
SYNC_TIMEOUT_S = 120.0
SETTLE_S = 1.0  # after a window, time for its last blocks to reach everyone
MAX_FRAME_PREFIX = struct.pack(">I", 4 * 1024 * 1024)
SEEDS = [bytes([0x60 + i]) * 32 for i in range(NODES)]
PROBE_SEED = b"\x6f" * 32  # the fifth member: the outsider's key (more would lift the quorum past the four)


def private(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


# --- the networks -----------------------------------------------------------------------------
@dataclass
class LinkNet:
    """One four-node network, started: its processes, relay, network file (None: open), genesis."""

    kind: str
    root: Path
    procs: object  # tests.support.processes.Processes
    relay: object  # gridchain.relay.server.RelayServer, in this process
    file: Path | None
    nodes: list = field(default_factory=list)
    genesis: bytes = b""
    built_s: float = 0.0

    @property
    def tls(self) -> bool:
        return self.file is not None

    def extra(self) -> list[str]:
        return (["--network-file", str(self.file)] if self.file else []) + ["--redial-max", "1"]


def _write_network(root: Path, relay_key: bytes, sparse: bool) -> Path:
    from tests.support.blocks import RELAY_KEY

    members = tuple(o.Member(f"n{i}", o.raw_public(private(seed))) for i, seed in enumerate(SEEDS))
    members += (o.Member("probe", o.raw_public(private(PROBE_SEED))),)
    relays = (o.RelayEntry(RELAY_ID, "Test Substation", relay_key),
              o.RelayEntry(CHAIN_RELAY, CHAIN_SUBSTATION, RELAY_KEY.public_key))
    path = o.Network(NETWORK, BITS, members, relays).write(root / "network.toml")
    if sparse:  # five members: a quorum of four, the smallest above two thirds (the default)
        path.write_text(path.read_text() + f"\n[finality]\ncheckpoint_interval = {SPARSE_CHECKPOINTS}\nquorum = 4\n")
    return path


def _build(root: Path, file: Path | None) -> float:
    from gridchain.consensus.params import NetworkParams
    from gridchain.identity.keys import NodeKey
    from gridchain.identity.network_file import load_network_file

    params = load_network_file(file).params() if file else NetworkParams(NETWORK, BITS)
    seconds = build_network_chain(root / "chain", params, CHAIN_BLOCKS, NodeKey.from_seed(SEEDS[0]), "n0")
    for i in range(NODES):
        copy_chain(root / "chain", root / f"n{i}")
    return seconds


@contextlib.asynccontextmanager
async def network(root: Path, kind: str) -> AsyncIterator[LinkNet]:
    """A relay (paused once the mesh is up) and four nodes on a chain of CHAIN_BLOCKS, in a full mesh."""
    from tests.support.nodes import start_relay
    from tests.support.ports import free_port
    from tests.support.processes import Processes, wait_all

    root.mkdir(parents=True, exist_ok=True)
    relay = await start_relay(RELAY_S, seed=1, relay_id=RELAY_ID)
    try:
        with Processes(root, NETWORK, BITS) as procs:
            file = None if kind == "plaintext" else _write_network(root, relay.key.public_key, kind != "TLS")
            if file is not None:
                for i, seed in enumerate(SEEDS):
                    o.write_key_file(root / f"n{i}" / "node.key", private(seed))
            net = LinkNet(kind, root, procs, relay, file)
            net.built_s = await asyncio.to_thread(_build, root, file)
            ports = [free_port() for _ in range(NODES)]
            for i, port in enumerate(ports):
                extra = net.extra() + (["--ban-seconds", f"{BAN_S:g}"] if i == 0 else [])
                net.nodes.append(procs.node(f"n{i}", port=port, peers=[p for p in ports if p != port],
                                            relays=[relay.port], capture_interval_s=CAPTURE_S, data_dir=root / f"n{i}",
                                            extra=extra))
            infos = await wait_all(net.nodes, lambda s: len(s["peers"]) == NODES - 1, READY_S, f"a full mesh ({kind})")
            net.genesis = bytes.fromhex(infos[0]["genesis"])
            relay.pause()
            try:
                yield net
            finally:
                relay.pause()
                await procs.stop_all()
    finally:
        await relay.close()


# --- propagation, handshakes, sync ----------------------------------------------------------------
async def _propagation(net: LinkNet) -> tuple[list[float], int, list[float]]:
    """One turn: the relay runs until PROP_BLOCKS more blocks are mined; their per-peer delays (ms),
    how many (block, peer) pairs never arrived, and the receivers' validate + store times (ms)."""
    from tests.support.processes import statuses, wait_status

    net.relay.resume()
    try:
        await asyncio.sleep(WARM_S)
        base = max(s["height"] for s in await statuses(net.nodes) if s)
        start = time.time()
        await wait_status(net.nodes[0], lambda s: s["height"] >= base + PROP_BLOCKS, 120.0, f"{PROP_BLOCKS} blocks")
        end = time.time()
    finally:
        net.relay.pause()
    await asyncio.sleep(SETTLE_S)
    seen = spread(net.nodes, start, end)
    mined = {h for h, (_, at) in block_times(net.nodes)[0].items() if start <= at <= end}
    work = [e["ms"] for n in net.nodes for e in n.events(("block.accepted",)) if e["hash"] in mined]
    return seen.per_peer, seen.missing, work


async def _handshakes(net: LinkNet) -> tuple[list[float], list[float]]:
    """HANDSHAKES dials of n0 as the probe: (connect to TLS Finished, connect to ready) in ms."""
    key = private(PROBE_SEED)
    pem = o.node_certificate(key)
    context = o.tls_client(key, pem) if net.tls else None
    tls_ms, ready_ms = [], []
    for _ in range(HANDSHAKES):
        started = time.perf_counter()
        conn = await o.Conn.open(net.nodes[0].port, tls=context)
        opened = time.perf_counter()
        if net.tls:
            conn.own_cert = o.cert_der(pem)
        reply = await o.dial_handshake(conn, network=NETWORK, genesis=net.genesis, name="probe", signer=key)
        done = time.perf_counter()
        await conn.close()
        if not reply or reply[0] != "hello_proof":
            raise RuntimeError(f"the probe's handshake was refused: {reply}")
        tls_ms.append((opened - started) * 1000)
        ready_ms.append((done - started) * 1000)
        await asyncio.sleep(0.05)
    return tls_ms, ready_ms


async def _sync(net: LinkNet) -> tuple[float, float]:
    """A fresh member (the probe's key) syncs from n0: (blocks/s, seconds)."""
    from tests.support.processes import wait_status

    data_dir = net.root / "fresh"
    if net.tls:
        o.write_key_file(data_dir / "node.key", private(PROBE_SEED))
    fresh = net.procs.node("fresh", peers=[net.nodes[0].port], data_dir=data_dir, extra=net.extra())
    await wait_status(fresh, lambda s: s["height"] >= CHAIN_BLOCKS, SYNC_TIMEOUT_S, "the fresh member synced")
    await net.procs.stop([fresh])
    seconds = sync_seconds(fresh, CHAIN_BLOCKS)
    return CHAIN_BLOCKS / seconds, seconds


async def _measure(root: Path) -> dict:
    """Every measurement, the three networks up together until the floods (the TLS network's alone)."""
    results: dict = {kind: {"per_peer": [], "missing": 0, "work": []} for kind in KINDS}
    results["load"] = [round(os.getloadavg()[0], 2)]  # the machine's other work, at the start and the end
    async with contextlib.AsyncExitStack() as stack:
        nets = {}
        for kind in KINDS:
            where = root / kind.replace(", ", "-").replace(" ", "-")
            nets[kind] = await stack.enter_async_context(network(where, kind))
        for _ in range(PROP_ROUNDS):
            for kind, net in nets.items():
                per_peer, missing, work = await _propagation(net)
                results[kind]["per_peer"] += per_peer
                results[kind]["missing"] += missing
                results[kind]["work"] += work
        for kind in ("plaintext", "TLS"):
            net = nets[kind]
            tls_ms, ready_ms = await _handshakes(net)
            rate, seconds = await _sync(net)
            results[kind].update(tls_ms=tls_ms, ready_ms=ready_ms, sync_rate=rate, sync_s=seconds, built_s=net.built_s)
        for kind in ("plaintext", "TLS, no votes"):
            await nets[kind].procs.stop_all()  # the floods meet the TLS network alone on the machine
        tls = nets["TLS"]
        tls.relay.resume()
        await asyncio.sleep(SETTLE_S)
        results["floods"] = await _floods(tls)
    results["load"].append(round(os.getloadavg()[0], 2))
    return results


# --- floods ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flood:
    """One attack: its name, how to start its process against n0 (None: no attack, the baseline)
    and how long its window is."""

    name: str
    start: Callable[[LinkNet], subprocess.Popen] | None
    window_s: float = FLOOD_S


def _python(net: LinkNet, *args: str) -> subprocess.Popen:
    """An attacker process: ``_stop`` reads its stdout; its stderr goes to attackers.log."""
    with open(net.root / "attackers.log", "ab") as errors:
        return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})


def _silent(port_of: Callable[[LinkNet], int]) -> Callable[[LinkNet], subprocess.Popen]:
    return lambda net: _python(net, "-m", "tests.support.flood", str(port_of(net)), str(SILENT_SOCKETS))


def _verify_loops(net: LinkNet) -> subprocess.Popen:
    token = (net.root / "n0" / "admin.token").read_text().strip()
    return _python(net, "-m", "tests.integration.test_costly_requests", "verify-flood",
                   str(o.operator_port(net.nodes[0].port)), token, f"{RAMP_S + FLOOD_S:g}", str(VERIFY_SESSIONS))


FLOODS = (
    Flood("no flood", None),
    Flood(f"{SILENT_SOCKETS} silent sockets on the peer port", _silent(lambda net: net.nodes[0].port), SILENT_WINDOW_S),
    Flood(f"{SILENT_SOCKETS} silent sockets on the operator port",
          _silent(lambda net: o.operator_port(net.nodes[0].port)), SILENT_WINDOW_S),
    Flood("4 MiB first frames on both ports", lambda net: _python(
        net, "-m", "bench.bench_links", "frame-flood", str(o.operator_port(net.nodes[0].port)), str(net.nodes[0].port),
        PROBE_SEED.hex())),
    Flood(f"{VERIFY_SESSIONS} admin sessions looping verify", _verify_loops),
    Flood("get_blocks with random locators (a member)", lambda net: _python(
        net, "-m", "bench.bench_links", "get-blocks-flood", str(net.nodes[0].port), PROBE_SEED.hex(), NETWORK,
        net.genesis.hex())),
)


async def _status_round_trips(port: int, seconds: float) -> tuple[list[float], int]:
    """``status`` asked every STATUS_EVERY_S for ``seconds`` of the node on peer port ``port`` (on its
    operator port), a new connection each: each round trip in ms, and how many went unanswered."""
    waits, unanswered = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        asked = time.perf_counter()
        try:
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                info = await o.status(port)
            assert info["height"] >= 0
        except (OSError, TimeoutError, AssertionError, TypeError):
            unanswered += 1
        waits.append((time.perf_counter() - asked) * 1000)
        await asyncio.sleep(STATUS_EVERY_S)
    return waits, unanswered


def _around(nodes: list, target: str, start: float, end: float) -> tuple[list[float], int]:
    """Delays (ms) of the blocks mined in [start, end] from ``target`` to each other node and from
    each other node to ``target``; and how many of those never arrived."""
    mined, held = block_times(nodes)
    delays, missing = [], 0
    for block_hash, (miner, at) in mined.items():
        if not start <= at <= end:
            continue
        receivers = [n.name for n in nodes if n.name != miner] if miner == target else [target]
        for name in receivers:
            got = held[name].get(block_hash)
            if got is None:
                missing += 1
            else:
                delays.append((got - at) * 1000)
    return delays, missing


def _stop(proc: subprocess.Popen | None, wait_s: float = 0.0) -> str:
    """End an attacker (after up to ``wait_s`` for one that stops by itself); its last line."""
    if proc is None:
        return ""
    out = None
    with contextlib.suppress(subprocess.TimeoutExpired):
        out, _ = proc.communicate(timeout=wait_s) if wait_s else (None, None)
    if out is None:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    lines = [line for line in (out or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


async def _floods(net: LinkNet) -> list[dict]:
    results = []
    target = net.nodes[0]
    for flood in FLOODS:
        attacker = flood.start(net) if flood.start else None
        try:
            await asyncio.sleep(RAMP_S if attacker else 0.0)
            if attacker is not None and attacker.poll() is not None:
                raise RuntimeError(f"the attacker of {flood.name!r} exited with {attacker.returncode}")
            start = time.time()
            waits, unanswered = await _status_round_trips(target.port, flood.window_s)
            end = time.time()
        finally:
            said = await asyncio.to_thread(_stop, attacker, 30.0 if flood.start is _verify_loops else 0.0)
        await asyncio.sleep(SETTLE_S)
        delays, missing = _around(net.nodes, target.name, start, end)
        every = spread(net.nodes, start, end)
        results.append({"name": flood.name, "waits": waits, "unanswered": unanswered, "delays": delays,
                        "missing": missing, "all_pairs": every.per_peer, "attacker": said})
        print(f"    {flood.name}: status p99 {percentile(waits, 0.99):.1f} ms, propagation p99 "
              f"{percentile(delays, 0.99):.1f} ms ({said})", file=sys.stderr, flush=True)
    return results


# --- rows -------------------------------------------------------------------------------------------
def _rows(results: dict) -> list[dict]:
    plain, tls = results["plaintext"], results["TLS"]
    p50 = {kind: percentile(results[kind]["per_peer"], 0.5) for kind in KINDS}
    labels = {"plaintext": "plaintext (open network)", "TLS": "TLS (member network, votes every block)",
              "TLS, no votes": "TLS (member network, no checkpoint in the run)"}
    rows = []
    for kind in KINDS:
        r = results[kind]
        rows.append(row(f"propagation mined -> accepted per peer, {labels[kind]}, p50", p50[kind], "ms",
                        "-" if kind == "plaintext" else "<= 5", samples=len(r["per_peer"]), never_arrived=r["missing"],
                        rounds=PROP_ROUNDS, load_average=results["load"],
                        of_which_validate_store_p50=round(percentile(r["work"], 0.5), 3)))
        rows.append(row(f"propagation mined -> accepted per peer, {labels[kind]}, p99",
                        percentile(r["per_peer"], 0.99), "ms", "-",
                        max=round(max(r["per_peer"], default=float("nan")), 3)))
    rows.append(row("propagation p50, TLS / plaintext (no votes on either)", p50["TLS, no votes"] / p50["plaintext"],
                    "x", "<= 1.3"))
    rows.append(row("propagation p50, TLS with finality votes / plaintext", p50["TLS"] / p50["plaintext"], "x", "-"))
    rows.append(row("TLS 1.3 connect -> Finished (outsider member), p50", percentile(tls["tls_ms"], 0.5), "ms", "-",
                    p99=round(percentile(tls["tls_ms"], 0.99), 3), samples=len(tls["tls_ms"])))
    rows.append(row("TLS connect -> peer handshake ready, p50", percentile(tls["ready_ms"], 0.5), "ms", "-",
                    p99=round(percentile(tls["ready_ms"], 0.99), 3)))
    rows.append(row("plaintext connect -> peer handshake ready, p50", percentile(plain["ready_ms"], 0.5), "ms", "-",
                    p99=round(percentile(plain["ready_ms"], 0.99), 3)))
    for kind, r in (("TLS", tls), ("plaintext", plain)):
        rows.append(row(f"sync of {CHAIN_BLOCKS:,} blocks into a fresh member, {kind}", r["sync_rate"], "blocks/s",
                        "-", digits=0, seconds=round(r["sync_s"], 3), chain_build_s=round(r["built_s"], 1)))
    for f in results["floods"]:
        rows.append(row(f"status p99, {f['name']}", percentile(f["waits"], 0.99), "ms", "<= 50",
                        p50=round(percentile(f["waits"], 0.5), 3), max=round(max(f["waits"]), 1),
                        asked=len(f["waits"]), unanswered=f["unanswered"], attacker=f["attacker"]))
        rows.append(row(f"propagation to/from the flooded node p99, {f['name']}", percentile(f["delays"], 0.99), "ms",
                        "<= 30", p50=round(percentile(f["delays"], 0.5), 3), samples=len(f["delays"]),
                        never_arrived=f["missing"], all_pairs_p99=round(percentile(f["all_pairs"], 0.99), 3)))
    return rows


def run() -> list[dict]:
    results: dict = {}

    async def measure(root: Path) -> list[dict]:
        results.update(await _measure(root))
        return []

    with workdir("bench-links-") as root, _quiet_logs():
        failed = asyncio.run(guarded("links", lambda: measure(root)))
    return failed or _rows(results)


@contextlib.contextmanager
def _quiet_logs():
    """The relays run in this process: their info lines would bury the table."""
    import logging

    import structlog

    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.configure(**saved)


# --- attackers, each in a process of its own ---------------------------------------------------------
async def _frame_flood(api_port: int, peer_port: int, seed_hex: str) -> None:
    """4 MiB first frames (the prefix and 64 KiB of empty maps), FRAME_TASKS at once on each port:
    plaintext on the operator port, TLS with a member's certificate on the peer port."""
    key = private(bytes.fromhex(seed_hex))
    context = o.tls_client(key)
    counts = {"operator": 0, "peer": 0, "other": 0}

    async def loop(port: int, tls, name: str) -> None:
        while True:
            try:
                conn = await o.Conn.open(port, tls=tls)
                conn.writer.write(MAX_FRAME_PREFIX + b"\x80" * 65536)
                with contextlib.suppress(ConnectionError):
                    await conn.writer.drain()
                reply = await conn.recv()
                await conn.close()
            except (OSError, TimeoutError):
                await asyncio.sleep(0.01)
                continue
            refused = isinstance(reply, list) and "frame-too-large" in (reply[1].get("reason"), reply[1].get("code"))
            counts[name if refused else "other"] += 1

    tasks = [asyncio.create_task(loop(api_port, None, "operator")) for _ in range(FRAME_TASKS)]
    tasks += [asyncio.create_task(loop(peer_port, context, "peer")) for _ in range(FRAME_TASKS)]
    await _report(counts, tasks)


async def _get_blocks_flood(port: int, seed_hex: str, network: str, genesis_hex: str) -> None:
    """A member asking ``get_blocks`` with random locators, 4 in flight, over TLS; once banned it
    dials again (refused while the ban lasts) for another round."""
    key = private(bytes.fromhex(seed_hex))
    pem = o.node_certificate(key)
    context = o.tls_client(key, pem)
    genesis = bytes.fromhex(genesis_hex)
    counts = {"links": 0, "answers": 0, "blocks": 0, "refused": 0}

    async def ask(conn: o.Conn) -> None:
        await conn.send(["get_blocks", {"locator": [os.urandom(32), genesis], "limit": 500}])

    async def rounds() -> None:
        while True:
            try:
                conn = await o.Conn.open(port, tls=context)
                conn.own_cert = o.cert_der(pem)
                reply = await o.dial_handshake(conn, network=network, genesis=genesis, name="probe", signer=key)
            except (OSError, TimeoutError, AssertionError):
                await asyncio.sleep(0.1)
                continue
            if not reply or reply[0] != "hello_proof":
                counts["refused"] += 1
                await conn.close()
                await asyncio.sleep(0.1)
                continue
            counts["links"] += 1
            try:
                for _ in range(4):
                    await ask(conn)
                while (message := await conn.recv(timeout=30.0)) is not None:
                    if message[0] == "ping":
                        await conn.send(["pong", {"nonce": message[1]["nonce"]}])
                    elif message[0] == "blocks":
                        counts["answers"] += 1
                        counts["blocks"] += len(message[1].get("blocks", ()))
                        await ask(conn)
            except (OSError, TimeoutError):
                pass
            await conn.close()

    await _report(counts, [asyncio.create_task(rounds())])


async def _report(counts: dict, tasks: list[asyncio.Task]) -> None:
    """Print the counts every second until terminated (the last line is what the bench reads)."""
    try:
        while True:
            await asyncio.sleep(1.0)
            print(" ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    finally:
        for task in tasks:
            task.cancel()


def _attacker(argv: list[str]) -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    mode, args = argv[0], argv[1:]
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # SIGTERM: the bench is done with it
        if mode == "frame-flood":
            asyncio.run(_frame_flood(int(args[0]), int(args[1]), args[2]))
        else:
            asyncio.run(_get_blocks_flood(int(args[0]), args[1], args[2], args[3]))


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in ("frame-flood", "get-blocks-flood"):
        _attacker(sys.argv[1:])
        return
    run_alone(run, RESULTS)


if __name__ == "__main__":
    main()
