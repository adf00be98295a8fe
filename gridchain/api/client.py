"""asyncio client for a node's operator protocol (the requests ``gridchain.api.server`` answers).

One ``NodeClient`` is one connection to a node's operator port (by default the peer port +
1000, on 127.0.0.1: 6004), or to its Unix socket (``unix:PATH``). To a node on another host
it speaks TLS 1.3, pinned to the node's key when one is given (``node_key``,
``$GRIDCHAIN_NODE_KEY``); a token (``token``, ``$GRIDCHAIN_TOKEN`` or the file named by
``$GRIDCHAIN_TOKEN_FILE``) opens the session with its role (docs/security.md). Requests are answered in order;
every await is bounded by a timeout except ``subscribe``, which waits for blocks as long as
the node keeps the connection. Failures come out as two exception types a caller can turn
into one line for a person: ``NodeUnavailable`` (no connection, or it broke) and
``RequestFailed`` (the node answered with an error).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import ssl
from collections.abc import AsyncIterator, Mapping

from gridchain.api.access import AUTH_OK_TYPE, AUTH_TYPE, read_token_file
from gridchain.config import API_PORT_OFFSET, DEFAULT_PORT, Address
from gridchain.identity.tls import client_context
from gridchain.consensus.block import Header
from gridchain.consensus.errors import GridchainError
from gridchain.api.messages import (
    MAX_RAW_HEADERS, FinalityReply, FinalityRequest, RawHeadersReply, RawHeadersRequest,
    MAX_HEADERS, MAX_READINGS_PAGE, BlockEvent, BlockReply, BlockRequest, Error, HeadersReply, HeadersRequest, MessageError, ProofReply,
    ProofRequest, ReadingsReply, ReadingsRequest, Status, StatusRequest, Subscribe, VerifyReply, VerifyRequest,
    decode_message, encode_message,
)
from gridchain.wire.streams import ConnectionClosed, close_writer, read_frame, write_frame
from gridchain.wire.frames import MAX_FRAME_BYTES, FrameError

NODE_ENV = "GRIDCHAIN_NODE"  # the node a client asks when none is named (docker-compose sets it per service)
TOKEN_ENV = "GRIDCHAIN_TOKEN"  # the token itself
TOKEN_FILE_ENV = "GRIDCHAIN_TOKEN_FILE"  # or a file holding it (e.g. <data-dir>/admin.token)
NODE_KEY_ENV = "GRIDCHAIN_NODE_KEY"  # the node's key (hex): a TLS session to it is pinned to that key
DEFAULT_NODE = Address("127.0.0.1", DEFAULT_PORT + API_PORT_OFFSET)
UNIX_PREFIX = "unix:"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
DEFAULT_TIMEOUT_S = 5.0  # a node on the LAN answers status in milliseconds; 5 s means trouble
# A node audits its whole store for `verify`: ~100k blocks a minute or so, so allow an hour.
VERIFY_TIMEOUT_S = 3600.0
# Rows per request: ~140 KB answers. Measured: 1000 streams as fast as the 5000 maximum
# (~85k rows/s either way) and keeps the client's memory flat.
READINGS_PAGE = 1000


class SocketAddress(Address):
    """A node's operator API on a Unix socket (``unix:PATH``); ``host`` holds the path."""

    def __str__(self) -> str:
        return UNIX_PREFIX + self.host


def parse_node(text: str) -> Address:
    """``HOST:PORT`` (the operator port) or ``unix:PATH``; ValueError naming the problem."""
    text = text.strip()
    if text.startswith(UNIX_PREFIX):
        if not text[len(UNIX_PREFIX):]:
            raise ValueError(f"bad address {text!r}: no socket path after unix:")
        return SocketAddress(text[len(UNIX_PREFIX):], 0)
    return Address.parse(text)


def default_node(env: Mapping[str, str] | None = None) -> Address:
    """``$GRIDCHAIN_NODE`` (HOST:PORT or unix:PATH), else 127.0.0.1:6004; ValueError naming the variable if bad."""
    text = (os.environ if env is None else env).get(NODE_ENV, "").strip()
    if not text:
        return DEFAULT_NODE
    try:
        return parse_node(text)
    except ValueError as exc:
        raise ValueError(f"{NODE_ENV}: {exc}") from None


# What the `gridchain` tool's --token-file and --node-key say, for every client it opens
# (set for one command, so they never outlive it): a token file path and a key's hex.
ACCESS: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "gridchain_client_access", default=(None, None))


def default_token(env: Mapping[str, str] | None = None) -> str | None:
    """The --token-file's, else ``$GRIDCHAIN_TOKEN``, else the first line of ``$GRIDCHAIN_TOKEN_FILE``, else None."""
    env = os.environ if env is None else env
    token_file, _ = ACCESS.get()
    token = env.get(TOKEN_ENV, "").strip() if token_file is None else ""
    if token:
        return token
    path = token_file or env.get(TOKEN_FILE_ENV, "").strip()
    if path:
        try:
            return read_token_file(path) or None
        except OSError as exc:
            raise ValueError(f"{TOKEN_FILE_ENV}: {path}: {exc.strerror or exc}") from None
    return None


def default_node_key(env: Mapping[str, str] | None = None) -> bytes | None:
    text = ACCESS.get()[1] or (os.environ if env is None else env).get(NODE_KEY_ENV, "").strip()
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{NODE_KEY_ENV}: {text!r} is not a node key (64 hex digits)")
    return key


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

    def __init__(self, address: Address, timeout: float = DEFAULT_TIMEOUT_S, *, token: str | None = None,
                 node_key: bytes | None = None, tls: bool | None = None) -> None:
        """``token``/``node_key`` None: from the environment (see the module); ``tls`` None: TLS
        to any host but this one's loopback, or whenever ``node_key`` pins the node."""
        self.address = address
        self.timeout = timeout
        self.token = token if token is not None else default_token()
        self.node_key = node_key if node_key is not None else default_node_key()
        is_socket = isinstance(address, SocketAddress)
        self.tls = (not is_socket and (address.host not in LOOPBACK_HOSTS or self.node_key is not None)
                    if tls is None else tls)
        self.role: str | None = None  # what the node granted, once a token was sent
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
                if isinstance(self.address, SocketAddress):
                    self._reader, self._writer = await asyncio.open_unix_connection(self.address.host)
                elif self.tls:
                    self._reader, self._writer = await asyncio.open_connection(
                        self.address.host, self.address.port, ssl=client_context(self.node_key),
                        server_hostname=self.address.host)
                else:
                    self._reader, self._writer = await asyncio.open_connection(self.address.host, self.address.port)
        except TimeoutError:
            raise NodeUnavailable(self.address, f"no answer within {self.timeout:g} s") from None
        except ConnectionRefusedError:
            raise NodeUnavailable(self.address, "connection refused") from None
        except socket.gaierror:
            raise NodeUnavailable(self.address, f"unknown host {self.address.host!r}") from None
        except ssl.SSLError as exc:
            raise NodeUnavailable(self.address, f"TLS: {exc.reason or exc}".lower()) from None
        except OSError as exc:
            raise NodeUnavailable(self.address, (exc.strerror or str(exc)).lower()) from None
        if self.token is not None:
            await self._authenticate()

    async def _authenticate(self) -> None:
        """Open the session with the token; RequestFailed (bad-token, ...) if the node refuses it."""
        try:
            await write_frame(self._writer, [AUTH_TYPE, {"token": self.token}], self.timeout)
            reply = await read_frame(self._reader, MAX_FRAME_BYTES, self.timeout)
        except (ConnectionClosed, ConnectionError) as exc:
            raise NodeUnavailable(self.address, f"connection lost during auth: {exc}") from None
        except TimeoutError:
            raise NodeUnavailable(self.address, f"no answer to auth within {self.timeout:g} s") from None
        except FrameError as exc:
            raise RequestFailed("bad-reply", str(exc)) from None
        if type(reply) is list and len(reply) == 2 and reply[0] == AUTH_OK_TYPE and isinstance(reply[1], dict):
            self.role = reply[1].get("role")
            return
        try:
            message = decode_message(reply)
        except MessageError as exc:
            raise RequestFailed("bad-reply", str(exc)) from None
        if isinstance(message, Error):
            raise RequestFailed(message.reason, message.detail)
        raise RequestFailed("bad-reply", f"expected auth_ok, got {type(message).__name__}")

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

    async def finality(self, since: int | None = None) -> FinalityReply:
        """A finalized checkpoint: the newest, or the lowest certified at or above ``since``
        with the raw headers from ``since`` + 1 up to it (all of them: further pages asked for)."""
        reply = await self._request(FinalityRequest(since=since), FinalityReply)
        if since is None:
            return reply
        height = Header.from_bytes(reply.header).height
        headers = list(reply.headers)
        while since + len(headers) < height:
            more = await self.raw_headers(since + len(headers) + 1, height)
            if not more:
                break
            headers += more
        return FinalityReply(reply.header, reply.certificate, reply.note, tuple(headers))

    async def raw_headers(self, start: int, stop: int) -> list[bytes]:
        """Main-chain 128-byte headers at heights ``start``..``stop``, in pages of MAX_RAW_HEADERS."""
        headers: list[bytes] = []
        while start + len(headers) <= stop:
            first = start + len(headers)
            page = (await self._request(RawHeadersRequest(start=first, stop=min(stop, first + MAX_RAW_HEADERS - 1)),
                                        RawHeadersReply)).headers
            if not page:
                break
            headers += page
        return headers

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
