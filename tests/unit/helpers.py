"""Cheap valid blocks for consensus tests: low difficulty, fixed keys, a fixed clock."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gridchain.consensus import pow
from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header, Reading
from gridchain.consensus.chain import AddResult, Chain, ChainEntry, median_time_ms
from gridchain.consensus.genesis import GENESIS_TIME_MS, make_genesis
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.params import NetworkParams

BITS = 6  # ~64 hashes a block: every test block is really mined, yet costs well under 1 ms
PARAMS = NetworkParams("test", BITS)
GENESIS = make_genesis("test", BITS)
BLOCK_INTERVAL_MS = 60_000  # a block a minute, as in the prototype: six 10 s readings keep pace
NOW_MS = GENESIS_TIME_MS + 10**9  # a clock far past any block the tests build
READING_INTERVAL_MS = 10_000


class Signer:
    """A deterministic Ed25519 key from a one-byte seed."""

    def __init__(self, seed: int) -> None:
        self.private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        self.public_key = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


ALICE = Signer(1)
BOB = Signer(2)


def reading(timestamp_ms: int, **values: float) -> Reading:
    fields = dict(vab=115.0, vbc=115.2, vca=114.9, ia=412.0, ib=409.5, ic=415.1, frequency=60.0,
                  power_factor=0.97, active_power=80.1, reactive_power=19.8)
    fields.update(values)
    return Reading(timestamp_ms, **fields)


def capture(relay_id: str = "relay-1", start_ms: int = GENESIS_TIME_MS, count: int = 6, openings: int = 0,
            substation: str = "North") -> Capture:
    readings = tuple(reading(start_ms + i * READING_INTERVAL_MS, ia=400.0 + i) for i in range(count))
    return Capture(relay_id, substation, openings, readings)


def header_for(parent: ChainEntry, cap: Capture, miner_name: str = "alice", signer: Signer = ALICE,
               time_ms: int | None = None, bits: int = BITS) -> Header:
    if time_ms is None:
        time_ms = max(parent.header.time_ms + BLOCK_INTERVAL_MS, median_time_ms(parent, PARAMS.median_window) + 1)
    return Header(BLOCK_VERSION, parent.height + 1, parent.hash, payload_root(cap, miner_name),
                  time_ms, bits, signer.public_key, 0)


def mine_header(header: Header) -> Header:
    nonce = pow.mine(header.prefix(), header.bits)
    assert nonce is not None
    return header.with_nonce(nonce)


def finish(header: Header, cap: Capture, miner_name: str = "alice", signer: Signer = ALICE,
           mine: bool = True) -> Block:
    """Mine (unless told not to) and sign ``header`` as it stands."""
    if mine:
        header = mine_header(header)
    return Block(header, signer.sign(header.hash()), cap, miner_name)


def make_block(parent: ChainEntry, cap: Capture, miner_name: str = "alice", signer: Signer = ALICE,
               **header_changes) -> Block:
    """A valid block on ``parent`` (header fields in ``header_changes`` override the template)."""
    header = dataclasses.replace(header_for(parent, cap, miner_name, signer), **header_changes)
    return finish(header, cap, miner_name, signer)


class Relay:
    """Hands out consecutive captures of one relay, as a node polling it would see them."""

    def __init__(self, relay_id: str = "relay-1", per_block: int = 6, start_ms: int = GENESIS_TIME_MS,
                 openings: int = 0) -> None:
        self.relay_id = relay_id
        self.per_block = per_block
        self.next_ms = start_ms
        self.openings = openings

    def next(self) -> Capture:
        cap = capture(self.relay_id, self.next_ms, self.per_block, self.openings)
        self.next_ms += self.per_block * READING_INTERVAL_MS
        return cap


def new_chain() -> Chain:
    return Chain(GENESIS, PARAMS)


def grow(chain: Chain, parent: ChainEntry, count: int, relay: Relay | None = None, miner_name: str = "alice",
         signer: Signer = ALICE) -> tuple[list[Block], list[AddResult]]:
    """Add ``count`` valid blocks in a row on ``parent``; returns the blocks and results."""
    relay = relay or Relay()
    blocks, results = [], []
    for _ in range(count):
        block = make_block(parent, relay.next(), miner_name, signer)
        result = chain.add(block, NOW_MS)
        blocks.append(block)
        results.append(result)
        parent = result.entry
    return blocks, results
