"""Store benchmarks: durable commits against the disk's own fsync rate, batched sync, reopening.

Every block carries 6 readings (a minute of the relay at its 10 s interval) and is fully
validated by the ledger (proof of work, Ed25519 signature, Merkle root, context) before
it is written; the "store only" rows skip validation to show where the time goes, and the
"checks in one thread" row turns off the threads that check a run ahead of linking it, so
their gain is measured in the same run on the same machine. Blocks are built (mined and
signed) outside the timed sections. Reopening is measured in a fresh interpreter so its
resident memory is the rebuilt chain's alone.

    python bench/bench_store.py                 # prints a table, writes bench/results_store.json
    BENCH_QUICK=1 python bench/bench_store.py   # shorter runs of the same measurements
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gridchain.consensus.block import Block
from gridchain.consensus.genesis import GENESIS_TIME_MS, make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.identity.keys import NodeKey
from gridchain.ledger.ledger import Ledger
from gridchain.ledger.store import DB_FILE, MainChange, Store
from tests.support.blocks import Tip, line, tip_of

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")  # shorter runs, same measurements
PARAMS = NetworkParams("bench-store", 1)  # proof of work is checked, but costs nothing to make
READINGS_PER_BLOCK = 6
NOW_MS = GENESIS_TIME_MS + 10**13
FSYNC_SECONDS = 1.0  # long enough to average out a disk's write-cache hiccups
ONE_BY_ONE_BLOCKS = 500 if QUICK else 2_000
BATCH = 500  # blocks per add_blocks call, about what one sync answer carries
BATCH_BLOCKS = 5_000 if QUICK else 10_000
REOPEN_SIZES = (10_000, 30_000) if QUICK else (10_000, 100_000)
RESULTS = Path(__file__).with_name("results_store.json")
ROOT = Path(__file__).resolve().parents[1]


def _blocks(tip: Tip, count: int, key: NodeKey) -> Iterator[Block]:
    """``count`` valid blocks in a line on ``tip``, made lazily so memory stays flat."""
    return line(tip, count, key, PARAMS.bits, substation="Bench", miner_name="bench", per_block=READINGS_PER_BLOCK)


def _fsync_rate(directory: Path) -> float:
    """Appends of 4 KiB, each followed by fsync: what the disk allows a durable commit."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    page = os.urandom(4096)
    count, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < FSYNC_SECONDS:
            os.write(fd, page)
            os.fsync(fd)
            count += 1
    finally:
        os.close(fd)
        path.unlink()
    return count / (time.perf_counter() - start)


def _one_by_one(directory: Path, key: NodeKey) -> tuple[float, float]:
    """(ledger blocks/s, store-only blocks/s), each block its own durable transaction."""
    (directory / "ledger").mkdir()
    ledger = Ledger.open(directory / "ledger", PARAMS, NOW_MS)
    blocks = list(_blocks(tip_of(ledger.chain), ONE_BY_ONE_BLOCKS, key))
    start = time.perf_counter()
    for block in blocks:
        ledger.add_block(block, NOW_MS)
    ledger_rate = len(blocks) / (time.perf_counter() - start)
    ledger.close()
    (directory / "store").mkdir()
    store = Store.open(directory / "store" / DB_FILE, PARAMS.name, make_genesis(PARAMS.name, PARAMS.bits))
    start = time.perf_counter()
    for block in blocks:
        store.commit([block], [MainChange(block.height - 1, (block,), block.hash)])
    store_rate = len(blocks) / (time.perf_counter() - start)
    store.close()
    return ledger_rate, store_rate


def _grow(ledger: Ledger, count: int, key: NodeKey) -> float:
    """Add ``count`` blocks in add_blocks runs of BATCH; returns blocks/s of the adding alone."""
    spent = 0.0
    for _ in range(count // BATCH):
        run = list(_blocks(tip_of(ledger.chain), BATCH, key))
        start = time.perf_counter()
        batch = ledger.add_blocks(run, NOW_MS)
        spent += time.perf_counter() - start
        assert batch.error is None, batch.error
    return count / spent


def _store_batched(directory: Path, key: NodeKey) -> float:
    (directory / "batched").mkdir()
    store = Store.open(directory / "batched" / DB_FILE, PARAMS.name, make_genesis(PARAMS.name, PARAMS.bits))
    genesis = store.get_block(store.tip_hash())
    blocks = list(_blocks(Tip(0, genesis.hash, genesis.header.time_ms, GENESIS_TIME_MS), BATCH_BLOCKS, key))
    start = time.perf_counter()
    for i in range(0, len(blocks), BATCH):
        run = blocks[i:i + BATCH]
        store.commit(run, [MainChange(run[0].height - 1, tuple(run), run[-1].hash)])
    rate = len(blocks) / (time.perf_counter() - start)
    store.close()
    return rate


_REOPEN = """
import json, os, sys, time
from pathlib import Path
from tests.support.rss import rss_kb
def rss():
    return rss_kb(os.getpid()) * 1024
from gridchain.consensus.params import NetworkParams
from gridchain.ledger.ledger import Ledger
params = NetworkParams(sys.argv[2], int(sys.argv[3]))
before = rss()
start = time.perf_counter()
ledger = Ledger.open(Path(sys.argv[1]), params, 0)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss": rss() - before, "height": ledger.height}))
"""


def _reopen(directory: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _REOPEN, str(directory), PARAMS.name, str(PARAMS.bits)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout)


def run() -> list[dict]:
    key = NodeKey.from_seed(b"\x42" * 32)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=os.environ.get("BENCH_DIR")) as tmp:
        directory = Path(tmp)
        fsync = _fsync_rate(directory)
        ledger_rate, store_rate = _one_by_one(directory, key)
        rows += [
            {"name": "disk: 4 KiB append + fsync", "value": round(fsync), "unit": "fsync/s", "goal": "-"},
            {"name": "blocks committed one at a time (Ledger.add_block)", "value": round(ledger_rate),
             "unit": "blocks/s", "goal": "near the fsync rate", "limit": round(fsync),
             "ratio": round(ledger_rate / fsync, 3)},
            {"name": "blocks committed one at a time, store only", "value": round(store_rate), "unit": "blocks/s",
             "goal": "near the fsync rate", "limit": round(fsync), "ratio": round(store_rate / fsync, 3)},
            {"name": f"blocks committed in runs of {BATCH}, store only", "value": round(_store_batched(directory, key)),
             "unit": "blocks/s", "goal": "-"},
        ]
        (directory / "inline").mkdir()
        ledger = Ledger.open(directory / "inline", PARAMS, NOW_MS, check_threads=1)
        inline_rate = _grow(ledger, BATCH_BLOCKS, key)
        ledger.close()
        (directory / "grown").mkdir()
        ledger = Ledger.open(directory / "grown", PARAMS, NOW_MS)
        done = 0
        for size in REOPEN_SIZES:
            rate = _grow(ledger, size - done, key)
            if done == 0:
                rows += [
                    {"name": f"blocks added in runs of {BATCH} (Ledger.add_blocks)", "value": round(rate),
                     "unit": "blocks/s", "goal": ">= 10000"},
                    {"name": f"blocks added in runs of {BATCH}, checks in one thread",
                     "value": round(inline_rate), "unit": "blocks/s", "goal": "-"},
                ]
            done = size
            ledger.close()
            reopened = _reopen(directory / "grown")
            assert reopened["height"] == size
            rows += [
                {"name": f"Ledger.open of {size:,} blocks (rebuild + re-check)", "value": round(reopened["seconds"], 3),
                 "unit": "s", "goal": "< 1" if size <= 10_000 else "< 5"},
                {"name": f"memory of the rebuilt chain, {size:,} blocks", "value": round(reopened["rss"] / 2**20, 1),
                 "unit": "MiB", "goal": "-"},
            ]
            ledger = Ledger.open(directory / "grown", PARAMS, NOW_MS)
        ledger.close()
    return rows


def main() -> None:
    rows = run()
    width = max(len(row["name"]) for row in rows)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'unit':<9}  {'goal':<20}  {'limit':>8}  ratio")
    for row in rows:
        print(f"{row['name']:<{width}}  {row['value']:>10}  {row['unit']:<9}  {row['goal']:<20}  "
              f"{row.get('limit', ''):>8}  {row.get('ratio', '')}")
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
