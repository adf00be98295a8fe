"""The executor miner: finds real proof of work, and stops promptly when cancelled."""

from __future__ import annotations

import asyncio
import time

from gridchain.consensus import pow
from gridchain.consensus.block import Header
from gridchain.node.miner import Miner


def header(bits: int) -> Header:
    return Header(1, 1, b"\x01" * 32, b"\x02" * 32, 1_700_000_000_000, bits, b"\x03" * 32, 0)


async def test_mine_meets_target():
    miner = Miner()
    try:
        mined = await miner.mine(header(10))
        assert mined is not None and pow.meets_target(mined.hash(), 10)
    finally:
        miner.shutdown()


async def test_cancel_stops_an_impossible_job_quickly():
    miner = Miner()
    try:
        job = asyncio.create_task(miner.mine(header(200)))  # would never finish
        await asyncio.sleep(0.05)
        assert miner.busy
        started = time.perf_counter()
        miner.cancel()
        async with asyncio.timeout(2):
            assert await job is None
        # Generous bound: a chunk is ~1 ms of hashing; this only guards against "never".
        assert time.perf_counter() - started < 0.5
        assert not miner.busy
    finally:
        miner.shutdown()
