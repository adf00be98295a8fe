"""The relay feed's messages: what a node asks the relay and what the relay answers. Pure.

Every message is a msgpack map with a ``"type"`` key, carried one per frame (gridchain.wire.frames).
Requests:   ``read`` (readings newer than ``since_ms``, at most ``limit``) and ``info``.
Responses:  ``readings``, ``info`` and ``error``. docs/protocol.md has the byte-level detail.

Decoding trusts nothing: a response is checked for shape, types, finite numbers and strictly
increasing timestamps before anything reaches a ``Capture``; each failure is a ``FeedError``
with a stable ``reason``. Unknown extra keys are ignored so a later version can add fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from gridchain.consensus.block import MAX_TEXT_BYTES, READING_FIELDS, Capture, Reading

# One answer never carries more than a block may hold (MAX_READINGS_PER_BLOCK): ~28 hours of
# readings at 10 s, about 1 MB on the wire, well under the 4 MiB frame cap.
MAX_READINGS_PER_READ = 10_000
ROW_LENGTH = len(READING_FIELDS)  # timestamp_ms then ten measurements, in READING_FIELDS order
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1  # readings are stored as signed 64-bit milliseconds

# Reasons a message can be refused (FeedError.reason); RelayError reuses the response ones.
BAD_REQUEST = "bad-request"  # a request of the wrong shape (server side)
UNKNOWN_TYPE = "unknown-type"  # a request whose "type" the relay does not serve (server side)
BAD_RESPONSE = "bad-response"  # wrong shape, missing field, unexpected type, out of range
BAD_TYPE = "bad-type"  # a field or measurement of the wrong msgpack type
NOT_FINITE = "not-finite"  # NaN or infinity in a measurement
NOT_INCREASING = "not-increasing"  # timestamps repeat or go backwards
TOO_OLD = "too-old"  # a reading not newer than the since_ms that was asked for
WRONG_RELAY = "wrong-relay"  # the relay id is not the one this node is configured for
TOO_MANY = "too-many"  # more readings than the limit that was asked for
RELAY_ERROR = "relay-error"  # the relay answered with an error message

Row = tuple  # (timestamp_ms, vab, vbc, vca, ia, ib, ic, frequency, power_factor, active_power, reactive_power)


class FeedError(ValueError):
    """A feed message that is not acceptable; ``reason`` is one of the names above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Ask for readings with timestamp > ``since_ms``, oldest first, at most ``limit``."""

    TYPE: ClassVar[str] = "read"
    since_ms: int
    limit: int = MAX_READINGS_PER_READ

    def encode(self) -> dict:
        return {"type": self.TYPE, "since_ms": self.since_ms, "limit": self.limit}

    @classmethod
    def decode(cls, obj: dict) -> ReadRequest:
        since_ms = _field(obj, "since_ms", int, BAD_REQUEST)
        limit = _field(obj, "limit", int, BAD_REQUEST)
        if not _I64_MIN <= since_ms <= _I64_MAX:
            raise FeedError(BAD_REQUEST, "since_ms out of the signed 64-bit range")
        if limit < 1:
            raise FeedError(BAD_REQUEST, f"limit must be at least 1, got {limit}")
        return cls(since_ms, limit)


@dataclass(frozen=True, slots=True)
class InfoRequest:
    """Ask the relay who it is and what its buffer holds."""

    TYPE: ClassVar[str] = "info"

    def encode(self) -> dict:
        return {"type": self.TYPE}

    @classmethod
    def decode(cls, obj: dict) -> InfoRequest:
        return cls()


@dataclass(frozen=True, slots=True)
class ReadingsResponse:
    """The answer to ``read``: readings as rows, oldest first, with the openings counter
    as of the newest reading in the answer (the current count when the answer is empty)."""

    TYPE: ClassVar[str] = "readings"
    relay_id: str
    substation: str
    openings: int
    now_ms: int
    readings: tuple[Row, ...] = ()

    def encode(self) -> dict:
        return {"type": self.TYPE, "relay_id": self.relay_id, "substation": self.substation,
                "openings": self.openings, "now_ms": self.now_ms, "readings": self.readings}

    @classmethod
    def decode(cls, obj: object) -> ReadingsResponse:
        """Check everything that does not depend on what was asked (see parse_readings_response)."""
        obj = _response_map(obj, cls.TYPE)
        relay_id, substation = _text(obj, "relay_id"), _text(obj, "substation")
        openings, now_ms = _field(obj, "openings", int), _field(obj, "now_ms", int)
        if not 0 <= openings <= _I64_MAX:
            raise FeedError(BAD_RESPONSE, f"openings {openings} is not a non-negative 64-bit count")
        rows = _field(obj, "readings", list)
        if len(rows) > MAX_READINGS_PER_READ:
            raise FeedError(TOO_MANY, f"{len(rows)} readings > {MAX_READINGS_PER_READ} per answer")
        return cls(relay_id, substation, openings, now_ms, _check_rows(rows))

    def to_capture(self) -> Capture:
        return Capture(self.relay_id, self.substation, self.openings,
                       tuple(Reading(*row) for row in self.readings))


@dataclass(frozen=True, slots=True)
class InfoResponse:
    """The answer to ``info``: identity, clock, interval and what the ring buffer holds."""

    TYPE: ClassVar[str] = "info"
    relay_id: str
    substation: str
    openings: int
    now_ms: int
    interval_ms: int
    buffered: int  # readings the relay can still serve
    oldest_ms: int | None  # None when nothing is buffered yet
    newest_ms: int | None

    def encode(self) -> dict:
        return {"type": self.TYPE, "relay_id": self.relay_id, "substation": self.substation,
                "openings": self.openings, "now_ms": self.now_ms, "interval_ms": self.interval_ms,
                "buffered": self.buffered, "oldest_ms": self.oldest_ms, "newest_ms": self.newest_ms}

    @classmethod
    def decode(cls, obj: object) -> InfoResponse:
        obj = _response_map(obj, cls.TYPE)
        values = [_field(obj, name, int) for name in ("openings", "now_ms", "interval_ms", "buffered")]
        ends = [_optional_int(obj, name) for name in ("oldest_ms", "newest_ms")]
        if values[0] < 0 or values[2] < 1 or values[3] < 0:
            raise FeedError(BAD_RESPONSE, "openings, interval_ms or buffered out of range")
        return cls(_text(obj, "relay_id"), _text(obj, "substation"), *values, *ends)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The relay refused a request; ``reason`` is a FeedError or FrameError reason name."""

    TYPE: ClassVar[str] = "error"
    reason: str
    detail: str = ""

    def encode(self) -> dict:
        return {"type": self.TYPE, "reason": self.reason, "detail": self.detail}

    @classmethod
    def decode(cls, obj: dict) -> ErrorResponse:
        return cls(_text(obj, "reason"), _text(obj, "detail"))


_REQUESTS = {ReadRequest.TYPE: ReadRequest, InfoRequest.TYPE: InfoRequest}


def decode_request(obj: object) -> ReadRequest | InfoRequest:
    """The relay's view of an incoming message; FeedError(bad-request / unknown-type) otherwise."""
    if not isinstance(obj, dict):
        raise FeedError(BAD_REQUEST, f"a request is a map, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FeedError(BAD_REQUEST, "missing or non-text 'type'")
    cls = _REQUESTS.get(kind)
    if cls is None:
        raise FeedError(UNKNOWN_TYPE, f"unknown request type {_describe(kind)}")
    return cls.decode(obj)


def parse_readings_response(
    obj: object, since_ms: int, limit: int, expected_relay_id: str | None = None
) -> Capture:
    """Check a ``read`` answer against what was asked and turn it into a Capture.

    On top of ReadingsResponse.decode: the relay id must be the expected one (when given),
    there must be at most ``limit`` readings and every timestamp must be > ``since_ms``.
    """
    response = ReadingsResponse.decode(obj)
    if expected_relay_id is not None and response.relay_id != expected_relay_id:
        raise FeedError(WRONG_RELAY, f"relay {response.relay_id[:64]!r}, expected {expected_relay_id!r}")
    if len(response.readings) > limit:
        raise FeedError(TOO_MANY, f"{len(response.readings)} readings, asked for at most {limit}")
    if response.readings and response.readings[0][0] <= since_ms:
        raise FeedError(TOO_OLD, f"reading at {response.readings[0][0]} ms is not after {since_ms} ms")
    return response.to_capture()


def parse_info_response(obj: object, expected_relay_id: str | None = None) -> InfoResponse:
    info = InfoResponse.decode(obj)
    if expected_relay_id is not None and info.relay_id != expected_relay_id:
        raise FeedError(WRONG_RELAY, f"relay {info.relay_id[:64]!r}, expected {expected_relay_id!r}")
    return info


def _check_rows(rows: list) -> tuple[Row, ...]:
    # The hot loop of a read: plain type() checks and math.isfinite, one pass, no helpers.
    isfinite = math.isfinite
    checked = []
    previous = None
    for index, row in enumerate(rows):
        if type(row) is not list or len(row) != ROW_LENGTH:
            raise FeedError(BAD_TYPE, f"reading {index} is not an array of {ROW_LENGTH}")
        timestamp = row[0]
        if type(timestamp) is not int:
            raise FeedError(BAD_TYPE, f"reading {index}: timestamp is {type(timestamp).__name__}, not int")
        if not _I64_MIN <= timestamp <= _I64_MAX:
            raise FeedError(BAD_RESPONSE, f"reading {index}: timestamp out of the signed 64-bit range")
        if previous is not None and timestamp <= previous:
            raise FeedError(NOT_INCREASING, f"reading {index} at {timestamp} ms after {previous} ms")
        previous = timestamp
        for value in row[1:]:
            if type(value) is not float:
                row = _as_floats(row, index)  # rare: re-check the whole row the slow way
                break
            if not isfinite(value):
                raise FeedError(NOT_FINITE, f"reading {index}: {value!r}")
        checked.append(tuple(row))
    return tuple(checked)


def _as_floats(row: list, index: int) -> list:
    # An integral measurement may arrive as a msgpack int from another encoder; bool never.
    values = []
    for value in row[1:]:
        if type(value) is not float and type(value) is not int:
            raise FeedError(BAD_TYPE, f"reading {index}: measurement is {type(value).__name__}, not float")
        try:
            value = float(value)
        except OverflowError:
            raise FeedError(NOT_FINITE, f"reading {index}: integer too large for a float") from None
        if not math.isfinite(value):
            raise FeedError(NOT_FINITE, f"reading {index}: {value!r}")
        values.append(value)
    return [row[0], *values]


def _response_map(obj: object, expected_type: str) -> dict:
    if not isinstance(obj, dict):
        raise FeedError(BAD_RESPONSE, f"a response is a map, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == ErrorResponse.TYPE:
        try:
            error = ErrorResponse.decode(obj)
        except FeedError:
            raise FeedError(RELAY_ERROR, "malformed error response") from None
        raise FeedError(RELAY_ERROR, f"{error.reason}: {error.detail}"[:200])
    if kind != expected_type:
        raise FeedError(BAD_RESPONSE, f"expected a {expected_type!r} response, got type {_describe(kind)}")
    return obj


def _field(obj: dict, name: str, kind: type, missing_reason: str = BAD_RESPONSE) -> object:
    if name not in obj:
        raise FeedError(missing_reason, f"missing field {name!r}")
    value = obj[name]
    # bool is an int subclass; True is never a count or a timestamp.
    if type(value) is not kind and not (isinstance(value, kind) and not isinstance(value, bool)):
        reason = BAD_REQUEST if missing_reason == BAD_REQUEST else BAD_TYPE
        raise FeedError(reason, f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_int(obj: dict, name: str) -> int | None:
    if name in obj and obj[name] is None:
        return None
    return _field(obj, name, int)


def _describe(value: object) -> str:
    # Echo a peer's text only briefly, and never format a whole foreign object.
    return repr(value[:40]) if isinstance(value, str) else type(value).__name__


def _text(obj: dict, name: str) -> str:
    value = _field(obj, name, str)
    if len(value.encode()) > MAX_TEXT_BYTES:
        raise FeedError(BAD_RESPONSE, f"{name} longer than {MAX_TEXT_BYTES} bytes")
    return value
