"""Ledger core benchmarks: mining hashrate, full block checks, chain growth and memory.

Every rate is one thread on one core. Where a physical floor exists the row carries it as
``limit`` (what the bare primitives alone reach) and ``ratio`` = value / limit:

- mining is compared with a bare hashlib loop (copy, update, digest over the same prefix);
- a block check (6 signed readings under one relay seal, on a network whose document names
  the miner and the relay, so every rule runs) is compared with its SHA-256 and Ed25519
  operations alone: the header hash, one leaf per row plus the metadata leaf, the interior
  nodes of the payload tree and of the seal tree, the miner's verify and the seal's verify.

Blocks are built the way a node builds them (relay-sealed captures from tests.support,
then block_template, pow.mine and template.seal), outside the timed sections.

    python bench/bench_consensus.py      # prints a table, writes bench/results_consensus.json
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gridchain.consensus import pow
from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header
from gridchain.consensus.chain import Chain, ChainEntry
from gridchain.consensus.genesis import GENESIS_TIME_MS, make_genesis
from gridchain.consensus.merkle import metadata_leaf
from gridchain.consensus.params import NetworkParams, RelayInfo
from gridchain.consensus.provenance import seal_message, seal_root
from gridchain.consensus.rules import check_block
from gridchain.consensus.template import block_template, seal
from gridchain.identity.keys import NodeKey
from tests.support.blocks import RELAY_KEY, Relay, capture as relay_capture

RESULTS = Path(__file__).with_name("results_consensus.json")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")  # shorter runs, same measurements
MINE_TRIES = 400_000  # ~0.3 s of hashing per round: long enough to swamp timer noise
ROUNDS = 3  # best of three, alternating, so a busy neighbour hurts both sides alike
PAIR_BLOCKS = 50  # blocks per timed slice (~15 ms): short enough to fit between a neighbour's bursts
CHECK_PAIRS = 40 if QUICK else 150  # slices of block checks, each followed by one of the bare primitives
READINGS_PER_BLOCK = 6  # one minute of captures at the relay's 10 s interval
ADD_BITS = 4  # chain growth measures bookkeeping, not mining: keep the work per block tiny
ADD_LENGTHS = (1_000, 10_000) if QUICK else (1_000, 10_000, 30_000)  # rates over the last 1,000 before each
ADD_WINDOW = 1_000
MEMORY_ENTRIES = 100_000
MEMORY_RELAYS = 4
RELAY_ID = "relay-1"
SUBSTATION = "Bench"
MINER_NAME = "bench"
MINER = NodeKey.from_seed(bytes(range(32)))


def run() -> list[dict]:
    return _mining() + _block_checks() + _chain_growth() + [_chain_memory()]


# --- (a) mining -----------------------------------------------------------------------------

def _mining() -> list[dict]:
    prefix = bytes(range(120))
    mine_best = bare_best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        assert pow.mine(prefix, pow.MAX_BITS, 0, MINE_TRIES) is None
        mine_best = min(mine_best, time.perf_counter() - start)
        start = time.perf_counter()
        _bare_hash_loop(prefix, MINE_TRIES)
        bare_best = min(bare_best, time.perf_counter() - start)
    mine_rate, bare_rate = MINE_TRIES / mine_best, MINE_TRIES / bare_best
    return [{"name": "mine() hashrate vs bare hashlib loop", "value": round(mine_rate), "unit": "H/s",
             "goal": "ratio >= 0.9", "limit": round(bare_rate), "ratio": round(mine_rate / bare_rate, 3)}]


def _bare_hash_loop(prefix: bytes, count: int) -> None:
    prepared = hashlib.sha256(prefix)
    for nonce in range(count):
        h = prepared.copy()
        h.update(nonce.to_bytes(8, "big"))
        h.digest()


# --- (b) full block checks ------------------------------------------------------------------

def _member_params(name: str, bits: int) -> NetworkParams:
    """A network whose document names the miner and the relay: membership, relay and key rules all run."""
    return NetworkParams(name, bits, members=frozenset({MINER.public_key}), member_names={MINER.public_key: MINER_NAME},
                         relays={RELAY_ID: RelayInfo(RELAY_KEY.public_key, SUBSTATION)})


def _mined(parent: ChainEntry, capture: Capture, params: NetworkParams, now_ms: int) -> Block:
    """What a node's miner makes of a capture: the template, its proof of work, the signed block."""
    header = block_template(parent, capture, MINER_NAME, MINER.public_key, params, now_ms)
    nonce = pow.mine(header.prefix(), header.bits)
    assert nonce is not None
    return seal(header, nonce, capture, MINER_NAME, MINER.sign)


def _block_checks() -> list[dict]:
    params = _member_params("bench", 16)
    chain = Chain(make_genesis(params), params)
    capture = relay_capture(RELAY_ID, count=READINGS_PER_BLOCK, substation=SUBSTATION)  # under one seal
    block = _mined(chain.tip, capture, params, GENESIS_TIME_MS + 60_000)
    raw = block.encode()
    now_ms = block.header.time_ms
    check_block(Block.decode(raw), params, now_ms)  # it is valid: every rule ran to the end

    bare = _bare_ops(block)
    checks, bares = [], []
    for _ in range(CHECK_PAIRS):  # interleaved in short pairs, so a busy neighbour slows both sides alike
        start = time.perf_counter()
        for _ in range(PAIR_BLOCKS):
            check_block(Block.decode(raw), params, now_ms)
        checks.append((time.perf_counter() - start) / PAIR_BLOCKS)
        bares.append(bare())
    start = time.perf_counter()
    for _ in range(PAIR_BLOCKS * 10):
        Block.decode(raw)
    decode_s = (time.perf_counter() - start) / (PAIR_BLOCKS * 10)
    check_s, bare_s = min(checks), min(bares)  # the least disturbed pair of each
    pair_ratios = sorted(b / c for c, b in zip(checks, bares))
    rate, limit = 1 / check_s, 1 / bare_s
    return [{"name": f"full block check ({READINGS_PER_BLOCK} signed readings, 1 seal: decode + every rule)",
             "value": round(rate), "unit": "blocks/s", "goal": "ratio >= 0.8", "limit": round(limit),
             "ratio": round(rate / limit, 3), "ratio_median_of_pairs": round(pair_ratios[len(pair_ratios) // 2], 3),
             "check_us": round(check_s * 1e6, 1), "decode_us": round(decode_s * 1e6, 1),
             "bare_us": round(bare_s * 1e6, 1), "block_bytes": len(raw), "checks": CHECK_PAIRS * PAIR_BLOCKS}]


def _bare_ops(block: Block):
    """A timer of the block's SHA-256 and Ed25519 work alone: seconds per block over PAIR_BLOCKS."""
    capture = block.capture
    header = block.header.to_bytes()
    leaves = [b"\x00" + r.to_bytes() for r in capture.readings] + [b"\x00" + metadata_leaf(capture, block.miner_name)]
    n = len(capture.readings)
    # n + 1 payload leaves make n interior nodes; the seal tree over the same n leaves makes n - 1.
    nodes = [b"\x01" + bytes(64)] * (n + (n - 1) * len(capture.seals))
    (only_seal,) = capture.seals
    seal_msg = seal_message(capture.relay_id, only_seal.first_seq, only_seal.count, seal_root(capture.readings))
    miner = Ed25519PublicKey.from_public_bytes(block.header.miner_key)
    relay = Ed25519PublicKey.from_public_bytes(capture.relay_key)
    sha256 = hashlib.sha256

    def one_slice() -> float:
        start = time.perf_counter()
        for _ in range(PAIR_BLOCKS):
            sha256(header).digest()
            for data in leaves:
                sha256(data).digest()
            for data in nodes:
                sha256(data).digest()
            miner.verify(block.signature, block.hash)
            relay.verify(only_seal.signature, seal_msg)
        return (time.perf_counter() - start) / PAIR_BLOCKS

    return one_slice


# --- (c) chain growth and memory ------------------------------------------------------------

def _build_blocks(count: int) -> tuple[Block, NetworkParams, list[Block]]:
    params = NetworkParams("bench-add", ADD_BITS)
    genesis = make_genesis(params)
    builder = Chain(genesis, params)
    relay = Relay(RELAY_ID, READINGS_PER_BLOCK)  # each capture continues the relay's sequence
    blocks = []
    parent = builder.tip
    for _ in range(count):
        capture = relay.next()
        block = _mined(parent, capture, params, parent.time_ms + 60_000)
        parent = builder.add_trusted(block.header, RELAY_ID, capture.last_seq, capture.newest_ms, capture.relay_key,
                                     capture.first_seq).entry
        blocks.append(block)
    return genesis, params, blocks


def _chain_growth() -> list[dict]:
    genesis, params, blocks = _build_blocks(max(ADD_LENGTHS))
    now_ms = blocks[-1].header.time_ms
    chain = Chain(genesis, params)
    rows = []
    done = 0
    for length in ADD_LENGTHS:
        for block in blocks[done:length - ADD_WINDOW]:
            chain.add(block, now_ms)
        start = time.perf_counter()
        for block in blocks[length - ADD_WINDOW:length]:
            chain.add(block, now_ms)
        rate = ADD_WINDOW / (time.perf_counter() - start)
        done = length
        rows.append({"name": f"Chain.add (all rules) at length {length:,}", "value": round(rate),
                     "unit": "blocks/s", "goal": ">= 5000"})
    trusted = Chain(genesis, params)
    start = time.perf_counter()
    for block in blocks:
        c = block.capture
        trusted.add_trusted(block.header, c.relay_id, c.last_seq, c.newest_ms, c.relay_key, c.first_seq)
    rate = len(blocks) / (time.perf_counter() - start)
    assert trusted.tip.hash == chain.tip.hash
    rows.append({"name": f"Chain.add_trusted (store reload), {len(blocks):,} blocks", "value": round(rate),
                 "unit": "blocks/s", "goal": "-"})
    return rows


def _chain_memory() -> dict:
    """Memory of a 100,000-entry chain as a node holds it after reloading its store."""
    params = NetworkParams("bench-mem", 1)
    genesis = make_genesis(params)
    key = bytes(range(32))
    relay_keys = [hashlib.sha256(bytes([i])).digest() for i in range(MEMORY_RELAYS)]
    raw_headers = []
    prev = genesis.hash
    for height in range(1, MEMORY_ENTRIES + 1):
        root = hashlib.sha256(height.to_bytes(8, "big")).digest()
        header = Header(BLOCK_VERSION, height, prev, root, GENESIS_TIME_MS + height * 60_000, 1, bytes(key),
                        height * 7919)
        raw_headers.append(header.to_bytes())
        prev = header.hash()
    gc.collect()
    tracemalloc.start()
    chain = Chain(genesis, params)
    for height, raw in enumerate(raw_headers, 1):
        relay = height % MEMORY_RELAYS
        first = (height // MEMORY_RELAYS) * READINGS_PER_BLOCK + 1  # each relay's sequence runs on unbroken
        chain.add_trusted(Header.from_bytes(raw), f"relay-{relay}", first + READINGS_PER_BLOCK - 1,
                          GENESIS_TIME_MS + height, relay_keys[relay], first)
    gc.collect()
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert chain.height == MEMORY_ENTRIES
    return {"name": f"chain memory, {MEMORY_ENTRIES:,} entries ({MEMORY_RELAYS} relays)",
            "value": round(used / 2**20, 1), "unit": "MB", "goal": "< 100",
            "per_entry_bytes": round(used / MEMORY_ENTRIES)}


def main() -> None:
    rows = run()
    width = max(len(row["name"]) for row in rows)
    print(f"{'benchmark':<{width}}  {'value':>12}  {'unit':<9}  {'goal':<14}  {'limit':>12}  ratio")
    for row in rows:
        limit = "" if row.get("limit") is None else row["limit"]
        ratio = "" if row.get("ratio") is None else row["ratio"]
        print(f"{row['name']:<{width}}  {row['value']:>12}  {row['unit']:<9}  {row['goal']:<14}  {limit:>12}  {ratio}")
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
