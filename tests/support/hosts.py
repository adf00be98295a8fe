"""Test hosts in network namespaces: one per node and one for the relay, each with its own address.

``Hosts`` makes a namespace per host and one more, the switch, holding a bridge; each host
has a veth into the switch with an address of SUBNET, its loopback up and no route beyond
SUBNET, so nothing in a host can reach any other address (and the root namespace's
interfaces are never touched). Processes run inside with ``ip netns exec``, which execs in
place: the Popen's pid is the daemon's, for SIGSTOP, SIGCONT and SIGKILL. The test process
itself stays in the root namespace and opens sockets inside a host with ``connect`` (a
socket belongs to the namespace it was created in; ``setns`` moves only the calling thread,
so a short-lived thread makes it there).

Faults, each undone by ``heal`` or its ``with`` block:
- ``partition(*groups)``: DROP rules (iptables-legacy, a chain of our own in each host) for
  packets arriving from a host of another group: a silent cut, as a failed router makes, so
  TCP finds out only from its retransmissions, backing off exponentially. Packets are
  dropped where they arrive, never where they leave: a DROP in the sender's OUTPUT chain is
  a local send error to TCP, which then retries every 500 ms (TCP_RESOURCE_PROBE_INTERVAL)
  instead of backing off, and every cut would heal within half a second;
- ``netem(loss, delay_s, jitter_s)``: every packet leaving a host's interface lost with
  ``loss`` or delayed by ``delay_s +- jitter_s``: ``tc qdisc netem`` where the kernel has it,
  otherwise an NFQUEUE rule and a user-space delayer (tests.support.netqueue);
- ``clock_env(offset_s)``: the environment that runs a program with its clock off by
  ``offset_s`` (libfaketime; the monotonic clock stays true);
- stopping, killing and restarting a process go through ``processes.Processes``.

Everything made is removed on leaving the ``with`` block, however it is left, and at exit
(atexit, and SIGTERM turned into SystemExit while hosts exist); namespaces left by an earlier
run that was SIGKILLed (their names carry its pid) are removed when the next run starts.
Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), ``ip`` and ``iptables-legacy``; ``missing()``
says what is lacking.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import glob
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .netqueue import Delayer

PREFIX = "gct"  # namespace names: gct<pid>n<k>-<host>; nothing else here starts with it
SUBNET = "10.231.0"  # host addresses SUBNET.<n>/24: private, and only ever on the test's own bridge
FIRST_HOST = 10  # the first host's last octet
IPTABLES = "iptables-legacy"  # NFQUEUE needs it: the nft backend would need CONFIG_NFT_QUEUE too
CUT_CHAIN = "gc-cut"  # DROP rules of the current partition
NETEM_CHAIN = "gc-netem"  # the NFQUEUE rule while packets are lost and delayed in user space
CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT_S = 10.0  # ip and iptables finish in milliseconds; this only bounds a stuck one
CONNECT_TIMEOUT_S = 2.0  # a host on the test's bridge answers at once unless a fault holds it
FAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"
SBIN = ("/usr/sbin", "/sbin")

_libc = ctypes.CDLL(None, use_errno=True)
_live: set[Hosts] = set()
_counter = iter(range(1, 1 << 30))


def tool(name: str) -> str | None:
    """The path of system tool ``name`` (also where root's tools live when PATH leaves them out)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def missing() -> str | None:
    """What keeps this machine from making test hosts (None: nothing)."""
    if os.geteuid() != 0:
        return "test hosts in network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    for name, package in (("ip", "iproute2"), ("tc", "iproute2"), (IPTABLES, "iptables")):
        if tool(name) is None:
            return f"{name} is not installed (Debian package {package}; .ci/run installs it)"
    return None


def libfaketime() -> str | None:
    found = sorted(glob.glob(FAKETIME_GLOB))
    return found[0] if found else None


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = (tool(argv[0]) or argv[0], *argv[1:])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def netns_names() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_netns(name: str) -> None:
    """SIGKILL every process in namespace ``name`` (all started by these tests), then delete it."""
    pids = run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run("ip", "netns", "del", name, check=False)


def sweep_stale() -> list[str]:
    """Remove the namespaces of earlier runs whose process is gone (SIGKILLed: no atexit ran)."""
    swept = []
    for name in netns_names():
        match = re.fullmatch(rf"{PREFIX}(\d+)n\d+-.+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            remove_netns(name)
            swept.append(name)
    return swept


def in_netns(netns: str, call: Callable[[], object]) -> object:
    """``call()`` run in a thread that has entered namespace ``netns``; what it returns or raises."""
    outcome: dict[str, object] = {}

    def enter_and_call() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_call, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass(frozen=True)
class Host:
    """One host: its name, namespace and address."""

    name: str
    netns: str
    address: str


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class Hosts:
    """Test hosts on one bridge; ``with Hosts(["relay", "n1", ...]) as hosts: ...``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.tag = f"{PREFIX}{os.getpid()}n{next(_counter)}"
        self.switch = f"{self.tag}-sw"
        self.hosts = {name: Host(name, f"{self.tag}-{name}", f"{SUBNET}.{FIRST_HOST + i}")
                      for i, name in enumerate(names)}
        self.netem_mode: str | None = None  # "tc" or "nfqueue" once netem() has run
        self._made: list[str] = []
        self._old_sigterm: object = None

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def address(self, name: str) -> str:
        return self.hosts[name].address

    # --- making and removing --------------------------------------------------------------
    def __enter__(self) -> Hosts:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        sweep_stale()
        _live.add(self)
        if not _live - {self} and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL \
                and threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def _create(self) -> None:
        self._netns(self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            self._netns(host.netns)
            port = f"v-{host.name}"[:15]
            run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)
            run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            run("ip", "-n", host.netns, "link", "set", "eth0", "up")
            for chain, hook, interface in ((CUT_CHAIN, "INPUT", "-i"), (NETEM_CHAIN, "OUTPUT", "-o")):
                self.iptables(host.name, "-N", chain)
                self.iptables(host.name, "-A", hook, interface, "eth0", "-j", chain)

    def remove(self) -> None:
        """Kill what runs in the hosts and delete every namespace made; safe to call twice."""
        for name in reversed(self._made):
            remove_netns(name)
        self._made.clear()
        _live.discard(self)
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def netns_left(self) -> list[str]:
        """Namespaces of these hosts still in ``ip netns list`` (none after ``remove``)."""
        return [name for name in netns_names() if name.startswith(f"{self.tag}-")]

    # --- running things inside ------------------------------------------------------------
    def iptables(self, name: str, *rule: str) -> None:
        run("ip", "netns", "exec", self.hosts[name].netns, tool(IPTABLES) or IPTABLES, "-w", *rule)

    def tc(self, netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", netns, tool("tc") or "tc", *argv, check=check)

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside host ``name``."""
        return [tool("ip") or "ip", "netns", "exec", self.hosts[name].netns, *argv]

    def popen(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` in host ``name`` (environment ``env``, default this one's), output to ``log_path``."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(self.command(name, argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(os.environ if env is None else env), cwd=cwd)

    async def connect(self, name: str, port: int, address: str = "127.0.0.1",
                      timeout: float = CONNECT_TIMEOUT_S) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection from inside host ``name`` (default: to its own loopback)."""
        sock = in_netns(self.hosts[name].netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (address, port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    # --- faults -----------------------------------------------------------------------------
    def partition(self, *groups: Iterable[str]) -> list[tuple[str, str]]:
        """Silently drop every packet between hosts of different groups (hosts in no group keep
        every link); the pairs cut."""
        side = {name: g for g, members in enumerate(groups) for name in members}
        cut = [(a, b) for a in self.hosts for b in self.hosts
               if a < b and a in side and b in side and side[a] != side[b]]
        for a, b in cut:
            for here, there in ((a, b), (b, a)):
                self.iptables(here, "-A", CUT_CHAIN, "-s", self.address(there), "-j", "DROP")
        return cut

    def heal(self) -> None:
        for name in self.hosts:
            self.iptables(name, "-F", CUT_CHAIN)

    def tc_netem_works(self) -> bool:
        """Whether this kernel has the netem qdisc (tried on the switch's bridge, then removed)."""
        tried = self.tc(self.switch, "qdisc", "add", "dev", "br0", "root", "netem", "delay", "1ms", check=False)
        if tried.returncode == 0:
            self.tc(self.switch, "qdisc", "del", "dev", "br0", "root", check=False)
        return tried.returncode == 0

    @contextlib.contextmanager
    def netem(self, loss: float, delay_s: float, jitter_s: float, rng: random.Random,
              names: Iterable[str] | None = None) -> Iterator[Delayer | None]:
        """Every packet leaving the hosts ``names`` (default: all) over their interface is lost
        with ``loss``, else delayed by ``delay_s +- jitter_s`` (uniform), until the block ends.
        Yields the user-space delayer (its per-host counts), or None when tc netem does it."""
        names = list(self.hosts if names is None else names)
        if self.tc_netem_works():
            self.netem_mode = "tc"
            spec = ["loss", f"{loss * 100:g}%", "delay", f"{delay_s * 1000:g}ms", f"{jitter_s * 1000:g}ms"]
            try:
                for name in names:
                    self.tc(self[name].netns, "qdisc", "add", "dev", "eth0", "root", "netem", *spec)
                yield None
            finally:
                for name in names:
                    self.tc(self[name].netns, "qdisc", "del", "dev", "eth0", "root", check=False)
            return
        self.netem_mode = "nfqueue"
        delayer = Delayer(loss, delay_s, jitter_s, rng)
        try:
            for name in names:
                delayer.add(name, lambda open_queue, netns=self[name].netns: in_netns(netns, open_queue))
                self.iptables(name, "-A", NETEM_CHAIN, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass")
            delayer.start()
            yield delayer
        finally:
            for name in names:
                with contextlib.suppress(RuntimeError):
                    self.iptables(name, "-F", NETEM_CHAIN)
            delayer.close()
        if delayer.error is not None:
            raise RuntimeError(f"the packet delayer failed: {delayer.error!r}")

    @staticmethod
    def clock_env(offset_s: float) -> dict[str, str]:
        """Environment for a program whose wall clock runs ``offset_s`` off (libfaketime)."""
        library = libfaketime()
        if library is None:
            raise RuntimeError("libfaketime is not installed (Debian package libfaketime; .ci/run installs it)")
        return {"LD_PRELOAD": library, "FAKETIME": f"{offset_s:+g}", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@atexit.register
def _remove_all() -> None:
    for hosts in list(_live):
        hosts.remove()
