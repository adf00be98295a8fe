"""The node's side of the relay feed: ask for readings since a timestamp, trust nothing.

``RelayClient`` keeps one connection and reuses it; every await is bounded by a timeout.
Any failure (network, framing or content) drops the connection and raises ``RelayError``
with a stable ``reason`` (see REASONS), and nothing of a bad answer reaches a Capture.

Backoff: after a failure the client will not touch the network again until
``next_attempt_at`` (its clock, time.monotonic by default); the delay starts at
``backoff_initial_s`` and doubles with each consecutive failure up to ``backoff_max_s``, and
a success resets it. A call made before then raises RelayError("backoff") at once without
connecting, so the node can simply call ``read_since`` once per capture interval (or ask
``ready()`` first to skip the call). The client does not log failures: it raises them, and
the caller (the node's RelayWatch) logs an outage once and its end once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gridchain.consensus.block import Capture
from gridchain.relay import feed
from gridchain.relay.feed import (
    MAX_READINGS_PER_READ, FeedError, InfoRequest, InfoResponse, ReadRequest, parse_info_response,
    parse_readings_response,
)
from gridchain.wire.streams import ConnectionClosed, close_writer, read_frame, write_frame
from gridchain.wire.frames import BAD_MSGPACK, EMPTY_FRAME, FRAME_TOO_LARGE, MAX_FRAME_BYTES, FrameError

CONNECT_TIMEOUT_S = 2.0  # a relay on the substation LAN answers a SYN in milliseconds
REQUEST_TIMEOUT_S = 2.0  # even a full 10,000-reading answer (~1 MB) is far quicker
BACKOFF_INITIAL_S = 0.1  # a restarting relay is back within moments; retry soon at first
BACKOFF_MAX_S = 30.0  # at worst three capture intervals late after the relay returns

UNREACHABLE = "unreachable"  # no connection could be made (refused, no route, connect timeout)
TIMEOUT = "timeout"  # connected, but no whole answer within request_timeout
CLOSED = "closed"  # the relay closed or reset the connection before a whole answer
BACKOFF = "backoff"  # not tried: still waiting after the previous failure
REASONS = frozenset({
    UNREACHABLE, TIMEOUT, CLOSED, BACKOFF, EMPTY_FRAME, FRAME_TOO_LARGE, BAD_MSGPACK,
    feed.BAD_RESPONSE, feed.BAD_TYPE, feed.NOT_FINITE, feed.NOT_INCREASING, feed.TOO_OLD,
    feed.WRONG_RELAY, feed.TOO_MANY, feed.RELAY_ERROR,
})

log = structlog.get_logger()


class RelayError(Exception):
    """Reading the relay failed; ``reason`` is one of REASONS, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RelayClient:
    """One relay feed connection, opened lazily, reused, and dropped on any error."""

    def __init__(self, host: str, port: int, expected_relay_id: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, request_timeout: float = REQUEST_TIMEOUT_S,
                 max_frame: int = MAX_FRAME_BYTES, *, backoff_initial_s: float = BACKOFF_INITIAL_S,
                 backoff_max_s: float = BACKOFF_MAX_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.port = host, port
        self.expected_relay_id = expected_relay_id
        self.connect_timeout, self.request_timeout = connect_timeout, request_timeout
        self.max_frame = max_frame
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self._clock = clock
        self.failures = 0  # consecutive failed calls (not counting "backoff" refusals)
        self.backoff_s = 0.0  # the delay set by the last failure; 0 while healthy
        self.next_attempt_at = 0.0  # clock time before which calls raise "backoff"
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()  # one request in flight: answers are matched by order
        self._log = log.bind(relay=self.address)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Whether a kept connection is open (False once the relay has hung up on it)."""
        if self._streams is None:
            return False
        reader, writer = self._streams
        return not reader.at_eof() and not writer.is_closing()

    def ready(self, now: float | None = None) -> bool:
        """Whether a call now would try the relay (False while backing off)."""
        return (self._clock() if now is None else now) >= self.next_attempt_at

    async def read_since(self, since_ms: int, limit: int = MAX_READINGS_PER_READ) -> Capture:
        """Readings newer than ``since_ms`` (oldest first, at most ``limit``) as a Capture."""
        if not 1 <= limit <= MAX_READINGS_PER_READ:
            raise ValueError(f"limit must be in 1..{MAX_READINGS_PER_READ}, got {limit}")
        return await self._call(ReadRequest(since_ms, limit).encode(),
                                lambda answer: parse_readings_response(answer, since_ms, limit,
                                                                       self.expected_relay_id))

    async def info(self) -> InfoResponse:
        """Who the relay is and what its buffer holds."""
        return await self._call(InfoRequest().encode(),
                                lambda answer: parse_info_response(answer, self.expected_relay_id))

    async def close(self) -> None:
        await self._drop()

    async def _call(self, request: dict, parse: Callable[[object], object]) -> object:
        if not self.ready():
            raise RelayError(BACKOFF, f"next attempt in {self.next_attempt_at - self._clock():.2f} s")
        async with self._lock:
            try:
                result = parse(await self._exchange(request))
            except FeedError as exc:
                error = RelayError(exc.reason, exc.detail)
            except RelayError as exc:
                error = exc
            except asyncio.CancelledError:
                self._abort()  # an answer may still arrive; it must not be taken for the next one
                raise
            else:
                self._succeeded()
                return result
            await self._failed()
            raise error

    async def _exchange(self, request: dict) -> object:
        reader, writer = await self._connection()
        try:
            async with asyncio.timeout(self.request_timeout):
                await write_frame(writer, request, None, self.max_frame)
                return await read_frame(reader, self.max_frame, None)
        except TimeoutError:
            raise RelayError(TIMEOUT, f"no answer within {self.request_timeout} s") from None
        except ConnectionClosed as exc:
            raise RelayError(CLOSED, exc.detail) from None
        except OSError as exc:
            raise RelayError(CLOSED, f"{type(exc).__name__}: {exc}") from None
        except FrameError as exc:
            raise RelayError(exc.reason, exc.detail) from None

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is not None:
            if self.connected:
                return self._streams
            await self._drop()  # the relay hung up while idle (restart, idle timeout): redial
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._streams = await asyncio.open_connection(self.host, self.port)
            self._log.debug("relay.connected")
        except TimeoutError:
            raise RelayError(UNREACHABLE, f"connect timed out after {self.connect_timeout} s") from None
        except OSError as exc:
            raise RelayError(UNREACHABLE, f"{type(exc).__name__}: {exc}") from None
        return self._streams

    async def _drop(self) -> None:
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            await close_writer(writer, timeout=min(1.0, self.request_timeout))

    def _abort(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def _failed(self) -> None:
        await self._drop()
        self.failures += 1
        self.backoff_s = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (self.failures - 1))
        self.next_attempt_at = self._clock() + self.backoff_s

    def _succeeded(self) -> None:
        self.failures, self.backoff_s, self.next_attempt_at = 0, 0.0, 0.0
