"""Ledger core benchmarks: mining hashrate, full block checks, chain growth and memory.

Every rate is one thread on one core. Where a physical floor exists the row carries it as
``limit`` (what the bare primitive alone reaches) and ``ratio`` = value / limit:

- mining is compared with a bare hashlib loop (copy, update, digest over the same prefix);
- a block check is compared with its SHA-256 and Ed25519 operations alone.

    python bench/bench_consensus.py      # prints a table, writes bench/results_consensus.json
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
import tracemalloc
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gridchain.consensus import pow
from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header, Reading
from gridchain.consensus.chain import Chain
from gridchain.consensus.genesis import GENESIS_TIME_MS, make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import check_block
from gridchain.consensus.template import block_template, seal

RESULTS = Path(__file__).with_name("results_consensus.json")
MINE_TRIES = 400_000  # ~0.3 s of hashing per round: long enough to swamp timer noise
ROUNDS = 3  # best of three, alternating, so a busy neighbour hurts both sides alike
CHECK_SECONDS = 1.0
READINGS_PER_BLOCK = 6  # one minute of captures at the relay's 10 s interval
ADD_BITS = 4  # chain growth measures bookkeeping, not mining: keep the work per block tiny
ADD_LENGTHS = (1_000, 10_000, 30_000)  # rates are taken over the last 1,000 blocks before each
ADD_WINDOW = 1_000
MEMORY_ENTRIES = 100_000
STEP_MS = 10_000


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

def _signer() -> tuple[Ed25519PrivateKey, bytes]:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _readings(start_ms: int, count: int) -> tuple[Reading, ...]:
    return tuple(Reading(start_ms + i * STEP_MS, 115.1, 115.3, 114.8, 412.2 + i, 409.9, 415.0, 60.01,
                         0.97, 80.4, 19.9) for i in range(count))


def _block_checks() -> list[dict]:
    params = NetworkParams("bench", 16)
    chain = Chain(make_genesis("bench", 16), params)
    private, public = _signer()
    capture = Capture("relay-1", "Bench", 3, _readings(GENESIS_TIME_MS, READINGS_PER_BLOCK))
    header = block_template(chain.tip, capture, "bench", public, params, GENESIS_TIME_MS + 60_000)
    nonce = pow.mine(header.prefix(), header.bits)
    block = seal(header, nonce, capture, "bench", private.sign)
    raw = block.encode()
    now_ms = header.time_ms

    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < CHECK_SECONDS:
        for _ in range(100):
            check_block(Block.decode(raw), params, now_ms)
        count += 100
    rate = count / elapsed
    return [{"name": f"full block check ({READINGS_PER_BLOCK} readings: decode, hash, pow, root, signature)",
             "value": round(rate), "unit": "blocks/s", "goal": ">= 5000",
             "limit": round(_bare_ops_rate(block)), "ratio": round(rate / _bare_ops_rate(block), 3)}]


def _bare_ops_rate(block: Block, rounds: int = 3_000) -> float:
    """Blocks/s if checking cost only its hashes (header + Merkle tree) and one Ed25519 verify."""
    header = block.header.to_bytes()
    leaves = [b"\x00" + bytes(88)] * (READINGS_PER_BLOCK + 1)
    nodes = [b"\x01" + bytes(64)] * READINGS_PER_BLOCK  # n leaves make n - 1 interior nodes
    key = Ed25519PublicKey.from_public_bytes(block.header.miner_key)
    sha256 = hashlib.sha256
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            sha256(header).digest()
            for data in leaves:
                sha256(data).digest()
            for data in nodes:
                sha256(data).digest()
            key.verify(block.signature, block.hash)
        best = min(best, time.perf_counter() - start)
    return rounds / best


# --- (c) chain growth and memory ------------------------------------------------------------

def _build_blocks(count: int) -> tuple[Block, NetworkParams, list[Block]]:
    params = NetworkParams("bench-add", ADD_BITS)
    genesis = make_genesis("bench-add", ADD_BITS)
    builder = Chain(genesis, params)
    private, public = _signer()
    blocks = []
    parent = builder.tip
    next_ms = GENESIS_TIME_MS
    for _ in range(count):
        capture = Capture("relay-1", "Bench", 0, _readings(next_ms, READINGS_PER_BLOCK))
        next_ms += READINGS_PER_BLOCK * STEP_MS
        header = block_template(parent, capture, "bench", public, params, parent.time_ms + 60_000)
        block = seal(header, pow.mine(header.prefix(), ADD_BITS), capture, "bench", private.sign)
        parent = builder.add_trusted(block.header, "relay-1", capture.newest_ms, 0).entry
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
        capture = block.capture
        trusted.add_trusted(block.header, capture.relay_id, capture.newest_ms, capture.openings)
    rate = len(blocks) / (time.perf_counter() - start)
    rows.append({"name": f"Chain.add_trusted (store reload), {len(blocks):,} blocks", "value": round(rate),
                 "unit": "blocks/s", "goal": "-"})
    return rows


def _chain_memory() -> dict:
    """Memory of a 100,000-entry chain as a node holds it after reloading its store."""
    genesis = make_genesis("bench-mem", 1)
    params = NetworkParams("bench-mem", 1)
    key = bytes(range(32))
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
        chain.add_trusted(Header.from_bytes(raw), f"relay-{height % 4}", GENESIS_TIME_MS + height, 0)
    gc.collect()
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert chain.height == MEMORY_ENTRIES
    return {"name": f"chain memory, {MEMORY_ENTRIES:,} entries (4 relays)", "value": round(used / 2**20, 1),
            "unit": "MB", "goal": "< 100",
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
