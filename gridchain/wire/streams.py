"""asyncio helpers that move whole frames (see ``gridchain.wire.frames``) over a stream pair.

Only bytes and frames live here; what a message means is the caller's business. Every
helper takes a timeout so no await can hang, and connection loss surfaces as a single
exception type, ``ConnectionClosed``, whatever the OS reported.

``FrameReader`` is the one read loop of every connection a node accepts (the listener's
first frame, the peer link, the operator API): it keeps a FrameDecoder across reads, so a
timeout never loses bytes, and lets the listener look at the first frame before handing the
connection on. ``read_frame`` is the stateless one-frame read of the request/answer clients.
"""

from __future__ import annotations

import asyncio

from collections import deque

from gridchain.wire.frames import MAX_FRAME_BYTES, PREFIX_SIZE, FrameDecoder, decode_body, encode_frame, frame_length

# Bytes asked of the socket per read (also the StreamReader buffer limit of a node's sockets).
READ_CHUNK = 64 * 1024
# The frame cap before a connection's identity is proven (a hello, a proof, an operator's
# token or first request are a few hundred bytes): a stranger's frame, and every container
# in it, stays this small, so a 4 MiB frame of empty maps is refused from its length prefix.
UNPROVEN_MAX_FRAME = 16 * 1024


class ConnectionClosed(Exception):
    """The other side closed (or reset) the connection.

    ``mid_frame`` is True when it went away part-way through a frame, which a well-behaved
    peer never does; False when it closed cleanly between frames.
    """

    def __init__(self, detail: str = "", mid_frame: bool = False) -> None:
        super().__init__(detail or "connection closed")
        self.detail = detail
        self.mid_frame = mid_frame


class FrameReader:
    """Whole frames off one stream, one at a time, with the frame cap checked before buffering.

    ``next(timeout)`` returns the next frame's msgpack object, or None at the end of the
    stream (a clean close, or one part-way through a frame: either way nothing more comes).
    ``timeout`` bounds the wait for a *whole* frame, so a peer dripping a frame a byte at a
    time cannot hold a reader for ever; bytes read before a TimeoutError are kept for the
    next call. Raises FrameError (the stream is out of step: drop it), TimeoutError, or
    ConnectionClosed on a reset. ``peek`` is ``next`` without taking the frame.

    ``first_cap`` (e.g. UNPROVEN_MAX_FRAME) holds frames to that size until ``lift_cap()``,
    once the other side's identity is proven. While capped, frames are read one at a time
    (length prefix, then exactly that body), so no byte after the current frame has been
    judged under the small cap when it is lifted.
    """

    def __init__(self, reader: asyncio.StreamReader, max_frame: int = MAX_FRAME_BYTES,
                 first_cap: int | None = None) -> None:
        self.reader = reader
        self._decoder = FrameDecoder(max_frame)
        self._frames: deque[object] = deque()
        self._cap = min(first_cap, max_frame) if first_cap is not None else None
        self._body_length: int | None = None  # capped mode: the prefix read, its body not yet

    @property
    def capped(self) -> bool:
        return self._cap is not None

    @property
    def buffered(self) -> int:
        """Bytes of a frame received but not whole yet (a large frame still arriving)."""
        return self._decoder.buffered

    def lift_cap(self) -> None:
        """The other side is proven: frames up to the full cap from now on."""
        self._cap = None

    async def next(self, timeout: float | None = None) -> object | None:
        if not await self._fill(timeout):
            return None
        return self._frames.popleft()

    async def peek(self, timeout: float | None = None) -> object | None:
        if not await self._fill(timeout):
            return None
        return self._frames[0]

    async def _fill(self, timeout: float | None) -> bool:
        if self._frames:
            return True
        if self._cap is not None:
            return await self._fill_one(timeout)
        async with asyncio.timeout(timeout):
            while not self._frames:
                try:
                    data = await self.reader.read(READ_CHUNK)
                except ConnectionError as exc:
                    raise ConnectionClosed(f"{type(exc).__name__}: {exc}", self._decoder.buffered > 0) from None
                if not data:
                    return False
                self._frames.extend(self._decoder.feed(data))
        return True

    async def _fill_one(self, timeout: float | None) -> bool:
        """One frame under the small cap; the prefix is kept across a timeout."""
        async with asyncio.timeout(timeout):
            try:
                if self._body_length is None:
                    prefix = await self.reader.readexactly(PREFIX_SIZE)
                    self._body_length = frame_length(prefix, self._cap)
                body = await self.reader.readexactly(self._body_length)
            except asyncio.IncompleteReadError:
                return False
            except ConnectionError as exc:
                raise ConnectionClosed(f"{type(exc).__name__}: {exc}", True) from None
        self._body_length = None
        self._frames.append(decode_body(body, self._cap))
        return True


async def read_frame(
    reader: asyncio.StreamReader, max_frame: int = MAX_FRAME_BYTES, timeout: float | None = None
) -> object:
    """Read exactly one frame and return its decoded message.

    The length prefix is checked against ``max_frame`` before the body is read. ``timeout``
    bounds the whole frame (None waits forever: only for callers with their own deadline).
    Raises FrameError, TimeoutError or ConnectionClosed.
    """
    async with asyncio.timeout(timeout):
        try:
            prefix = await reader.readexactly(PREFIX_SIZE)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosed("closed mid-prefix" if exc.partial else "closed", bool(exc.partial)) from None
        except ConnectionError as exc:
            raise ConnectionClosed(f"{type(exc).__name__}: {exc}") from None
        length = frame_length(prefix, max_frame)
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosed(f"closed after {len(exc.partial)} of {length} body bytes", True) from None
        except ConnectionError as exc:
            raise ConnectionClosed(f"{type(exc).__name__}: {exc}", True) from None
    return decode_body(body, max_frame)


async def write_frame(
    writer: asyncio.StreamWriter, obj: object, timeout: float | None, max_frame: int = MAX_FRAME_BYTES
) -> None:
    """Frame ``obj``, write it and wait (at most ``timeout``) until the send buffer drains.

    A peer that stops reading makes ``drain`` wait; the timeout turns that into
    TimeoutError so the caller can drop the slow peer instead of waiting for ever.
    """
    data = encode_frame(obj, max_frame)
    if writer.is_closing():
        raise ConnectionClosed("writer is closing")
    writer.write(data)
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except ConnectionError as exc:
        raise ConnectionClosed(f"{type(exc).__name__}: {exc}") from None


async def close_writer(writer: asyncio.StreamWriter, timeout: float = 1.0) -> None:
    """Close a stream and wait briefly for it to finish; never raises (except cancellation)."""
    writer.close()
    try:
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        pass  # the connection is gone either way; nothing useful to report
