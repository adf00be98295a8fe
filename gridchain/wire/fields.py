"""Field checks for decoding messages: each takes a foreign value and returns it typed, or raises. Pure.

A message body comes off the wire as a msgpack map and trusts nothing, so every field is
checked for its exact msgpack type (bool is not int, float is not int, nil only where a
field allows it), its size and its range before a message dataclass holds it. A failure is
a ``MessageError`` whose reason is one of the five names below and whose detail names the
field, e.g. ``locator[3]: expected bin of 32 bytes, got bin of 31 bytes``. The details
describe a foreign value by its type and size, never by echoing it at length.

These run for every field of every frame a node receives, so they stay plain ``type()``
comparisons with no reflection. Both protocols of a node's port build their messages from them
(gridchain.net.messages, gridchain.api.messages), inside the envelope of gridchain.wire.codec.
"""

from __future__ import annotations

from gridchain.consensus.errors import GridchainError
from gridchain.consensus.block import HASH_SIZE, KEY_SIZE, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, Block, BlockDecodeError
from gridchain.consensus.provenance import ProvenanceError, check_flags

MAX_U16 = 2**16 - 1
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1  # relay timestamps are signed 64-bit milliseconds
MAX_HEIGHT = I64_MAX  # heights and counts are stored as SQLite's signed 64-bit integers
# relay, seq, timestamp, openings, flags (the signed row in its order), ten values, height, block hash
READINGS_ROW_LENGTH = 17
MAX_STORED_SEQ = I64_MAX  # sequence numbers and openings counters are stored as SQLite's signed 64-bit integers

# The reasons a message is refused (MessageError.reason).
BAD_SHAPE = "bad-shape"  # not a [type, body] array with a str type and a map body
UNKNOWN_TYPE = "unknown-type"  # a type this version does not know
BAD_FIELD = "bad-field"  # a field missing, of the wrong type or out of range (detail names it)
TOO_MANY = "too-many"  # a list longer than its cap
BAD_BLOCK = "bad-block"  # an embedded block is not a block's wire form (detail keeps its reason)

MISSING = object()  # what ``body.get`` returns for a field that is not there
_PLAIN_SCALARS = frozenset({type(None), bool, int, float, str})


class MessageError(GridchainError, ValueError):
    """A decoded frame that is not an acceptable message; ``reason`` is one of the names above."""


def describe(value: object) -> str:
    """A short description of a foreign value that never echoes its content at length."""
    if value is MISSING:
        return "nothing (missing)"
    kind = type(value)
    if kind is bytes:
        return f"bin of {len(value)} bytes"
    if kind is list:
        return f"array of {len(value)}"
    if kind is int:
        return f"int {value}" if value.bit_length() <= 64 else f"a {value.bit_length()}-bit int"
    return {type(None): "nil", bool: "bool", float: "float", str: "str", dict: "map"}.get(kind, kind.__name__)


def wrong(name: str, value: object, expected: str) -> MessageError:
    return MessageError(BAD_FIELD, f"{name}: expected {expected}, got {describe(value)}")


# --- scalars ---------------------------------------------------------------------------------

def int_field(body: dict, name: str, lo: int, hi: int) -> int:
    return check_int(body.get(name, MISSING), name, lo, hi)


def check_int(value: object, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise wrong(name, value, f"int in {lo}..{hi}")
    return value


def optional_int(body: dict, name: str, lo: int, hi: int) -> int | None:
    value = body.get(name, MISSING)
    return None if value is None else check_int(value, name, lo, hi)


def bool_field(body: dict, name: str) -> bool:
    value = body.get(name, MISSING)
    if type(value) is not bool:
        raise wrong(name, value, "bool")
    return value


def bin_field(body: dict, name: str, size: int = HASH_SIZE) -> bytes:
    """A bin field of exactly ``size`` bytes (hashes, keys, the header, a reading leaf)."""
    value = body.get(name, MISSING)
    if type(value) is not bytes or len(value) != size:
        raise wrong(name, value, f"bin of {size} bytes")
    return value


def optional_hash(body: dict, name: str) -> bytes | None:
    value = body.get(name, MISSING)
    return None if value is None else bin_field(body, name)


def text_field(body: dict, name: str, max_bytes: int) -> str:
    return check_text(body.get(name, MISSING), name, max_bytes)


def check_text(value: object, name: str, max_bytes: int) -> str:
    if type(value) is not str:
        raise wrong(name, value, "str")
    # A code point is at most 4 UTF-8 bytes, so short strings need no encoding to measure.
    if len(value) * 4 > max_bytes and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise MessageError(BAD_FIELD, f"{name}: longer than {max_bytes} bytes of UTF-8")
    return value


def work_field(body: dict, name: str, max_bytes: int) -> int:
    """Cumulative work: a big-endian unsigned bin of at most ``max_bytes`` (leading zeros allowed)."""
    value = body.get(name, MISSING)
    if type(value) is not bytes or len(value) > max_bytes:
        raise wrong(name, value, f"bin of at most {max_bytes} bytes")
    return int.from_bytes(value, "big")


# --- lists and embedded values ---------------------------------------------------------------

def list_field(body: dict, name: str, lo: int, cap: int) -> list:
    value = body.get(name, MISSING)
    if type(value) is not list:
        raise wrong(name, value, "array")
    if len(value) > cap:
        raise MessageError(TOO_MANY, f"{name}: {len(value)} entries > {cap}")
    if len(value) < lo:
        raise MessageError(BAD_FIELD, f"{name}: {len(value)} entries < {lo}")
    return value


def hash_list(body: dict, name: str, lo: int, cap: int) -> tuple[bytes, ...]:
    """A list of ``lo``..``cap`` hashes (a locator, a Merkle path)."""
    items = list_field(body, name, lo, cap)
    for index, item in enumerate(items):
        if type(item) is not bytes or len(item) != HASH_SIZE:
            raise wrong(f"{name}[{index}]", item, "bin of 32 bytes")
    return tuple(items)


def block_field(fields: object, name: str, index: int | None = None) -> Block:
    """A block in its wire form; its decoder's reason is kept in the detail."""
    where = name if index is None else f"{name}[{index}]"
    if fields is MISSING:
        raise wrong(where, fields, "a block array")
    try:
        return Block.from_fields(fields)
    except BlockDecodeError as exc:
        raise MessageError(BAD_BLOCK, f"{where}: {exc}") from None


def cursor_field(body: dict, name: str) -> tuple[int, str, int] | None:
    """A readings keyset cursor ``[timestamp_ms, relay_id, seq]``, or nil.

    The relay's clock may repeat a time, so the seq is what makes a position unique.
    """
    value = body.get(name, MISSING)
    if value is None:
        return None
    if type(value) is not list or len(value) != 3:
        raise wrong(name, value, "[timestamp_ms, relay_id, seq] or nil")
    return (check_int(value[0], f"{name}[0]", I64_MIN, I64_MAX),
            check_text(value[1], f"{name}[1]", MAX_TEXT_BYTES),
            check_int(value[2], f"{name}[2]", 0, MAX_STORED_SEQ))


# --- rows of the operator replies ------------------------------------------------------------

def event_fields(row: dict) -> dict:
    """The fields a block event and a headers row share, checked."""
    return {
        "height": int_field(row, "height", 0, MAX_HEIGHT),
        "hash": bin_field(row, "hash"),
        "miner_name": text_field(row, "miner_name", MAX_TEXT_BYTES),
        "relay_id": text_field(row, "relay_id", MAX_TEXT_BYTES),
        "readings": int_field(row, "readings", 0, MAX_READINGS_PER_BLOCK),
        "newest_ms": optional_int(row, "newest_ms", I64_MIN, I64_MAX),
        "time_ms": int_field(row, "time_ms", 0, MAX_U64),
    }


def header_row(row: object, where: str) -> dict:
    """One headers_reply row: the block event's fields and the miner's key."""
    if type(row) is not dict:
        raise wrong(where, row, "map")
    try:
        fields = event_fields(row)
        fields["miner_key"] = bin_field(row, "miner_key", KEY_SIZE)
    except MessageError as exc:
        raise MessageError(exc.reason, f"{where}.{exc.detail}") from None
    return fields


def readings_row(row: object, index: int) -> tuple:
    """One readings_reply row of READINGS_ROW_LENGTH values: relay_id, the signed row's fields
    (seq, timestamp_ms, openings, flags, the ten values) and the block's height and hash."""
    where = f"rows[{index}]"
    if type(row) is not list or len(row) != READINGS_ROW_LENGTH:
        raise wrong(where, row, f"array of {READINGS_ROW_LENGTH}")
    relay_id, seq, timestamp_ms, openings, flags, *values, height, block_hash = row
    check_text(relay_id, f"{where}[0]", MAX_TEXT_BYTES)
    check_int(seq, f"{where}[1]", 0, MAX_STORED_SEQ)
    check_int(timestamp_ms, f"{where}[2]", I64_MIN, I64_MAX)
    check_int(openings, f"{where}[3]", 0, MAX_STORED_SEQ)
    check_int(flags, f"{where}[4]", 0, MAX_U32)
    try:
        check_flags(flags)
    except ProvenanceError as exc:
        raise MessageError(BAD_FIELD, f"{where}[4]: {exc.detail}") from None
    for offset, value in enumerate(values, 5):
        # Blocks never hold NaN or infinity (rules.py), so neither may a row read from them.
        if type(value) is not float or value - value != 0.0:
            raise wrong(f"{where}[{offset}]", value, "a finite float")
    check_int(height, f"{where}[15]", 0, MAX_HEIGHT)
    if type(block_hash) is not bytes or len(block_hash) != HASH_SIZE:
        raise wrong(f"{where}[16]", block_hash, "bin of 32 bytes")
    return tuple(row)


def problem_row(item: object, where: str, max_reason: int) -> tuple[int, bytes, str]:
    """One verify_reply problem ``[height, hash, reason]``."""
    if type(item) is not list or len(item) != 3:
        raise wrong(where, item, "[height, hash, reason]")
    height, block_hash, reason = item
    # Height -1 and an empty hash: the problem is not about one block (say, an unreadable file).
    check_int(height, f"{where}[0]", -1, MAX_HEIGHT)
    if type(block_hash) is not bytes or len(block_hash) not in (0, HASH_SIZE):
        raise wrong(f"{where}[1]", block_hash, "bin of 0 or 32 bytes")
    return height, block_hash, check_text(reason, f"{where}[2]", max_reason)


def check_plain(value: object, name: str, depth: int, max_depth: int) -> None:
    """Status values: nil, bool, int, float, str, and arrays and str-keyed maps of them."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return
    if depth >= max_depth:
        raise MessageError(BAD_FIELD, f"{name}: nested deeper than {max_depth}")
    if kind is list:
        for item in value:
            check_plain(item, name, depth + 1, max_depth)
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise wrong(f"{name} key", key, "str")
            check_plain(item, f"{name}.{key[:40]}", depth + 1, max_depth)
    else:
        raise wrong(name, value, "nil, bool, int, float, str, array or map")
