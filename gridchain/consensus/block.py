"""The ledger's data model: readings, captures, headers and blocks, and their canonical bytes.

Units of a reading (the relay's own units, as in the prototype's capture files):
  timestamp_ms     relay clock, milliseconds since the Unix epoch (UTC)
  vab, vbc, vca    phase-to-phase voltages, kV
  ia, ib, ic       line currents, A
  frequency        Hz
  power_factor     dimensionless, 0..1 (lagging)
  active_power     MW
  reactive_power   MVAr

The header is 128 fixed-width bytes with the nonce last, so a miner hashes the 120-byte
prefix once and only appends the nonce per try. The block hash is SHA-256 of the header.
The payload (capture + miner name) is bound to the header by its Merkle root (see merkle.py).

Wire form of a block: msgpack array
  [header(bin 128), signature(bin 64), relay_id(str), substation(str), openings(int),
   miner_name(str), readings(bin, n * 88 bytes)]
Decoding checks only shape and types (raising BlockDecodeError); whether the values make a
valid block is the job of rules.py.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import msgpack

HASH_SIZE = 32
KEY_SIZE = 32  # Ed25519 raw public key
SIGNATURE_SIZE = 64  # Ed25519 signature

# version u32 | height u64 | prev 32 | root 32 | time_ms u64 | bits u32 | miner key 32 | nonce u64
_HEADER = struct.Struct(">IQ32s32sQI32sQ")
HEADER_SIZE = _HEADER.size  # 128
NONCE_SIZE = 8
HEADER_PREFIX_SIZE = HEADER_SIZE - NONCE_SIZE  # 120: everything the miner hashes once

# timestamp_ms i64 then ten IEEE-754 binary64 values, big-endian.
_READING = struct.Struct(">q10d")
READING_SIZE = _READING.size  # 88

READING_FIELDS = (
    "timestamp_ms", "vab", "vbc", "vca", "ia", "ib", "ic",
    "frequency", "power_factor", "active_power", "reactive_power",
)

# A block's wire form is checked against this before any decoding of readings: a capture
# of 10,000 readings is ~28 hours at the relay's 10 s interval, far past any one block.
MAX_READINGS_PER_BLOCK = 10_000
MAX_TEXT_BYTES = 256  # relay id, substation and miner name are short labels
MAX_BLOCK_BYTES = HEADER_SIZE + SIGNATURE_SIZE + 3 * MAX_TEXT_BYTES + 64 + MAX_READINGS_PER_BLOCK * READING_SIZE

ZERO_HASH = bytes(HASH_SIZE)
BLOCK_VERSION = 1  # the one version this code reads and writes
BLOCK_VERSION_GENESIS = BLOCK_VERSION


class BlockDecodeError(ValueError):
    """Bytes that are not the wire form of a block; ``reason`` is a short stable name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reading:
    """One relay measurement instant (units in the module docstring)."""

    timestamp_ms: int
    vab: float
    vbc: float
    vca: float
    ia: float
    ib: float
    ic: float
    frequency: float
    power_factor: float
    active_power: float
    reactive_power: float

    def to_bytes(self) -> bytes:
        return _READING.pack(
            self.timestamp_ms, self.vab, self.vbc, self.vca, self.ia, self.ib, self.ic,
            self.frequency, self.power_factor, self.active_power, self.reactive_power,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Reading:
        return cls(*_READING.unpack(data))

    def as_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in READING_FIELDS}


def pack_readings(readings: tuple[Reading, ...]) -> bytes:
    return b"".join(r.to_bytes() for r in readings)


def unpack_readings(data: bytes) -> tuple[Reading, ...]:
    if len(data) % READING_SIZE:
        raise BlockDecodeError("bad-readings", f"{len(data)} bytes is not a multiple of {READING_SIZE}")
    return tuple(Reading(*values) for values in _READING.iter_unpack(data))


@dataclass(frozen=True, slots=True)
class Capture:
    """What one relay reported since the chain's newest reading of it."""

    relay_id: str
    substation: str
    openings: int  # breaker openings caused by faults, as counted by the relay (never decreases)
    readings: tuple[Reading, ...] = ()

    @property
    def newest_ms(self) -> int | None:
        return self.readings[-1].timestamp_ms if self.readings else None


@dataclass(frozen=True, slots=True)
class Header:
    """The 128-byte fixed-width block header; its SHA-256 is the block hash."""

    version: int
    height: int
    prev_hash: bytes
    payload_root: bytes
    time_ms: int
    bits: int  # difficulty: required leading zero bits of the block hash
    miner_key: bytes
    nonce: int = 0

    def prefix(self) -> bytes:
        """The header bytes without the nonce: what the miner hashes once."""
        return self.to_bytes()[:HEADER_PREFIX_SIZE]

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            self.version, self.height, self.prev_hash, self.payload_root,
            self.time_ms, self.bits, self.miner_key, self.nonce,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        if len(data) != HEADER_SIZE:
            raise BlockDecodeError("bad-header", f"header is {len(data)} bytes, expected {HEADER_SIZE}")
        return cls(*_HEADER.unpack(data))

    def hash(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    def with_nonce(self, nonce: int) -> Header:
        return Header(self.version, self.height, self.prev_hash, self.payload_root,
                      self.time_ms, self.bits, self.miner_key, nonce)


@dataclass(frozen=True, slots=True)
class Block:
    """Header + the miner's signature over the block hash + the payload it commits to."""

    header: Header
    signature: bytes
    capture: Capture
    miner_name: str
    # Derived once; excluded from equality so a block equals its decoded copy.
    hash: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", self.header.hash())

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def prev_hash(self) -> bytes:
        return self.header.prev_hash

    def encode(self) -> bytes:
        return msgpack.packb(self.to_fields(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Block:
        if len(data) > MAX_BLOCK_BYTES:
            raise BlockDecodeError("too-large", f"{len(data)} bytes > {MAX_BLOCK_BYTES}")
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_BLOCK_BYTES)
        except Exception as exc:  # msgpack raises many unrelated types for bad input
            raise BlockDecodeError("bad-encoding", f"{type(exc).__name__}: {exc}") from None
        return cls.from_fields(fields)

    @classmethod
    def from_fields(cls, fields: object) -> Block:
        """Build a block from its already-unpacked wire array (as nested in a message)."""
        if not isinstance(fields, (list, tuple)) or len(fields) != 7:
            raise BlockDecodeError("bad-shape", "a block is an array of 7 fields")
        header, signature, relay_id, substation, openings, miner_name, readings = fields
        _expect(header, bytes, "header")
        _expect(signature, bytes, "signature")
        _expect(relay_id, str, "relay_id")
        _expect(substation, str, "substation")
        _expect(openings, int, "openings")
        _expect(miner_name, str, "miner_name")
        _expect(readings, bytes, "readings")
        if len(signature) != SIGNATURE_SIZE:
            raise BlockDecodeError("bad-signature-size", f"{len(signature)} bytes")
        for name, text in (("relay_id", relay_id), ("substation", substation), ("miner_name", miner_name)):
            if len(text.encode()) > MAX_TEXT_BYTES:
                raise BlockDecodeError("too-large", f"{name} longer than {MAX_TEXT_BYTES} bytes")
        if len(readings) > MAX_READINGS_PER_BLOCK * READING_SIZE:
            raise BlockDecodeError("too-large", f"more than {MAX_READINGS_PER_BLOCK} readings")
        if not 0 <= openings < 2**63:
            raise BlockDecodeError("bad-openings", f"{openings} out of range")
        capture = Capture(relay_id, substation, openings, unpack_readings(readings))
        return cls(Header.from_bytes(header), signature, capture, miner_name)

    def to_fields(self) -> list:
        c = self.capture
        return [self.header.to_bytes(), self.signature, c.relay_id, c.substation,
                c.openings, self.miner_name, pack_readings(c.readings)]


def _expect(value: object, kind: type, name: str) -> None:
    # bool is an int subclass; a boolean is never a valid counter.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BlockDecodeError("bad-type", f"{name} must be {kind.__name__}, got {type(value).__name__}")


def short_hash(block_hash: bytes) -> str:
    """The one short form of a hash used in every log event and table: 12 hex digits."""
    return block_hash.hex()[:12]
