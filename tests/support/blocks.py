"""Cheap valid blocks for tests and benchmarks: low difficulty, fixed keys, a fixed clock.

Two ways to make them: on a ``ChainEntry`` (``make_block``, ``grow``: the time follows the
chain's median rule, header fields can be overridden), or as a lazy ``line`` on a ``Tip``
(for long chains written through a Ledger or a Store, where memory must stay flat).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import NamedTuple

from gridchain.consensus import pow
from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header, Reading
from gridchain.consensus.chain import AddResult, Chain, ChainEntry, median_time_ms
from gridchain.consensus.genesis import GENESIS_TIME_MS, make_genesis
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.provenance import GapNotice, seal_readings, sign_gap
from gridchain.identity.keys import NodeKey, RelayKey

BITS = 6  # ~64 hashes a block: every test block is really mined, yet costs well under 1 ms
PARAMS = NetworkParams("test", BITS)
GENESIS = make_genesis("test", BITS)
BLOCK_INTERVAL_MS = 60_000  # a block a minute, as in the prototype: six 10 s readings keep pace
NOW_MS = GENESIS_TIME_MS + 10**9  # a clock far past any block the tests build
READING_INTERVAL_MS = 10_000
ALICE = NodeKey.from_seed(bytes([1]) * 32)  # deterministic keys, so runs repeat
BOB = NodeKey.from_seed(bytes([2]) * 32)
RELAY_KEY = RelayKey.from_seed(bytes([9]) * 32)  # signs every test relay's readings
OTHER_RELAY_KEY = RelayKey.from_seed(bytes([10]) * 32)


def reading(seq: int, timestamp_ms: int | None = None, openings: int = 0, flags: int = 0,
            **values: float) -> Reading:
    fields = dict(vab=115.0, vbc=115.2, vca=114.9, ia=412.0, ib=409.5, ic=415.1, frequency=60.0,
                  power_factor=0.97, active_power=80.1, reactive_power=19.8)
    fields.update(values)
    if timestamp_ms is None:
        timestamp_ms = GENESIS_TIME_MS + seq * READING_INTERVAL_MS
    return Reading(seq, timestamp_ms, openings, flags, **fields)


def sealed(relay_id: str, readings, substation: str = "North", signer: RelayKey = RELAY_KEY,
           gap: GapNotice | None = None, per_seal: int | None = None) -> Capture:
    """A capture of ``readings`` sealed by ``signer``: one seal, or one per ``per_seal`` readings."""
    readings = tuple(readings)
    step = per_seal or max(1, len(readings))
    seals = tuple(seal_readings(signer, relay_id, readings[i:i + step]) for i in range(0, len(readings), step))
    return Capture(relay_id, substation, signer.public_key, readings, seals, gap)


def gap_notice(relay_id: str, resume_seq: int, boot_ms: int = GENESIS_TIME_MS,
               signer: RelayKey = RELAY_KEY) -> GapNotice:
    return sign_gap(signer, relay_id, resume_seq, boot_ms)


def capture(relay_id: str = "relay-1", start_ms: int = GENESIS_TIME_MS, count: int = 6, openings: int = 0,
            substation: str = "North", rng: random.Random | None = None, start_seq: int = 1,
            signer: RelayKey = RELAY_KEY, gap: GapNotice | None = None) -> Capture:
    """``count`` signed readings from ``start_seq`` on, a reading interval apart from
    ``start_ms``, under one seal; with ``rng`` the currents and power vary, so two captures
    of the same moments differ."""
    def values(i: int) -> dict[str, float]:
        if rng is None:
            return dict(ia=400.0 + i)
        return dict(ia=400.0 + rng.random(), active_power=80.0 + rng.random())

    readings = tuple(reading(start_seq + i, start_ms + i * READING_INTERVAL_MS, openings, **values(i))
                     for i in range(count))
    return sealed(relay_id, readings, substation, signer, gap)


def header_for(parent: ChainEntry, cap: Capture, miner_name: str = "alice", signer: NodeKey = ALICE,
               time_ms: int | None = None, bits: int = BITS) -> Header:
    if time_ms is None:
        time_ms = max(parent.header.time_ms + BLOCK_INTERVAL_MS, median_time_ms(parent, PARAMS.median_window) + 1)
    return Header(BLOCK_VERSION, parent.height + 1, parent.hash, payload_root(cap, miner_name),
                  time_ms, bits, signer.public_key, 0)


def mine_header(header: Header) -> Header:
    nonce = pow.mine(header.prefix(), header.bits)
    assert nonce is not None
    return header.with_nonce(nonce)


def finish(header: Header, cap: Capture, miner_name: str = "alice", signer: NodeKey = ALICE,
           mine: bool = True) -> Block:
    """Mine (unless told not to) and sign ``header`` as it stands."""
    if mine:
        header = mine_header(header)
    return Block(header, signer.sign(header.hash()), cap, miner_name)


def make_block(parent: ChainEntry, cap: Capture, miner_name: str = "alice", signer: NodeKey = ALICE,
               **header_changes) -> Block:
    """A valid block on ``parent`` (header fields in ``header_changes`` override the template)."""
    header = dataclasses.replace(header_for(parent, cap, miner_name, signer), **header_changes)
    return finish(header, cap, miner_name, signer)


class Relay:
    """Hands out consecutive captures of one relay, as a node polling it would see them."""

    def __init__(self, relay_id: str = "relay-1", per_block: int = 6, start_ms: int = GENESIS_TIME_MS,
                 openings: int = 0, start_seq: int = 1, signer: RelayKey = RELAY_KEY) -> None:
        self.relay_id = relay_id
        self.per_block = per_block
        self.next_ms = start_ms
        self.next_seq = start_seq
        self.openings = openings
        self.signer = signer

    @classmethod
    def after(cls, chain: Chain, entry: ChainEntry, relay_id: str = "relay-1", **kw) -> Relay:
        """A relay whose next capture continues ``relay_id``'s sequence on ``entry``'s branch."""
        return cls(relay_id, start_seq=(chain.last_seq(relay_id, entry) or 0) + 1, **kw)

    def next(self) -> Capture:
        cap = capture(self.relay_id, self.next_ms, self.per_block, self.openings, start_seq=self.next_seq,
                      signer=self.signer)
        self.next_ms += self.per_block * READING_INTERVAL_MS
        self.next_seq += self.per_block
        return cap


def new_chain() -> Chain:
    return Chain(GENESIS, PARAMS)


def grow(chain: Chain, parent: ChainEntry, count: int, relay: Relay | None = None, miner_name: str = "alice",
         signer: NodeKey = ALICE) -> tuple[list[Block], list[AddResult]]:
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


class Tip(NamedTuple):
    """Where a ``line`` goes on: the parent's height, hash and time, and the newest reading
    of the line's relay on the parent's chain."""

    height: int
    hash: bytes
    time_ms: int
    newest_ms: int
    last_seq: int = 0  # the relay's last sequence number on the parent's chain (0: none yet)


def tip_of(chain: Chain, relay_id: str = "relay-1", entry: ChainEntry | None = None) -> Tip:
    """The ``Tip`` of ``entry`` (the chain's tip if None); with no reading of the relay yet,
    its readings start after genesis."""
    entry = entry or chain.tip
    newest = chain.newest_reading_ms(relay_id, entry)
    return Tip(entry.height, entry.hash, entry.header.time_ms, GENESIS_TIME_MS if newest is None else newest,
               chain.last_seq(relay_id, entry) or 0)


def tip_after(block: Block) -> Tip:
    return Tip(block.height, block.hash, block.header.time_ms, block.capture.newest_ms, block.capture.last_seq)


def line(tip: Tip, count: int, signer: NodeKey, bits: int = BITS, *, relay_id: str = "relay-1",
         substation: str = "North", miner_name: str = "alice", per_block: int = 6,
         rng: random.Random | None = None) -> Iterator[Block]:
    """``count`` valid blocks in a line on ``tip``, made lazily so memory stays flat. Each
    carries the relay's next ``per_block`` readings and comes as long after its parent, so
    block times keep pace with the readings (and stay far in the past for any length)."""
    for _ in range(count):
        cap = capture(relay_id, tip.newest_ms + READING_INTERVAL_MS, per_block, substation=substation, rng=rng,
                      start_seq=tip.last_seq + 1)
        header = Header(BLOCK_VERSION, tip.height + 1, tip.hash, payload_root(cap, miner_name),
                        tip.time_ms + per_block * READING_INTERVAL_MS, bits, signer.public_key, 0)
        block = finish(header, cap, miner_name, signer)
        tip = tip_after(block)
        yield block
