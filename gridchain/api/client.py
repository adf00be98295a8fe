"""asyncio client for a node's operator protocol (the requests ``gridchain.api.server`` answers).

One ``NodeClient`` is one TCP connection to a node's port. Requests are answered in order;
every await is bounded by a timeout except ``subscribe``, which waits for blocks as long as
the node keeps the connection. Failures come out as two exception types a caller can turn
into one line for a person: ``NodeUnavailable`` (no connection, or it broke) and
``RequestFailed`` (the node answered with an error).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Mapping

from gridchain.config import DEFAULT_PORT, Address
from gridchain.consensus.errors import GridchainError
from gridchain.api.messages import (
    MAX_HEADERS, MAX_READINGS_PAGE, BlockEvent, BlockReply, BlockRequest, Error, HeadersReply, HeadersRequest, MessageError, ProofReply,
    ProofRequest, ReadingsReply, ReadingsRequest, Status, StatusRequest, Subscribe, VerifyReply, VerifyRequest,
    decode_message, encode_message,
)
from gridchain.wire.streams import ConnectionClosed, close_writer, read_frame, write_frame
from gridchain.wire.frames import MAX_FRAME_BYTES, FrameError

NODE_ENV = "GRIDCHAIN_NODE"  # the node a client asks when none is named (docker-compose sets it per service)
DEFAULT_NODE = Address("127.0.0.1", DEFAULT_PORT)
DEFAULT_TIMEOUT_S = 5.0  # a node on the LAN answers status in milliseconds; 5 s means trouble
# A node audits its whole store for `verify`: ~100k blocks a minute or so, so allow an hour.
VERIFY_TIMEOUT_S = 3600.0
# Rows per request: ~140 KB answers. Measured: 1000 streams as fast as the 5000 maximum
# (~85k rows/s either way) and keeps the client's memory flat.
READINGS_PAGE = 1000


def default_node(env: Mapping[str, str] | None = None) -> Address:
    """``$GRIDCHAIN_NODE`` (HOST:PORT), else 127.0.0.1:5004; ValueError naming the variable if it is bad."""
    text = (os.environ if env is None else env).get(NODE_ENV, "").strip()
    if not text:
        return DEFAULT_NODE
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise ValueError(f"{NODE_ENV}: {exc}") from None


class NodeUnavailable(Exception):
    """No connection to the node could be made, or it broke mid-request."""

    def __init__(self, address: Address, detail: str) -> None:
        super().__init__(f"node {address} is not reachable ({detail})")
        self.address = address
        self.detail = detail


class RequestFailed(GridchainError):
    """The node answered a request with an error (``reason`` is its stable name)."""


class NodeClient:
    """``async with NodeClient(Address.parse("127.0.0.1:5004")) as node: await node.status()``."""

    def __init__(self, address: Address, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = address
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._unanswered = 0  # requests sent whose answers nobody has read yet (prefetch)

    async def __aenter__(self) -> NodeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(self.address.host, self.address.port)
        except TimeoutError:
            raise NodeUnavailable(self.address, f"no answer within {self.timeout:g} s") from None
        except ConnectionRefusedError:
            raise NodeUnavailable(self.address, "connection refused") from None
        except socket.gaierror:
            raise NodeUnavailable(self.address, f"unknown host {self.address.host!r}") from None
        except OSError as exc:
            raise NodeUnavailable(self.address, (exc.strerror or str(exc)).lower()) from None

    async def close(self) -> None:
        if self._writer is not None:
            await close_writer(self._writer)
            self._writer = self._reader = None

    # --- requests -----------------------------------------------------------------------------
    async def status(self) -> dict:
        reply = await self._request(StatusRequest(), Status)
        return reply.info

    async def block(self, hash: bytes | None = None, height: int | None = None) -> BlockReply:
        """The block with this hash (on any branch) or at this main-chain height."""
        if (hash is None) == (height is None):
            raise ValueError("give exactly one of hash and height")
        return await self._request(BlockRequest(hash=hash, height=height), BlockReply)

    async def headers(self, start: int, stop: int) -> list[dict]:
        """Summary rows of main-chain blocks start..stop (inclusive; the node may cap the count)."""
        reply = await self._request(HeadersRequest(start=start, stop=stop), HeadersReply)
        return list(reply.rows)

    async def header_pages(self, start: int, stop: int) -> AsyncIterator[list[dict]]:
        """Rows start..stop in pages, so a long range never sits in memory at once."""
        while start <= stop:
            rows = await self.headers(start, min(stop, start + MAX_HEADERS - 1))
            if not rows:
                return
            yield rows
            start = rows[-1]["height"] + 1

    async def readings(self, relay: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
                       page: int = READINGS_PAGE) -> AsyncIterator[list]:
        """Main-chain readings in pages (oldest first), fetched with a keyset cursor.

        The next page is requested before the current one is handed over, so the node works
        while the caller writes.
        """
        page = max(1, min(page, MAX_READINGS_PAGE))

        def request(after: object) -> ReadingsRequest:
            return ReadingsRequest(relay=relay, since_ms=since_ms, until_ms=until_ms, after=after, limit=page)

        await self._settle()
        await self._send(request(None))
        while True:
            reply = await self._receive(ReadingsReply, self.timeout)
            more = bool(reply.rows) and reply.next is not None
            if more:
                await self._send(request(reply.next))
            if reply.rows:
                yield list(reply.rows)
            if not more:
                return

    async def proof(self, relay: str, timestamp_ms: int) -> ProofReply:
        return await self._request(ProofRequest(relay=relay, timestamp_ms=timestamp_ms), ProofReply)

    async def verify(self, timeout: float = VERIFY_TIMEOUT_S) -> VerifyReply:
        """Ask the node to re-check its whole stored chain (slow: minutes on a long chain)."""
        return await self._request(VerifyRequest(), VerifyReply, timeout)

    async def subscribe(self) -> AsyncIterator[BlockEvent]:
        """Each block that joins the node's main chain, as it happens, until the connection ends."""
        await self._settle()
        await self._send(Subscribe())
        self._unanswered = 0  # the connection is a feed from now on
        while True:
            yield await self._receive(BlockEvent, None)

    # --- plumbing -----------------------------------------------------------------------------
    async def _request(self, message: object, expected: type, timeout: float | None = None):
        await self._settle()
        await self._send(message)
        return await self._receive(expected, self.timeout if timeout is None else timeout)

    async def _settle(self) -> None:
        """Read and drop answers to requests a caller abandoned (a stream stopped early)."""
        while self._unanswered:
            await self._receive(object, self.timeout)

    async def _send(self, message: object) -> None:
        if self._writer is None:
            raise NodeUnavailable(self.address, "not connected")
        try:
            await write_frame(self._writer, encode_message(message), self.timeout)
        except (ConnectionClosed, ConnectionError) as exc:
            raise NodeUnavailable(self.address, f"connection lost: {exc}") from None
        except TimeoutError:
            raise NodeUnavailable(self.address, f"not reading requests within {self.timeout:g} s") from None
        self._unanswered += 1

    async def _receive(self, expected: type, timeout: float | None):
        if self._reader is None:
            raise NodeUnavailable(self.address, "not connected")
        try:
            raw = await read_frame(self._reader, MAX_FRAME_BYTES, timeout)
        except ConnectionClosed:
            raise NodeUnavailable(self.address, "the node closed the connection") from None
        except ConnectionError as exc:
            raise NodeUnavailable(self.address, f"connection lost: {exc}") from None
        except TimeoutError:
            raise NodeUnavailable(self.address, f"no answer within {timeout:g} s") from None
        except FrameError as exc:
            raise RequestFailed("bad-reply", str(exc)) from None
        self._unanswered = max(0, self._unanswered - 1)
        try:
            reply = decode_message(raw)
        except MessageError as exc:
            raise RequestFailed("bad-reply", str(exc)) from None
        if isinstance(reply, Error) and expected is not object:
            raise RequestFailed(reply.reason, reply.detail)
        if not isinstance(reply, expected):
            raise RequestFailed("bad-reply", f"expected {expected.__name__}, got {type(reply).__name__}")
        return reply
