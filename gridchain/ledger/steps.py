"""Long ledger work done a slice at a time, so the event loop is never held for long.

The work is a generator that yields between steps (a block decoded, a few thousand rows
written) and returns its result. A step may yield a ``concurrent.futures.Future`` (work a
thread is doing for it, such as a sync batch's signature checks): the work resumes once it is
done, and the event loop is not held meanwhile. ``Steps.run_sliced`` runs it on the event loop, at most
``SLICE_S`` at a time, letting every other task run between slices; ``Steps.finish`` runs
whatever is left at once, for a caller that cannot wait (a write that must not interleave
with this one). A run that is cancelled closes the generator, which undoes its work (its
``except``/``finally`` clauses run, as for any exception).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Generator
from typing import Generic, TypeVar

T = TypeVar("T")

# The longest the event loop waits on such work at a time: well under the 50 ms a reorg of
# any depth may hold it, with room for the rest of that turn of the loop.
SLICE_S = 0.02
# The pause between slices is a timer, not sleep(0): a task that I/O or a timer woke during a
# slice then runs before the next slice, not after it (sleep(0) would let the work go first).
PAUSE_S = 0.001


class Steps(Generic[T]):
    """One generator of steps, run sliced or at once, whichever asks first."""

    def __init__(self, steps: Generator[object, None, T]) -> None:
        self._steps = steps
        self.done = False
        self.slices = 0  # slices it took (the loop ran between each two)
        self._value: T | None = None
        self._error: BaseException | None = None
        self.waiting: concurrent.futures.Future | None = None  # what the work waits for before its next step

    def run_until(self, deadline: float, *, block: bool = False) -> bool:
        """Run steps until the work is done, ``deadline`` (perf_counter) has passed or (unless
        ``block``) it waits for a thread; True: done."""
        while not self.done:
            if self.waiting is not None:
                if not self.waiting.done():
                    if not block:
                        break
                    concurrent.futures.wait([self.waiting])
                self.waiting = None
            try:
                step = next(self._steps)
            except StopIteration as stop:
                self.done, self._value = True, stop.value
            except BaseException as exc:  # the work's own failure: handed to whoever waits for the result
                self.done, self._error = True, exc
            else:
                if isinstance(step, concurrent.futures.Future):
                    self.waiting = step
            if time.perf_counter() >= deadline:
                break
        return self.done

    def finish(self) -> None:
        """Run the rest now, waiting for its threads (its result or failure waits for ``result``)."""
        self.run_until(math.inf, block=True)

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    async def run_sliced(self, slice_s: float = SLICE_S) -> T:
        """Run the work on the event loop a slice at a time; its result (or its exception)."""
        try:
            while not self.run_until(time.perf_counter() + slice_s):
                self.slices += 1
                waiting = self.waiting
                if waiting is not None and not waiting.done():
                    # Its outcome is the work's to read (the step after this one does).
                    await asyncio.wait([asyncio.wrap_future(waiting)])
                else:
                    await asyncio.sleep(PAUSE_S)
        finally:
            if not self.done:
                self._steps.close()  # cancelled: the generator undoes what it did
                self.done = True
        return self.result()


def exhaust(steps: Generator[object, None, T]) -> T:
    """Run a generator of steps to its end at once, waiting for any thread it waits for; its result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if isinstance(step, concurrent.futures.Future):
            concurrent.futures.wait([step])
