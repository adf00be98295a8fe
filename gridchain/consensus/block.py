"""The ledger's data model: captures of signed readings, headers and blocks, and their bytes.

A reading is the relay's signed row (gridchain.consensus.provenance.Reading, 108 bytes);
its units are the relay's own, as in the prototype's capture files:
  seq              the relay's sequence number, +1 per reading, never reused
  timestamp_ms     relay (device or gateway) clock, milliseconds since the Unix epoch (UTC)
  openings         breaker openings counted by the relay
  flags            two quality bits per value, and whether the time is the gateway's
  vab, vbc, vca    phase-to-phase voltages, kV
  ia, ib, ic       line currents, A
  frequency        Hz
  power_factor     dimensionless, -1..1
  active_power     MW
  reactive_power   MVAr

The header is 128 fixed-width bytes with the nonce last, so a miner hashes the 120-byte
prefix once and only appends the nonce per try. The block hash is SHA-256 of the header.
The payload (capture + miner name) is bound to the header by its Merkle root (merkle.py).

Wire form of a block (version 2): msgpack array of 9
  [header(bin 128), signature(bin 64), relay_id(str), substation(str), relay_key(bin 32),
   miner_name(str), rows(bin, n * 108), seals(array of [first_seq, count, sig(bin 64)]),
   gap(nil | [resume_seq, boot_ms, sig(bin 64)])]
Decoding checks shape, types, sizes, the reading rows and that the seals partition the rows
(raising BlockDecodeError); whether the values make a valid block is rules.py's job.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import msgpack

from gridchain.consensus.errors import GridchainError
from gridchain.consensus.provenance import (
    MAX_SEAL_READINGS, MAX_SEALS_PER_BLOCK, ROW_SIZE, VALUE_FIELDS, GapNotice, ProvenanceError, Reading, Seal,
    pack_rows, unpack_rows,
)

__all__ = ["Reading", "Seal", "GapNotice", "Capture", "Header", "Block", "BlockDecodeError"]

HASH_SIZE = 32
KEY_SIZE = 32  # Ed25519 raw public key
SIGNATURE_SIZE = 64  # Ed25519 signature

# version u32 | height u64 | prev 32 | root 32 | time_ms u64 | bits u32 | miner key 32 | nonce u64
_HEADER = struct.Struct(">IQ32s32sQI32sQ")
HEADER_SIZE = _HEADER.size  # 128
NONCE_SIZE = 8
HEADER_PREFIX_SIZE = HEADER_SIZE - NONCE_SIZE  # 120: everything the miner hashes once

READING_SIZE = ROW_SIZE  # 108: the relay's signed row
# The time and the ten values, as the CLI and the capture files show them; ROW_FIELDS is
# the whole signed row in wire order.
READING_FIELDS = ("timestamp_ms", *VALUE_FIELDS)
ROW_FIELDS = ("seq", "timestamp_ms", "openings", "flags", *VALUE_FIELDS)

# A block's wire form is checked against this before any decoding of readings: a capture
# of 10,000 readings is ~28 hours at the relay's 10 s interval, far past any one block.
MAX_READINGS_PER_BLOCK = 10_000
MAX_TEXT_BYTES = 256  # relay id, substation and miner name are short labels
_SEAL_WIRE_BYTES = 96  # one encoded seal or gap notice: 81 bytes at most, with room to spare
MAX_BLOCK_BYTES = (HEADER_SIZE + SIGNATURE_SIZE + 3 * MAX_TEXT_BYTES + KEY_SIZE + 64
                   + MAX_READINGS_PER_BLOCK * READING_SIZE + (MAX_SEALS_PER_BLOCK + 1) * _SEAL_WIRE_BYTES)
_U64_MAX = 2**64 - 1
_I64 = (-(2**63), 2**63 - 1)

ZERO_HASH = bytes(HASH_SIZE)
BLOCK_VERSION = 2  # the one version this code reads and writes (1 had unsigned 88-byte rows)
BLOCK_VERSION_GENESIS = BLOCK_VERSION
WIRE_FIELDS = 9


class BlockDecodeError(GridchainError, ValueError):
    """Bytes that are not the wire form of a block; ``reason`` is a short stable name."""


@dataclass(frozen=True, slots=True)
class Capture:
    """One block's payload from one relay: signed readings, the seals over them, a gap notice.

    ``seals`` cover ``readings`` in order, each a run of consecutive sequence numbers
    (``runs`` pairs them up); ``gap`` is the relay's signed word that readings before the
    first one here were lost, when they were.
    """

    relay_id: str
    substation: str
    relay_key: bytes
    readings: tuple[Reading, ...] = ()
    seals: tuple[Seal, ...] = ()
    gap: GapNotice | None = None

    @property
    def newest_ms(self) -> int | None:
        return self.readings[-1].timestamp_ms if self.readings else None

    @property
    def first_seq(self) -> int | None:
        return self.readings[0].seq if self.readings else None

    @property
    def last_seq(self) -> int | None:
        return self.readings[-1].seq if self.readings else None

    def runs(self) -> Iterator[tuple[Seal, tuple[Reading, ...]]]:
        """Each seal with the readings it covers (assumes the seals partition the readings)."""
        start = 0
        for seal in self.seals:
            yield seal, self.readings[start:start + seal.count]
            start += seal.count


def seal_partition_error(readings: Sequence[Reading], seals: Sequence[Seal]) -> str | None:
    """Why ``seals`` do not cover ``readings`` in order, each over consecutive seqs; None if they do."""
    start = 0
    for index, seal in enumerate(seals):
        if not 0 < seal.count <= MAX_SEAL_READINGS:
            return f"seal {index} covers {seal.count} readings, not 1..{MAX_SEAL_READINGS}"
        if start + seal.count > len(readings):
            return f"seals cover more than the {len(readings)} readings"
        for offset in range(seal.count):
            if readings[start + offset].seq != seal.first_seq + offset:
                return (f"seal {index} ({seal.first_seq}+{seal.count}): reading {start + offset} has seq "
                        f"{readings[start + offset].seq}, not {seal.first_seq + offset}")
        start += seal.count
    if start != len(readings):
        return f"seals cover {start} of {len(readings)} readings"
    return None


def seal_fields(seals: Sequence[Seal]) -> list[list]:
    return [[s.first_seq, s.count, s.signature] for s in seals]


def gap_fields(gap: GapNotice | None) -> list | None:
    return None if gap is None else [gap.resume_seq, gap.boot_ms, gap.signature]


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
        if not isinstance(fields, (list, tuple)) or len(fields) != WIRE_FIELDS:
            raise BlockDecodeError("bad-shape", f"a block is an array of {WIRE_FIELDS} fields")
        header, signature, relay_id, substation, relay_key, miner_name, rows, seals, gap = fields
        for value, kind, name in ((header, bytes, "header"), (signature, bytes, "signature"),
                                  (relay_id, str, "relay_id"), (substation, str, "substation"),
                                  (relay_key, bytes, "relay_key"), (miner_name, str, "miner_name"),
                                  (rows, bytes, "rows"), (seals, list, "seals")):
            _expect(value, kind, name)
        if len(signature) != SIGNATURE_SIZE:
            raise BlockDecodeError("bad-signature-size", f"{len(signature)} bytes")
        if len(relay_key) != KEY_SIZE:
            raise BlockDecodeError("bad-relay-key", f"relay_key is {len(relay_key)} bytes, expected {KEY_SIZE}")
        for name, text in (("relay_id", relay_id), ("substation", substation), ("miner_name", miner_name)):
            if len(text.encode()) > MAX_TEXT_BYTES:
                raise BlockDecodeError("too-large", f"{name} longer than {MAX_TEXT_BYTES} bytes")
        if len(rows) > MAX_READINGS_PER_BLOCK * READING_SIZE:
            raise BlockDecodeError("too-large", f"more than {MAX_READINGS_PER_BLOCK} readings")
        if len(seals) > MAX_SEALS_PER_BLOCK:
            raise BlockDecodeError("too-large", f"{len(seals)} seals > {MAX_SEALS_PER_BLOCK}")
        decoded_seals = tuple(_seal(item, index) for index, item in enumerate(seals))
        notice = None if gap is None else _gap(gap)
        try:
            readings = unpack_rows(rows)
        except ProvenanceError as exc:
            raise BlockDecodeError(exc.reason, exc.detail) from None
        problem = seal_partition_error(readings, decoded_seals)
        if problem is not None:
            raise BlockDecodeError("bad-seal", problem)
        capture = Capture(relay_id, substation, relay_key, readings, decoded_seals, notice)
        return cls(Header.from_bytes(header), signature, capture, miner_name)

    def to_fields(self) -> list:
        c = self.capture
        return [self.header.to_bytes(), self.signature, c.relay_id, c.substation, c.relay_key,
                self.miner_name, pack_rows(c.readings), seal_fields(c.seals), gap_fields(c.gap)]


def _seal(item: object, index: int) -> Seal:
    if not isinstance(item, (list, tuple)) or len(item) != 3:
        raise BlockDecodeError("bad-seal", f"seals[{index}] is not [first_seq, count, signature]")
    first_seq, count, signature = item
    _expect(first_seq, int, f"seals[{index}].first_seq")
    _expect(count, int, f"seals[{index}].count")
    _expect(signature, bytes, f"seals[{index}].signature")
    if not 0 <= first_seq <= _U64_MAX or not 0 < count <= MAX_SEAL_READINGS or len(signature) != SIGNATURE_SIZE:
        raise BlockDecodeError("bad-seal", f"seals[{index}]: first_seq, count or signature size out of range")
    return Seal(first_seq, count, signature)


def _gap(item: object) -> GapNotice:
    if not isinstance(item, (list, tuple)) or len(item) != 3:
        raise BlockDecodeError("bad-gap-notice", "gap is not nil or [resume_seq, boot_ms, signature]")
    resume_seq, boot_ms, signature = item
    _expect(resume_seq, int, "gap.resume_seq")
    _expect(boot_ms, int, "gap.boot_ms")
    _expect(signature, bytes, "gap.signature")
    if not 0 <= resume_seq <= _U64_MAX or not _I64[0] <= boot_ms <= _I64[1] or len(signature) != SIGNATURE_SIZE:
        raise BlockDecodeError("bad-gap-notice", "gap: resume_seq, boot_ms or signature size out of range")
    return GapNotice(resume_seq, boot_ms, signature)


def _expect(value: object, kind: type, name: str) -> None:
    # bool is an int subclass; a boolean is never a valid counter.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BlockDecodeError("bad-type", f"{name} must be {kind.__name__}, got {type(value).__name__}")


def short_hash(block_hash: bytes) -> str:
    """The one short form of a hash used in every log event and table: 12 hex digits."""
    return block_hash.hex()[:12]
