"""A TCP relay in front of a device server that stalls or cuts the link on demand.

Used where the protocol library gives no per-request hook (dnp3py's outstation answers
synchronously): with Fault.STALL the device's answers are held back (the device accepts
requests and goes silent), with Fault.DISCONNECT the connection is cut as soon as the
client sends a request on an established link (the middle of a poll). Bytes are passed on
unchanged otherwise; the proxy knows nothing of the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gridchain.relay.devices.device import Fault

CHUNK = 65536


class FaultProxy:
    """Listens on host:port (0 = any free port) and forwards to target_host:target_port."""

    def __init__(self, fault: Callable[[], Fault], target_host: str, target_port: int, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._fault, self.target = fault, (target_host, target_port)
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop_connections()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    def drop_connections(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            device_r, device_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._links.update((client_w, device_w))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(client_r, device_w, upstream=True))
                group.create_task(self._pump(device_r, client_w, upstream=False))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_w, device_w):
                self._links.discard(writer)
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        first = True
        while data := await reader.read(CHUNK):
            fault = self._fault()
            if upstream and fault is Fault.DISCONNECT and not first:
                raise ConnectionAbortedError("disconnect fault")
            first = False
            if not upstream and fault is Fault.STALL:
                continue  # the device answered; the client never hears it
            writer.write(data)
            await writer.drain()
        raise ConnectionResetError("peer closed")
