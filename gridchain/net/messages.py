"""Peer and operator messages: one frozen dataclass per type, with strict decoding. Pure.

A message travels in one frame (gridchain.wire) as the msgpack array ``[type, body]``: the
type a str, the body a map with str keys. ``encode_message`` builds that array from a
dataclass; ``decode_message`` turns a decoded frame back into one and trusts nothing. Every
field must be present with its exact msgpack type (bool is not int, float is not int, nil
only where a field says so), hashes and keys exactly 32 bytes, integers in range, lists
within their caps. Keys a receiver does not know are ignored, so a later version can add
fields. Each failure is a ``MessageError`` with one of five stable reasons; no input makes
``decode_message`` raise anything else.

Peer messages (PEER_MESSAGES) are gossip between nodes. Client requests (CLIENT_REQUESTS)
come from the operator's ``gridchain`` tool on the same port and get the replies below them.
docs/protocol.md describes every message field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..consensus.block import (
    HASH_SIZE, HEADER_SIZE, KEY_SIZE, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, READING_SIZE, Block,
    BlockDecodeError,
)

PROTOCOL_VERSION = 1  # the peer protocol spoken in hello; a node refuses any other

# The newest 10 hashes one by one, then doubling back: 64 reach 2**54 blocks behind the tip.
MAX_LOCATOR = 64
# Sync moves at most this many blocks per message, so one answer is bounded and resumable.
MAX_BLOCKS_PER_MESSAGE = 500
# Node, network and miner names also go into blocks, whose text fields hold 256 bytes.
MAX_NAME = MAX_TEXT_BYTES
MAX_AGENT = 64  # bytes: a software name and version such as "gridchain/0.1.0"
MAX_CODE = 64  # bytes: reject codes and error reasons are short stable names like "bad-pow"
MAX_DETAIL = 4096  # bytes: one human-readable sentence or error text, never a payload
# Cumulative work as big-endian bytes: 64 bytes hold 2**512, past any chain of 256-bit work.
MAX_WORK_BYTES = 64
MAX_HEADERS = 1000  # main-chain summary rows per headers request (~180 KB answered)
MAX_READINGS_PAGE = 5000  # readings rows per page: ~750 KB, far under the 4 MiB frame cap
# A reading's Merkle path: a payload of MAX_READINGS_PER_BLOCK + 1 leaves needs 14 hashes.
MAX_PROOF_PATH = 32
MAX_PROBLEMS = 1000  # a verify report lists at most this many problems; one already fails it
# Status is a small tree of plain values (node -> peers -> one peer's fields is depth 3).
MAX_INFO_DEPTH = 8

MAX_U16 = 2**16 - 1
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1  # relay timestamps are signed 64-bit milliseconds
MAX_HEIGHT = I64_MAX  # heights and counts are stored as SQLite's signed 64-bit integers
READINGS_ROW_LENGTH = 15  # relay, timestamp, ten measurements, openings, height, block hash

# The reasons a message is refused (MessageError.reason).
BAD_SHAPE = "bad-shape"  # not a [type, body] array with a str type and a map body
UNKNOWN_TYPE = "unknown-type"  # a type this version does not know
BAD_FIELD = "bad-field"  # a field missing, of the wrong type or out of range (detail names it)
TOO_MANY = "too-many"  # a list longer than its cap
BAD_BLOCK = "bad-block"  # an embedded block is not a block's wire form (detail keeps its reason)


class MessageError(ValueError):
    """A decoded frame that is not an acceptable message; ``reason`` is one of the names above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class _EmptyBody:
    """Base of the messages whose body is the empty map."""

    __slots__ = ()

    def to_body(self) -> dict:
        return {}

    @classmethod
    def from_body(cls, body: dict):
        return cls()


@dataclass(frozen=True, slots=True)
class _NonceBody:
    """Base of ping and pong (distinct types: a Ping never equals a Pong)."""

    nonce: int  # 0..2**64-1, echoed back unchanged

    def to_body(self) -> dict:
        return {"nonce": self.nonce}

    @classmethod
    def from_body(cls, body: dict):
        return cls(_int(body, "nonce", 0, MAX_U64))


# --- peer messages -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    """The first message each way on a peer connection: who the node is and how far its chain goes."""

    TYPE: ClassVar[str] = "hello"
    version: int
    network: str
    genesis: bytes
    node_key: bytes
    listen_port: int  # 0: this node accepts no connections
    height: int
    tip: bytes
    work: int  # cumulative work of the chain ending at ``tip``
    agent: str
    name: str

    def to_body(self) -> dict:
        return {"version": self.version, "network": self.network, "genesis": self.genesis,
                "node_key": self.node_key, "listen_port": self.listen_port, "height": self.height,
                "tip": self.tip, "work": work_to_bytes(self.work), "agent": self.agent, "name": self.name}

    @classmethod
    def from_body(cls, body: dict) -> Hello:
        return cls(_int(body, "version", 0, MAX_U32), _text(body, "network", MAX_NAME), _hash(body, "genesis"),
                   _hash(body, "node_key", KEY_SIZE), _int(body, "listen_port", 0, MAX_U16),
                   _int(body, "height", 0, MAX_HEIGHT), _hash(body, "tip"), _work(body),
                   _text(body, "agent", MAX_AGENT), _text(body, "name", MAX_NAME))


@dataclass(frozen=True, slots=True)
class Tip:
    """The chain-length announcement: the sender's best tip and the work behind it."""

    TYPE: ClassVar[str] = "tip"
    height: int
    tip: bytes
    work: int

    def to_body(self) -> dict:
        return {"height": self.height, "tip": self.tip, "work": work_to_bytes(self.work)}

    @classmethod
    def from_body(cls, body: dict) -> Tip:
        return cls(_int(body, "height", 0, MAX_HEIGHT), _hash(body, "tip"), _work(body))


@dataclass(frozen=True, slots=True)
class BlockMessage:
    """One block pushed to a peer (a new block being gossiped)."""

    TYPE: ClassVar[str] = "block"
    block: Block

    def to_body(self) -> dict:
        return {"block": self.block.to_fields()}

    @classmethod
    def from_body(cls, body: dict) -> BlockMessage:
        return cls(_block(body.get("block", _MISSING), "block"))


@dataclass(frozen=True, slots=True)
class GetBlocks:
    """Ask for main-chain blocks after the first locator hash the peer knows, oldest first."""

    TYPE: ClassVar[str] = "get_blocks"
    locator: tuple[bytes, ...]  # newest first, ending at genesis
    limit: int

    def to_body(self) -> dict:
        return {"locator": list(self.locator), "limit": self.limit}

    @classmethod
    def from_body(cls, body: dict) -> GetBlocks:
        items = _list(body, "locator", 1, MAX_LOCATOR)
        for index, item in enumerate(items):
            if type(item) is not bytes or len(item) != HASH_SIZE:
                raise _wrong(f"locator[{index}]", item, "bin of 32 bytes")
        return cls(tuple(items), _int(body, "limit", 1, MAX_BLOCKS_PER_MESSAGE))


@dataclass(frozen=True, slots=True)
class Blocks:
    """The answer to get_blocks; ``more`` says the sender has further blocks after these."""

    TYPE: ClassVar[str] = "blocks"
    blocks: tuple[Block, ...]
    more: bool

    def to_body(self) -> dict:
        return {"blocks": [block.to_fields() for block in self.blocks], "more": self.more}

    @classmethod
    def from_body(cls, body: dict) -> Blocks:
        items = _list(body, "blocks", 0, MAX_BLOCKS_PER_MESSAGE)
        more = _bool(body, "more")
        return cls(tuple([_block(item, "blocks", index) for index, item in enumerate(items)]), more)


@dataclass(frozen=True, slots=True)
class Ping(_NonceBody):
    """Keepalive; the peer answers with a pong carrying the same nonce."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Pong(_NonceBody):
    """The answer to a ping."""

    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True, slots=True)
class Reject:
    """Why the sender is refusing the peer or what it sent (sent just before closing)."""

    TYPE: ClassVar[str] = "reject"
    code: str
    detail: str = ""

    def to_body(self) -> dict:
        return {"code": self.code, "detail": self.detail}

    @classmethod
    def from_body(cls, body: dict) -> Reject:
        return cls(_text(body, "code", MAX_CODE), _text(body, "detail", MAX_DETAIL))


# --- operator requests and replies ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatusRequest(_EmptyBody):
    """Ask for the node's status."""

    TYPE: ClassVar[str] = "status_request"


@dataclass(frozen=True, slots=True)
class Status:
    """The node's status as a map of plain values (the node decides what it reports)."""

    TYPE: ClassVar[str] = "status"
    info: dict

    def to_body(self) -> dict:
        return {"info": self.info}

    @classmethod
    def from_body(cls, body: dict) -> Status:
        info = body.get("info", _MISSING)
        if type(info) is not dict:
            raise _wrong("info", info, "map")
        _check_plain(info, "info", 0)
        return cls(info)


@dataclass(frozen=True, slots=True)
class BlockRequest:
    """Ask for one block by hash (on any branch) or by main-chain height: exactly one is given."""

    TYPE: ClassVar[str] = "block_request"
    hash: bytes | None = None
    height: int | None = None

    def to_body(self) -> dict:
        return {"hash": self.hash, "height": self.height}

    @classmethod
    def from_body(cls, body: dict) -> BlockRequest:
        block_hash, height = _optional_hash(body, "hash"), _optional_int(body, "height", 0, MAX_HEIGHT)
        if (block_hash is None) == (height is None):
            raise MessageError(BAD_FIELD, "hash, height: exactly one must be given")
        return cls(block_hash, height)


@dataclass(frozen=True, slots=True)
class BlockReply:
    """A block, its height and whether it is on the node's main chain."""

    TYPE: ClassVar[str] = "block_reply"
    block: Block | None
    height: int
    main: bool

    def to_body(self) -> dict:
        return {"block": None if self.block is None else self.block.to_fields(), "height": self.height,
                "main": self.main}

    @classmethod
    def from_body(cls, body: dict) -> BlockReply:
        fields = body.get("block", _MISSING)
        block = None if fields is None else _block(fields, "block")
        return cls(block, _int(body, "height", 0, MAX_HEIGHT), _bool(body, "main"))


@dataclass(frozen=True, slots=True)
class HeadersRequest:
    """Ask for summary rows of main-chain blocks ``start..stop`` (inclusive, <= MAX_HEADERS)."""

    TYPE: ClassVar[str] = "headers_request"
    start: int
    stop: int

    def to_body(self) -> dict:
        return {"start": self.start, "stop": self.stop}

    @classmethod
    def from_body(cls, body: dict) -> HeadersRequest:
        start = _int(body, "start", 0, MAX_HEIGHT)
        stop = _int(body, "stop", start, MAX_HEIGHT)
        if stop - start >= MAX_HEADERS:
            raise MessageError(TOO_MANY, f"start..stop: {stop - start + 1} heights > {MAX_HEADERS}")
        return cls(start, stop)


@dataclass(frozen=True, slots=True)
class HeadersReply:
    """Summary rows (maps with the keys of HEADER_ROW_KEYS), lowest height first."""

    TYPE: ClassVar[str] = "headers_reply"
    rows: tuple[dict, ...]

    def to_body(self) -> dict:
        return {"rows": list(self.rows)}

    @classmethod
    def from_body(cls, body: dict) -> HeadersReply:
        items = _list(body, "rows", 0, MAX_HEADERS)
        return cls(tuple([_header_row(item, f"rows[{index}]") for index, item in enumerate(items)]))


@dataclass(frozen=True, slots=True)
class ReadingsRequest:
    """Ask for one page of main-chain readings ordered by (timestamp_ms, relay_id).

    ``since_ms`` and ``until_ms`` are inclusive; ``after`` is the keyset cursor
    ``(timestamp_ms, relay_id)`` the previous page's ``next`` gave.
    """

    TYPE: ClassVar[str] = "readings_request"
    relay: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    after: tuple[int, str] | None = None
    limit: int = MAX_READINGS_PAGE

    def to_body(self) -> dict:
        return {"relay": self.relay, "since_ms": self.since_ms, "until_ms": self.until_ms,
                "after": None if self.after is None else list(self.after), "limit": self.limit}

    @classmethod
    def from_body(cls, body: dict) -> ReadingsRequest:
        relay = None if body.get("relay", _MISSING) is None else _text(body, "relay", MAX_TEXT_BYTES)
        return cls(relay, _optional_int(body, "since_ms", I64_MIN, I64_MAX),
                   _optional_int(body, "until_ms", I64_MIN, I64_MAX), _cursor(body, "after"),
                   _int(body, "limit", 1, MAX_READINGS_PAGE))


@dataclass(frozen=True, slots=True)
class ReadingsReply:
    """One page of readings rows (see READINGS_ROW_LENGTH) and the cursor of the next page."""

    TYPE: ClassVar[str] = "readings_reply"
    rows: tuple[tuple, ...]
    next: tuple[int, str] | None  # None: this page is the last

    def to_body(self) -> dict:
        return {"rows": [list(row) for row in self.rows], "next": None if self.next is None else list(self.next)}

    @classmethod
    def from_body(cls, body: dict) -> ReadingsReply:
        items = _list(body, "rows", 0, MAX_READINGS_PAGE)
        return cls(tuple([_readings_row(item, index) for index, item in enumerate(items)]), _cursor(body, "next"))


@dataclass(frozen=True, slots=True)
class ProofRequest:
    """Ask for the inclusion proof of one main-chain reading."""

    TYPE: ClassVar[str] = "proof_request"
    relay: str
    timestamp_ms: int

    def to_body(self) -> dict:
        return {"relay": self.relay, "timestamp_ms": self.timestamp_ms}

    @classmethod
    def from_body(cls, body: dict) -> ProofRequest:
        return cls(_text(body, "relay", MAX_TEXT_BYTES), _int(body, "timestamp_ms", I64_MIN, I64_MAX))


@dataclass(frozen=True, slots=True)
class ProofReply:
    """Everything needed to check offline that a reading is under a header's payload root.

    ``leaf`` is the reading's canonical bytes, leaf ``index`` of a payload tree of ``size``
    leaves (leaf 0 is the capture metadata), and ``path`` its RFC 6962 audit path.
    """

    TYPE: ClassVar[str] = "proof_reply"
    header: bytes
    leaf: bytes
    index: int
    size: int
    path: tuple[bytes, ...]
    height: int
    hash: bytes
    miner_name: str
    relay_id: str
    substation: str
    openings: int

    def to_body(self) -> dict:
        return {"header": self.header, "leaf": self.leaf, "index": self.index, "size": self.size,
                "path": list(self.path), "height": self.height, "hash": self.hash,
                "miner_name": self.miner_name, "relay_id": self.relay_id, "substation": self.substation,
                "openings": self.openings}

    @classmethod
    def from_body(cls, body: dict) -> ProofReply:
        size = _int(body, "size", 2, MAX_READINGS_PER_BLOCK + 1)
        path = _list(body, "path", 0, MAX_PROOF_PATH)
        for index, item in enumerate(path):
            if type(item) is not bytes or len(item) != HASH_SIZE:
                raise _wrong(f"path[{index}]", item, "bin of 32 bytes")
        return cls(_hash(body, "header", HEADER_SIZE), _hash(body, "leaf", READING_SIZE),
                   _int(body, "index", 1, size - 1), size, tuple(path), _int(body, "height", 0, MAX_HEIGHT),
                   _hash(body, "hash"), _text(body, "miner_name", MAX_TEXT_BYTES),
                   _text(body, "relay_id", MAX_TEXT_BYTES), _text(body, "substation", MAX_TEXT_BYTES),
                   _int(body, "openings", 0, I64_MAX))


@dataclass(frozen=True, slots=True)
class VerifyRequest(_EmptyBody):
    """Ask the node to re-check its whole stored chain."""

    TYPE: ClassVar[str] = "verify_request"


@dataclass(frozen=True, slots=True)
class VerifyReply:
    """The audit's outcome; each problem is (height, block hash, reason), or (-1, b"", reason)."""

    TYPE: ClassVar[str] = "verify_reply"
    ok: bool
    checked: int  # blocks checked
    problems: tuple[tuple[int, bytes, str], ...] = ()

    def to_body(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "problems": [list(p) for p in self.problems]}

    @classmethod
    def from_body(cls, body: dict) -> VerifyReply:
        ok, checked = _bool(body, "ok"), _int(body, "checked", 0, I64_MAX)
        items = _list(body, "problems", 0, MAX_PROBLEMS)
        return cls(ok, checked, tuple([_problem(item, f"problems[{i}]") for i, item in enumerate(items)]))


@dataclass(frozen=True, slots=True)
class Subscribe(_EmptyBody):
    """Turn the connection into a feed of block events (one per block joining the main chain)."""

    TYPE: ClassVar[str] = "subscribe"


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """A block joined the node's main chain (after a reorg, heights may repeat)."""

    TYPE: ClassVar[str] = "block_event"
    height: int
    hash: bytes
    miner_name: str
    relay_id: str
    readings: int
    newest_ms: int | None  # the newest reading's timestamp; None for a block without readings
    time_ms: int

    def to_body(self) -> dict:
        return {"height": self.height, "hash": self.hash, "miner_name": self.miner_name,
                "relay_id": self.relay_id, "readings": self.readings, "newest_ms": self.newest_ms,
                "time_ms": self.time_ms}

    @classmethod
    def from_body(cls, body: dict) -> BlockEvent:
        return cls(**_event_fields(body))


@dataclass(frozen=True, slots=True)
class Error:
    """A request failed; ``reason`` is a stable name (e.g. "not-found"), ``detail`` for people."""

    TYPE: ClassVar[str] = "error"
    reason: str
    detail: str = ""

    def to_body(self) -> dict:
        return {"reason": self.reason, "detail": self.detail}

    @classmethod
    def from_body(cls, body: dict) -> Error:
        return cls(_text(body, "reason", MAX_CODE), _text(body, "detail", MAX_DETAIL))


Message = (Hello | Tip | BlockMessage | GetBlocks | Blocks | Ping | Pong | Reject | StatusRequest | Status
           | BlockRequest | BlockReply | HeadersRequest | HeadersReply | ReadingsRequest | ReadingsReply
           | ProofRequest | ProofReply | VerifyRequest | VerifyReply | Subscribe | BlockEvent | Error)

PEER_MESSAGES = (Hello, Tip, BlockMessage, GetBlocks, Blocks, Ping, Pong, Reject)
CLIENT_REQUESTS = (StatusRequest, BlockRequest, HeadersRequest, ReadingsRequest, ProofRequest, VerifyRequest,
                   Subscribe)
CLIENT_REPLIES = (Status, BlockReply, HeadersReply, ReadingsReply, ProofReply, VerifyReply, BlockEvent, Error)
ALL_MESSAGES = PEER_MESSAGES + CLIENT_REQUESTS + CLIENT_REPLIES
HEADER_ROW_KEYS = ("height", "hash", "time_ms", "miner_name", "miner_key", "relay_id", "readings", "newest_ms")

_DECODERS = {cls.TYPE: cls.from_body for cls in ALL_MESSAGES}


def encode_message(message: Message) -> list:
    """The ``[type, body]`` array for ``message``, ready for ``wire.encode_frame``."""
    return [message.TYPE, message.to_body()]


def decode_message(obj: object) -> Message:
    """The message a decoded frame holds; MessageError (and nothing else) when it holds none."""
    if type(obj) is not list or len(obj) != 2:
        raise MessageError(BAD_SHAPE, f"a message is a [type, body] array, got {_kind(obj)}")
    kind, body = obj
    if type(kind) is not str:
        raise MessageError(BAD_SHAPE, f"the type is a str, got {_kind(kind)}")
    if type(body) is not dict:
        raise MessageError(BAD_SHAPE, f"the body is a map, got {_kind(body)}")
    decode = _DECODERS.get(kind)
    if decode is None:
        raise MessageError(UNKNOWN_TYPE, repr(kind[:40]))
    return decode(body)


def work_to_bytes(work: int) -> bytes:
    """Cumulative work as minimal big-endian unsigned bytes (0 is the empty string)."""
    return work.to_bytes((work.bit_length() + 7) // 8, "big")


# --- field checks (hot: plain type() comparisons, no reflection) ----------------------------

_MISSING = object()
_PLAIN_SCALARS = frozenset({type(None), bool, int, float, str})


def _kind(value: object) -> str:
    """A short description of a foreign value that never echoes its content at length."""
    if value is _MISSING:
        return "nothing (missing)"
    kind = type(value)
    if kind is bytes:
        return f"bin of {len(value)} bytes"
    if kind is list:
        return f"array of {len(value)}"
    if kind is int:
        return f"int {value}" if value.bit_length() <= 64 else f"a {value.bit_length()}-bit int"
    return {type(None): "nil", bool: "bool", float: "float", str: "str", dict: "map"}.get(kind, kind.__name__)


def _wrong(name: str, value: object, expected: str) -> MessageError:
    return MessageError(BAD_FIELD, f"{name}: expected {expected}, got {_kind(value)}")


def _int(body: dict, name: str, lo: int, hi: int) -> int:
    return _check_int(body.get(name, _MISSING), name, lo, hi)


def _check_int(value: object, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _wrong(name, value, f"int in {lo}..{hi}")
    return value


def _optional_int(body: dict, name: str, lo: int, hi: int) -> int | None:
    value = body.get(name, _MISSING)
    return None if value is None else _check_int(value, name, lo, hi)


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, _MISSING)
    if type(value) is not bool:
        raise _wrong(name, value, "bool")
    return value


def _hash(body: dict, name: str, size: int = HASH_SIZE) -> bytes:
    """A bin field of exactly ``size`` bytes (hashes, keys, the header, a reading leaf)."""
    value = body.get(name, _MISSING)
    if type(value) is not bytes or len(value) != size:
        raise _wrong(name, value, f"bin of {size} bytes")
    return value


def _optional_hash(body: dict, name: str) -> bytes | None:
    value = body.get(name, _MISSING)
    return None if value is None else _hash(body, name)


def _text(body: dict, name: str, max_bytes: int) -> str:
    return _check_text(body.get(name, _MISSING), name, max_bytes)


def _check_text(value: object, name: str, max_bytes: int) -> str:
    if type(value) is not str:
        raise _wrong(name, value, "str")
    # A code point is at most 4 UTF-8 bytes, so short strings need no encoding to measure.
    if len(value) * 4 > max_bytes and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise MessageError(BAD_FIELD, f"{name}: longer than {max_bytes} bytes of UTF-8")
    return value


def _list(body: dict, name: str, lo: int, cap: int) -> list:
    value = body.get(name, _MISSING)
    if type(value) is not list:
        raise _wrong(name, value, "array")
    if len(value) > cap:
        raise MessageError(TOO_MANY, f"{name}: {len(value)} entries > {cap}")
    if len(value) < lo:
        raise MessageError(BAD_FIELD, f"{name}: {len(value)} entries < {lo}")
    return value


def _work(body: dict) -> int:
    value = body.get("work", _MISSING)
    if type(value) is not bytes or len(value) > MAX_WORK_BYTES:
        raise _wrong("work", value, f"bin of at most {MAX_WORK_BYTES} bytes")
    return int.from_bytes(value, "big")


def _block(fields: object, name: str, index: int | None = None) -> Block:
    where = name if index is None else f"{name}[{index}]"
    if fields is _MISSING:
        raise _wrong(where, fields, "a block array")
    try:
        return Block.from_fields(fields)
    except BlockDecodeError as exc:
        raise MessageError(BAD_BLOCK, f"{where}: {exc}") from None


def _cursor(body: dict, name: str) -> tuple[int, str] | None:
    value = body.get(name, _MISSING)
    if value is None:
        return None
    if type(value) is not list or len(value) != 2:
        raise _wrong(name, value, "[timestamp_ms, relay_id] or nil")
    return (_check_int(value[0], f"{name}[0]", I64_MIN, I64_MAX),
            _check_text(value[1], f"{name}[1]", MAX_TEXT_BYTES))


def _event_fields(row: dict) -> dict:
    """The fields a block event and a headers row share, checked."""
    return {
        "height": _int(row, "height", 0, MAX_HEIGHT),
        "hash": _hash(row, "hash"),
        "miner_name": _text(row, "miner_name", MAX_TEXT_BYTES),
        "relay_id": _text(row, "relay_id", MAX_TEXT_BYTES),
        "readings": _int(row, "readings", 0, MAX_READINGS_PER_BLOCK),
        "newest_ms": _optional_int(row, "newest_ms", I64_MIN, I64_MAX),
        "time_ms": _int(row, "time_ms", 0, MAX_U64),
    }


def _header_row(row: object, where: str) -> dict:
    if type(row) is not dict:
        raise _wrong(where, row, "map")
    try:
        fields = _event_fields(row)
        fields["miner_key"] = _hash(row, "miner_key", KEY_SIZE)
    except MessageError as exc:
        raise MessageError(exc.reason, f"{where}.{exc.detail}") from None
    return fields


def _readings_row(row: object, index: int) -> tuple:
    if type(row) is not list or len(row) != READINGS_ROW_LENGTH:
        raise _wrong(f"rows[{index}]", row, f"array of {READINGS_ROW_LENGTH}")
    relay_id, timestamp_ms, *values, openings, height, block_hash = row
    _check_text(relay_id, f"rows[{index}][0]", MAX_TEXT_BYTES)
    _check_int(timestamp_ms, f"rows[{index}][1]", I64_MIN, I64_MAX)
    for offset, value in enumerate(values, 2):
        # Blocks never hold NaN or infinity (rules.py), so neither may a row read from them.
        if type(value) is not float or value - value != 0.0:
            raise _wrong(f"rows[{index}][{offset}]", value, "a finite float")
    _check_int(openings, f"rows[{index}][12]", 0, I64_MAX)
    _check_int(height, f"rows[{index}][13]", 0, MAX_HEIGHT)
    if type(block_hash) is not bytes or len(block_hash) != HASH_SIZE:
        raise _wrong(f"rows[{index}][14]", block_hash, "bin of 32 bytes")
    return tuple(row)


def _problem(item: object, where: str) -> tuple[int, bytes, str]:
    if type(item) is not list or len(item) != 3:
        raise _wrong(where, item, "[height, hash, reason]")
    height, block_hash, reason = item
    # Height -1 and an empty hash: the problem is not about one block (say, an unreadable file).
    _check_int(height, f"{where}[0]", -1, MAX_HEIGHT)
    if type(block_hash) is not bytes or len(block_hash) not in (0, HASH_SIZE):
        raise _wrong(f"{where}[1]", block_hash, "bin of 0 or 32 bytes")
    return height, block_hash, _check_text(reason, f"{where}[2]", MAX_DETAIL)


def _check_plain(value: object, name: str, depth: int) -> None:
    """Status values: nil, bool, int, float, str, and arrays and str-keyed maps of them."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return
    if depth >= MAX_INFO_DEPTH:
        raise MessageError(BAD_FIELD, f"{name}: nested deeper than {MAX_INFO_DEPTH}")
    if kind is list:
        for item in value:
            _check_plain(item, name, depth + 1)
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _wrong(f"{name} key", key, "str")
            _check_plain(item, f"{name}.{key[:40]}", depth + 1)
    else:
        raise _wrong(name, value, "nil, bool, int, float, str, array or map")
