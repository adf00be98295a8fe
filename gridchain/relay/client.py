"""The node's side of the relay feed: ask for readings by sequence, verify everything.

``RelayClient`` keeps one connection and reuses it; every await is bounded by a timeout.
Every answer is checked before anything of it is returned: shape and values
(gridchain/relay/feed.py), and every seal and gap notice against the relay's key — the
``expected_key`` (from the network file; ``known_relays`` maps relay ids to keys for a node
that learns the id from the relay), or, in an open development network, the key the relay
announced on first contact, pinned from then on (a later change is ``relay-key-changed``).
Any failure drops the connection and raises ``RelayError`` with a stable ``reason`` (see
REASONS); nothing of a bad answer is ever returned.

A gateway serves several relays on one port: ``relay_id`` names the one to ask for (sent
with every request, and every answer must be that relay's); without it the gateway answers
for the only relay it serves, or refuses with ``relay-error`` (relay-id-required) if it
serves several.

Backoff: after a failure the client will not touch the network again until
``next_attempt_at`` (its clock, time.monotonic by default). The schedule is the one every
dialler uses, ``retry`` (gridchain/wire/reconnect.Reconnect): the delay starts at
``backoff_initial_s`` and doubles with each consecutive failure up to ``backoff_max_s``,
jittered (``jitter``, +-20 %), and a success resets it. A call made before then raises
RelayError("backoff") at once without connecting. The client does not log failures: it
raises them, and the caller (the node's RelayWatch) logs an outage once and its end once,
through the same ``retry`` (its failure log is once per run of failures). The one thing
the client logs is a relay clock more than ``CLOCK_SKEW_WARN_MS`` off: not a failure (the
relay's timestamps are its signed word), a ``relay.clock_skew`` warning when it starts and
``relay.clock_ok`` when it ends. It is the node's only clock-skew warning.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping

import structlog

from gridchain.consensus.errors import GridchainError
from gridchain.relay import feed
from gridchain.relay.feed import (
    MAX_READINGS_PER_READ, FeedBatch, FeedError, InfoRequest, InfoResponse, ReadingsResponse, ReadRequest,
    check_info, check_readings,
)
from gridchain.wire.streams import ConnectionClosed, close_writer, read_frame, write_frame
from gridchain.wire.frames import BAD_MSGPACK, EMPTY_FRAME, FRAME_TOO_LARGE, MAX_FRAME_BYTES, FrameError
from gridchain.wire.reconnect import Reconnect

CONNECT_TIMEOUT_S = 2.0  # a relay on the substation LAN answers a SYN in milliseconds
REQUEST_TIMEOUT_S = 2.0  # even a full 10,000-reading answer (~1.1 MB) is far quicker
BACKOFF_INITIAL_S = 0.1  # a restarting relay is back within moments; retry soon at first
BACKOFF_MAX_S = 30.0  # at worst three capture intervals late after the relay returns
# A relay clock further off than this is worth an operator's look (NTP broken), though its
# readings are still taken: their timestamps are the relay's signed word, not the node's.
CLOCK_SKEW_WARN_MS = 60_000

UNREACHABLE = "unreachable"  # no connection could be made (refused, no route, connect timeout)
TIMEOUT = "timeout"  # connected, but no whole answer within request_timeout
CLOSED = "closed"  # the relay closed or reset the connection before a whole answer
BACKOFF = "backoff"  # not tried: still waiting after the previous failure
UNKNOWN_RELAY = "unknown-relay"  # the relay's id is not among the known relays (network file)
RELAY_KEY_MISMATCH = "relay-key-mismatch"  # the relay announces a key other than the expected one
RELAY_KEY_CHANGED = "relay-key-changed"  # the relay announces a key other than the one pinned
REASONS = frozenset({
    UNREACHABLE, TIMEOUT, CLOSED, BACKOFF, EMPTY_FRAME, FRAME_TOO_LARGE, BAD_MSGPACK,
    UNKNOWN_RELAY, RELAY_KEY_MISMATCH, RELAY_KEY_CHANGED,
    feed.BAD_RESPONSE, feed.BAD_TYPE, feed.NOT_FINITE, feed.TOO_OLD, feed.SEQUENCE_GAP,
    feed.WRONG_RELAY, feed.TOO_MANY, feed.RELAY_ERROR, feed.BAD_READING_ROW, feed.BAD_READING_FLAGS,
    feed.BAD_SEAL, feed.BAD_RELAY_SIGNATURE,
})

log = structlog.get_logger()


class RelayError(GridchainError):
    """Reading the relay failed; ``reason`` is one of REASONS, ``detail`` says more."""


class RelayClient:
    """One relay feed connection, opened lazily, reused, and dropped on any error."""

    def __init__(self, host: str, port: int, expected_relay_id: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, request_timeout: float = REQUEST_TIMEOUT_S,
                 max_frame: int = MAX_FRAME_BYTES, *, expected_key: bytes | None = None,
                 known_relays: Mapping[str, bytes] | None = None, backoff_initial_s: float = BACKOFF_INITIAL_S,
                 backoff_max_s: float = BACKOFF_MAX_S, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, relay_id: str | None = None,
                 jitter: Callable[[float, float], float] = random.uniform) -> None:
        self.host, self.port = host, port
        self.relay_id = relay_id  # the relay asked for on a shared gateway (None: its only one)
        self.expected_relay_id = expected_relay_id
        self.expected_key = expected_key
        self.known_relays = known_relays
        self.pinned_key: bytes | None = None  # open network: the key first announced (trust on first use)
        self.pinned_relay_id: str | None = None
        self.clock_skew_ms = 0  # the relay's clock minus ours at its last answer
        self._skewed = False
        self._wall_clock = wall_clock
        self.connect_timeout, self.request_timeout = connect_timeout, request_timeout
        self.max_frame = max_frame
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        # One outage is one event: its failures are logged once (log_every_s infinite), not once a minute.
        self.retry = Reconnect(first_delay=backoff_initial_s, max_delay=backoff_max_s, log_every_s=math.inf,
                               uniform=jitter)
        self._clock = clock
        self.failures = 0  # consecutive failed calls (not counting "backoff" refusals)
        self.backoff_s = 0.0  # the delay set by the last failure; 0 while healthy
        self.next_attempt_at = 0.0  # clock time before which calls raise "backoff"
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()  # one request in flight: answers are matched by order
        self._log = log.bind(relay=self.address)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" + (f"/{self.relay_id}" if self.relay_id is not None else "")

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

    async def read(self, after_seq: int, limit: int = MAX_READINGS_PER_READ) -> FeedBatch:
        """Verified readings with seq > ``after_seq`` (oldest first, at most ``limit``)."""
        if not 1 <= limit <= MAX_READINGS_PER_READ:
            raise ValueError(f"limit must be in 1..{MAX_READINGS_PER_READ}, got {limit}")
        if after_seq < 0:
            raise ValueError(f"after_seq must not be negative, got {after_seq}")

        def parse(answer: object) -> FeedBatch:
            response = ReadingsResponse.decode(answer)
            key = self._relay_key(response.relay_id, response.relay_key)
            batch = check_readings(response, after_seq, limit, key, self._relay_id())
            self._pin(response.relay_id, key)
            self._note_clock(response.now_ms)
            return batch
        return await self._call(ReadRequest(after_seq, limit, self.relay_id).encode(), parse)

    async def info(self) -> InfoResponse:
        """Who the relay is (id, substation, key: checked and pinned) and what it buffers."""
        def parse(answer: object) -> InfoResponse:
            info = check_info(answer, self._relay_id())
            key = self._relay_key(info.relay_id, info.relay_key)
            if info.gap is not None:
                feed.verify_gap(key, info.relay_id, info.gap)
            self._pin(info.relay_id, key)
            self._note_clock(info.now_ms)
            return info
        return await self._call(InfoRequest(self.relay_id).encode(), parse)

    def _relay_id(self) -> str | None:
        return self.expected_relay_id or self.relay_id or self.pinned_relay_id

    def _relay_key(self, relay_id: str, announced: bytes) -> bytes:
        """The key this relay must sign with; a named error if what it announces is not it."""
        expected = self.expected_key
        if expected is None and self.known_relays is not None:
            expected = self.known_relays.get(relay_id)
            if expected is None:
                raise FeedError(UNKNOWN_RELAY, f"relay {relay_id[:64]!r} is not in the network file")
        if expected is not None:
            if announced != expected:
                raise FeedError(RELAY_KEY_MISMATCH, f"relay {relay_id[:64]!r} announces key {announced.hex()[:16]}, "
                                                    f"the network file says {expected.hex()[:16]}")
            return expected
        if self.pinned_key is not None and announced != self.pinned_key:
            raise FeedError(RELAY_KEY_CHANGED, f"relay {relay_id[:64]!r} now announces key {announced.hex()[:16]}, "
                                               f"first seen with {self.pinned_key.hex()[:16]}")
        return announced

    def _pin(self, relay_id: str, key: bytes) -> None:
        # Only after the answer verified: a forged first answer must not pin the forger's key.
        if self.pinned_key is None:
            self.pinned_key, self.pinned_relay_id = key, relay_id
            self._log.info("relay.key_pinned", relay_id=relay_id, key=key.hex(),
                           source="first-use" if self._open_network else "expected")

    @property
    def _open_network(self) -> bool:
        """No key to expect (no network file): the relay's first announced key is believed."""
        return self.expected_key is None and self.known_relays is None

    def _note_clock(self, relay_now_ms: int) -> None:
        self.clock_skew_ms = relay_now_ms - int(self._wall_clock() * 1000)
        skewed = abs(self.clock_skew_ms) > CLOCK_SKEW_WARN_MS
        if skewed and not self._skewed:
            self._log.warning("relay.clock_skew", skew_ms=self.clock_skew_ms, limit_ms=CLOCK_SKEW_WARN_MS)
        elif self._skewed and not skewed:
            self._log.info("relay.clock_ok", skew_ms=self.clock_skew_ms)
        self._skewed = skewed

    async def close(self) -> None:
        await self._drop()

    async def _call(self, request: dict, parse: Callable[[object], object]) -> object:
        if not self.ready():
            raise RelayError(BACKOFF, f"next attempt in {self.next_attempt_at - self._clock():.2f} s")
        async with self._lock:
            try:
                result = parse(await self._exchange(request))
            except RelayError as exc:
                error = exc
            except GridchainError as exc:  # FeedError, ProvenanceError: the answer is refused
                error = RelayError(exc.reason, exc.detail)
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
        self.backoff_s = self.retry.next_wait()
        self.next_attempt_at = self._clock() + self.backoff_s

    def _succeeded(self) -> None:
        self.failures, self.backoff_s, self.next_attempt_at = 0, 0.0, 0.0
        self.retry.reset()
