"""One listening socket: accept, keep strangers on a small budget, look at the first bytes, hand on.

A node has two of these (gridchain.node.doors): the peer listener, which speaks only the
peer protocol, and the operator listener (127.0.0.1 or a Unix socket by default), which
speaks only the operator API. Neither ever routes to the other.

Every accepted connection is *unidentified* until its door says otherwise (``Slot.identified``:
a member's TLS certificate verified, an operator's first request read). Unidentified
connections have a budget of their own per listener (``budget``); when it is full, the next
connection evicts one of them rather than being refused, choosing the one that has done the
least (silent since accept, then still in its TLS handshake, then waiting for its first frame)
and, among those, the oldest. So a flood of silent sockets only ever evicts itself: a member,
whose ClientHello arrives within a round trip of its connect, or an operator, whose request
does, is past the first stage before the next flood socket lands, and identified sockets are
never evicted. Nothing about an evicted socket is remembered.

In front of that budget, on Linux, the kernel holds each new connection until its first
bytes arrive (``TCP_DEFER_ACCEPT``, up to DEFER_ACCEPT_S): a silent socket costs an entry in
the listen queue, never an accept, and the flooder, whose connect has succeeded, waits on it
instead of coming back for another as each is evicted. Every client of either port speaks
first, so none waits for this; a socket still silent when the kernel lets it through meets
the budget above.

The first bytes are looked at without reading them (``MSG_PEEK``), before any transport or
TLS object exists: a TLS record (0x16) gets the door's TLS context, anything else is a
plaintext connection whose first bytes the door may route on (the hook where an HTTP request
line goes to a web handler). Only then is the socket wrapped in asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gridchain.wire.streams import READ_CHUNK

# The first bytes of a connection must arrive this fast (a client speaks at once on connect).
FIRST_BYTES_TIMEOUT_S = 5.0
# The TLS handshake, from the ClientHello to both Finished messages, must end this fast.
TLS_HANDSHAKE_TIMEOUT_S = 5.0
PEEK_BYTES = 8  # enough for a TLS record header or an HTTP method
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS connection (a handshake record)
# The kernel's listen queue (capped by net.core.somaxconn): a burst of connects waits there, not
# refused, and so do silent sockets while their accept is deferred; past it they come in at once.
BACKLOG = 4096
# How long the kernel may hold a connection that has sent nothing (rounded up to its SYN-ACK
# retransmits: 5 s is about 7 s); a client speaks at once on connect, so only silence waits.
DEFER_ACCEPT_S = FIRST_BYTES_TIMEOUT_S
# Stages of an unidentified connection, least done first (the eviction order).
SILENT, HANDSHAKING, UNPROVEN = 0, 1, 2
EVICTION_LOG_INTERVAL_S = 10.0  # a flood is logged once per interval, not once per socket


@dataclass(slots=True)
class Slot:
    """An unidentified connection's place in the budget; ``identified()`` takes it off."""

    task: asyncio.Task | None
    sock: socket.socket | None = None
    started: bool = False  # its task has run: its own cleanup closes the socket
    stage: int = SILENT
    since: float = field(default_factory=time.monotonic)
    released: Callable[[Slot], None] | None = None

    def identified(self) -> None:
        if self.released is not None:
            released, self.released = self.released, None
            released(self)


@dataclass(frozen=True, slots=True)
class Accepted:
    """One connection, wrapped in streams: where it came from and what it started with."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: str  # host:port, or "unix" for a Unix socket
    local: bool  # loopback or a Unix socket: the same host
    tls: bool
    first: bytes  # the first bytes, peeked (still unread in ``reader``); b"" on TLS


Serve = Callable[[Accepted, Slot], Awaitable[None]]


class Listener:
    """Accepts on ``host:port`` (or a Unix socket at ``path``) for one door.

    ``serve(accepted, slot)`` runs each connection; ``tls()`` is the door's TLS context (None:
    a TLS client is refused); ``refuse(address, reason, detail)`` logs a connection turned away
    before the door saw it.
    """

    def __init__(self, *, host: str, port: int, budget: int, serve: Serve,
                 tls: Callable[[], ssl.SSLContext | None], refuse: Callable[..., None], log,
                 path: Path | None = None, event: str = "listener") -> None:
        self.host = host
        self.port = port
        self.path = path
        self.budget = budget
        self.serve = serve
        self.tls = tls
        self.refuse = refuse
        self.log = log
        self.event = event  # prefix of this listener's own log events
        self.evicted = 0
        self._sock: socket.socket | None = None
        self._loop_task: asyncio.Task | None = None
        self._unidentified: list[Slot] = []
        self._tasks: set[asyncio.Task] = set()
        self._logged_eviction_at = -EVICTION_LOG_INTERVAL_S

    @property
    def listening(self) -> bool:
        return self._sock is not None

    @property
    def unidentified(self) -> int:
        return len(self._unidentified)

    async def start(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # the socket file: the node's own account only
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            sock.listen(BACKLOG)
        else:
            sock = socket.create_server((self.host, self.port), backlog=BACKLOG, reuse_port=False)
            _defer_accept(sock)
            self.port = sock.getsockname()[1]
        sock.setblocking(False)
        self._sock = sock
        self._loop_task = asyncio.create_task(self._accept_loop(sock))

    def stop(self) -> None:
        """Stop accepting and drop connections not handed on yet; handed-on ones are their owners'."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        for slot in list(self._unidentified):
            if slot.task is not None:
                slot.task.cancel()
        if self._sock is not None:
            # Closed now, not when the cancelled accept loop next runs: from here on the kernel
            # refuses connects (and resets any still in its accept queue). The loop's reader
            # goes first, so the event loop never polls a closed descriptor.
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def wait_closed(self) -> None:
        pending = [t for t in (self._loop_task, *self._tasks) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)

    # --- accepting -----------------------------------------------------------------------------
    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:  # e.g. out of file descriptors: wait, never spin
                self.log.warning(f"{self.event}.accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            address = "unix" if self.path is not None else f"{peer[0]}:{peer[1]}"
            slot = Slot(task=None, sock=conn)
            self._admit(slot)
            task = asyncio.create_task(self._handle(conn, address, slot))
            slot.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0)  # let connections already accepted look at their first bytes

    def _admit(self, slot: Slot) -> None:
        if len(self._unidentified) >= self.budget:
            victim = self._victim()
            self._release(victim)
            if victim.task is not None:
                victim.task.cancel()
            if not victim.started and victim.sock is not None:
                victim.sock.close()  # a task cancelled before its first step never runs its cleanup
            self.evicted += 1
            now = time.monotonic()
            if now - self._logged_eviction_at >= EVICTION_LOG_INTERVAL_S:
                self._logged_eviction_at = now
                self.log.warning(f"{self.event}.evicting", budget=self.budget, evicted=self.evicted,
                                 detail="unidentified connections over budget: the least advanced are closed")
        slot.released = self._release
        self._unidentified.append(slot)

    def _victim(self) -> Slot:
        """The connection to evict: the oldest that has sent nothing, else the least advanced.

        "Sent nothing" is asked of the socket itself, not of the connection's task, which may
        not have run yet in a burst of accepts: bytes waiting in it make it HANDSHAKING.
        """
        for slot in sorted(self._unidentified, key=lambda s: s.since):
            if slot.stage != SILENT:
                continue
            if not _has_bytes(slot.sock):
                return slot
            slot.stage = HANDSHAKING
        return min(self._unidentified, key=lambda s: (s.stage, s.since))

    def _release(self, slot: Slot) -> None:
        slot.released = None
        with contextlib.suppress(ValueError):
            self._unidentified.remove(slot)

    async def _handle(self, conn: socket.socket, address: str, slot: Slot) -> None:
        handed_on = False
        writer: asyncio.StreamWriter | None = None
        slot.started = True
        try:
            first = await _peek(conn, FIRST_BYTES_TIMEOUT_S)
            if not first:
                return
            slot.stage = HANDSHAKING
            local = self.path is not None or _is_loopback(address)
            use_tls = first[0] == TLS_HANDSHAKE_RECORD
            context = self.tls() if use_tls else None
            if use_tls and context is None:
                self.refuse(address, "tls-not-offered", "this listener speaks plaintext only")
                return
            try:
                reader, writer = await _streams(conn, context)
            except ssl.SSLError as exc:
                self.refuse(address, _tls_reason(exc), str(exc))
                return
            except (OSError, TimeoutError) as exc:
                self.refuse(address, "tls-handshake-failed" if use_tls else "closed", str(exc) or type(exc).__name__)
                return
            handed_on = True
            slot.stage = UNPROVEN
            await self.serve(Accepted(reader, writer, address, local, use_tls, b"" if use_tls else first), slot)
        except TimeoutError:
            self.refuse(address, "first-bytes-timeout", f"nothing within {FIRST_BYTES_TIMEOUT_S}s")
        except asyncio.CancelledError:
            # Evicted, or the node is stopping: a connection its door had not identified yet.
            if writer is not None:
                writer.transport.abort()
        except (ConnectionError, OSError):
            pass
        finally:
            slot.identified()
            if not handed_on:
                conn.close()


def _defer_accept(sock: socket.socket) -> None:
    """Have the kernel hand over a connection only once its first bytes are in (Linux; elsewhere
    the budget alone holds silent sockets off)."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(DEFER_ACCEPT_S)))


def _has_bytes(conn: socket.socket | None) -> bool:
    """Whether the peer has sent anything yet (without reading it)."""
    if conn is None or conn.fileno() < 0:
        return False
    try:
        return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError, OSError):
        return False


async def _peek(conn: socket.socket, timeout: float) -> bytes:
    """The connection's first bytes, left in the socket; b"" if it closed first."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
    try:
        async with asyncio.timeout(timeout):
            await readable
    finally:
        loop.remove_reader(fd)
    try:
        return conn.recv(PEEK_BYTES, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return await _peek(conn, timeout)
    except ConnectionError:
        return b""


async def _streams(conn: socket.socket, context: ssl.SSLContext | None):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    options = {"ssl": context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S} if context is not None else {}
    async with asyncio.timeout(TLS_HANDSHAKE_TIMEOUT_S + 1.0):
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, **options)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _tls_reason(exc: ssl.SSLError) -> str:
    """A stable name for why a TLS handshake failed (the certificate check names most)."""
    text = str(exc).lower()
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in text:
        return "not-a-member"  # its certificate is signed by no key of the network file
    if "peer did not return a certificate" in text or "certificate required" in text:
        return "tls-no-certificate"
    if "wrong version" in text or "unsupported protocol" in text or "version" in text:
        return "tls-version"
    return "tls-handshake-failed"


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.") or host.startswith("::ffff:127.")
