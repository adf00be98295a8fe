"""Proof-of-work mining off the event loop, in an executor thread, cancellable in milliseconds."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from gridchain.consensus import pow
from gridchain.consensus.block import Header


class Miner:
    """Runs pow.mine in a worker thread; ``cancel()`` stops the current job within one chunk."""

    def __init__(self, threads: int = 1) -> None:
        # hashlib holds the GIL for 128-byte inputs, so extra threads add no hashrate;
        # one worker keeps the event loop's share of the interpreter predictable.
        self._executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="gridchain-miner")
        self._cancel: threading.Event | None = None

    @property
    def busy(self) -> bool:
        return self._cancel is not None

    async def mine(self, header: Header) -> Header | None:
        """The header with a nonce that meets its bits, or None if cancelled first."""
        cancel = threading.Event()
        self._cancel = cancel
        loop = asyncio.get_running_loop()
        try:
            nonce = await loop.run_in_executor(
                self._executor, pow.mine, header.prefix(), header.bits, 0, pow.NONCE_LIMIT, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            if self._cancel is cancel:
                self._cancel = None
        return None if nonce is None else header.with_nonce(nonce)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def shutdown(self) -> None:
        self.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
