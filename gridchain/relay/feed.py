"""The relay feed's messages, and checking an answer into a verified ``FeedBatch``. Pure.

Every message is a msgpack map with a ``"type"`` key, carried one per frame (gridchain.wire.frames).
Requests:   ``read`` (readings after ``after_seq``, at most ``limit``) and ``info``, each
            with an optional ``relay_id``: which relay of a gateway serving several.
Responses:  ``readings``, ``info`` and ``error``. docs/protocol.md has the byte-level detail.

Readings travel as the exact 108-byte rows the relay signed (gridchain.consensus.provenance),
with the seals that cover them and, where the sequence skips, the relay's signed gap notice.
``check_readings`` trusts nothing: shape, types, limits, flags, finite values, consecutive
sequence numbers, and every seal and notice against the relay key the caller expects. Each
failure is a ``FeedError`` with a stable ``reason``; unknown extra keys are ignored so a
later version can add fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from gridchain.consensus.errors import GridchainError
from gridchain.consensus.provenance import (
    KEY_SIZE, MAX_SEALS_PER_BLOCK, MAX_SEQ, ROW_SIZE, SIGNATURE_SIZE, GapNotice, ProvenanceError, Reading, Seal,
    row_leaves, unpack_rows, verify_gap, verify_seal_leaves,
)

# One answer never carries more than a block may hold (MAX_READINGS_PER_BLOCK): ~28 hours of
# readings at 10 s, about 1.1 MB on the wire, well under the 4 MiB frame cap.
MAX_READINGS_PER_READ = 10_000
# The relay seals each answer once; more seals than a block may hold is not a relay.
MAX_SEALS_PER_ANSWER = MAX_SEALS_PER_BLOCK
MAX_TEXT_BYTES = 256  # relay id and substation are short labels (as in a block)
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

# Reasons a message can be refused (FeedError.reason); RelayError reuses the response ones.
BAD_REQUEST = "bad-request"  # a request of the wrong shape (server side)
UNKNOWN_TYPE = "unknown-type"  # a request whose "type" the relay does not serve (server side)
BAD_RESPONSE = "bad-response"  # wrong shape, missing field, unexpected type, out of range
BAD_TYPE = "bad-type"  # a field of the wrong msgpack type
NOT_FINITE = "not-finite"  # NaN or infinity in a measurement
TOO_OLD = "too-old"  # a reading not after the after_seq that was asked for
SEQUENCE_GAP = "sequence-gap"  # rows skip ahead of after_seq with no signed notice resuming there
WRONG_RELAY = "wrong-relay"  # the relay id is not the one this node is configured for
TOO_MANY = "too-many"  # more readings than the limit that was asked for
RELAY_ERROR = "relay-error"  # the relay answered with an error message
# Gateway answers (server side): a request naming no relay where several are served, or one
# naming a relay this gateway does not serve.
RELAY_ID_REQUIRED = "relay-id-required"
NO_SUCH_RELAY = "no-such-relay"
# From provenance: a row, seal or notice that is malformed or not the relay's signed word.
BAD_READING_ROW, BAD_READING_FLAGS = "bad-reading-row", "bad-reading-flags"
BAD_SEAL, BAD_RELAY_SIGNATURE = "bad-seal", "bad-relay-signature"


class FeedError(GridchainError, ValueError):
    """A feed message that is not acceptable; ``reason`` is one of the names above."""


@dataclass(frozen=True, slots=True)
class SealedRun:
    """Consecutive readings and the relay's seal over exactly them (verified)."""

    readings: tuple[Reading, ...]
    seal: Seal


@dataclass(frozen=True, slots=True)
class FeedBatch:
    """What a relay client hands on: verified runs of one relay, and its verified gap notice."""

    relay_id: str
    substation: str
    relay_key: bytes
    runs: tuple[SealedRun, ...] = ()
    gap: GapNotice | None = None
    relay_now_ms: int = 0  # the relay's clock when it answered (for the clock-skew warning)
    newest_seq: int | None = None  # the newest seq the relay holds: more to read if beyond ours

    @property
    def readings(self) -> tuple[Reading, ...]:
        return tuple(r for run in self.runs for r in run.readings)

    @property
    def first_seq(self) -> int | None:
        return self.runs[0].seal.first_seq if self.runs else None

    @property
    def last_seq(self) -> int | None:
        return self.runs[-1].seal.last_seq if self.runs else None


# --- requests ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Ask for readings with seq > ``after_seq``, oldest first, at most ``limit``."""

    TYPE: ClassVar[str] = "read"
    after_seq: int
    limit: int = MAX_READINGS_PER_READ
    relay_id: str | None = None  # which relay of a gateway; None: the only one it serves

    def encode(self) -> dict:
        obj = {"type": self.TYPE, "after_seq": self.after_seq, "limit": self.limit}
        return _with_relay_id(obj, self.relay_id)

    @classmethod
    def decode(cls, obj: dict) -> ReadRequest:
        after_seq = _field(obj, "after_seq", int, BAD_REQUEST)
        limit = _field(obj, "limit", int, BAD_REQUEST)
        if not 0 <= after_seq <= MAX_SEQ:
            raise FeedError(BAD_REQUEST, "after_seq outside 0..2**64-1")
        if limit < 1:
            raise FeedError(BAD_REQUEST, f"limit must be at least 1, got {limit}")
        return cls(after_seq, limit, _request_relay_id(obj))


@dataclass(frozen=True, slots=True)
class InfoRequest:
    """Ask the relay who it is (id, substation, public key) and what its buffer holds."""

    TYPE: ClassVar[str] = "info"
    relay_id: str | None = None  # which relay of a gateway; None: the only one it serves

    def encode(self) -> dict:
        return _with_relay_id({"type": self.TYPE}, self.relay_id)

    @classmethod
    def decode(cls, obj: dict) -> InfoRequest:
        return cls(_request_relay_id(obj))


def _with_relay_id(obj: dict, relay_id: str | None) -> dict:
    # Only when named: a request without the key is exactly what a single relay always got.
    if relay_id is not None:
        obj["relay_id"] = relay_id
    return obj


def _request_relay_id(obj: dict) -> str | None:
    if obj.get("relay_id") is None:
        return None
    value = _field(obj, "relay_id", str, BAD_REQUEST)
    if not value or len(value.encode()) > MAX_TEXT_BYTES:
        raise FeedError(BAD_REQUEST, f"relay_id must be 1..{MAX_TEXT_BYTES} bytes of UTF-8")
    return value


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


# --- responses ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadingsResponse:
    """The answer to ``read``: signed rows (n x 108 bytes), the seals over them, the gap notice."""

    TYPE: ClassVar[str] = "readings"
    relay_id: str
    substation: str
    relay_key: bytes
    now_ms: int
    newest_seq: int | None
    rows: bytes = b""
    seals: tuple[Seal, ...] = ()
    gap: GapNotice | None = None

    def encode(self) -> dict:
        return {"type": self.TYPE, "relay_id": self.relay_id, "substation": self.substation,
                "relay_key": self.relay_key, "now_ms": self.now_ms, "newest_seq": self.newest_seq,
                "rows": self.rows, "seals": [[s.first_seq, s.count, s.signature] for s in self.seals],
                "gap": _encode_gap(self.gap)}

    @classmethod
    def decode(cls, obj: object) -> ReadingsResponse:
        """Shape and types only; what the rows and signatures say is ``check_readings``' job."""
        obj = _response_map(obj, cls.TYPE)
        rows = _field(obj, "rows", bytes)
        if len(rows) % ROW_SIZE:
            raise FeedError(BAD_READING_ROW, f"{len(rows)} bytes of rows is not a multiple of {ROW_SIZE}")
        if len(rows) // ROW_SIZE > MAX_READINGS_PER_READ:
            raise FeedError(TOO_MANY, f"{len(rows) // ROW_SIZE} readings > {MAX_READINGS_PER_READ} per answer")
        seals = _field(obj, "seals", list)
        if len(seals) > MAX_SEALS_PER_ANSWER:
            raise FeedError(TOO_MANY, f"{len(seals)} seals > {MAX_SEALS_PER_ANSWER} per answer")
        return cls(_text(obj, "relay_id"), _text(obj, "substation"), _key(obj), _int64(obj, "now_ms"),
                   _optional_seq(obj, "newest_seq"), rows, tuple(_seal(s) for s in seals), _decode_gap(obj))


@dataclass(frozen=True, slots=True)
class InfoResponse:
    """The answer to ``info`` (the relay's hello): identity, key, clock and its buffer."""

    TYPE: ClassVar[str] = "info"
    relay_id: str
    substation: str
    relay_key: bytes
    now_ms: int
    interval_ms: int
    buffered: int  # readings the relay can still serve
    oldest_seq: int | None  # None when nothing is buffered yet
    newest_seq: int | None
    newest_ms: int | None  # the newest reading's timestamp
    openings: int  # the openings counter as of the newest reading
    gap: GapNotice | None = None  # the relay's boot gap notice, if it ever lost readings

    def encode(self) -> dict:
        return {"type": self.TYPE, "relay_id": self.relay_id, "substation": self.substation,
                "relay_key": self.relay_key, "now_ms": self.now_ms, "interval_ms": self.interval_ms,
                "buffered": self.buffered, "oldest_seq": self.oldest_seq, "newest_seq": self.newest_seq,
                "newest_ms": self.newest_ms, "openings": self.openings, "gap": _encode_gap(self.gap)}

    @classmethod
    def decode(cls, obj: object) -> InfoResponse:
        obj = _response_map(obj, cls.TYPE)
        interval, buffered, openings = (_field(obj, name, int) for name in ("interval_ms", "buffered", "openings"))
        if interval < 1 or buffered < 0 or not 0 <= openings <= MAX_SEQ:
            raise FeedError(BAD_RESPONSE, "interval_ms, buffered or openings out of range")
        newest_ms = None if obj.get("newest_ms", 0) is None else _int64(obj, "newest_ms")
        return cls(_text(obj, "relay_id"), _text(obj, "substation"), _key(obj), _int64(obj, "now_ms"), interval,
                   buffered, _optional_seq(obj, "oldest_seq"), _optional_seq(obj, "newest_seq"), newest_ms,
                   openings, _decode_gap(obj))


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


# --- checking an answer ------------------------------------------------------------------------
def check_readings(response: ReadingsResponse, after_seq: int, limit: int, relay_key: bytes,
                   expected_relay_id: str | None = None) -> FeedBatch:
    """Verify a decoded ``read`` answer against what was asked and the key the relay must sign
    with (``relay_key``: from the network file or pinned on first use, never merely the key the
    answer announces); FeedError naming the first thing wrong, else the FeedBatch."""
    relay_id = response.relay_id
    if expected_relay_id is not None and relay_id != expected_relay_id:
        raise FeedError(WRONG_RELAY, f"relay {relay_id[:64]!r}, expected {expected_relay_id!r}")
    try:
        readings = unpack_rows(response.rows)
        if len(readings) > limit:
            raise FeedError(TOO_MANY, f"{len(readings)} readings, asked for at most {limit}")
        _check_values(readings)
        if response.gap is not None:
            verify_gap(relay_key, relay_id, response.gap)
        runs = _check_runs(readings, response, after_seq, relay_key)
    except ProvenanceError as exc:
        raise FeedError(exc.reason, exc.detail) from None
    return FeedBatch(relay_id, response.substation, relay_key, runs, response.gap, response.now_ms,
                     response.newest_seq)


def _check_runs(readings: tuple[Reading, ...], response: ReadingsResponse, after_seq: int,
                relay_key: bytes) -> tuple[SealedRun, ...]:
    seals = response.seals
    if not readings:
        if seals:
            raise FeedError(BAD_SEAL, f"{len(seals)} seals over no rows")
        return ()
    first = readings[0].seq
    if first <= after_seq:
        raise FeedError(TOO_OLD, f"seq {first} is not after {after_seq}")
    if first != after_seq + 1 and (response.gap is None or response.gap.resume_seq != first):
        raise FeedError(SEQUENCE_GAP, f"rows start at seq {first} after {after_seq} with no gap notice resuming there")
    for offset, reading in enumerate(readings):
        if reading.seq != first + offset:
            raise FeedError(BAD_SEAL, f"seq {reading.seq} where {first + offset} was due")
    if sum(s.count for s in seals) != len(readings):
        raise FeedError(BAD_SEAL, f"seals cover {sum(s.count for s in seals)} rows, the answer has {len(readings)}")
    leaves = row_leaves(response.rows)
    runs, at = [], 0
    for seal in seals:
        if seal.count < 1:
            raise FeedError(BAD_SEAL, f"a seal over {seal.count} rows")
        verify_seal_leaves(relay_key, response.relay_id, first + at, leaves[at:at + seal.count], seal)
        runs.append(SealedRun(readings[at:at + seal.count], seal))
        at += seal.count
    return tuple(runs)


def _check_values(readings: tuple[Reading, ...]) -> None:
    isfinite = math.isfinite
    for reading in readings:
        # Ten values a row: one tuple and one all() per row keeps 360 rows well under a ms.
        values = (reading.vab, reading.vbc, reading.vca, reading.ia, reading.ib, reading.ic, reading.frequency,
                  reading.power_factor, reading.active_power, reading.reactive_power)
        if not all(map(isfinite, values)):
            raise FeedError(NOT_FINITE, f"seq {reading.seq}: {[v for v in values if not isfinite(v)][0]!r}")


def check_info(obj: object, expected_relay_id: str | None = None) -> InfoResponse:
    info = InfoResponse.decode(obj)
    if expected_relay_id is not None and info.relay_id != expected_relay_id:
        raise FeedError(WRONG_RELAY, f"relay {info.relay_id[:64]!r}, expected {expected_relay_id!r}")
    return info


# --- field helpers -----------------------------------------------------------------------------
def _encode_gap(gap: GapNotice | None) -> list | None:
    return None if gap is None else [gap.resume_seq, gap.boot_ms, gap.signature]


def _decode_gap(obj: dict) -> GapNotice | None:
    raw = obj.get("gap")
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != 3:
        raise FeedError(BAD_TYPE, "gap must be nil or [resume_seq, boot_ms, signature]")
    resume, boot_ms, signature = raw
    if type(resume) is not int or not 1 <= resume <= MAX_SEQ or type(boot_ms) is not int \
            or not _I64_MIN <= boot_ms <= _I64_MAX:
        raise FeedError(BAD_RESPONSE, "gap resume_seq or boot_ms out of range")
    return GapNotice(resume, boot_ms, _signature(signature, "gap"))


def _seal(raw: object) -> Seal:
    if type(raw) is not list or len(raw) != 3:
        raise FeedError(BAD_TYPE, "a seal is [first_seq, count, signature]")
    first, count, signature = raw
    if type(first) is not int or type(count) is not int or not 1 <= first <= MAX_SEQ \
            or not 0 <= count <= MAX_READINGS_PER_READ:
        raise FeedError(BAD_RESPONSE, "seal first_seq or count out of range")
    return Seal(first, count, _signature(signature, "seal"))


def _signature(raw: object, what: str) -> bytes:
    if type(raw) is not bytes or len(raw) != SIGNATURE_SIZE:
        raise FeedError(BAD_TYPE, f"{what} signature must be bin {SIGNATURE_SIZE}")
    return raw


def _key(obj: dict) -> bytes:
    key = _field(obj, "relay_key", bytes)
    if len(key) != KEY_SIZE:
        raise FeedError(BAD_RESPONSE, f"relay_key is {len(key)} bytes, not {KEY_SIZE}")
    return key


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
    if type(value) is not kind:  # exact: bool is an int subclass, and True is never a count
        reason = BAD_REQUEST if missing_reason == BAD_REQUEST else BAD_TYPE
        raise FeedError(reason, f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _int64(obj: dict, name: str) -> int:
    value = _field(obj, name, int)
    if not _I64_MIN <= value <= _I64_MAX:
        raise FeedError(BAD_RESPONSE, f"{name} outside the signed 64-bit range")
    return value


def _optional_seq(obj: dict, name: str) -> int | None:
    if obj.get(name, 0) is None:
        return None
    value = _field(obj, name, int)
    if not 1 <= value <= MAX_SEQ:
        raise FeedError(BAD_RESPONSE, f"{name} outside 1..2**64-1")
    return value


def _describe(value: object) -> str:
    # Echo a peer's text only briefly, and never format a whole foreign object.
    return repr(value[:40]) if isinstance(value, str) else type(value).__name__


def _text(obj: dict, name: str) -> str:
    value = _field(obj, name, str)
    if len(value.encode()) > MAX_TEXT_BYTES:
        raise FeedError(BAD_RESPONSE, f"{name} longer than {MAX_TEXT_BYTES} bytes")
    return value
