"""The node's one port: accept, bound, read the first frame, hand the connection on.

Peers and the operator's tool share the port. The listener reads each connection's first
frame (with the one frame reader every connection uses, gridchain.wire.streams) and routes
by it: an operator request goes to the operator API, anything else to the peer protocol,
which then checks it is a hello. Neither side looks at the other's messages. This routing
lives with the composition root because the peer layer (gridchain.net) never imports the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gridchain.net import protocol
from gridchain.wire.frames import MAX_FRAME_BYTES, FrameError
from gridchain.wire.streams import READ_CHUNK, ConnectionClosed, FrameReader

Serve = Callable[[FrameReader, asyncio.StreamWriter, str], Awaitable[None]]


class Listener:
    """Accepts on ``host:port`` and routes each connection by its first frame."""

    def __init__(self, host: str, port: int, *, max_inbound: int, inbound_peers: Callable[[], int],
                 is_operator: Callable[[object], bool], serve_peer: Serve, serve_operator: Serve, log,
                 max_frame: int = MAX_FRAME_BYTES) -> None:
        self.host = host
        self.port = port
        self.max_inbound = max_inbound
        self.inbound_peers = inbound_peers  # inbound peer connections now open
        self.is_operator = is_operator
        self.serve_peer = serve_peer
        self.serve_operator = serve_operator
        self.max_frame = max_frame
        self.log = log
        self.server: asyncio.Server | None = None
        self._unrouted = 0  # accepted sockets that have not sent a whole frame yet

    @property
    def listening(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, self.host, self.port, limit=READ_CHUNK)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop accepting; the connections already handed on are their owners' to close."""
        if self.server is not None:
            self.server.close()

    async def wait_closed(self) -> None:
        if self.server is None:
            return
        try:
            async with asyncio.timeout(2.0):
                await self.server.wait_closed()
        except TimeoutError:
            pass

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        address = f"{host}:{port}"
        # Sockets still waiting for their first frame count too: otherwise any number of
        # silent connections could each hold a socket and a task for the handshake timeout.
        if self.inbound_peers() + self._unrouted >= self.max_inbound:
            self.log.info("peer.refused", peer=address, reason="too-many-inbound")
            writer.transport.abort()
            return
        frames = FrameReader(reader, self.max_frame)
        self._unrouted += 1
        try:
            first = await frames.peek(protocol.HANDSHAKE_TIMEOUT_S)
        except (TimeoutError, FrameError, ConnectionClosed) as exc:
            reason = getattr(exc, "reason", None) or ("handshake-timeout" if isinstance(exc, TimeoutError) else "closed")
            self.log.info("peer.refused", peer=address, reason=reason, detail=str(exc))
            writer.transport.abort()
            return
        finally:
            self._unrouted -= 1
        if first is None:
            writer.transport.abort()
            return
        serve = self.serve_operator if self.is_operator(first) else self.serve_peer
        await serve(frames, writer, address)
