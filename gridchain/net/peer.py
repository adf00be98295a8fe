"""One peer connection's asyncio layer: frames in and out, a bounded send queue, the clock.

A Peer only moves bytes and messages. The protocol state (handshake, keepalive, which
messages mean anything) is a sans-IO ``PeerProtocol`` (gridchain.net.protocol) that the
Peer feeds every message with the time; what a message means for the node is decided by
its handler (gossip.py), whose ``on_<type>`` method gets every delivered message. Either
raises ProtocolViolation to have the peer disconnected at the cost its reason carries
(gridchain.net.penalties). The Peer logs nothing about why a connection ended: it hands the
reason and detail to the handler's ``on_peer_closed``, which reports each closed connection once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gridchain.identity.tls import TlsLink
from gridchain.net.messages import Hello, MessageError, Reject, decode_message, encode_message
from gridchain.net.penalties import LINK, Cost, cost_of
from gridchain.net.protocol import Deliver, Event, PeerProtocol, ProtocolViolation, Ready, Send
from gridchain.wire.frames import FrameError, encode_frame
from gridchain.wire.streams import ConnectionClosed, FrameReader

log = structlog.get_logger()

# Frames queued for a peer; a peer this far behind is dropped rather than buffered for.
SEND_QUEUE_FRAMES = 2048
# Bytes queued for a peer: four full frames. A peer that asks for blocks but never reads
# would otherwise have up to SEND_QUEUE_FRAMES 3 MiB answers (gigabytes) held for it.
SEND_QUEUE_BYTES = 16 * 1024 * 1024
# A peer whose socket accepts nothing for this long cannot keep up and is dropped.
SEND_STALL_S = 10.0
# Remembered block hashes per peer, so a block crosses each link at most once.
KNOWN_BLOCKS_PER_PEER = 4096
# Linux only: the kernel aborts a connection whose sent data stays unacknowledged this long.
# Longer than the protocol's ping timeout (which names the failure, ``ping-timeout``); a
# backstop for an event loop too busy to tick. (SO_KEEPALIVE adds nothing: pings run whenever
# a link is quiet for a second, so TCP never sees an idle connection.)
TCP_USER_TIMEOUT_MS = 10_000
# Ends that mean the link itself is dead: nothing queued can arrive, so it is aborted at once
# rather than flushed (a flush would wait out SEND_STALL_S before the dialler could redial).
DEAD_LINK_REASONS = frozenset({"ping-timeout"})


@dataclass(slots=True)
class _Tip:
    """A queued ``tip`` frame; emptied when a newer one is queued (only the newest says anything)."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class _Close:
    """Sentinel put on the send queue so the writer flushes what is queued, then stops."""


class KnownSet:
    """A bounded insertion-ordered set of hashes (oldest forgotten first)."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[bytes, None] = OrderedDict()
        self._limit = limit

    def add(self, item: bytes) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        if len(self._items) > self._limit:
            self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._items


class Peer:
    """A connection to one other node, inbound or outbound.

    ``handler`` admits proven hellos (``admit(peer, hello)``), hears of the link's start and
    end (``on_peer_ready``, ``on_peer_closed``) and handles delivered messages (``on_<type>``);
    ``decode`` turns a frame into a message (the node's decodes every type its port carries).
    ``hello`` is ours for this connection (its own fresh nonce), ``sign`` signs with our node
    key, ``members`` the keys that may be peers (None: any). ``link`` is what the TLS
    handshake established (None on a plaintext link): the key the peer's certificate holds,
    which its ``hello`` must claim (``tls-key-mismatch`` otherwise), and the binding both
    handshake proofs sign.
    """

    def __init__(self, frames: FrameReader, writer: asyncio.StreamWriter, *, handler: Any, hello: Hello,
                 inbound: bool, address: str, sign: Callable[[bytes], bytes],
                 members: frozenset[bytes] | None = None,
                 decode: Callable[[object], object] = decode_message, link: TlsLink | None = None) -> None:
        self.frames = frames
        self.writer = writer
        self.handler = handler
        self.inbound = inbound
        self.address = address  # host:port as seen on the socket
        self.host = address.rpartition(":")[0]
        self.link = link
        self.protocol = PeerProtocol(hello, inbound=inbound, now=time.monotonic(), sign=sign, members=members,
                                     admit=lambda remote: handler.admit(self, remote),
                                     binding=link.binding if link is not None else b"")
        self.decode = decode
        self.height = 0
        self.tip = b""
        self.work = 0
        self.known = KnownSet(KNOWN_BLOCKS_PER_PEER)
        self.close_reason = ""
        self.close_detail = ""
        self.close_cost = Cost.DROP
        self._queue: asyncio.Queue[bytes | _Tip | _Close] = asyncio.Queue(SEND_QUEUE_FRAMES)
        self._queued_bytes = 0
        self._queued_tip: _Tip | None = None  # the newest tip announcement not yet written
        self._buffered_seen = 0  # bytes of an unfinished frame at the last look (keepalive)
        self._closing = False
        _tune_socket(writer)
        self.log = getattr(handler, "log", log).bind(peer=address)

    @property
    def state(self) -> str:
        return self.protocol.state

    def link_state(self, now: float) -> str:
        """``state``, or ``stale`` for a ready link whose pong is overdue (gridchain.net.protocol)."""
        return self.protocol.link_state(now)

    @property
    def hello(self) -> Hello | None:
        return self.protocol.remote

    @property
    def node_key(self) -> bytes:
        """The peer's proven key (b"" until the handshake is done)."""
        return self.hello.node_key if self.hello else b""

    @property
    def claimed_key(self) -> bytes:
        """The key the peer's hello claims, proven or not (for logs only: it decides nothing)."""
        claimed = self.protocol.claimed
        return claimed.node_key if claimed else b""

    @property
    def listen_address(self) -> str:
        """Where this peer accepts connections (its hello's port on the socket's host)."""
        if self.hello and self.hello.listen_port:
            return f"{self.host}:{self.hello.listen_port}"
        return self.address

    # --- sending -------------------------------------------------------------------------
    def send(self, message: object) -> None:
        self.send_frame(encode_frame(encode_message(message)))

    def send_tip(self, frame: bytes) -> None:
        """Queue an encoded ``tip`` frame in place of any older one still waiting to be written.

        The older one's place is emptied, not refilled: the newest tip goes after the blocks
        queued before it, as gossip requires (a tip never arrives before its block). So a link
        that cannot write for a while carries one tip when it wakes, not a burst of stale ones.
        """
        if self._queued_tip is not None:
            self._queued_bytes -= len(self._queued_tip.frame)
            self._queued_tip.frame = b""
            self._queued_tip = None
        tip = _Tip(frame)
        if self.send_frame(frame, tip):
            self._queued_tip = tip

    def send_frame(self, frame: bytes, item: bytes | _Tip | None = None) -> bool:
        """Queue an encoded frame; a peer whose queue is full is dropped, never waited for."""
        if self._closing:
            return False
        if self._queued_bytes + len(frame) > SEND_QUEUE_BYTES:
            # Not worth flushing megabytes to a peer that does not read: drop them and hang up.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queued_bytes = 0
            self.close("send-queue-full")
            self.writer.transport.abort()
            return False
        try:
            self._queue.put_nowait(frame if item is None else item)
        except asyncio.QueueFull:
            self.close("send-queue-full")
            return False
        self._queued_bytes += len(frame)
        return True

    def close(self, reason: str, detail: str = "", kind: str = LINK) -> None:
        """Stop the connection: queued frames are flushed (bounded), then the socket closes."""
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        self.close_detail = detail
        # Nothing is held against a key the peer has not proven (gridchain.net.penalties).
        self.close_cost = cost_of(reason, kind, proven=self.protocol.proven)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_Close())
        if self._queue.full():
            self.writer.transport.abort()

    # --- the connection's life -------------------------------------------------------------
    async def run(self) -> None:
        """Handshake, then read until the peer or the node closes; always reports the close."""
        # Two plain tasks rather than a TaskGroup: on Python 3.11 a TaskGroup whose child dies
        # of a reset leaves the parent task marked as cancelling, and a dialler that sees that
        # flag cannot tell a reset from a shutdown. Here a cancel of run() is the only
        # cancellation the caller ever sees.
        sides = [asyncio.create_task(self._write_loop()), asyncio.create_task(self._read_side())]
        try:
            await asyncio.wait(sides, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for side in sides:
                side.cancel()
            await asyncio.gather(*sides, return_exceptions=True)
            self._note_failure(sides)
            self.writer.transport.abort()
            await self.handler.on_peer_closed(self, self.close_reason or "closed", self.close_cost is Cost.BAN)

    def _note_failure(self, sides: list[asyncio.Task]) -> None:
        errors = [side.exception() for side in sides if not side.cancelled() and side.exception()]
        if not errors:
            return
        if isinstance(errors[0], (ConnectionError, OSError)):
            self.close_reason = self.close_reason or "connection-lost"
        else:
            # A bug in handling one peer must not take the node down with it.
            self.log.error("peer.internal_error", error=repr(errors[0]))
            self.close_reason = "internal-error"
            self.close_cost = Cost.DROP

    async def _read_side(self) -> None:
        try:
            await self._carry_out(self.protocol.start())
            while not self._closing:
                now = time.monotonic()
                self._note_bytes(now)
                await self._carry_out(self.protocol.tick(now))
                try:
                    message = await self._next_message(max(self.protocol.deadline() - now, 0.0))
                except TimeoutError:
                    continue  # the next tick pings or times the link out
                if message is None:
                    fault = self.protocol.closed()
                    if fault is not None:
                        raise fault
                    self.close_reason = self.close_reason or "peer-closed"
                    return
                await self._carry_out(self.protocol.receive(message, time.monotonic()))
        except ProtocolViolation as exc:
            self._reject_and_close(exc)
        except (ConnectionClosed, ConnectionError, OSError):
            self.close("connection-lost")  # a reset: named as such, not as a clean close
        finally:
            self.close(self.close_reason or "closed")

    def _note_bytes(self, now: float) -> None:
        """Tell keepalive about bytes of a frame still arriving (a pong may queue behind it)."""
        buffered = self.frames.buffered
        if buffered != self._buffered_seen:
            self._buffered_seen = buffered
            if buffered:
                self.protocol.heard(now)

    def _reject_and_close(self, exc: ProtocolViolation) -> None:
        dead = exc.reason in DEAD_LINK_REASONS
        if exc.reply and not dead and not self._closing:
            self.send(Reject(code=exc.reason, detail=exc.detail[:200]))
        # Not logged here: on_peer_closed reports the reason once, with the ban if there is one.
        self.close(exc.reason, exc.detail, exc.kind)
        if dead:
            self.writer.transport.abort()

    async def _carry_out(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Send):
                self.send(event.message)
            elif isinstance(event, Ready):
                self.frames.lift_cap()  # proven: full-size frames (blocks) from now on
                self.height, self.tip, self.work = event.hello.height, event.hello.tip, event.hello.work
                await self.handler.on_peer_ready(self)
            elif isinstance(event, Deliver):
                await getattr(self.handler, "on_" + event.message.TYPE)(self, event.message)

    async def _next_message(self, timeout: float) -> object | None:
        """The next decoded message within ``timeout``, or None at the end of the stream."""
        try:
            raw = await self.frames.next(timeout)
        except FrameError as exc:
            raise ProtocolViolation(exc.reason, str(exc)) from None
        if raw is None:
            return None
        try:
            message = self.decode(raw)
        except MessageError as exc:
            raise ProtocolViolation(exc.reason, exc.detail) from None
        if self.link is not None and isinstance(message, Hello) and message.node_key != self.link.peer_key:
            # TLS proved the certificate's key; a hello claiming any other is refused unheard.
            raise ProtocolViolation("tls-key-mismatch", f"hello claims {message.node_key.hex()[:16]}, the TLS "
                                    f"certificate holds {self.link.peer_key.hex()[:16]}")
        return message

    async def _write_loop(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Close):
                break
            if isinstance(item, _Tip):
                if item is self._queued_tip:
                    self._queued_tip = None
                item = item.frame
                if not item:
                    continue  # a newer tip took its place further back in the queue
            self._queued_bytes -= len(item)
            if self.writer.transport.is_closing():
                # The other side ended the link (a TLS close_notify, a reset): writing on would
                # only make the TLS layer warn once per frame that the connection is closed.
                break
            self.writer.write(item)
            if self.writer.transport.get_write_buffer_size() > 0:
                try:
                    async with asyncio.timeout(SEND_STALL_S):
                        await self.writer.drain()
                except TimeoutError:
                    self.close_reason = "slow-peer"
                    break
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.writer.drain()
        self.writer.transport.abort() if self.close_reason == "slow-peer" else self.writer.close()
        # Unblock a reader waiting on a silent peer.
        self.frames.reader.feed_eof()


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    """Bound how long the kernel keeps retrying unacknowledged data on a dead link (Linux)."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, TCP_USER_TIMEOUT_MS)
