"""`gridchain demo`: the relay and four nodes on this machine, with a live view.

With ``--protocol modbus|iec61850|dnp3`` the relay is the substation gateway reading a
simulated device (``gridchain-device``) over that protocol: device -> gateway -> four nodes,
with the real protocol stacks in between; ``sim`` (the default) is the gateway's built-in
simulator.

The demo is the secure setup, made for you: the relay starts first and makes its own key
(so its sequence starts at 1 with no gap notice, as a brand-new relay's does), then the demo
makes each node's key in its data dir and writes ``network.toml`` naming every node as a
member and the relay with its key (what ``gridchain network init`` does), so the nodes run
a closed network (``--network-file``) and accept only readings the relay signed.
Every program runs as its own child process (``python -m gridchain relay|node``), as it
would in production, each writing JSON log lines to ``<name>.log`` in the data dir. The
demo waits until every node answers ``status``, then redraws a view about once a second
(on a terminal; elsewhere it prints one plain line per update). Ctrl-C (or ``--duration``)
stops every child with SIGTERM, waits a bounded time, and SIGKILLs any that linger, so
nothing is left running; a temporary data dir is then removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gridchain.api.client import NodeClient, NodeUnavailable, RequestFailed
from gridchain.config import API_PORT_OFFSET, DEFAULT_NETWORK, DEFAULT_PORT, DEFAULT_RELAY_PORT, Address
from gridchain.cli.commands.network import write_network_file
from gridchain.cli.commands.output import iso_ms, plural
from gridchain.cli.settings import DEFAULT_RELAY_ID, DEFAULT_SUBSTATION
from gridchain.consensus.block import short_hash
from gridchain.identity.keys import RELAY_KEY_FILE, NodeKey, RelayKey
from gridchain.identity.network_file import Member, NetworkDocument, RelayEntry

PROTOCOLS = ("sim", "modbus", "iec61850", "dnp3")
# The device URL the gateway reads each protocol's simulated device with (port filled in).
DEVICE_URLS = {"modbus": "modbus://127.0.0.1:{port}?unit=1&map=sel751",
               "iec61850": "iec61850://127.0.0.1:{port}/GRIDSIMLD0",
               "dnp3": "dnp3://127.0.0.1:{port}?outstation=10"}
NETWORK_FILE = "network.toml"  # in the demo's data dir, next to the nodes' and the relay's dirs
RELAY_DIR = "relay"

STARTUP_TIMEOUT_S = 30.0  # four Python processes importing and binding: seconds, even on a slow disk
STOP_TIMEOUT_S = 10.0  # a node promises to exit within 5 s of SIGTERM; then SIGKILL
REFRESH_S = 1.0  # the live view's redraw period
QUERY_TIMEOUT_S = 0.8  # a view query slower than its refresh period is shown as "no answer"
CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass
class Child:
    """One process the demo started."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    address: Address

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("demo", parents=[common], help="run a relay and four nodes here, with a live view")
    p.add_argument("--base-port", type=int, default=DEFAULT_PORT, help="first node's port (default: 5004)")
    p.add_argument("--relay-port", type=int, default=DEFAULT_RELAY_PORT, help="the relay's port (default: 5010)")
    p.add_argument("--nodes", type=int, default=4, help="how many nodes (default: 4)")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="keep data and logs here (default: a temporary "
                   "dir removed at exit)")
    p.add_argument("--capture-interval", type=float, default=2.0, metavar="SECONDS", help="default: 2")
    p.add_argument("--relay-interval", type=float, default=1.0, metavar="SECONDS", help="default: 1")
    p.add_argument("--difficulty", type=int, default=16, metavar="BITS", help="default: 16")
    p.add_argument("--network", default=DEFAULT_NETWORK, help=f"default: {DEFAULT_NETWORK}")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this long")
    p.add_argument("--protocol", choices=PROTOCOLS, default="sim", help="sim: the gateway's built-in simulator; "
                   "modbus, iec61850, dnp3: a simulated device served over that protocol, read by the gateway "
                   "(default: sim)")
    p.add_argument("--device-port", type=int, metavar="PORT", help="the simulated device's port (default: "
                   "the relay port + 10)")
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    import uvloop

    from gridchain.cli.signals import run_until_signalled

    if args.json:
        print("gridchain: error: demo has no JSON output; ask its nodes instead "
              "(gridchain --node 127.0.0.1:PORT status --json)", file=sys.stderr)
        return 2
    if not 1 <= args.nodes <= 16:
        print("gridchain: error: --nodes must be 1..16", file=sys.stderr)
        return 2
    ports = [args.base_port + i for i in range(args.nodes)]
    if getattr(args, "protocol", "sim") != "sim" and args.device_port is None:
        args.device_port = args.relay_port + 10
    device_ports = [args.device_port] if getattr(args, "protocol", "sim") != "sim" else []
    api_ports = [port + API_PORT_OFFSET for port in ports]  # each node's operator API
    busy = [p for p in [*ports, *api_ports, args.relay_port, *device_ports] if not _port_free(p)]
    if busy:
        print(f"gridchain: error: port {busy[0]} is in use (another demo or node running? try --base-port)",
              file=sys.stderr)
        return 1
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="gridchain-demo-")) if temporary else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    result: list[int] = [0]
    try:
        # SIGHUP too: a closed terminal must stop the children (they run in sessions of their own).
        uvloop.run(run_until_signalled(lambda stop: _run(args, ports, data_dir, stop, result),
                                       (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)))
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    return result[0]


def _port_free(port: int) -> bool:
    """Nothing listens on ``port``. SO_REUSEADDR as the daemons' listeners set it, so the
    TIME_WAIT connections of a demo just stopped do not count as in use."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def make_network(args: argparse.Namespace, ports: list[int], data_dir: Path) -> tuple[Path, NetworkDocument]:
    """Make (or reuse) every key and write the network file naming them; only public keys leave a dir."""
    members = [Member(f"node-{port}", NodeKey.load_or_create(_node_dir(data_dir, port)).public_key,
                      Address("127.0.0.1", port)) for port in ports]
    relay_key = RelayKey.load(_relay_dir(data_dir) / RELAY_KEY_FILE)  # the relay made it
    document = NetworkDocument(args.network, args.difficulty, tuple(members),
                               (RelayEntry(DEFAULT_RELAY_ID, DEFAULT_SUBSTATION, relay_key.public_key),))
    path = data_dir / NETWORK_FILE
    write_network_file(path, document)
    return path, document


def _node_dir(data_dir: Path, port: int) -> Path:
    path = data_dir / f"node-{port}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _relay_dir(data_dir: Path) -> Path:
    path = data_dir / RELAY_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _run(args: argparse.Namespace, ports: list[int], data_dir: Path, stop: asyncio.Event,
               result: list[int]) -> None:
    children: list[Child] = []
    try:
        relay_dir = _relay_dir(data_dir)
        protocol = getattr(args, "protocol", "sim")
        source = []
        if protocol != "sim":
            # The device first: a real relay is there before its gateway is pointed at it.
            children.append(await _spawn("device", ["device", f"--{protocol}", str(args.device_port), "--interval",
                                                    str(args.relay_interval), "--log-format", "json"],
                                         data_dir, Address("127.0.0.1", args.device_port)))
            if not await _wait_port(args.device_port, children, stop):
                result[0] = 1
                return
            source = ["--device", f"{DEFAULT_RELAY_ID}={DEVICE_URLS[protocol].format(port=args.device_port)}",
                      "--poll-interval", str(args.relay_interval)]
        relay = await _spawn("relay", ["relay", "--port", str(args.relay_port), "--interval",
                                       str(args.relay_interval), "--relay-id", DEFAULT_RELAY_ID, *source,
                                       "--substation", DEFAULT_SUBSTATION, "--data-dir", str(relay_dir),
                                       "--key-file", str(relay_dir / RELAY_KEY_FILE), "--log-format", "json"],
                             data_dir, Address("127.0.0.1", args.relay_port))
        children.append(relay)
        # A relay that finds a key it did not make but no state of its own must assume it lost
        # its state, and resumes past the clock with a gap notice: let it make its key itself.
        if not await _wait_port(args.relay_port, children, stop):
            result[0] = 1
            return
        network_file, document = make_network(args, ports, data_dir)
        for port in ports:
            peers = [arg for other in ports if other != port for arg in ("--peer", f"127.0.0.1:{other}")]
            name = f"node-{port}"
            children.append(await _spawn(name, [
                "node", "--port", str(port), "--name", name, *peers, "--relay", f"127.0.0.1:{args.relay_port}",
                "--data-dir", str(_node_dir(data_dir, port)), "--network-file", str(network_file),
                "--capture-interval", str(args.capture_interval), "--log-format", "json"],
                data_dir, Address("127.0.0.1", port + API_PORT_OFFSET)))  # where its operator API answers
        nodes = [c for c in children if c.name.startswith("node-")]
        via = "" if protocol == "sim" else f", reading a {protocol} device on {args.device_port}"
        print(f"demo: relay on {args.relay_port}{via}, nodes on {ports[0]}-{ports[-1]} (operator API on "
              f"{ports[0] + API_PORT_OFFSET}-{ports[-1] + API_PORT_OFFSET}), data and logs in {data_dir}", flush=True)
        print(f"demo: network file {network_file} ({len(document.members)} members, relay {DEFAULT_RELAY_ID!r}, "
              f"network hash {document.network_hash().hex()[:16]})", flush=True)
        print("demo: pids " + " ".join(f"{c.name}={c.proc.pid}" for c in children), flush=True)
        if not await _wait_until_up(nodes, children, stop):
            result[0] = 1
            return
        await _live_view(args, nodes, data_dir, stop)
    finally:
        await _stop_all(children)
        print("demo: stopped " + ", ".join(f"{c.name} ({_exit_text(c.proc.returncode)})" for c in children),
              flush=True)


async def _wait_port(port: int, children: list[Child], stop: asyncio.Event) -> bool:
    """Wait until something listens on ``port`` (the device), or a child exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and not stop.is_set():
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            for child in children:
                if child.proc.returncode is not None:
                    print(f"demo: {child.name} exited ({_exit_text(child.proc.returncode)}): "
                          f"{child.last_log_line()}", file=sys.stderr)
                    return False
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True
    print(f"demo: nothing listens on {port} after {STARTUP_TIMEOUT_S:g} s", file=sys.stderr)
    return False


async def _spawn(name: str, argv: list[str], data_dir: Path, address: Address) -> Child:
    log_path = data_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        # A new session keeps the terminal's Ctrl-C away from the children: the demo stops
        # them itself, in order, and makes sure they are gone.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridchain", *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=_child_env())
    return Child(name, proc, log_path, address)


def _child_env() -> dict[str, str]:
    # The demo's flags say everything; a GRIDCHAIN_* setting meant for a real node must not leak in.
    return {key: value for key, value in os.environ.items() if not key.startswith("GRIDCHAIN_")}


async def _wait_until_up(nodes: list[Child], children: list[Child], stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = list(nodes)
    while waiting:
        for child in children:
            if child.proc.returncode is not None:
                print(f"demo: {child.name} exited ({_exit_text(child.proc.returncode)}): {child.last_log_line()}",
                      file=sys.stderr)
                return False
        up = await asyncio.gather(*(_status(c.address) for c in waiting))
        waiting = [c for c, info in zip(waiting, up) if info is None]
        if not waiting:
            return True
        if time.monotonic() > deadline:
            print(f"demo: {', '.join(c.name for c in waiting)} did not answer within {STARTUP_TIMEOUT_S:g} s",
                  file=sys.stderr)
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await stop.wait()
        if stop.is_set():
            return False
    return True


async def _status(address: Address, with_newest: bool = False) -> dict | None:
    """The node's status; ``with_newest`` adds ``newest_ms``, the newest reading it holds (newest_reading)."""
    try:
        async with NodeClient(address, QUERY_TIMEOUT_S) as node:
            info = await node.status()
            if with_newest:
                height = int(info.get("height", 0))
                tip_rows = await node.headers(height, height) if height > 0 else []
                info["newest_ms"] = newest_reading(info, tip_rows[0] if tip_rows else None)
            return info
    except (NodeUnavailable, RequestFailed):
        return None


def newest_reading(info: dict, tip_row: dict | None) -> int | None:
    """The newest reading a node knows: what its relays last handed it, or its tip block's newest.

    A node whose peers mined the relay's readings first fetches nothing new from the relay,
    so its relay row has no newest reading; its chain holds them all the same.
    """
    times = [r.get("newest_ms") for r in info.get("relays", [])]
    if tip_row is not None:
        times.append(tip_row.get("newest_ms"))
    known = [t for t in times if t is not None]
    return max(known) if known else None


async def _newest_block(address: Address, height: int):
    try:
        async with NodeClient(address, QUERY_TIMEOUT_S) as node:
            return (await node.block(height=height)).block
    except (NodeUnavailable, RequestFailed):
        return None


async def _live_view(args: argparse.Namespace, nodes: list[Child], data_dir: Path, stop: asyncio.Event) -> None:
    tty = sys.stdout.isatty()
    started = time.monotonic()
    ends = started + args.duration if args.duration is not None else None
    while not stop.is_set():
        infos = await asyncio.gather(*(_status(c.address, with_newest=True) for c in nodes))
        best = max(((i["height"], c) for c, i in zip(nodes, infos) if i), default=None, key=lambda t: t[0])
        block = await _newest_block(best[1].address, best[0]) if best and best[0] > 0 else None
        rows = [(c, c.proc.returncode, info) for c, info in zip(nodes, infos)]
        if tty:
            sys.stdout.write(CLEAR_SCREEN + render_screen(args, rows, block, time.monotonic() - started, data_dir))
        else:
            sys.stdout.write(render_lines(rows, block, time.monotonic() - started))
        sys.stdout.flush()
        timeout = REFRESH_S if ends is None else max(0.0, min(REFRESH_S, ends - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await stop.wait()
        if ends is not None and time.monotonic() >= ends:
            return


async def _stop_all(children: list[Child]) -> None:
    """SIGTERM the nodes, then the relay, then the device; SIGKILL whatever outlives the timeout."""
    nodes = [c for c in children if c.name not in ("relay", "device")]
    relays = [c for c in children if c.name == "relay"]
    devices = [c for c in children if c.name == "device"]
    for group in (nodes, relays, devices):
        for child in group:
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(c.proc.wait()) for c in group]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=STOP_TIMEOUT_S)
            for child in group:
                if child.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return "exit 0" if code == 0 else f"exit {code}"


# --- the view ----------------------------------------------------------------------------------
def _tip(info: dict | None) -> str:
    return str(info.get("tip", ""))[:12] if info else "-"


def _relay_state(info: dict | None) -> str:
    relays = info.get("relays", []) if info else []
    return ",".join(r.get("state", "?") for r in relays) or "-"


def _block_lines(block) -> list[str]:
    if block is None:
        return ["last block   (none yet: the first capture is on its way)"]
    capture = block.capture
    lines = [f"last block   {block.height}  {short_hash(block.hash)}  mined by {block.miner_name} "
             f"at {iso_ms(block.header.time_ms)}"]
    if capture.readings:
        r = capture.readings[-1]
        lines.append(f"             {capture.relay_id} at {capture.substation}: {plural(len(capture.readings), 'reading')}, "
                     f"seq {capture.readings[0].seq}..{r.seq}, {plural(len(capture.seals), 'seal')} by relay key "
                     f"{capture.relay_key.hex()[:16]}, {plural(r.openings, 'fault opening')}")
        lines.append(f"newest       {iso_ms(r.timestamp_ms)}  Vab {r.vab:.2f} kV  Ia {r.ia:.1f} A  "
                     f"f {r.frequency:.3f} Hz  PF {r.power_factor:.3f}  P {r.active_power:.2f} MW  "
                     f"Q {r.reactive_power:.2f} MVAr")
    return lines


def _agreement(rows: list[tuple[Child, int | None, dict | None]]) -> str:
    tips = {info.get("tip") for _, _, info in rows if info}
    if len(tips) == 1 and all(info for _, _, info in rows):
        return "all nodes agree on the tip"
    return "nodes are converging"


def render_screen(args: argparse.Namespace, rows: list[tuple[Child, int | None, dict | None]], block,
                  elapsed: float, data_dir: Path) -> str:
    """The full-screen view: one row per node, then the newest block."""
    out = [f"gridchain demo: relay on 127.0.0.1:{args.relay_port}, {len(rows)} nodes, "
           f"capture every {args.capture_interval:g} s, a reading every {getattr(args, 'relay_interval', 1.0):g} s, "
           f"difficulty {args.difficulty} bits  ({elapsed:.0f} s)",
           f"data and logs in {data_dir}; Ctrl-C stops everything", "",
           f"{'NODE':<11} {'PORT':>5} {'HEIGHT':>7} {'FINAL':>11}  {'TIP':<12}  {'PEERS':>5}  {'MINING':<7} "
           f"{'RELAY':<6} NEWEST READING"]
    for child, code, info in rows:
        if info is None:
            state = "exited: " + _exit_text(code) if code is not None else "no answer"
            out.append(f"{child.name:<11} {child.address.port:>5} {'-':>7}  {state}")
            continue
        out.append(f"{child.name:<11} {child.address.port:>5} {info.get('height', '?'):>7} {_final(info):>11}  "
                   f"{_tip(info):<12}  {len(info.get('peers', [])):>5}  {info.get('mining', '?'):<7} "
                   f"{_relay_state(info):<6} {iso_ms(info.get('newest_ms'))}")
    out += ["", _agreement(rows), "", *_block_lines(block), ""]
    return "\n".join(out) + "\n"


def render_lines(rows: list[tuple[Child, int | None, dict | None]], block, elapsed: float) -> str:
    """One plain line per update, for a log file or a pipe."""
    heights = " ".join(f"{c.name}={info['height'] if info else '?'}" for c, _, info in rows)
    finals = " ".join(f"{c.name}={_final(info) if info else '?'}" for c, _, info in rows)
    newest = " ".join(f"{c.name}={iso_ms(info.get('newest_ms')) if info else '?'}" for c, _, info in rows)
    last = "no block yet"
    if block is not None:
        capture = block.capture
        last = (f"last block {block.height} {short_hash(block.hash)} by {block.miner_name}: "
                f"{plural(len(capture.readings), 'reading')}, newest {iso_ms(capture.newest_ms)}")
    return f"demo: t={elapsed:.1f}s heights {heights} | finalized {finals} | {last} | newest readings {newest}\n"


def _final(info: dict) -> str:
    """The finalized height and its lag behind the tip ("-": no finality on this network)."""
    finality = info.get("finality")
    if not finality:
        return "-"
    return f"{finality.get('finalized_height')} (-{finality.get('finality_lag')})"
