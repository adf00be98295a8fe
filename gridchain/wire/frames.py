"""Frame codec shared by the peer protocol and the relay feed: pure, no sockets, no asyncio.

A frame is a 4-byte big-endian unsigned length N (1 <= N <= max_frame) followed by N bytes
holding exactly one msgpack object. The length is checked before a single byte of the body
is buffered, so a peer cannot make us allocate more than the cap. Bodies are unpacked with
limits no larger than the frame and with msgpack extension types refused: the protocol only
uses nil, bool, int, float, str, bin, array and map (with str or bin keys).

``FrameDecoder`` is fed whatever bytes arrived and hands back every whole message; it never
reads a socket itself (see ``gridchain.wire.streams`` for the asyncio helpers). Any ``FrameError``
means the stream can no longer be trusted to be in step, so the caller drops the connection.
"""

from __future__ import annotations

import struct

import msgpack

from gridchain.consensus.errors import GridchainError

# Large enough for a block of MAX_READINGS_PER_BLOCK readings (~0.9 MB) or a batch of a few
# blocks during sync; small enough that a hostile peer costs us at most a few MiB per link.
MAX_FRAME_BYTES = 4 * 1024 * 1024

_PREFIX = struct.Struct(">I")
PREFIX_SIZE = _PREFIX.size  # 4

# Stable reason names (they appear in logs, error responses and RelayError.reason).
EMPTY_FRAME = "empty-frame"
FRAME_TOO_LARGE = "frame-too-large"
BAD_MSGPACK = "bad-msgpack"


class FrameError(GridchainError):
    """The byte stream broke the framing rules; ``reason`` is one of the stable names above."""


def _refuse_ext(code: int, data: bytes) -> object:
    raise FrameError(BAD_MSGPACK, f"extension type {code} is not allowed")


def encode_frame(obj: object, max_frame: int = MAX_FRAME_BYTES) -> bytes:
    """The length-prefixed msgpack frame for ``obj`` (bin for bytes, str for text)."""
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > max_frame:
        raise FrameError(FRAME_TOO_LARGE, f"body of {len(body)} bytes exceeds the cap of {max_frame}")
    return _PREFIX.pack(len(body)) + body


def frame_length(prefix: bytes, max_frame: int = MAX_FRAME_BYTES) -> int:
    """The body length announced by a 4-byte prefix, after checking it against the cap."""
    (length,) = _PREFIX.unpack(prefix)
    if length == 0:
        raise FrameError(EMPTY_FRAME, "length prefix is 0")
    if length > max_frame:
        raise FrameError(FRAME_TOO_LARGE, f"length prefix {length} exceeds the cap of {max_frame}")
    return length


def decode_body(body: bytes | bytearray | memoryview, max_frame: int = MAX_FRAME_BYTES) -> object:
    """Unpack one frame body: exactly one msgpack object, no extension types, no trailing bytes."""
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=max_frame,
            max_bin_len=max_frame,
            max_array_len=max_frame,
            max_map_len=max_frame,
            # Every ext type is refused; a zero length cap also catches the built-in timestamp.
            max_ext_len=0,
        )
    except FrameError:
        raise
    except Exception as exc:  # msgpack raises many unrelated types (incl. nesting depth) for bad input
        raise FrameError(BAD_MSGPACK, f"{type(exc).__name__}: {exc}") from None


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns every whole message now available.

    After the first FrameError the decoder is poisoned and every later ``feed`` raises the
    same error, so a caller that forgets to drop the connection still cannot read past it.
    """

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        if not 1 <= max_frame < 2**32:
            raise ValueError(f"max_frame must be in 1..2**32-1, got {max_frame}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._body_length: int | None = None  # set once the current frame's prefix is checked
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message (prefix included)."""
        return len(self._buffer) + (PREFIX_SIZE if self._body_length is not None else 0)

    def feed(self, data: bytes) -> list[object]:
        if self._error is not None:
            raise self._error
        messages: list[object] = []
        try:
            self._consume(data, messages)
        except FrameError as exc:
            self._error = exc
            self._buffer.clear()
            self._body_length = None
            raise
        return messages

    def _consume(self, data: bytes, messages: list[object]) -> None:
        view = memoryview(data)
        while view:
            if self._body_length is None:
                # Take only the prefix bytes, so the cap is checked before any body is kept.
                need = PREFIX_SIZE - len(self._buffer)
                self._buffer += view[:need]
                view = view[need:]
                if len(self._buffer) < PREFIX_SIZE:
                    return
                self._body_length = frame_length(bytes(self._buffer), self.max_frame)
                self._buffer.clear()
            need = self._body_length - len(self._buffer)
            if not self._buffer and len(view) >= need:
                # Fast path: the whole body is in this chunk, decode it without copying.
                messages.append(decode_body(view[:need], self.max_frame))
            else:
                self._buffer += view[:need]
                if len(self._buffer) < self._body_length:
                    return
                messages.append(decode_body(self._buffer, self.max_frame))
                self._buffer = bytearray()
            view = view[need:]
            self._body_length = None
