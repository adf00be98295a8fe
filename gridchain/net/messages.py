"""Peer messages: one frozen dataclass per type, with strict decoding. Pure.

A message travels in one frame (gridchain.wire.frames) as the msgpack array ``[type, body]``: the
type a str, the body a map with str keys. ``encode_message`` builds that array from a
dataclass; ``decode_message`` turns a decoded frame back into one and trusts nothing. Every
field must be present (but hello's ``nonce``: a hello without one is refused by the
handshake, with a name) with its exact msgpack type (bool is not int, float is not int, nil
only where a field says so), hashes and keys exactly 32 bytes, integers in range, lists
within their caps. Keys a receiver does not know are ignored, so a later version can add
fields. Each failure is a ``MessageError`` with one of five stable reasons; no input makes
``decode_message`` raise anything else. The field checks themselves are in gridchain.wire.fields.

Peer messages (PEER_MESSAGES) are gossip between nodes. The operator's requests and replies,
which share the node's port and this envelope (gridchain.wire.codec), are in
gridchain.api.messages; the node decodes the union of both (gridchain.node.port).
docs/protocol.md describes every message field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import msgpack

from gridchain.consensus.block import KEY_SIZE, MAX_TEXT_BYTES, Block
from gridchain.consensus.finality import Certificate, Evidence, FinalityError, Vote
from gridchain.consensus.finality_certs import MAX_SIGNERS
from gridchain.consensus.finality_votes import EVIDENCE_SIZE, VOTE_SIZE
from gridchain.net.handshake import NONCE_SIZE
from gridchain.wire.codec import MAX_CODE, MAX_DETAIL, decoder, encode_message
# MessageError is this module's API too.
from gridchain.wire.fields import (
    BAD_FIELD, MAX_HEIGHT, MAX_U16, MAX_U32, MAX_U64, MISSING, MessageError, bin_field, block_field, bool_field,
    hash_list, int_field, list_field, text_field, work_field, wrong,
)
from gridchain.wire.frames import MAX_FRAME_BYTES, PREFIX_SIZE, FRAME_TOO_LARGE, FrameError

__all__ = ["MAX_CODE", "MAX_DETAIL", "MessageError", "decoder", "encode_message"]  # besides what is defined here

PROTOCOL_VERSION = 1  # the peer protocol spoken in hello; a node refuses any other

# The newest 10 hashes one by one, then doubling back: 64 reach 2**54 blocks behind the tip.
MAX_LOCATOR = 64
# Sync moves at most this many blocks per message, so one answer is bounded and resumable.
MAX_BLOCKS_PER_MESSAGE = 500
# Node, network and miner names also go into blocks, whose text fields hold 256 bytes.
MAX_NAME = MAX_TEXT_BYTES
MAX_AGENT = 64  # bytes: a software name and version such as "gridchain/0.1.0"
SIGNATURE_SIZE = 64  # an Ed25519 signature
# Cumulative work as big-endian bytes: 64 bytes hold 2**512, past any chain of 256-bit work.
MAX_WORK_BYTES = 64
# A certificate's wire form: an 82-byte head and 96 bytes a signer, at most MAX_SIGNERS of them.
MAX_CERTIFICATE_BYTES = 82 + 96 * MAX_SIGNERS
# Certificates in one `certificates` message: the finality one and the justified links above
# it, which votes keep within a few checkpoints of the tip; more is not a state anyone sends.
MAX_CERTIFICATES_PER_MESSAGE = 64


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
    # Fresh random bytes per connection, signed by both sides' proofs (gridchain.net.handshake).
    # b"": none given; such a hello cannot be proven and the handshake refuses it.
    nonce: bytes = b""

    def to_body(self) -> dict:
        body = {"version": self.version, "network": self.network, "genesis": self.genesis,
                "node_key": self.node_key, "listen_port": self.listen_port, "height": self.height,
                "tip": self.tip, "work": work_to_bytes(self.work), "agent": self.agent, "name": self.name}
        if self.nonce:
            body["nonce"] = self.nonce
        return body

    @classmethod
    def from_body(cls, body: dict) -> Hello:
        # A hello without a nonce decodes (as b""), so the handshake can name why it is
        # refused (``bad-handshake-proof``) instead of a bare ``bad-field``.
        nonce = bin_field(body, "nonce", NONCE_SIZE) if "nonce" in body else b""
        return cls(int_field(body, "version", 0, MAX_U32), text_field(body, "network", MAX_NAME),
                   bin_field(body, "genesis"), bin_field(body, "node_key", KEY_SIZE),
                   int_field(body, "listen_port", 0, MAX_U16), int_field(body, "height", 0, MAX_HEIGHT),
                   bin_field(body, "tip"), work_field(body, "work", MAX_WORK_BYTES),
                   text_field(body, "agent", MAX_AGENT), text_field(body, "name", MAX_NAME), nonce)


@dataclass(frozen=True, slots=True)
class HelloProof:
    """Proof that the sender holds the key its hello claims: its signature over the handshake.

    What is signed is gridchain.net.handshake.proof_statement (docs/protocol.md, "Identity proof").
    """

    TYPE: ClassVar[str] = "hello_proof"
    signature: bytes  # Ed25519, 64 bytes

    def to_body(self) -> dict:
        return {"signature": self.signature}

    @classmethod
    def from_body(cls, body: dict) -> HelloProof:
        return cls(bin_field(body, "signature", SIGNATURE_SIZE))


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
    """The answer to get_blocks; ``more`` says the sender has further blocks after these.

    ``certificate``: the finality certificate of the sender's newest finalized checkpoint whose
    link (it and the next checkpoint) lies at or below the last block sent (None: none yet,
    or an open network). A syncing node checks this one certificate per batch, not one per
    block: the checkpoints below it are its ancestors, which no reorg may go below
    (gridchain.consensus.finality, "Sync").
    """

    TYPE: ClassVar[str] = "blocks"
    blocks: tuple[Block, ...]
    more: bool
    certificate: Certificate | None = None
    # Each block's wire bytes, as received (msgpack's packing of a block's array is
    # canonical, so it is ``Block.encode()``): what the store keeps without encoding again.
    # Filled by decoding (empty for a message built here); never sent.
    raw: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    def to_body(self) -> dict:
        body = {"blocks": [block.to_fields() for block in self.blocks], "more": self.more}
        if self.certificate is not None:
            body["certificate"] = self.certificate.encode()
        return body

    @classmethod
    def from_body(cls, body: dict) -> Blocks:
        items = list_field(body, "blocks", 0, MAX_BLOCKS_PER_MESSAGE)
        more = bool_field(body, "more")
        certificate = certificate_field(body, "certificate") if "certificate" in body else None
        blocks = tuple([block_field(item, "blocks", index) for index, item in enumerate(items)])
        return cls(blocks, more, certificate, tuple([_pack(item) for item in items]))


@dataclass(frozen=True, slots=True)
class VoteMessage:
    """One member's finality vote, flooded to every peer (its 176-byte wire form, finality_votes.py)."""

    TYPE: ClassVar[str] = "vote"
    vote: Vote

    def to_body(self) -> dict:
        return {"vote": self.vote.encode()}

    @classmethod
    def from_body(cls, body: dict) -> VoteMessage:
        return cls(Vote.decode(bin_field(body, "vote", VOTE_SIZE)))


@dataclass(frozen=True, slots=True)
class EvidenceMessage:
    """Two conflicting votes by one member (352 bytes: the two votes, canonical order), flooded."""

    TYPE: ClassVar[str] = "evidence"
    evidence: Evidence

    def to_body(self) -> dict:
        return {"evidence": self.evidence.encode()}

    @classmethod
    def from_body(cls, body: dict) -> EvidenceMessage:
        evidence = Evidence.decode(bin_field(body, "evidence", EVIDENCE_SIZE))
        if Evidence.of(evidence.first, evidence.second) != evidence:
            raise MessageError(BAD_FIELD, "evidence: the votes are not in canonical (byte) order")
        return cls(evidence)


@dataclass(frozen=True, slots=True)
class CertificatesMessage:
    """Certificates of the sender's newest finality: its newest finalized checkpoint's finality
    certificate, then the certificates that justified each justified checkpoint above it on
    its main chain, oldest first. Sent to each peer as the link becomes ready, so a node that
    missed the votes (down, partitioned, new) picks the links up where the voting is."""

    TYPE: ClassVar[str] = "certificates"
    certificates: tuple[Certificate, ...]

    def to_body(self) -> dict:
        return {"certificates": [cert.encode() for cert in self.certificates]}

    @classmethod
    def from_body(cls, body: dict) -> CertificatesMessage:
        items = list_field(body, "certificates", 0, MAX_CERTIFICATES_PER_MESSAGE)
        return cls(tuple(certificate_field({"certificate": item}, f"certificates[{index}]", "certificate")
                         for index, item in enumerate(items)))


def certificate_field(body: dict, name: str, key: str | None = None) -> Certificate:
    """A certificate's wire form (finality_certs.py), decoded; its signatures are not checked here."""
    value = body.get(key or name, MISSING)
    if type(value) is not bytes or len(value) > MAX_CERTIFICATE_BYTES:
        raise wrong(name, value, f"bin of at most {MAX_CERTIFICATE_BYTES} bytes")
    try:
        return Certificate.decode(value)
    except FinalityError as exc:
        raise MessageError(BAD_FIELD, f"{name}: {exc.detail}") from None


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


Message = (Hello | HelloProof | Tip | BlockMessage | GetBlocks | Blocks | VoteMessage | EvidenceMessage
           | CertificatesMessage | Ping | Pong | Reject)

PEER_MESSAGES = (Hello, HelloProof, Tip, BlockMessage, GetBlocks, Blocks, VoteMessage, EvidenceMessage,
                 CertificatesMessage, Ping, Pong, Reject)


decode_message = decoder(PEER_MESSAGES)


def _pack(fields: object) -> bytes:
    """A block's unpacked wire array back to its bytes (packb: a shared Packer is not thread-safe)."""
    return msgpack.packb(fields, use_bin_type=True)


def blocks_frame(raw_blocks: Sequence[bytes], more: bool, max_frame: int = MAX_FRAME_BYTES,
                 certificate: bytes | None = None) -> bytes:
    """The frame of ``Blocks`` for blocks held in their stored form (``Block.encode()``).

    Byte for byte what ``encode_frame(encode_message(Blocks(...)))`` gives, without decoding
    each block only to encode it again: a msgpack array is its header followed by its items'
    encodings, and a stored block is exactly the encoding of its wire array.
    """
    packer = msgpack.Packer(use_bin_type=True)
    tail = () if certificate is None else (packer.pack("certificate"), packer.pack(certificate))
    body = b"".join((packer.pack_array_header(2), packer.pack(Blocks.TYPE),
                     packer.pack_map_header(2 if certificate is None else 3),
                     packer.pack("blocks"), packer.pack_array_header(len(raw_blocks)), *raw_blocks,
                     packer.pack("more"), packer.pack(more), *tail))
    if len(body) > max_frame:
        raise FrameError(FRAME_TOO_LARGE, f"body of {len(body)} bytes exceeds the cap of {max_frame}")
    return len(body).to_bytes(PREFIX_SIZE, "big") + body


def work_to_bytes(work: int) -> bytes:
    """Cumulative work as minimal big-endian unsigned bytes (0 is the empty string)."""
    return work.to_bytes((work.bit_length() + 7) // 8, "big")
