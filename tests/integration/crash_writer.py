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

from gridchain.consensus.block import Block
from gridchain.consensus.genesis import GENESIS_TIME_MS
from gridchain.consensus.params import NetworkParams
from gridchain.identity.keys import NodeKey
from gridchain.ledger.ledger import Ledger
from tests.support.blocks import Tip, line, tip_after, tip_of

PARAMS = NetworkParams("crash-test", 4)  # 16 hashes a block: real proof of work, no waiting
RELAY = "crash-relay"
NOW_MS = GENESIS_TIME_MS + 10**12  # past any block time this writer reaches
BATCH = 4


def blocks_on(parent: Tip, count: int, key: NodeKey, rng: random.Random) -> list[Block]:
    """``count`` blocks in a line on ``parent``; their readings vary with ``rng``, so a side
    block differs from the tip it competes with."""
    return list(line(parent, count, key, PARAMS.bits, relay_id=RELAY, substation="Crash Substation",
                     miner_name="writer", rng=rng))


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
            side, = blocks_on(tip_of(ledger.chain, RELAY, tip.parent), 1, key, rng)
            assert ledger.add_block(side, NOW_MS).result.status == "side"
            report(side.hash)
            winner, = blocks_on(tip_after(side), 1, key, rng)
            assert ledger.add_block(winner, NOW_MS).result.status == "reorg"
            report(winner.hash)
        elif choice < 0.3:
            blocks = blocks_on(tip_of(ledger.chain, RELAY, tip), BATCH, key, rng)
            batch = ledger.add_blocks(blocks, NOW_MS)
            assert batch.error is None, batch.error
            for update in batch.updates:
                report(update.result.entry.hash)
        else:
            block, = blocks_on(tip_of(ledger.chain, RELAY, tip), 1, key, rng)
            ledger.add_block(block, NOW_MS)
            report(block.hash)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
