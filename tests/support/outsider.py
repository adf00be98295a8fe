"""An outsider's gridchain codec, written from docs/protocol.md with msgpack, struct and cryptography.

Nothing here imports gridchain: this is what a regulator writing a checker, or an attacker
writing a hostile node, has to work from. If the product and the documented format part
ways, the tests that use this module see it. It covers:

- frames (u32 big-endian length + one msgpack object) over asyncio streams;
- the 108-byte signed reading row, RFC 6962 leaves and trees, relay seals and gap notices;
- the 128-byte header, the payload tree (one metadata leaf, one leaf per row), proof of
  work, the miner's signature and the block's 9-field wire array (version 2);
- the network file (TOML), its canonical document and network hash, and the genesis block;
- peer messages (``[type, body]``: hello, block, reject), the operator's ``status`` and
  ``block_request``, and the relay feed's ``info`` and ``read``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# --- frames ------------------------------------------------------------------------------------
MAX_FRAME = 4 * 1024 * 1024
IO_TIMEOUT_S = 5.0  # every read of a live node or relay on loopback answers in milliseconds


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class Conn:
    """One TCP connection carrying frames; ``recv`` returns None once the other side closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Conn:
        async with asyncio.timeout(IO_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, obj: object) -> None:
        self.writer.write(frame(obj))
        await self.writer.drain()

    async def recv(self, timeout: float = IO_TIMEOUT_S) -> object | None:
        try:
            async with asyncio.timeout(timeout):
                prefix = await self.reader.readexactly(4)
                (length,) = struct.unpack(">I", prefix)
                assert 1 <= length <= MAX_FRAME, f"frame of {length} bytes"
                body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return msgpack.unpackb(body, raw=False)

    async def request(self, obj: object, timeout: float = IO_TIMEOUT_S) -> object | None:
        await self.send(obj)
        return await self.recv(timeout)

    async def closed_within(self, timeout: float) -> bool:
        """True when the other side closes within ``timeout`` (anything it sends first is read)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (TimeoutError, ConnectionError):
            pass


# --- keys --------------------------------------------------------------------------------------
def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_key_file(path: Path, key: Ed25519PrivateKey) -> None:
    """An unencrypted PKCS#8 PEM, mode 0600, as a node or relay key file is documented."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- readings, trees, seals, gap notices --------------------------------------------------------
ROW = struct.Struct(">QqQI10d")  # seq, timestamp_ms, openings, flags, ten values
ROW_SIZE = ROW.size  # 108
VALUES = ("vab", "vbc", "vca", "ia", "ib", "ic", "frequency", "power_factor", "active_power", "reactive_power")


@dataclass(frozen=True)
class Row:
    seq: int
    timestamp_ms: int
    openings: int
    flags: int
    values: tuple[float, ...]

    @classmethod
    def unpack(cls, data: bytes) -> Row:
        seq, ts, openings, flags, *values = ROW.unpack(data)
        return cls(seq, ts, openings, flags, tuple(values))

    def pack(self) -> bytes:
        return ROW.pack(self.seq, self.timestamp_ms, self.openings, self.flags, *self.values)


def split_rows(rows: bytes) -> list[bytes]:
    assert len(rows) % ROW_SIZE == 0, f"{len(rows)} bytes of rows"
    return [rows[i:i + ROW_SIZE] for i in range(0, len(rows), ROW_SIZE)]


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def tree_root(hashes: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash over leaf hashes: split at the largest power of two below n."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + tree_root(hashes[:k]) + tree_root(hashes[k:])).digest()


def _relay_id_bytes(relay_id: str) -> bytes:
    data = relay_id.encode()
    return struct.pack(">B", len(data)) + data


def seal_message(relay_id: str, first_seq: int, count: int, root: bytes) -> bytes:
    return b"gridchain/relay-seal/v1\x00" + _relay_id_bytes(relay_id) + struct.pack(">QI", first_seq, count) + root


def gap_message(relay_id: str, resume_seq: int, boot_ms: int) -> bytes:
    return b"gridchain/relay-gap/v1\x00" + _relay_id_bytes(relay_id) + struct.pack(">Qq", resume_seq, boot_ms)


def sign_seal(key: Ed25519PrivateKey, relay_id: str, rows: list[bytes]) -> list:
    """The wire form ``[first_seq, count, signature]`` of a seal over consecutive rows."""
    first = Row.unpack(rows[0]).seq
    root = tree_root([leaf(r) for r in rows])
    return [first, len(rows), key.sign(seal_message(relay_id, first, len(rows), root))]


def seal_verifies(relay_key: bytes, relay_id: str, rows: list[bytes], seal: list) -> bool:
    first, count, signature = seal
    if count != len(rows) or [Row.unpack(r).seq for r in rows] != list(range(first, first + count)):
        return False
    return verifies(relay_key, signature, seal_message(relay_id, first, count, tree_root([leaf(r) for r in rows])))


def gap_verifies(relay_key: bytes, relay_id: str, gap: list) -> bool:
    resume_seq, boot_ms, signature = gap
    return verifies(relay_key, signature, gap_message(relay_id, resume_seq, boot_ms))


# --- blocks ------------------------------------------------------------------------------------
HEADER = struct.Struct(">IQ32s32sQI32sQ")  # version height prev root time_ms bits miner_key nonce
BLOCK_VERSION = 2
GENESIS_TIME_MS = 1_632_812_478_000


@dataclass
class Block:
    """A block as its documented wire array says it, with the header unpacked."""

    version: int
    height: int
    prev: bytes
    root: bytes
    time_ms: int
    bits: int
    miner_key: bytes
    nonce: int
    signature: bytes
    relay_id: str
    substation: str
    relay_key: bytes
    miner_name: str
    rows: list[bytes]
    seals: list[list]
    gap: list | None
    header: bytes = field(repr=False, default=b"")

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.header).digest()

    @property
    def seqs(self) -> list[int]:
        return [Row.unpack(r).seq for r in self.rows]

    @classmethod
    def from_wire(cls, fields: list) -> Block:
        assert isinstance(fields, list) and len(fields) == 9, f"a block is an array of 9, got {fields!r:.80}"
        header, signature, relay_id, substation, relay_key, miner_name, rows, seals, gap = fields
        assert len(header) == HEADER.size == 128
        return cls(*HEADER.unpack(header), signature, relay_id, substation, relay_key, miner_name,
                   split_rows(rows), [list(s) for s in seals], None if gap is None else list(gap), header)

    def to_wire(self) -> list:
        return [self.header, self.signature, self.relay_id, self.substation, self.relay_key, self.miner_name,
                b"".join(self.rows), self.seals, self.gap]


def metadata_leaf(relay_id: str, substation: str, relay_key: bytes, miner_name: str, seals: list,
                  gap: list | None) -> bytes:
    return msgpack.packb([relay_id, substation, relay_key, miner_name, seals, gap], use_bin_type=True)


def payload_root(relay_id: str, substation: str, relay_key: bytes, miner_name: str, rows: list[bytes],
                 seals: list, gap: list | None) -> bytes:
    meta = metadata_leaf(relay_id, substation, relay_key, miner_name, seals, gap)
    return tree_root([leaf(meta)] + [leaf(r) for r in rows])


def meets(block_hash: bytes, bits: int) -> bool:
    return int.from_bytes(block_hash, "big") < 1 << (256 - bits)


def make_block(*, parent: bytes, height: int, time_ms: int, bits: int, miner: Ed25519PrivateKey,
               miner_name: str, relay_id: str, substation: str, relay_key: bytes, rows: list[bytes],
               seals: list, gap: list | None = None) -> Block:
    """A mined block signed by ``miner``: the miner signs the block hash (SHA-256 of the header)."""
    root = payload_root(relay_id, substation, relay_key, miner_name, rows, seals, gap)
    miner_key = raw_public(miner)
    nonce = 0
    while True:
        header = HEADER.pack(BLOCK_VERSION, height, parent, root, time_ms, bits, miner_key, nonce)
        block_hash = hashlib.sha256(header).digest()
        if meets(block_hash, bits):
            break
        nonce += 1
    return Block(BLOCK_VERSION, height, parent, root, time_ms, bits, miner_key, nonce, miner.sign(block_hash),
                 relay_id, substation, relay_key, miner_name, rows, seals, gap, header)


def audit_chain(blocks: list[Block], relay_id: str, relay_key: bytes) -> tuple[dict[int, bytes], list[tuple[int, int]]]:
    """What an outside verifier checks of a main chain's blocks of one relay (genesis left out):
    every seal and gap notice verifies under the relay's key, sequence numbers run on by one,
    and a hole is only ever where a relay-signed gap notice resumes. The rows by seq, and the
    gaps as (last seq before, resume seq). AssertionError naming the block otherwise."""
    rows: dict[int, bytes] = {}
    gaps: list[tuple[int, int]] = []
    last = 0
    for block in blocks:
        where = f"height {block.height} ({block.hash.hex()[:12]})"
        assert block.relay_id == relay_id and block.relay_key == relay_key, f"{where}: relay {block.relay_id!r}"
        assert block.rows, f"{where}: no readings"
        at = 0
        for seal in block.seals:
            assert seal_verifies(relay_key, relay_id, block.rows[at:at + seal[1]], seal), f"{where}: a bad seal"
            at += seal[1]
        assert at == len(block.rows), f"{where}: seals cover {at} of {len(block.rows)} rows"
        seqs = block.seqs
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{where}: seqs {seqs} do not run on by one"
        if block.gap is not None:
            assert gap_verifies(relay_key, relay_id, block.gap), f"{where}: a gap notice that does not verify"
        if seqs[0] != last + 1:
            assert block.gap is not None and block.gap[0] == seqs[0] > last + 1, \
                f"{where}: seq {seqs[0]} after {last} with no relay-signed gap notice resuming there"
            gaps.append((last, seqs[0]))
        rows.update(zip(seqs, block.rows))
        last = seqs[-1]
    return rows, gaps


# --- the network file --------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    name: str
    key: bytes
    address: str | None = None


@dataclass(frozen=True)
class RelayEntry:
    relay_id: str
    substation: str
    key: bytes


@dataclass(frozen=True)
class Network:
    name: str
    difficulty: int
    members: tuple[Member, ...]
    relays: tuple[RelayEntry, ...]

    def toml(self) -> str:
        lines = ["[network]", f'name = "{self.name}"', f"difficulty = {self.difficulty}", ""]
        for m in self.members:
            lines += ["[[members]]", f'name = "{m.name}"', f'key = "{m.key.hex()}"']
            if m.address:
                lines.append(f'address = "{m.address}"')
            lines.append("")
        for r in self.relays:
            lines += ["[[relays]]", f'id = "{r.relay_id}"', f'substation = "{r.substation}"',
                      f'key = "{r.key.hex()}"', ""]
        return "\n".join(lines)

    def write(self, path: Path) -> Path:
        path.write_text(self.toml())
        return path

    def canonical(self) -> bytes:
        document = {"difficulty": self.difficulty,
                    "members": sorted([m.key, m.name] for m in self.members),
                    "name": self.name,
                    "relays": sorted([r.relay_id, r.substation, r.key] for r in self.relays)}
        return msgpack.packb(document, use_bin_type=True)

    def network_hash(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    def genesis(self) -> bytes:
        """The genesis block's hash: no readings, a capture naming the network and its hash."""
        root = payload_root("", f"gridchain network {self.name}", self.network_hash(), "genesis", [], [], None)
        return hashlib.sha256(HEADER.pack(BLOCK_VERSION, 0, bytes(32), root, GENESIS_TIME_MS, self.difficulty,
                                          bytes(32), 0)).digest()


# --- peers, the operator API, the relay feed ---------------------------------------------------
def work_bytes(work: int) -> bytes:
    return work.to_bytes((work.bit_length() + 7) // 8, "big")


def hello(*, network: str, genesis: bytes, node_key: bytes, name: str, listen_port: int = 0, height: int = 0,
          tip: bytes | None = None, work: int = 0, **extra: object) -> list:
    body = {"version": 1, "network": network, "genesis": genesis, "node_key": node_key, "listen_port": listen_port,
            "height": height, "tip": tip if tip is not None else genesis, "work": work_bytes(work),
            "agent": "outsider/1", "name": name, **extra}
    return ["hello", body]


def block_message(block: Block) -> list:
    return ["block", {"block": block.to_wire()}]


async def operator(port: int, request: list) -> object:
    conn = await Conn.open(port)
    try:
        return await conn.request(request)
    finally:
        await conn.close()


async def status(port: int) -> dict:
    reply = await operator(port, ["status_request", {}])
    assert reply and reply[0] == "status", reply
    return reply[1]["info"]


async def block_at(port: int, height: int) -> Block:
    reply = await operator(port, ["block_request", {"hash": None, "height": height}])
    assert reply and reply[0] == "block_reply", reply
    return Block.from_wire(reply[1]["block"])


async def has_block(port: int, block_hash: bytes) -> bool:
    reply = await operator(port, ["block_request", {"hash": block_hash, "height": None}])
    assert reply is not None
    if reply[0] == "error":
        assert reply[1]["reason"] == "not-found", reply
        return False
    return reply[0] == "block_reply" and reply[1]["block"] is not None


async def main_chain(port: int) -> list[Block]:
    """Every main-chain block after genesis, by height (one connection, pipelined)."""
    conn = await Conn.open(port)
    try:
        top = (await conn.request(["status_request", {}]))[1]["info"]["height"]
        for height in range(1, top + 1):
            await conn.send(["block_request", {"hash": None, "height": height}])
        blocks = []
        for _ in range(top):
            reply = await conn.recv()
            assert reply and reply[0] == "block_reply", reply
            blocks.append(Block.from_wire(reply[1]["block"]))
        return blocks
    finally:
        await conn.close()


@dataclass
class Answer:
    """A relay feed ``readings`` answer."""

    relay_id: str
    substation: str
    relay_key: bytes
    rows: list[bytes]
    seals: list[list]
    gap: list | None
    newest_seq: int | None


async def relay_info(port: int) -> dict:
    conn = await Conn.open(port)
    try:
        reply = await conn.request({"type": "info"})
    finally:
        await conn.close()
    assert isinstance(reply, dict) and reply.get("type") == "info", reply
    return reply


def readings_answer(reply: object) -> Answer:
    assert isinstance(reply, dict) and reply.get("type") == "readings", reply
    return Answer(reply["relay_id"], reply["substation"], reply["relay_key"], split_rows(reply["rows"]),
                  [list(s) for s in reply["seals"]], None if reply["gap"] is None else list(reply["gap"]),
                  reply.get("newest_seq"))


async def relay_read(port: int, after_seq: int, limit: int = 10_000) -> Answer:
    conn = await Conn.open(port)
    try:
        return readings_answer(await conn.request({"type": "read", "after_seq": after_seq, "limit": limit}))
    finally:
        await conn.close()
