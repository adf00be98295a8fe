"""The node's two doors: the peer port (peers only) and the operator port (the operator API only).

Each door is a gridchain.node.listener.Listener with its own budget of unidentified
connections and its own rule for when a connection counts as identified:

- **Peer door.** On a network with a network file every peer link is TLS 1.3
  (gridchain.identity.tls): a plaintext client is answered with a ``reject``
  ``tls-required`` and closed; a certificate that no member key signed fails the TLS
  handshake itself (logged ``not-a-member``); a verified member certificate identifies the
  connection, which is then handed to gossip with the certificate's key and the session
  binding, and the peer protocol checks the ``hello`` against that key (``tls-key-mismatch``).
  On an open development network (no network file) links stay plaintext and a connection is
  identified by its first whole frame. Until the handshake is done, frames are held to
  UNPROVEN_MAX_FRAME.
- **Operator door.** 127.0.0.1 (or a Unix socket) by default. From another host only TLS is
  spoken (``tls-required`` otherwise) and a token is needed; the first whole frame
  identifies the connection, and gridchain.api.server decides what its role may ask.
  A connection whose first bytes begin an HTTP request line goes to the ``http`` handler
  when one is set (the web dashboard, gridchain.node.observability), told whether it is
  local and TLS (the handler applies the operator API's access rule), and is closed
  otherwise. Plaintext bytes are looked at unread (the listener's peek); TLS has no peek,
  so over TLS the first bytes are read and handed on with the connection.

This routing lives with the composition root because the peer layer (gridchain.net) never
imports the API, nor the API the peer layer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from gridchain.identity.tls import TlsError, TlsIdentity, TlsLink, peer_key, session_binding
from gridchain.net import protocol
from gridchain.node.listener import FIRST_BYTES_TIMEOUT_S, Accepted, Listener, Slot
from gridchain.wire.frames import FrameError, encode_frame
from gridchain.wire.streams import UNPROVEN_MAX_FRAME, ConnectionClosed, FrameReader

# Unidentified connections each door holds at once: a handful of members dial at once, an
# operator runs a few tools; a flood beyond this only evicts its own sockets.
PEER_UNIDENTIFIED_BUDGET = 16
OPERATOR_UNIDENTIFIED_BUDGET = 8

ServePeer = Callable[..., Awaitable[None]]
ServeOperator = Callable[..., Awaitable[None]]
ServeHttp = Callable[..., Awaitable[None]]  # (reader, writer, first bytes, *, local, tls)
HTTP_PROBE_BYTES = 4  # an HTTP method's first four bytes tell it from a frame's length


class PeerDoor:
    """The peer port: accepts peers (TLS with a network file), hands them to gossip."""

    def __init__(self, host: str, port: int, *, identity: TlsIdentity, max_inbound: int,
                 inbound_peers: Callable[[], int], serve: ServePeer, log) -> None:
        self.identity = identity
        self.max_inbound = max_inbound
        self.inbound_peers = inbound_peers
        self.serve_peer = serve
        self.log = log
        self.listener = Listener(host=host, port=port, budget=PEER_UNIDENTIFIED_BUDGET, serve=self._serve,
                                 tls=self._context, refuse=self._refused, log=log, event="peer.listener")

    def _context(self):
        return self.identity.context("peer-server") if self.identity.peer_tls else None

    def _refused(self, address: str, reason: str, detail: str = "") -> None:
        self.log.info("peer.refused", peer=address, reason=reason, detail=detail[:200])

    async def _serve(self, accepted: Accepted, slot: Slot) -> None:
        writer = accepted.writer
        link = None
        if self.identity.peer_tls:
            if not accepted.tls:
                # A plaintext client learns why, in the one message it can read; nothing is remembered.
                self._refused(accepted.address, "tls-required", "peer links on this network are TLS 1.3")
                await _say_and_close(writer, ["reject", {"code": "tls-required",
                                                         "detail": "this network's peer links are TLS 1.3"}])
                return
            try:
                link = self._link(writer)
            except TlsError as exc:
                self._refused(accepted.address, exc.reason, exc.detail)
                await _say_and_close(writer, ["reject", {"code": exc.reason, "detail": exc.detail[:200]}])
                return
        frames = FrameReader(accepted.reader, first_cap=UNPROVEN_MAX_FRAME)
        if link is None:
            # Plaintext (an open network): a connection is a stranger until its first whole frame.
            try:
                if await frames.peek(protocol.HANDSHAKE_TIMEOUT_S) is None:
                    writer.transport.abort()
                    return
            except (TimeoutError, FrameError, ConnectionClosed) as exc:
                reason = getattr(exc, "reason", None) or ("handshake-timeout" if isinstance(exc, TimeoutError)
                                                          else "closed")
                self._refused(accepted.address, reason, str(exc))
                if isinstance(exc, FrameError):
                    await _say_and_close(writer, ["reject", {"code": exc.reason, "detail": str(exc)[:200]}])
                writer.transport.abort()
                return
        slot.identified()
        if self.inbound_peers() >= self.max_inbound:
            self._refused(accepted.address, "too-many-inbound", f"{self.max_inbound} inbound peers already")
            writer.transport.abort()
            return
        await self.serve_peer(frames, writer, accepted.address, link=link)

    def _link(self, writer: asyncio.StreamWriter) -> TlsLink:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        key = peer_key(der)
        if key not in self.identity.members:
            raise TlsError("not-a-member", f"certificate key {key.hex()[:16]} is not in the network file")
        return TlsLink(peer_key=key, binding=session_binding(der, self.identity.cert_der))


class OperatorDoor:
    """The operator port (and/or a Unix socket): the operator API, never the peer protocol."""

    def __init__(self, host: str, port: int, *, identity: TlsIdentity, serve: ServeOperator, log,
                 path: Path | None = None, http_probe: Callable[[bytes], bool] | None = None,
                 http: ServeHttp | None = None) -> None:
        self.identity = identity
        self.serve_operator = serve
        self.http_probe = http_probe
        self.http = http
        self.log = log
        self.listeners = []
        if port >= 0:
            self.listeners.append(self._listener(host=host, port=port))
        if path is not None:
            self.listeners.append(self._listener(host="", port=0, path=path))

    def _listener(self, **where) -> Listener:
        return Listener(budget=OPERATOR_UNIDENTIFIED_BUDGET, serve=self._serve,
                        tls=lambda: self.identity.context("api-server"), refuse=self._refused, log=self.log,
                        event="api.listener", **where)

    @property
    def port(self) -> int:
        tcp = [listener for listener in self.listeners if listener.path is None]
        return tcp[0].port if tcp else 0

    def _refused(self, address: str, reason: str, detail: str = "") -> None:
        self.log.info("api.refused", client=address, reason=reason, detail=detail[:200])

    async def _serve(self, accepted: Accepted, slot: Slot) -> None:
        writer = accepted.writer
        reader: asyncio.StreamReader | _Replayed = accepted.reader
        if accepted.tls and self.http_probe is not None and self.http is not None:
            try:
                async with asyncio.timeout(FIRST_BYTES_TIMEOUT_S):
                    head = await reader.readexactly(HTTP_PROBE_BYTES)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
                writer.transport.abort()
                return
            if self.http_probe(head):
                slot.identified()
                await self.http(reader, writer, head, local=accepted.local, tls=True)
                return
            reader = _Replayed(reader, head)  # a frame: the API reads it from its first byte
        elif not accepted.tls and self.http_probe is not None and self.http_probe(accepted.first):
            slot.identified()
            if self.http is None:
                writer.transport.abort()
                return
            await self.http(reader, writer, b"", local=accepted.local, tls=False)
            return
        if not accepted.local and not accepted.tls:
            self._refused(accepted.address, "tls-required", "the operator API speaks TLS to other hosts")
            await _say_and_close(writer, ["error", {"reason": "tls-required",
                                                    "detail": "connect with TLS (and a token) from another host"}])
            return
        frames = FrameReader(reader, first_cap=UNPROVEN_MAX_FRAME)
        await self.serve_operator(frames, writer, local=accepted.local, identified=slot.identified,
                                  address=accepted.address)


class _Replayed:
    """A stream reader that gives back bytes already read from it before reading on."""

    def __init__(self, reader: asyncio.StreamReader, head: bytes) -> None:
        self._reader = reader
        self._head = head

    async def read(self, n: int = -1) -> bytes:
        if not self._head:
            return await self._reader.read(n)
        taken = self._head if n < 0 else self._head[:n]
        self._head = self._head[len(taken):]
        return taken

    async def readexactly(self, n: int) -> bytes:
        taken, self._head = self._head[:n], self._head[n:]
        if len(taken) == n:
            return taken
        try:
            return taken + await self._reader.readexactly(n - len(taken))
        except asyncio.IncompleteReadError as exc:
            raise asyncio.IncompleteReadError(taken + exc.partial, n) from None

    def at_eof(self) -> bool:
        return not self._head and self._reader.at_eof()


async def _say_and_close(writer: asyncio.StreamWriter, message: list) -> None:
    """Send one frame (best effort, bounded) and close."""
    with contextlib.suppress(Exception):
        writer.write(encode_frame(message))
        async with asyncio.timeout(1.0):
            await writer.drain()
    writer.transport.abort() if writer.transport.is_closing() else writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
