"""What a relay signs: reading rows, seals over runs of them, and gap notices.

A relay (or the substation gateway in front of real devices) numbers every reading it makes
with a per-relay sequence number and signs it at the source, so no node can invent, alter,
re-date or drop one. Signing is per *run* of readings, not per reading: a seal is one
Ed25519 signature over the RFC 6962 root of a run's reading leaves. One verify per run keeps
block checks and sync fast, and a single reading is still provable on its own with its
seal and its path to the seal's root.

Reading row, 108 bytes, big-endian (struct ``>QqQI10d``):
  seq u64 | timestamp_ms i64 | openings u64 | flags u32 | vab vbc vca ia ib ic frequency
  power_factor active_power reactive_power (binary64 each)
flags: bits 0..19 hold two quality bits per value in VALUE_FIELDS order (00 good,
01 questionable, 10 invalid); bit 31 says the timestamp is the gateway's clock rather than
the device's; every other bit is zero.

Signed messages (each starts with a domain tag so a signature for one can never pass as
another, and binds the relay id):
  seal: b"gridchain/relay-seal/v1\\x00" | u8 len | relay id | u64 first_seq | u32 count | root
  gap:  b"gridchain/relay-gap/v1\\x00"  | u8 len | relay id | u64 resume_seq | i64 boot_ms
"""

from __future__ import annotations

import functools
import hashlib
import operator
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridchain.consensus.errors import GridchainError
from gridchain.consensus.tree import LEAF_PREFIX, inclusion_proof, leaf_hash, merkle_root, root_from_path

VALUE_FIELDS = (
    "vab", "vbc", "vca", "ia", "ib", "ic",
    "frequency", "power_factor", "active_power", "reactive_power",
)
_ROW = struct.Struct(">QqQI10d")
ROW_SIZE = _ROW.size  # 108

QUALITY_GOOD = 0
QUALITY_QUESTIONABLE = 1
QUALITY_INVALID = 2
QUALITY_NAMES = {QUALITY_GOOD: "good", QUALITY_QUESTIONABLE: "questionable", QUALITY_INVALID: "invalid"}
GATEWAY_TIME_FLAG = 1 << 31
_QUALITY_BITS = 2 * len(VALUE_FIELDS)  # 20
_ALLOWED_FLAGS = GATEWAY_TIME_FLAG | ((1 << _QUALITY_BITS) - 1)
_LOW_QUALITY_BITS = int("01" * len(VALUE_FIELDS), 2)  # the low bit of every pair

SIGNATURE_SIZE = 64
KEY_SIZE = 32
MAX_SEQ = 2**64 - 1
# A seal covers at most one block's worth of readings (MAX_READINGS_PER_BLOCK), and a block
# holds at most this many seals: enough for a catch-up after a long outage fetched in pages.
MAX_SEAL_READINGS = 10_000
MAX_SEALS_PER_BLOCK = 64
MAX_RELAY_ID_BYTES = 255  # the length is one byte in the signed messages

SEAL_DOMAIN = b"gridchain/relay-seal/v1\x00"
GAP_DOMAIN = b"gridchain/relay-gap/v1\x00"


class ProvenanceError(GridchainError):
    """A row, seal or gap notice that is malformed or not the relay's signed word."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One signed measurement instant of one relay (units in consensus/block.py)."""

    seq: int
    timestamp_ms: int
    openings: int
    flags: int
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
        return _ROW.pack(*_row_of(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> Reading:
        if len(data) != ROW_SIZE:
            raise ProvenanceError("bad-reading-row", f"{len(data)} bytes, expected {ROW_SIZE}")
        reading = cls(*_ROW.unpack(data))
        check_flags(reading.flags)
        return reading

    def values(self) -> tuple[float, ...]:
        return _values_of(self)

    def quality(self, field: str) -> int:
        return quality_of(self.flags, VALUE_FIELDS.index(field))

    @property
    def gateway_time(self) -> bool:
        return bool(self.flags & GATEWAY_TIME_FLAG)


# Every block check, store write and relay answer turns readings into rows and values: one C
# call for all the fields is ~5x cheaper than a getattr per field.
_ROW_FIELDS = ("seq", "timestamp_ms", "openings", "flags", *VALUE_FIELDS)
_row_of = operator.attrgetter(*_ROW_FIELDS)
_values_of = operator.attrgetter(*VALUE_FIELDS)
# unpack_rows sets the slots straight through their descriptors: the same object Reading(*row)
# makes (Reading has no __post_init__ to skip), without the frozen __init__'s
# object.__setattr__ lookup per field: a quarter less per decoded row.
_SLOT_SETTERS = tuple(getattr(Reading, name).__set__ for name in _ROW_FIELDS)


def _reading_of(row: tuple, new=object.__new__, setters=_SLOT_SETTERS) -> Reading:
    reading = new(Reading)
    for set_slot, value in zip(setters, row):
        set_slot(reading, value)
    return reading


def check_flags(flags: int) -> None:
    """Raise ``bad-reading-flags`` for reserved bits or the reserved quality code 11."""
    if flags & ~_ALLOWED_FLAGS:
        raise ProvenanceError("bad-reading-flags", f"reserved bits set in {flags:#010x}")
    # A pair is 11 exactly where its low bit and its high bit (shifted down) are both set.
    reserved = flags & (flags >> 1) & _LOW_QUALITY_BITS
    if reserved:
        index = (reserved & -reserved).bit_length() // 2
        raise ProvenanceError("bad-reading-flags", f"reserved quality code for {VALUE_FIELDS[index]}")


def quality_of(flags: int, index: int) -> int:
    return (flags >> (2 * index)) & 0b11


def make_flags(qualities: Sequence[int] = (), gateway_time: bool = False) -> int:
    """Flags from per-value quality codes (VALUE_FIELDS order; missing ones are good)."""
    flags = GATEWAY_TIME_FLAG if gateway_time else 0
    for index, code in enumerate(qualities):
        if code not in QUALITY_NAMES:
            raise ValueError(f"quality code {code} for {VALUE_FIELDS[index]} is not 0, 1 or 2")
        flags |= code << (2 * index)
    return flags


def pack_rows(readings: Sequence[Reading]) -> bytes:
    return b"".join(r.to_bytes() for r in readings)


def unpack_rows(data: bytes) -> tuple[Reading, ...]:
    if len(data) % ROW_SIZE:
        raise ProvenanceError("bad-reading-row", f"{len(data)} bytes is not a multiple of {ROW_SIZE}")
    readings = tuple(map(_reading_of, _ROW.iter_unpack(data)))
    for reading in readings:
        check_flags(reading.flags)
    return readings


def reading_leaf(reading: Reading) -> bytes:
    """The leaf hash of a reading: the same in a seal's tree and in a block's payload tree."""
    return leaf_hash(reading.to_bytes())


def row_leaves(rows: bytes) -> list[bytes]:
    """The leaf hash of every 108-byte row in ``rows``, hashed straight from the bytes.

    The same leaves as ``reading_leaf`` of the decoded readings (a row is its reading's exact
    bytes), without building a Reading per row: the relay and its client hash what they send
    and receive.
    """
    if len(rows) % ROW_SIZE:
        raise ProvenanceError("bad-reading-row", f"{len(rows)} bytes is not a multiple of {ROW_SIZE}")
    sha256, prefix = hashlib.sha256, LEAF_PREFIX
    view = memoryview(rows)
    return [sha256(prefix + view[i:i + ROW_SIZE]).digest() for i in range(0, len(rows), ROW_SIZE)]


@dataclass(frozen=True, slots=True)
class Seal:
    """The relay's signature over readings first_seq .. first_seq + count - 1."""

    first_seq: int
    count: int
    signature: bytes

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass(frozen=True, slots=True)
class GapNotice:
    """The relay's signed word that its sequence resumes at ``resume_seq`` after a loss."""

    resume_seq: int
    boot_ms: int
    signature: bytes


def _relay_id_bytes(relay_id: str) -> bytes:
    raw = relay_id.encode()
    if not raw or len(raw) > MAX_RELAY_ID_BYTES:
        raise ProvenanceError("bad-relay-id", f"relay id must be 1..{MAX_RELAY_ID_BYTES} bytes")
    return bytes([len(raw)]) + raw


def seal_root(readings: Sequence[Reading]) -> bytes:
    return merkle_root([reading_leaf(r) for r in readings])


def seal_message(relay_id: str, first_seq: int, count: int, root: bytes) -> bytes:
    return SEAL_DOMAIN + _relay_id_bytes(relay_id) + struct.pack(">QI", first_seq, count) + root


def gap_message(relay_id: str, resume_seq: int, boot_ms: int) -> bytes:
    return GAP_DOMAIN + _relay_id_bytes(relay_id) + struct.pack(">Qq", resume_seq, boot_ms)


def seal_readings(key: Ed25519PrivateKey, relay_id: str, readings: Sequence[Reading]) -> Seal:
    """Sign a run of consecutive readings (raises ``bad-seal`` if they are not a run)."""
    check_run(readings)
    first = readings[0].seq
    message = seal_message(relay_id, first, len(readings), seal_root(readings))
    return Seal(first, len(readings), key.sign(message))


def seal_leaves(key: Ed25519PrivateKey, relay_id: str, first_seq: int, leaves: Sequence[bytes]) -> Seal:
    """Sign the run of ``len(leaves)`` readings starting at ``first_seq`` from their leaf hashes.

    The relay keeps each reading's leaf beside its row, so a seal costs only the interior
    hashes and one signature. The caller vouches that the leaves are of consecutive readings.
    """
    if not 0 < len(leaves) <= MAX_SEAL_READINGS:
        raise ProvenanceError("bad-seal", f"a seal covers 1..{MAX_SEAL_READINGS} readings, not {len(leaves)}")
    message = seal_message(relay_id, first_seq, len(leaves), merkle_root(list(leaves)))
    return Seal(first_seq, len(leaves), key.sign(message))


def sign_gap(key: Ed25519PrivateKey, relay_id: str, resume_seq: int, boot_ms: int) -> GapNotice:
    return GapNotice(resume_seq, boot_ms, key.sign(gap_message(relay_id, resume_seq, boot_ms)))


def check_run(readings: Sequence[Reading]) -> None:
    """A seal's readings: 1..MAX_SEAL_READINGS of them with consecutive sequence numbers."""
    if not 0 < len(readings) <= MAX_SEAL_READINGS:
        raise ProvenanceError("bad-seal", f"a seal covers 1..{MAX_SEAL_READINGS} readings, not {len(readings)}")
    first = readings[0].seq
    for offset, reading in enumerate(readings):
        if reading.seq != first + offset:
            raise ProvenanceError("bad-seal", f"seq {reading.seq} where {first + offset} was due")


def verify_seal(public_key: bytes, relay_id: str, readings: Sequence[Reading], seal: Seal) -> None:
    """Raise a named ProvenanceError unless ``seal`` is the relay's signature over ``readings``."""
    check_run(readings)
    if seal.first_seq != readings[0].seq or seal.count != len(readings):
        raise ProvenanceError("bad-seal", f"seal {seal.first_seq}+{seal.count} does not cover "
                                          f"readings {readings[0].seq}..{readings[-1].seq}")
    message = seal_message(relay_id, seal.first_seq, seal.count, seal_root(readings))
    _verify(public_key, seal.signature, message, f"seal of {relay_id} seq {seal.first_seq}..{seal.last_seq}")


def verify_seal_leaves(public_key: bytes, relay_id: str, first_seq: int, leaves: Sequence[bytes],
                       seal: Seal) -> None:
    """``verify_seal`` for a run whose sequence numbers the caller has already checked to be
    ``first_seq`` .. ``first_seq + len(leaves) - 1``, given the leaf hashes of its rows."""
    if seal.first_seq != first_seq or seal.count != len(leaves) or not leaves:
        raise ProvenanceError("bad-seal", f"seal {seal.first_seq}+{seal.count} does not cover "
                                          f"readings {first_seq}..{first_seq + len(leaves) - 1}")
    message = seal_message(relay_id, first_seq, len(leaves), merkle_root(list(leaves)))
    _verify(public_key, seal.signature, message, f"seal of {relay_id} seq {seal.first_seq}..{seal.last_seq}")


def verify_gap(public_key: bytes, relay_id: str, notice: GapNotice) -> None:
    _verify(public_key, notice.signature, gap_message(relay_id, notice.resume_seq, notice.boot_ms),
            f"gap notice of {relay_id} resuming at seq {notice.resume_seq}")


@functools.lru_cache(maxsize=1024)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    # Parsing a key is a fifth of a verify; a node checks the same few relay keys all day.
    return Ed25519PublicKey.from_public_bytes(raw)


def _verify(public_key: bytes, signature: bytes, message: bytes, what: str) -> None:
    try:
        _public_key(bytes(public_key)).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise ProvenanceError("bad-relay-signature", f"{what} is not signed by relay key {public_key.hex()[:16]}") from None


def seal_path(readings: Sequence[Reading], index: int) -> list[bytes]:
    """RFC 6962 path of reading ``index`` to its seal's root: proves one reading on its own."""
    return inclusion_proof([reading_leaf(r) for r in readings], index)


def seal_covering(readings: Sequence[Reading], seals: Sequence[Seal], index: int) -> tuple[Seal, list[bytes]]:
    """The seal of ``seals`` (which partition ``readings`` in order) covering reading ``index``,
    and that reading's path to the seal's root: what proves the reading on its own."""
    start = 0
    for seal in seals:
        if index < start + seal.count:
            return seal, seal_path(readings[start:start + seal.count], index - start)
        start += seal.count
    raise ProvenanceError("bad-seal", f"no seal covers reading {index} of {len(readings)}")


def verify_sealed_reading(public_key: bytes, relay_id: str, reading: Reading, seal: Seal, path: Sequence[bytes]) -> None:
    """Check one reading against its seal, with no other reading of the run at hand."""
    index = reading.seq - seal.first_seq
    if not 0 <= index < seal.count:
        raise ProvenanceError("bad-seal", f"seq {reading.seq} is outside seal {seal.first_seq}..{seal.last_seq}")
    root = root_from_path(reading_leaf(reading), index, seal.count, list(path))
    if root is None:
        raise ProvenanceError("bad-seal-path", f"the path of seq {reading.seq} does not fit a seal of {seal.count}")
    message = seal_message(relay_id, seal.first_seq, seal.count, root)
    _verify(public_key, seal.signature, message, f"seal of {relay_id} seq {seal.first_seq}..{seal.last_seq}")
