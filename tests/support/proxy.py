"""A fault-injecting TCP proxy for partition tests and benchmarks: forward, cut, delay, drop, heal."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards to a target; ``cut()`` drops every link
    and refuses new ones until ``heal()``; ``delay_s`` holds each chunk back; each chunk
    resets its connection with probability ``drop_probability`` (the chunk and the rest of
    the stream are lost, as when a flaky link dies). Bytes are never dropped from a live
    stream: that would be corruption, not a network fault. Runs on the caller's event loop."""

    def __init__(self, target_port: int, delay_s: float = 0.0, drop_probability: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.drop_probability = drop_probability
        self.rng = rng or random.Random()
        self.drops = 0  # connections reset by drop_probability
        self.cut_off = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._links: set[asyncio.Task] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self, reset: bool = False) -> None:
        """Drop every link; with ``reset`` each end gets a TCP RST instead of a clean FIN."""
        self.cut_off = True
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:
                # Linger on, timeout 0: close() sends RST, as a crashed middlebox would.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()

    def heal(self) -> None:
        """Let links through again, with no delay or drops."""
        self.cut_off = False
        self.set_faults()

    def set_faults(self, delay_s: float = 0.0, drop_probability: float = 0.0) -> None:
        self.delay_s, self.drop_probability = delay_s, drop_probability

    async def close(self) -> None:
        """Cut every link and wait for their tasks to end (left running, the loop's shutdown
        would cancel them and asyncio would log a traceback for each)."""
        self.cut()
        if self._server is not None:
            self._server.close()
        if self._links:
            await asyncio.wait(self._links, timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._links.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._links.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(2):
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._pipe(reader, up_writer))
                tasks.create_task(self._pipe(up_reader, writer))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self.cut_off:
            data = await reader.read(65536)
            if not data:
                break
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.cut_off:
                break
            if self.drop_probability and self.rng.random() < self.drop_probability:
                self.drops += 1
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
