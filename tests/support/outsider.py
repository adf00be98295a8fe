"""An outsider's gridchain codec, written from docs/protocol.md with msgpack, struct and cryptography.

Nothing here imports gridchain: this is what a regulator writing a checker, or an attacker
writing a hostile node, has to work from. If the product and the documented format part
ways, the tests that use this module see it. It covers:

- frames (u32 big-endian length + one msgpack object) over asyncio streams;
- the 108-byte signed reading row, RFC 6962 leaves and trees, relay seals and gap notices;
- the 128-byte header, the payload tree (one metadata leaf, one leaf per row), proof of
  work, the miner's signature and the block's 9-field wire array (version 2);
- the network file (TOML), its canonical document and network hash, and the genesis block;
- peer messages (``[type, body]``: hello, hello_proof, block, reject) and the handshake
  that proves a node key, the operator's ``status`` and ``block_request``, and the relay
  feed's ``info`` and ``read``;
- from docs/security.md: the TLS 1.3 peer link (a node certificate made for a key, the
  session binding), the operator port (peer port + 1000) and its ``auth`` frame.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import ssl
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# --- frames ------------------------------------------------------------------------------------
MAX_FRAME = 4 * 1024 * 1024
IO_TIMEOUT_S = 5.0  # every read of a live node or relay on loopback answers in milliseconds


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class Conn:
    """One TCP (or TLS) connection carrying frames; ``recv`` returns None once the other side closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.own_cert = b""  # our TLS certificate (DER), when we presented one

    @classmethod
    async def peer(cls, port: int, key: Ed25519PrivateKey, host: str = "127.0.0.1") -> Conn:
        """A TLS 1.3 peer link presenting ``key``'s node certificate (docs/security.md)."""
        pem = node_certificate(key)
        conn = await cls.open(port, host, tls=tls_client(key, pem))
        conn.own_cert = cert_der(pem)
        return conn

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Conn:
        async with asyncio.timeout(IO_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        return cls(reader, writer)

    @property
    def peer_cert(self) -> bytes:
        """The other side's TLS certificate (DER); b"" on plaintext."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else b""

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
        except (asyncio.IncompleteReadError, OSError):  # closed, reset, or refused by a TLS alert
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
        except (TimeoutError, OSError):  # a reset, or TLS data after the other's close_notify
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


# --- TLS (docs/security.md) -------------------------------------------------------------------
OPERATOR_PORT_OFFSET = 1000  # a node's operator API: its peer port + 1000 unless set otherwise


def operator_port(port: int) -> int:
    return port + OPERATOR_PORT_OFFSET


def node_certificate(key: Ed25519PrivateKey) -> bytes:
    """A node certificate (PEM) for ``key``: subject O=gridchain node, issuer O=gridchain member,
    both CN=<key hex>, signed by the key itself."""
    hex_key = raw_public(key).hex()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridchain node"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, hex_key)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridchain member"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, hex_key)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, None))
    return cert.public_bytes(serialization.Encoding.PEM)


def tls_client(key: Ed25519PrivateKey | None, cert_pem: bytes | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting ``key``'s node certificate (or ``cert_pem``); the
    server's certificate is read, not checked (``cert_key`` says whose it is)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if key is not None:
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "k").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            (Path(scratch) / "c").write_bytes(cert_pem or node_certificate(key))
            context.load_cert_chain(Path(scratch) / "c", Path(scratch) / "k")
    return context


def cert_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def cert_key(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_key().public_bytes(serialization.Encoding.Raw,
                                                                          serialization.PublicFormat.Raw)


def tls_binding(dialler_der: bytes, listener_der: bytes) -> bytes:
    """SHA-256 over the tag and both certificates (u32 length before each), the dialler's first."""
    return hashlib.sha256(b"gridchain/tls-binding/v1" + struct.pack(">I", len(dialler_der)) + dialler_der
                          + struct.pack(">I", len(listener_der)) + listener_der).digest()


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
    every seal and gap notice verifies under the relay's key, seqs run on by one inside a
    block, and each block continues the relay's sequence, jumps to where a relay-signed gap
    notice resumes (opening the skipped range), or fills an open range (all its rows inside
    one, no notice). The rows by seq, and the ranges still open as (last seq before, next seq
    after). AssertionError naming the block otherwise."""
    rows: dict[int, bytes] = {}
    open_ranges: list[tuple[int, int]] = []  # inclusive (first, last) seqs the chain does not hold
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
        first, end = seqs[0], seqs[-1]
        assert seqs == list(range(first, end + 1)), f"{where}: seqs {seqs} do not run on by one"
        if block.gap is not None:
            assert gap_verifies(relay_key, relay_id, block.gap), f"{where}: a gap notice that does not verify"
        if first == last + 1:
            last = end
        elif first > last + 1:
            assert block.gap is not None and block.gap[0] == first, \
                f"{where}: seq {first} after {last} with no relay-signed gap notice resuming there"
            open_ranges.append((last + 1, first - 1))
            last = end
        else:
            inside = [r for r in open_ranges if r[0] <= first and end <= r[1]]
            assert inside and block.gap is None, \
                f"{where}: seqs {first}..{end} go back below {last} but fill no open gap {open_ranges}"
            low, high = inside[0]
            at = open_ranges.index(inside[0])
            open_ranges[at:at + 1] = [r for r in ((low, first - 1), (end + 1, high)) if r[0] <= r[1]]
        for seq, row in zip(seqs, block.rows):
            assert seq not in rows, f"{where}: seq {seq} twice on the chain"
            rows[seq] = row
    return rows, [(low - 1, high + 1) for low, high in open_ranges]


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


def hello(*, network: str, genesis: bytes, node_key: bytes, name: str, nonce: bytes, listen_port: int = 0,
          height: int = 0, tip: bytes | None = None, work: int = 0) -> list:
    body = {"version": 1, "network": network, "genesis": genesis, "node_key": node_key, "listen_port": listen_port,
            "height": height, "tip": tip if tip is not None else genesis, "work": work_bytes(work),
            "agent": "outsider/1", "name": name, "nonce": nonce}
    return ["hello", body]


PROOF_TAG = b"gridchain/hello-proof/v1"
DIALLER, LISTENER = 1, 2


def proof_statement(*, genesis: bytes, role: int, signer_key: bytes, other_key: bytes, signer_nonce: bytes,
                    other_nonce: bytes, binding: bytes = b"") -> bytes:
    """What a side of a handshake signs to prove its key: tag, genesis, its role, both keys
    and both nonces (its own first), and the channel binding (empty on a plaintext link)."""
    return (PROOF_TAG + genesis + bytes([role]) + signer_key + other_key + signer_nonce + other_nonce
            + bytes([len(binding)]) + binding)


def hello_proof(signer: Ed25519PrivateKey, **statement: object) -> list:
    return ["hello_proof", {"signature": signer.sign(proof_statement(**statement))}]


async def dial_handshake(conn: Conn, *, network: str, genesis: bytes, name: str, signer: Ed25519PrivateKey,
                         claimed_key: bytes | None = None, timeout: float = IO_TIMEOUT_S,
                         binding: bytes | None = None) -> object | None:
    """The dialler's side of the handshake: hello, the listener's hello, our proof (signed by
    ``signer``, for ``claimed_key``, by default the signer's own key, over the link's session
    binding unless ``binding`` is given), the listener's proof.
    The node's last message: its ``hello_proof`` once the link is ready, else what it sent
    instead (a ``reject``), or None if it closed."""
    key = claimed_key or raw_public(signer)
    if binding is None:  # on a TLS link: both certificates, the dialler's (ours) first; else none
        binding = tls_binding(conn.own_cert, conn.peer_cert) if conn.own_cert else b""
    nonce = os.urandom(32)
    await conn.send(hello(network=network, genesis=genesis, node_key=key, name=name, nonce=nonce))
    theirs = await conn.recv(timeout)
    if not theirs or theirs[0] != "hello":
        return theirs
    other = theirs[1]
    await conn.send(hello_proof(signer, genesis=genesis, role=DIALLER, signer_key=key, other_key=other["node_key"],
                                signer_nonce=nonce, other_nonce=other["nonce"], binding=binding))
    answer = await conn.recv(timeout)
    if answer and answer[0] == "hello_proof":
        statement = proof_statement(genesis=genesis, role=LISTENER, signer_key=other["node_key"], other_key=key,
                                    signer_nonce=other["nonce"], other_nonce=nonce, binding=binding)
        assert verifies(other["node_key"], answer[1]["signature"], statement), "the listener's proof does not verify"
    return answer


def block_message(block: Block) -> list:
    return ["block", {"block": block.to_wire()}]


async def operator(port: int, request: list) -> object:
    """One request to the operator API of the node on peer port ``port``."""
    conn = await Conn.open(operator_port(port))
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
    conn = await Conn.open(operator_port(port))
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
