"""Ledger work a slice at a time: ``Steps`` waits for threads without holding the loop, and a
sync batch added sliced reads, commits and fails exactly as one added at once."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gridchain.ledger.ledger import Ledger
from gridchain.ledger.steps import Steps, exhaust
from tests.support.blocks import NOW_MS, PARAMS, Relay
from tests.unit.test_ledger import _chain_of, add_line


def _work(release: threading.Event, pool: ThreadPoolExecutor, log: list[str]):
    log.append("start")
    future = pool.submit(release.wait, 5)
    yield future  # a thread's work this one needs before going on
    log.append(f"thread done: {future.result()}")
    yield
    return "finished"


async def test_a_step_waiting_for_a_thread_lets_the_loop_run_meanwhile():
    release, log = threading.Event(), []
    with ThreadPoolExecutor(1) as pool:
        job = Steps(_work(release, pool, log))
        runner = asyncio.create_task(job.run_sliced())
        await asyncio.sleep(0.05)  # the loop runs while the thread waits
        assert log == ["start"] and not job.done
        release.set()
        assert await asyncio.wait_for(runner, 5) == "finished"
    assert log == ["start", "thread done: True"]


def test_finish_and_exhaust_wait_for_the_thread():
    for run in ("finish", "exhaust"):
        release, log = threading.Event(), []
        with ThreadPoolExecutor(1) as pool:
            threading.Timer(0.05, release.set).start()
            if run == "finish":
                job = Steps(_work(release, pool, log))
                job.finish()
                assert job.result() == "finished"
            else:
                assert exhaust(_work(release, pool, log)) == "finished"
        assert log == ["start", "thread done: True"], run


@pytest.fixture
def threaded(tmp_path):
    led = Ledger.open(tmp_path, PARAMS, NOW_MS, check_threads=2)
    yield led
    led.close()


async def test_a_batch_added_sliced_is_stored_as_one_added_at_once(threaded, tmp_path):
    relay = Relay("relay-1")
    add_line(threaded, 2, relay)
    blocks = _chain_of(threaded, 40, relay)
    batch = await threaded.add_blocks_sliced(blocks, NOW_MS)
    assert batch.error is None and [u.result.status for u in batch.updates] == ["extended"] * 40
    assert threaded.height == 42 and threaded.store.tip_hash() == blocks[-1].hash
    assert all(threaded.store.get_raw(b.hash) == b.encode() for b in blocks)


async def test_blocks_linked_but_not_yet_committed_are_served_meanwhile(threaded):
    relay = Relay("relay-1")
    blocks = _chain_of(threaded, 200, relay)
    seen: list[bool] = []

    async def reader() -> None:
        # Whatever the chain shows while the batch is still going in, the ledger can hand out.
        while not done.is_set():
            tip = threaded.tip
            seen.append(threaded.get_raw(tip.hash) is not None and threaded.get_block(tip.hash) is not None)
            await asyncio.sleep(0)

    done = asyncio.Event()
    task = asyncio.create_task(reader())
    slow = threaded.store.commit_steps

    def slow_commit(*args, **kwargs):
        for step in slow(*args, **kwargs):
            time.sleep(0.03)  # a commit step long enough for the slicer to let the reader in
            yield step
        time.sleep(0.03)
        yield

    threaded.store.commit_steps = slow_commit
    await threaded.add_blocks_sliced(blocks, NOW_MS)
    done.set()
    await task
    assert len(seen) > 1 and all(seen)


async def test_a_write_meanwhile_finishes_the_sliced_batch_first(threaded):
    *blocks, own = _chain_of(threaded, 201, Relay("relay-1"))
    runner = asyncio.create_task(threaded.add_blocks_sliced(blocks, NOW_MS))
    while threaded.height == 0:
        await asyncio.sleep(0)
    assert threaded.height < 200, "the batch went in before the loop ran"
    # Another write (a block of our own on the batch's tip) must not interleave with the batch's
    # transaction: the ledger finishes the batch, then adds it.
    assert threaded.add_block(own, NOW_MS).result.status == "extended"
    batch = await asyncio.wait_for(runner, 10)
    assert batch.error is None and len(batch.updates) == 200
    assert threaded.height == 201 and threaded.store.tip_hash() == own.hash


async def test_a_reorg_by_justification_is_written_a_slice_at_a_time(tmp_path):
    """Votes that justify a checkpoint on a lighter branch move the main chain to it: the
    blocks of both branches are decoded and the main table rewritten while the loop runs."""
    from tests.unit.test_ledger_finality import FPARAMS, add_line as add_member_line, cp, vote

    ledger = Ledger.open(tmp_path, FPARAMS, NOW_MS)
    try:
        genesis = ledger.chain.main_at(0)
        light = add_member_line(ledger, 1, Relay("relay-b"))[0]
        heavy = add_member_line(ledger, 60, Relay("relay-a"), parent=genesis)
        assert ledger.tip.hash == heavy[-1].hash
        for i in (0, 1):
            await ledger.add_vote_sliced(vote(i, ledger.finalized, cp(ledger.chain.get(light.hash))), NOW_MS)
        slow = ledger.store.commit_steps

        def slow_commit(*args, **kwargs):
            for step in slow(*args, **kwargs):
                time.sleep(0.005)  # long enough steps that the slicer lets the loop in between
                yield step

        ledger.store.commit_steps = slow_commit
        midway: list[bool] = []  # the chain on the new branch while the store still shows the old tip

        async def watch() -> None:
            while True:
                midway.append(ledger.tip.hash == light.hash and ledger.store.tip_hash() != light.hash)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        change = await ledger.add_vote_sliced(vote(2, ledger.finalized, cp(ledger.chain.get(light.hash))), NOW_MS)
        watcher.cancel()
        assert change.reorg is not None and change.reorg.result.status == "reorg"
        assert len(change.reorg.result.disconnected) == 60
        assert any(midway), "the reorg was written in one go"
        assert ledger.tip.hash == light.hash == ledger.store.tip_hash()
        assert ledger.store.main_hash_at(1) == light.hash and ledger.store.main_hash_at(2) is None
    finally:
        ledger.close()
