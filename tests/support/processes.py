"""Nodes and relays as ``python -m gridchain`` subprocesses on 127.0.0.1, as an operator runs them.

Each process writes JSON log lines to its own file. A ``Processes`` group owns what it
started: ``stop`` ends them cleanly (SIGTERM, then SIGKILL for any that outlive the bound,
which is recorded), and leaving its ``with`` block SIGKILLs whatever still runs, however the
block ends. Every wait here is asynchronous: relays, proxies and other nodes may run on the
caller's event loop, and a blocking wait would stall the traffic they carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridchain.api.client import NodeClient, NodeUnavailable, RequestFailed
from gridchain.config import Address

from .logs import log_tail, read_events
from .ports import api_port, free_port
from .rss import rss_kb, rss_mb
from .wait import wait_until

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 5.0  # the bound for a clean stop; past it a process is killed (and that is recorded)
KILL_WAIT_S = 5.0  # a SIGKILLed process is gone in milliseconds; this only bounds a stuck kernel
STATUS_TIMEOUT_S = 2.0  # a node on loopback answers status in milliseconds
POLL_S = 0.05  # status polling period: fine enough for second-scale waits, cheap for the nodes
EXIT_POLL_S = 0.02  # how often a stop looks whether its processes have exited


@dataclass
class Proc:
    """One started process: its name, its port, its log file and (for a node) its data dir."""

    name: str
    port: int
    popen: subprocess.Popen
    log_path: Path
    data_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_kb(self) -> int | None:
        return rss_kb(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def events(self, names: Iterable[str] | None = None) -> list[dict]:
        return read_events(self.log_path, names)


class Processes:
    """Relays and nodes started for one test or benchmark, on one network and difficulty."""

    def __init__(self, root: Path, network: str, difficulty: int, *, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.network = network
        self.difficulty = difficulty
        self.stop_timeout_s = stop_timeout_s
        self.procs: list[Proc] = []
        self.unclean: list[str] = []  # processes that needed SIGKILL or exited non-zero
        self.killed: list[str] = []  # names of those that outlived the stop bound

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill_all()

    def spawn(self, name: str, port: int, args: Sequence[str], data_dir: Path | None = None) -> Proc:
        """Start ``python -m gridchain *args``, its output appended to ``<root>/<name>.log``."""
        log_path = self.root / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
            popen = subprocess.Popen([sys.executable, "-m", "gridchain", *args], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root)
        proc = Proc(name, port, popen, log_path, data_dir)
        self.procs.append(proc)
        return proc

    def relay(self, interval_s: float, seed: int = 1, name: str = "relay") -> Proc:
        port = free_port()
        return self.spawn(name, port, ["relay", "--port", str(port), "--interval", f"{interval_s:g}",
                                       "--seed", str(seed), "--fault-probability", "0", "--log-format", "json"])

    def node(self, name: str, *, peers: Sequence[int] = (), relays: Sequence[int] = (),
             capture_interval_s: float = 60.0, data_dir: Path | None = None, port: int | None = None,
             extra: Sequence[str] = ()) -> Proc:
        port = port or free_port()
        data_dir = data_dir or self.root / name
        args = ["node", "--port", str(port), "--data-dir", str(data_dir), "--network", self.network,
                "--difficulty", str(self.difficulty), "--capture-interval", f"{capture_interval_s:g}",
                "--name", name, "--log-format", "json", *extra]
        for peer in peers:
            args += ["--peer", f"127.0.0.1:{peer}"]
        for relay in relays:
            args += ["--relay", f"127.0.0.1:{relay}"]
        return self.spawn(name, port, args, data_dir)

    async def stop(self, procs: Sequence[Proc], timeout: float | None = None) -> dict[str, int | None]:
        """SIGTERM each, wait for all together, SIGKILL whatever outlives ``timeout``; the exit
        status of each by name (a process that had already exited keeps its own)."""
        timeout = self.stop_timeout_s if timeout is None else timeout
        for proc in procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(proc.alive() for proc in procs) and loop.time() < deadline:
            await asyncio.sleep(EXIT_POLL_S)
        codes: dict[str, int | None] = {}
        for proc in procs:
            if proc.alive():
                self.kill([proc])
                self.killed.append(proc.name)
                self.unclean.append(f"{proc.name}: killed after {timeout:g} s")
            elif proc.returncode not in (0, -signal.SIGTERM):
                self.unclean.append(f"{proc.name}: exit status {proc.returncode}")
            codes[proc.name] = proc.returncode
        return codes

    async def stop_all(self) -> dict[str, int | None]:
        return await self.stop([p for p in self.procs if p.alive()])

    def kill(self, procs: Sequence[Proc]) -> None:
        """SIGKILL each: no chance to flush, close or log anything."""
        for proc in procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(KILL_WAIT_S)

    def kill_all(self) -> None:
        self.kill([p for p in self.procs if p.alive()])


# --- talking to nodes -------------------------------------------------------------------------
async def status(port: int, timeout: float = STATUS_TIMEOUT_S) -> dict | None:
    """The status of the node on peer port ``port`` (asked on its operator port), or None if it
    does not answer (yet)."""
    try:
        async with NodeClient(Address("127.0.0.1", api_port(port)), timeout=timeout) as client:
            return await client.status()
    except (NodeUnavailable, RequestFailed, OSError, TimeoutError):
        return None


async def statuses(procs: Sequence[Proc]) -> list[dict | None]:
    return list(await asyncio.gather(*(status(p.port) for p in procs)))


def answers(info: dict) -> bool:
    """A ``wait_status`` predicate: any status at all."""
    return True


async def wait_status(proc: Proc, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
    """Poll ``proc``'s status until ``predicate`` holds; fails naming ``what`` after ``timeout``,
    and at once (with the end of its log) if the process exits."""
    info: dict | None = None

    async def holds() -> bool:
        nonlocal info
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.returncode} while waiting for {what}; "
                                 f"its log ({proc.log_path}) ends: {log_tail(proc.log_path)}")
        info = await status(proc.port)
        return info is not None and predicate(info)

    await wait_until(holds, timeout, POLL_S, what=what)
    return info


async def wait_all(procs: Sequence[Proc], predicate: Callable[[dict], bool], timeout: float,
                   what: str) -> list[dict]:
    return list(await asyncio.gather(*(wait_status(p, predicate, timeout, f"{what} on {p.name}")
                                       for p in procs)))
