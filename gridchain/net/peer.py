"""One peer connection: frames in and out, the handshake, a bounded send queue, timeouts.

A Peer only moves bytes and messages. What a message means is decided by its handler
(gossip.py), whose ``on_<type>`` method is called for every message after the handshake.
A handler raises ProtocolViolation to have the peer disconnected and banned. The Peer logs
nothing about why a connection ended: it hands the reason and detail to the handler's
``on_peer_closed``, which reports each closed connection once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gridchain.wire.frames import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode_frame
from gridchain.net.messages import Hello, MessageError, Ping, Reject, decode_message, encode_message

log = structlog.get_logger()

READ_CHUNK = 64 * 1024
# A peer must say hello this fast; slowloris-style half-open connections are closed.
HANDSHAKE_TIMEOUT_S = 5.0
# Keepalive: ping after this much silence; close after IDLE_TIMEOUT_S with no frame at all.
PING_INTERVAL_S = 15.0
IDLE_TIMEOUT_S = 45.0
# Frames queued for a peer; a peer this far behind is dropped rather than buffered for.
SEND_QUEUE_FRAMES = 2048
# Bytes queued for a peer: four full frames. A peer that asks for blocks but never reads
# would otherwise have up to SEND_QUEUE_FRAMES 3 MiB answers (gigabytes) held for it.
SEND_QUEUE_BYTES = 16 * 1024 * 1024
# A peer whose socket accepts nothing for this long cannot keep up and is dropped.
SEND_STALL_S = 10.0
# Remembered block hashes per peer, so a block crosses each link at most once.
KNOWN_BLOCKS_PER_PEER = 4096


class ProtocolViolation(Exception):
    """The peer broke the protocol: disconnect it and ban its address for ``reason``."""

    def __init__(self, reason: str, detail: str = "", ban: bool = True, reply: bool = True) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.ban = ban
        self.reply = reply  # answer with a `reject` (never to a peer that rejected us)


class PeerHandler(Protocol):
    def check_hello(self, peer: Peer, hello: Hello) -> None: ...
    def make_hello(self) -> Hello: ...
    async def on_peer_ready(self, peer: Peer) -> None: ...
    async def on_peer_closed(self, peer: Peer, reason: str, ban: bool) -> None: ...


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
    """A connection to one other node, inbound or outbound."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 handler: Any, inbound: bool, address: str, max_frame: int = MAX_FRAME_BYTES,
                 first_frames: list[object] | None = None, decoder: FrameDecoder | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.inbound = inbound
        self.address = address  # host:port as seen on the socket
        self.host = address.rpartition(":")[0]
        self.state = "handshake"
        self.hello: Hello | None = None
        self.height = 0
        self.tip = b""
        self.work = 0
        self.known = KnownSet(KNOWN_BLOCKS_PER_PEER)
        self.connected_at = time.monotonic()
        self.close_reason = ""
        self.close_detail = ""
        self._decoder = decoder or FrameDecoder(max_frame)
        self._pending = list(first_frames or [])
        self._queue: asyncio.Queue[bytes | _Close] = asyncio.Queue(SEND_QUEUE_FRAMES)
        self._queued_bytes = 0
        self._last_frame_at = time.monotonic()
        self._closing = False
        self._ban = False
        self.log = getattr(handler, "log", log).bind(peer=address)

    @property
    def node_key(self) -> bytes:
        return self.hello.node_key if self.hello else b""

    @property
    def listen_address(self) -> str:
        """Where this peer accepts connections (its hello's port on the socket's host)."""
        if self.hello and self.hello.listen_port:
            return f"{self.host}:{self.hello.listen_port}"
        return self.address

    # --- sending -------------------------------------------------------------------------
    def send(self, message: object) -> None:
        self.send_frame(encode_frame(encode_message(message)))

    def send_frame(self, frame: bytes) -> None:
        """Queue an encoded frame; a peer whose queue is full is dropped, never waited for."""
        if self._closing:
            return
        if self._queued_bytes + len(frame) > SEND_QUEUE_BYTES:
            # Not worth flushing megabytes to a peer that does not read: drop them and hang up.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queued_bytes = 0
            self.close("send-queue-full", ban=False)
            self.writer.transport.abort()
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close("send-queue-full", ban=False)
            return
        self._queued_bytes += len(frame)

    def close(self, reason: str, ban: bool = False, detail: str = "") -> None:
        """Stop the connection: queued frames are flushed (bounded), then the socket closes."""
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        self.close_detail = detail
        self._ban = ban
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
            await self.handler.on_peer_closed(self, self.close_reason or "closed", self._ban)

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

    async def _read_side(self) -> None:
        keepalive: asyncio.Task | None = None
        try:
            await self._handshake()
            self.state = "ready"
            await self.handler.on_peer_ready(self)
            keepalive = asyncio.create_task(self._keepalive())
            await self._read_loop()
        except ProtocolViolation as exc:
            self._reject_and_close(exc)
        except (ConnectionError, OSError):
            self.close("connection-lost")  # a reset: named as such, not as a clean close
        finally:
            if keepalive is not None:
                keepalive.cancel()
            self.close(self.close_reason or "closed")

    def _reject_and_close(self, exc: ProtocolViolation) -> None:
        if exc.reply and not self._closing:
            self.send(Reject(code=exc.reason, detail=exc.detail[:200]))
        # Not logged here: on_peer_closed reports the reason once, with the ban if there is one.
        self.close(exc.reason, ban=exc.ban, detail=exc.detail)

    async def _handshake(self) -> None:
        if not self.inbound:
            self.send(self.handler.make_hello())
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                message = await self._next_message()
        except TimeoutError:
            raise ProtocolViolation("handshake-timeout", f"no hello within {HANDSHAKE_TIMEOUT_S}s",
                                    ban=False) from None
        if message is None:
            raise ProtocolViolation("closed", "closed during handshake", ban=False)
        if isinstance(message, Reject):
            # The other side refused our hello (another network, ourselves, a duplicate...):
            # its code is the reason, and a dialler seeing "self" stops redialling.
            raise ProtocolViolation(message.code, message.detail, ban=False, reply=False)
        if not isinstance(message, Hello):
            raise ProtocolViolation("no-hello", f"first message was {message.TYPE}")
        self.handler.check_hello(self, message)
        self.hello = message
        self.height, self.tip, self.work = message.height, message.tip, message.work
        if self.inbound:
            self.send(self.handler.make_hello())

    async def _read_loop(self) -> None:
        while not self._closing:
            message = await self._next_message()
            if message is None:
                self.close_reason = self.close_reason or "peer-closed"
                return
            handler = getattr(self.handler, "on_" + message.TYPE, None)
            if handler is None:
                raise ProtocolViolation("unexpected-message", f"{message.TYPE} from a peer")
            await handler(self, message)

    async def _next_message(self) -> Any:
        """The next decoded message, or None at a clean end of stream."""
        while not self._pending:
            # Counted from the last whole frame, not the last byte: a peer dripping one frame
            # a byte at a time cannot hold the connection (and its buffer) open for ever.
            left = IDLE_TIMEOUT_S - (time.monotonic() - self._last_frame_at)
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    data = await self.reader.read(READ_CHUNK)
            except TimeoutError:
                raise ProtocolViolation("idle-timeout", f"no whole frame for {IDLE_TIMEOUT_S}s",
                                        ban=False) from None
            if not data:
                return None
            try:
                frames = self._decoder.feed(data)
            except FrameError as exc:
                raise ProtocolViolation(exc.reason, str(exc)) from None
            if frames:
                self._last_frame_at = time.monotonic()
                self._pending.extend(frames)
        raw = self._pending.pop(0)
        try:
            return decode_message(raw)
        except MessageError as exc:
            raise ProtocolViolation(exc.reason, exc.detail) from None

    async def _keepalive(self) -> None:
        nonce = 0
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            if time.monotonic() - self._last_frame_at >= PING_INTERVAL_S:
                nonce += 1
                self.send(Ping(nonce=nonce))

    async def _write_loop(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Close):
                break
            self._queued_bytes -= len(item)
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
        self.reader.feed_eof()
