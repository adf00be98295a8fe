"""Peer and operator messages: one frozen dataclass per type, with strict decoding. Pure.

A message travels in one frame (gridchain.wire.frames) as the msgpack array ``[type, body]``: the
type a str, the body a map with str keys. ``encode_message`` builds that array from a
dataclass; ``decode_message`` turns a decoded frame back into one and trusts nothing. Every
field must be present with its exact msgpack type (bool is not int, float is not int, nil
only where a field says so), hashes and keys exactly 32 bytes, integers in range, lists
within their caps. Keys a receiver does not know are ignored, so a later version can add
fields. Each failure is a ``MessageError`` with one of five stable reasons; no input makes
``decode_message`` raise anything else. The field checks themselves are in gridchain.net.fields.

Peer messages (PEER_MESSAGES) are gossip between nodes. Client requests (CLIENT_REQUESTS)
come from the operator's ``gridchain`` tool on the same port and get the replies below them.
docs/protocol.md describes every message field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gridchain.consensus.block import (
    HEADER_SIZE, KEY_SIZE, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, READING_SIZE, Block,
)
# MessageError, its reasons, the value ranges and READINGS_ROW_LENGTH are this module's API too.
from gridchain.net.fields import (
    BAD_BLOCK, BAD_FIELD, BAD_SHAPE, I64_MAX, I64_MIN, MAX_HEIGHT, MAX_U16, MAX_U32, MAX_U64, MISSING,
    READINGS_ROW_LENGTH, TOO_MANY, UNKNOWN_TYPE, MessageError, bin_field, block_field, bool_field, check_plain,
    cursor_field, describe, event_fields, hash_list, header_row, int_field, list_field, optional_hash,
    optional_int, problem_row, readings_row, text_field, work_field, wrong,
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
        return cls(int_field(body, "nonce", 0, MAX_U64))


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
        return cls(int_field(body, "version", 0, MAX_U32), text_field(body, "network", MAX_NAME),
                   bin_field(body, "genesis"), bin_field(body, "node_key", KEY_SIZE),
                   int_field(body, "listen_port", 0, MAX_U16), int_field(body, "height", 0, MAX_HEIGHT),
                   bin_field(body, "tip"), work_field(body, "work", MAX_WORK_BYTES),
                   text_field(body, "agent", MAX_AGENT), text_field(body, "name", MAX_NAME))


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
        return cls(int_field(body, "height", 0, MAX_HEIGHT), bin_field(body, "tip"),
                   work_field(body, "work", MAX_WORK_BYTES))


@dataclass(frozen=True, slots=True)
class BlockMessage:
    """One block pushed to a peer (a new block being gossiped)."""

    TYPE: ClassVar[str] = "block"
    block: Block

    def to_body(self) -> dict:
        return {"block": self.block.to_fields()}

    @classmethod
    def from_body(cls, body: dict) -> BlockMessage:
        return cls(block_field(body.get("block", MISSING), "block"))


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
        locator = hash_list(body, "locator", 1, MAX_LOCATOR)
        return cls(locator, int_field(body, "limit", 1, MAX_BLOCKS_PER_MESSAGE))


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
        items = list_field(body, "blocks", 0, MAX_BLOCKS_PER_MESSAGE)
        more = bool_field(body, "more")
        return cls(tuple([block_field(item, "blocks", index) for index, item in enumerate(items)]), more)


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
        return cls(text_field(body, "code", MAX_CODE), text_field(body, "detail", MAX_DETAIL))


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
        info = body.get("info", MISSING)
        if type(info) is not dict:
            raise wrong("info", info, "map")
        check_plain(info, "info", 0, MAX_INFO_DEPTH)
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
        block_hash, height = optional_hash(body, "hash"), optional_int(body, "height", 0, MAX_HEIGHT)
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
        fields = body.get("block", MISSING)
        block = None if fields is None else block_field(fields, "block")
        return cls(block, int_field(body, "height", 0, MAX_HEIGHT), bool_field(body, "main"))


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
        start = int_field(body, "start", 0, MAX_HEIGHT)
        stop = int_field(body, "stop", start, MAX_HEIGHT)
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
        items = list_field(body, "rows", 0, MAX_HEADERS)
        return cls(tuple([header_row(item, f"rows[{index}]") for index, item in enumerate(items)]))


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
        relay = None if body.get("relay", MISSING) is None else text_field(body, "relay", MAX_TEXT_BYTES)
        return cls(relay, optional_int(body, "since_ms", I64_MIN, I64_MAX),
                   optional_int(body, "until_ms", I64_MIN, I64_MAX), cursor_field(body, "after"),
                   int_field(body, "limit", 1, MAX_READINGS_PAGE))


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
        items = list_field(body, "rows", 0, MAX_READINGS_PAGE)
        rows = tuple([readings_row(item, index) for index, item in enumerate(items)])
        return cls(rows, cursor_field(body, "next"))


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
        return cls(text_field(body, "relay", MAX_TEXT_BYTES), int_field(body, "timestamp_ms", I64_MIN, I64_MAX))


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
        size = int_field(body, "size", 2, MAX_READINGS_PER_BLOCK + 1)
        path = hash_list(body, "path", 0, MAX_PROOF_PATH)
        return cls(bin_field(body, "header", HEADER_SIZE), bin_field(body, "leaf", READING_SIZE),
                   int_field(body, "index", 1, size - 1), size, path, int_field(body, "height", 0, MAX_HEIGHT),
                   bin_field(body, "hash"), text_field(body, "miner_name", MAX_TEXT_BYTES),
                   text_field(body, "relay_id", MAX_TEXT_BYTES), text_field(body, "substation", MAX_TEXT_BYTES),
                   int_field(body, "openings", 0, I64_MAX))


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
        ok, checked = bool_field(body, "ok"), int_field(body, "checked", 0, I64_MAX)
        items = list_field(body, "problems", 0, MAX_PROBLEMS)
        return cls(ok, checked, tuple([problem_row(item, f"problems[{i}]", MAX_DETAIL)
                                       for i, item in enumerate(items)]))


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
        return cls(**event_fields(body))


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
        return cls(text_field(body, "reason", MAX_CODE), text_field(body, "detail", MAX_DETAIL))


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
        raise MessageError(BAD_SHAPE, f"a message is a [type, body] array, got {describe(obj)}")
    kind, body = obj
    if type(kind) is not str:
        raise MessageError(BAD_SHAPE, f"the type is a str, got {describe(kind)}")
    if type(body) is not dict:
        raise MessageError(BAD_SHAPE, f"the body is a map, got {describe(body)}")
    decode = _DECODERS.get(kind)
    if decode is None:
        raise MessageError(UNKNOWN_TYPE, repr(kind[:40]))
    return decode(body)


def work_to_bytes(work: int) -> bytes:
    """Cumulative work as minimal big-endian unsigned bytes (0 is the empty string)."""
    return work.to_bytes((work.bit_length() + 7) // 8, "big")
