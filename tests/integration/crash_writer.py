"""Commit blocks through a Ledger as fast as it can, printing each committed block's hash.

test_store_crash.py kills this process with SIGKILL at random moments; every hash printed
here was returned by the ledger as committed, so it must be in the store after the kill.
The mix exercises every write path: single blocks on the tip, side blocks followed by the
reorg that makes them main, and batches through ``add_blocks``.

    python crash_writer.py DATA_DIR SEED        # prints "ready", then one hex hash per line
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import NamedTuple

from gridchain.consensus import pow
from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header, Reading
from gridchain.consensus.genesis import GENESIS_TIME_MS
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.params import NetworkParams
from gridchain.identity.keys import NodeKey
from gridchain.ledger.ledger import Ledger

PARAMS = NetworkParams("crash-test", 4)  # 16 hashes a block: real proof of work, no waiting
RELAY = "crash-relay"
READING_MS = 10_000
PER_BLOCK = 6
BLOCK_MS = PER_BLOCK * READING_MS  # block times keep pace with the readings they carry
NOW_MS = GENESIS_TIME_MS + 10**12  # past any block time this writer reaches
BATCH = 4


class Parent(NamedTuple):
    height: int
    hash: bytes
    time_ms: int
    newest_ms: int


def parent_of_entry(ledger: Ledger, entry) -> Parent:
    newest = ledger.chain.newest_reading_ms(RELAY, entry)
    return Parent(entry.height, entry.hash, entry.header.time_ms, GENESIS_TIME_MS if newest is None else newest)


def parent_of_block(block: Block) -> Parent:
    return Parent(block.height, block.hash, block.header.time_ms, block.capture.newest_ms)


def make_block(parent: Parent, key: NodeKey, rng: random.Random) -> Block:
    readings = tuple(
        Reading(parent.newest_ms + (i + 1) * READING_MS, 115.0, 115.1, 114.9, 400 + rng.random(), 401.0,
                402.0, 60.0, 0.97, 80.0 + rng.random(), 19.5)
        for i in range(PER_BLOCK))
    capture = Capture(RELAY, "Crash Substation", 0, readings)
    header = Header(BLOCK_VERSION, parent.height + 1, parent.hash, payload_root(capture, "writer"),
                    parent.time_ms + BLOCK_MS, PARAMS.bits, key.public_key, 0)
    nonce = pow.mine(header.prefix(), header.bits)
    mined = header.with_nonce(nonce)
    return Block(mined, key.sign(mined.hash()), capture, "writer")


def report(block_hash: bytes) -> None:
    sys.stdout.write(block_hash.hex() + "\n")
    sys.stdout.flush()


def main(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    key = NodeKey.from_seed(bytes([seed % 256]) * 32)
    ledger = Ledger.open(data_dir, PARAMS, NOW_MS)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        choice = rng.random()
        tip = ledger.tip
        if choice < 0.15 and tip.height >= 1:
            side = make_block(parent_of_entry(ledger, tip.parent), key, rng)
            assert ledger.add_block(side, NOW_MS).result.status == "side"
            report(side.hash)
            winner = make_block(parent_of_block(side), key, rng)
            assert ledger.add_block(winner, NOW_MS).result.status == "reorg"
            report(winner.hash)
        elif choice < 0.3:
            blocks, parent = [], parent_of_entry(ledger, tip)
            for _ in range(BATCH):
                blocks.append(make_block(parent, key, rng))
                parent = parent_of_block(blocks[-1])
            batch = ledger.add_blocks(blocks, NOW_MS)
            assert batch.error is None, batch.error
            for update in batch.updates:
                report(update.result.entry.hash)
        else:
            block = make_block(parent_of_entry(ledger, tip), key, rng)
            ledger.add_block(block, NOW_MS)
            report(block.hash)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
