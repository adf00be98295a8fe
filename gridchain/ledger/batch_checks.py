"""BatchChecks: the context-free checks of a sync batch, run in threads ahead of linking."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from gridchain.consensus import rules
from gridchain.consensus.block import Block
from gridchain.consensus.params import NetworkParams

CHECK_CHUNK = 16  # blocks per thread task: a future per block would cost a third of a check


class BatchChecks:
    """``check_block`` of a run of blocks, started in a thread pool: which blocks passed it.

    Blocks go to the pool in chunks, in order, so the first chunks are done while the
    ledger links them and the later ones are still being checked. A block that failed, for
    whatever reason, is just "not passed": ``Chain.add`` then runs the same checks inline
    and raises what they raise, in the run's order.
    """

    def __init__(self, pool: ThreadPoolExecutor, blocks: Sequence[Block], params: NetworkParams,
                 now_ms: int) -> None:
        self._size = CHECK_CHUNK
        self.count = len(blocks)  # blocks in the run: a run of another length cannot use these
        self._futures: list[Future[list[bool]]] = [
            pool.submit(_passes_check_block, blocks[start:start + self._size], params, now_ms)
            for start in range(0, len(blocks), self._size)]
        self._chunk = -1
        self._passed: list[bool] = []

    def pending(self, index: int) -> Future[list[bool]] | None:
        """The future of block ``index``'s chunk while its thread is still on it (None: done),
        for a caller that would rather wait for it without blocking (gridchain.ledger.steps)."""
        future = self._futures[index // self._size]
        return None if future.done() else future

    def passed(self, index: int) -> bool:
        """Whether block ``index`` of the run passed; waits for its chunk."""
        chunk = index // self._size
        if chunk != self._chunk:
            self._chunk, self._passed = chunk, self._futures[chunk].result()
        return self._passed[index % self._size]

    def cancel(self) -> None:
        """Drop the chunks no thread has started (the ones running finish and are ignored)."""
        for future in self._futures:
            future.cancel()


def _passes_check_block(blocks: Sequence[Block], params: NetworkParams, now_ms: int) -> list[bool]:
    passed = []
    for block in blocks:
        try:
            rules.check_block(block, params, now_ms)
        except Exception:  # whatever it was, Chain.add meets it again inline and raises it there
            passed.append(False)
        else:
            passed.append(True)
    return passed
