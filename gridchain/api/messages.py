"""The operator protocol's messages: the gridchain tool's requests and the node's replies. Pure.

They share the node's port, and the envelope and field checks, with the peer messages
(gridchain.wire.codec, gridchain.wire.fields: one frame holds ``[type, body]``, every field
checked on decoding). A connection whose first frame is one of CLIENT_REQUESTS
(``is_request_frame``) is served by gridchain.api.server; the node decodes with the union of
both protocols (gridchain.node.port). docs/protocol.md describes every message field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gridchain.consensus.block import (
    HASH_SIZE, HEADER_SIZE, KEY_SIZE, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, READING_SIZE, SIGNATURE_SIZE, Block,
)
from gridchain.consensus.provenance import MAX_SEAL_READINGS, ProvenanceError, Reading, Seal
from gridchain.wire.codec import MAX_CODE, MAX_DETAIL, decoder, encode_message
from gridchain.wire.fields import (
    BAD_FIELD, I64_MAX, I64_MIN, MAX_HEIGHT, MAX_STORED_SEQ, MISSING, TOO_MANY, MessageError, bin_field,
    block_field, bool_field, check_int, check_plain, check_text, cursor_field, event_fields, hash_list, header_row,
    int_field, list_field, optional_hash, optional_int, problem_row, readings_row, text_field, wrong,
)

__all__ = ["MessageError", "encode_message"]  # besides what is defined here

MAX_HEADERS = 1000  # main-chain summary rows per headers request (~180 KB answered)
MAX_READINGS_PAGE = 5000  # readings rows per page: ~750 KB, far under the 4 MiB frame cap
# A reading's Merkle path: a payload of MAX_READINGS_PER_BLOCK + 1 leaves needs 14 hashes
# (and a seal of MAX_SEAL_READINGS as many).
MAX_PROOF_PATH = 32
MAX_PROBLEMS = 1000  # a verify report lists at most this many problems; one already fails it
# Relay-signed gaps listed in a verify report (~150 bytes each); a relay losing its buffer
# more than this often is already a story the count tells.
MAX_GAPS = 1000
GAP_KEYS = ("relay_id", "first_seq", "last_seq", "missing", "after_ms", "resume_ms", "boot_ms", "height",
            "block_hash")
# Status is a small tree of plain values (node -> peers -> one peer's fields is depth 3).
MAX_INFO_DEPTH = 8
# Raw 128-byte headers in one reply (~1.3 MB): what a proof bundle or a consistency check
# carries between a block and a finalized checkpoint; a longer stretch is asked for in pages.
MAX_RAW_HEADERS = 10_000
# A certificate: an 82-byte head and 96 bytes a signer, of at most 1,000 members.
MAX_CERTIFICATE_BYTES = 82 + 96 * 1000
MAX_NOTE_BYTES = 1024 + 1000 * 512  # a checkpoint note (gridchain.consensus.finality_note)
MAX_EVIDENCE = 1000  # one proof per caught member, of at most 1,000 members


class EmptyBody:
    """Base of the messages whose body is the empty map."""

    __slots__ = ()

    def to_body(self) -> dict:
        return {}

    @classmethod
    def from_body(cls, body: dict):
        return cls()


@dataclass(frozen=True, slots=True)
class StatusRequest(EmptyBody):
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
    """Ask for one page of main-chain readings ordered by (timestamp_ms, relay_id, seq).

    ``since_ms`` and ``until_ms`` are inclusive; ``after`` is the keyset cursor
    ``(timestamp_ms, relay_id, seq)`` the previous page's ``next`` gave.
    """

    TYPE: ClassVar[str] = "readings_request"
    relay: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    after: tuple[int, str, int] | None = None
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
    next: tuple[int, str, int] | None  # None: this page is the last

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
    """Everything needed to check offline that a reading is the relay's and under a header.

    ``leaf`` is the reading's 108-byte signed row, leaf ``index`` of a payload tree of
    ``size`` leaves (leaf 0 is the block's metadata), and ``path`` its RFC 6962 audit path
    to the header's payload root. ``seal`` is the relay's seal over the run holding the
    reading and ``seal_path`` the row's path to that seal's root, so ``relay_key`` vouches
    for the reading whatever any node did.
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
    relay_key: bytes
    seq: int
    seal: Seal
    seal_path: tuple[bytes, ...]

    def to_body(self) -> dict:
        return {"header": self.header, "leaf": self.leaf, "index": self.index, "size": self.size,
                "path": list(self.path), "height": self.height, "hash": self.hash,
                "miner_name": self.miner_name, "relay_id": self.relay_id, "substation": self.substation,
                "relay_key": self.relay_key, "seq": self.seq,
                "seal": [self.seal.first_seq, self.seal.count, self.seal.signature],
                "seal_path": list(self.seal_path)}

    @classmethod
    def from_body(cls, body: dict) -> ProofReply:
        size = int_field(body, "size", 2, MAX_READINGS_PER_BLOCK + 1)
        path = hash_list(body, "path", 0, MAX_PROOF_PATH)
        leaf = bin_field(body, "leaf", READING_SIZE)
        try:
            reading = Reading.from_bytes(leaf)
        except ProvenanceError as exc:
            raise MessageError(BAD_FIELD, f"leaf: {exc.detail}") from None
        seq = int_field(body, "seq", 0, MAX_STORED_SEQ)
        if seq != reading.seq:
            raise MessageError(BAD_FIELD, f"seq: {seq} is not the leaf's seq {reading.seq}")
        seal = _seal_field(body, "seal")
        if not seal.first_seq <= seq <= seal.last_seq:
            raise MessageError(BAD_FIELD, f"seal: {seal.first_seq}+{seal.count} does not cover seq {seq}")
        return cls(bin_field(body, "header", HEADER_SIZE), leaf, int_field(body, "index", 1, size - 1), size, path,
                   int_field(body, "height", 0, MAX_HEIGHT), bin_field(body, "hash"),
                   text_field(body, "miner_name", MAX_TEXT_BYTES), text_field(body, "relay_id", MAX_TEXT_BYTES),
                   text_field(body, "substation", MAX_TEXT_BYTES), bin_field(body, "relay_key", KEY_SIZE), seq,
                   seal, hash_list(body, "seal_path", 0, MAX_PROOF_PATH))


def _seal_field(body: dict, name: str) -> Seal:
    """A seal ``[first_seq, count, signature]``, as in a block's wire form."""
    value = body.get(name, MISSING)
    if type(value) is not list or len(value) != 3:
        raise wrong(name, value, "[first_seq, count, signature]")
    first_seq = check_int(value[0], f"{name}[0]", 0, MAX_STORED_SEQ)
    count = check_int(value[1], f"{name}[1]", 1, MAX_SEAL_READINGS)
    if type(value[2]) is not bytes or len(value[2]) != SIGNATURE_SIZE:
        raise wrong(f"{name}[2]", value[2], f"bin of {SIGNATURE_SIZE} bytes")
    return Seal(first_seq, count, value[2])


@dataclass(frozen=True, slots=True)
class VerifyRequest(EmptyBody):
    """Ask the node to re-check its whole stored chain."""

    TYPE: ClassVar[str] = "verify_request"


@dataclass(frozen=True, slots=True)
class VerifyReply:
    """The audit's outcome; each problem is (height, block hash, reason), or (-1, b"", reason).

    ``gaps`` are the main chain's relay-signed gaps, maps with the keys of GAP_KEYS (the
    ledger's ``Gap.as_dict()``, the block hash as bin); they are not problems. The first
    MAX_GAPS are listed and ``gaps_omitted`` counts the rest.
    """

    TYPE: ClassVar[str] = "verify_reply"
    ok: bool
    checked: int  # blocks checked
    problems: tuple[tuple[int, bytes, str], ...] = ()
    gaps: tuple[dict, ...] = ()
    gaps_omitted: int = 0
    certificates: int = 0  # finality certificates checked (0 on an open network)
    evidence: tuple[bytes, ...] = ()  # stored proofs of equivocation (352 bytes each), one per caught member

    def to_body(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "problems": [list(p) for p in self.problems],
                "gaps": list(self.gaps), "gaps_omitted": self.gaps_omitted, "certificates": self.certificates,
                "evidence": list(self.evidence)}

    @classmethod
    def from_body(cls, body: dict) -> VerifyReply:
        ok, checked = bool_field(body, "ok"), int_field(body, "checked", 0, I64_MAX)
        items = list_field(body, "problems", 0, MAX_PROBLEMS)
        problems = tuple([problem_row(item, f"problems[{i}]", MAX_DETAIL) for i, item in enumerate(items)])
        gaps = tuple([gap_row(item, f"gaps[{i}]") for i, item in enumerate(list_field(body, "gaps", 0, MAX_GAPS))])
        # Older nodes send neither finality field.
        certificates = int_field(body, "certificates", 0, I64_MAX) if "certificates" in body else 0
        evidence = ()
        if "evidence" in body:
            items = list_field(body, "evidence", 0, MAX_EVIDENCE)
            for index, item in enumerate(items):
                if type(item) is not bytes or len(item) != 2 * 176:
                    raise wrong(f"evidence[{index}]", item, "bin of 352 bytes")
            evidence = tuple(items)
        return cls(ok, checked, problems, gaps, int_field(body, "gaps_omitted", 0, I64_MAX), certificates, evidence)


def gap_row(row: object, where: str) -> dict:
    """One verify_reply gap: relay seqs first_seq..last_seq the relay signed as lost."""
    if type(row) is not dict:
        raise wrong(where, row, "map")
    first = check_int(row.get("first_seq", MISSING), f"{where}.first_seq", 1, MAX_STORED_SEQ)
    last = check_int(row.get("last_seq", MISSING), f"{where}.last_seq", first, MAX_STORED_SEQ)
    missing = check_int(row.get("missing", MISSING), f"{where}.missing", 1, MAX_STORED_SEQ)
    if missing != last - first + 1:
        raise MessageError(BAD_FIELD, f"{where}.missing: {missing} is not last_seq - first_seq + 1")
    optional = {}
    for key in ("after_ms", "resume_ms"):
        value = row.get(key, MISSING)
        optional[key] = None if value is None else check_int(value, f"{where}.{key}", I64_MIN, I64_MAX)
    block_hash = row.get("block_hash", MISSING)
    if type(block_hash) is not bytes or len(block_hash) != HASH_SIZE:
        raise wrong(f"{where}.block_hash", block_hash, "bin of 32 bytes")
    return {"relay_id": check_text(row.get("relay_id", MISSING), f"{where}.relay_id", MAX_TEXT_BYTES),
            "first_seq": first, "last_seq": last, "missing": missing, **optional,
            "boot_ms": check_int(row.get("boot_ms", MISSING), f"{where}.boot_ms", I64_MIN, I64_MAX),
            "height": check_int(row.get("height", MISSING), f"{where}.height", 0, MAX_HEIGHT),
            "block_hash": block_hash}


@dataclass(frozen=True, slots=True)
class Subscribe(EmptyBody):
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
    finalized: int | None = None  # the node's finalized height as the block joined (None: no finality)

    def to_body(self) -> dict:
        body = {"height": self.height, "hash": self.hash, "miner_name": self.miner_name,
                "relay_id": self.relay_id, "readings": self.readings, "newest_ms": self.newest_ms,
                "time_ms": self.time_ms}
        if self.finalized is not None:
            body["finalized"] = self.finalized
        return body

    @classmethod
    def from_body(cls, body: dict) -> BlockEvent:
        finalized = optional_int(body, "finalized", 0, MAX_HEIGHT) if "finalized" in body else None
        return cls(**event_fields(body), finalized=finalized)


@dataclass(frozen=True, slots=True)
class FinalityRequest:
    """Ask for a finalized checkpoint: the newest (``since`` nil), or the lowest the node holds a
    finality certificate for at or above height ``since``, with the main chain's raw headers
    from ``since`` + 1 up to it (what a proof bundle needs between its block and the checkpoint)."""

    TYPE: ClassVar[str] = "finality_request"
    since: int | None = None

    def to_body(self) -> dict:
        return {"since": self.since}

    @classmethod
    def from_body(cls, body: dict) -> FinalityRequest:
        return cls(optional_int(body, "since", 0, MAX_HEIGHT) if "since" in body else None)


@dataclass(frozen=True, slots=True)
class FinalityReply:
    """A finalized checkpoint: its 128-byte header, its finality certificate (the wire form of
    gridchain.consensus.finality_certs), the same as a signed checkpoint note (the text of
    gridchain.consensus.finality_note) and the raw headers asked for, oldest first."""

    TYPE: ClassVar[str] = "finality_reply"
    header: bytes
    certificate: bytes
    note: str
    headers: tuple[bytes, ...] = ()

    def to_body(self) -> dict:
        return {"header": self.header, "certificate": self.certificate, "note": self.note,
                "headers": list(self.headers)}

    @classmethod
    def from_body(cls, body: dict) -> FinalityReply:
        cert = body.get("certificate", MISSING)
        if type(cert) is not bytes or len(cert) > MAX_CERTIFICATE_BYTES:
            raise wrong("certificate", cert, f"bin of at most {MAX_CERTIFICATE_BYTES} bytes")
        return cls(bin_field(body, "header", HEADER_SIZE), cert, text_field(body, "note", MAX_NOTE_BYTES),
                   _raw_headers(body, "headers"))


@dataclass(frozen=True, slots=True)
class RawHeadersRequest:
    """Ask for the main chain's 128-byte headers at heights ``start``..``stop`` (inclusive)."""

    TYPE: ClassVar[str] = "raw_headers_request"
    start: int
    stop: int

    def to_body(self) -> dict:
        return {"start": self.start, "stop": self.stop}

    @classmethod
    def from_body(cls, body: dict) -> RawHeadersRequest:
        return cls(int_field(body, "start", 0, MAX_HEIGHT), int_field(body, "stop", 0, MAX_HEIGHT))


@dataclass(frozen=True, slots=True)
class RawHeadersReply:
    """Main-chain headers, oldest first, at most MAX_RAW_HEADERS (ask again from the next height)."""

    TYPE: ClassVar[str] = "raw_headers_reply"
    headers: tuple[bytes, ...]

    def to_body(self) -> dict:
        return {"headers": list(self.headers)}

    @classmethod
    def from_body(cls, body: dict) -> RawHeadersReply:
        return cls(_raw_headers(body, "headers"))


def _raw_headers(body: dict, name: str) -> tuple[bytes, ...]:
    items = list_field(body, name, 0, MAX_RAW_HEADERS)
    for index, item in enumerate(items):
        if type(item) is not bytes or len(item) != HEADER_SIZE:
            raise wrong(f"{name}[{index}]", item, f"bin of {HEADER_SIZE} bytes")
    return tuple(items)


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


CLIENT_REQUESTS = (StatusRequest, BlockRequest, HeadersRequest, ReadingsRequest, ProofRequest, VerifyRequest,
                   FinalityRequest, RawHeadersRequest, Subscribe)
CLIENT_REPLIES = (Status, BlockReply, HeadersReply, ReadingsReply, ProofReply, VerifyReply, FinalityReply,
                  RawHeadersReply, BlockEvent, Error)
HEADER_ROW_KEYS = ("height", "hash", "time_ms", "miner_name", "miner_key", "relay_id", "readings", "newest_ms")
REQUEST_TYPES = frozenset(cls.TYPE for cls in CLIENT_REQUESTS)

decode_message = decoder(CLIENT_REQUESTS + CLIENT_REPLIES)


def is_request_frame(frame: object) -> bool:
    """Whether a connection's first frame is an operator request (not a peer's hello)."""
    return type(frame) is list and bool(frame) and type(frame[0]) is str and frame[0] in REQUEST_TYPES
