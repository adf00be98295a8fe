"""The operator's API on its own port: status, blocks, readings, proofs, verify, tail.

The node's operator listener (gridchain.node.doors) hands over every connection it accepts;
the peer port never carries operator requests. A session opens with ``auth`` and a token, or
(from the node's own host only) with a request, as ``read``; each request is checked against
the session's role (gridchain.api.access). It never joins the gossip; requests are answered in
order, and a `subscribe` turns the connection into a feed of block events. The server reads the node only through
``NodeView`` and a status callable, which the node supplies: it never imports the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from gridchain.api.messages import (
    MAX_GAPS, MAX_RAW_HEADERS, BlockEvent, BlockReply, BlockRequest, Error, FinalityReply, FinalityRequest,
    HeadersReply, HeadersRequest, MessageError, ProofReply, ProofRequest, RawHeadersReply, RawHeadersRequest,
    ReadingsReply, ReadingsRequest, Status, StatusRequest, Subscribe, VerifyReply, VerifyRequest, decode_message,
    encode_message,
)
from gridchain.api.access import ADMIN, AUTH_OK_TYPE, READ, AccessError, Tokens, auth_token, role_allows
from gridchain.api.messages import REQUEST_TYPES
from gridchain.consensus.block import Block, Header
from gridchain.consensus.merkle import payload_leaves, reading_proof
from gridchain.consensus.provenance import ProvenanceError, seal_covering
from gridchain.wire.frames import FrameError, encode_frame
from gridchain.wire.streams import ConnectionClosed, FrameReader

log = structlog.get_logger()

# Operator connections at once; each is cheap, but a runaway script should not exhaust fds.
MAX_CLIENTS = 32
# Admin sessions among them: whatever the holder of the admin token opens, the rest stay
# free for read sessions, so `gridchain status` is still answered.
MAX_ADMIN_SESSIONS = MAX_CLIENTS // 2
# Block events queued for a `tail` client; one that falls this far behind is disconnected.
SUBSCRIBER_QUEUE = 1000
MAX_HEADERS_PER_REQUEST = 1000
WRITE_TIMEOUT_S = 10.0
# An operator connection with no whole request for this long is closed (tools hold none open idle).
IDLE_TIMEOUT_S = 180.0
# The first frame (auth or a request) must arrive this fast: a tool sends it on connect.
FIRST_FRAME_TIMEOUT_S = 5.0
# An audit's answer is reused for the same tip this long: a store can still rot under a
# tip that does not move, so an operator asking again later gets a fresh audit.
VERIFY_REUSE_S = 60.0


class NodeView(Protocol):
    """What the operator API reads of the node's chain."""

    @property
    def height(self) -> int: ...  # of the main chain's tip
    def find_block(self, block_hash: bytes | None, height: int | None) -> tuple[Block, int, bool] | None: ...
    def main_block(self, height: int) -> Block: ...  # 0 <= height <= self.height
    def get_block(self, block_hash: bytes) -> Block | None: ...
    # Rows: relay_id, seq, timestamp_ms, openings, flags, the ten values, block height, block
    # hash; the cursor (timestamp_ms, relay_id, seq) of the next page, or None after the last.
    def readings_page(self, relay: str | None, since_ms: int | None, until_ms: int | None,
                      after: tuple[int, str, int] | None, limit: int
                      ) -> tuple[list[tuple], tuple[int, str, int] | None]: ...
    def reading_location(self, relay_id: str, timestamp_ms: int) -> tuple[bytes, int] | None: ...
    def audit(self) -> object: ...  # an AuditReport (ok, checked, problems, gaps); blocking, run in a thread
    def tip_info(self) -> tuple[int, bytes, int]: ...  # height, tip hash, work
    # headers_reply rows (and block event fields) of main-chain heights start..stop, from the
    # block index: no block is decoded.
    def header_rows(self, start: int, stop: int) -> list[dict]: ...
    # Finality (None/0 on an open network): the finalized height; a finalized checkpoint's
    # (header bytes, certificate bytes) at or above ``since`` (None: the newest), and raw headers.
    @property
    def finalized_height(self) -> int | None: ...
    def finalized_checkpoint(self, since: int | None) -> tuple[bytes, bytes, str] | None: ...  # + note text
    def raw_headers(self, start: int, stop: int) -> list[bytes]: ...


class AuditGate:
    """One audit at a time, off the event loop, its answer reused for the same tip.

    An audit replays the whole store (seconds of CPU on a long chain): started by every
    admin session at once, they would share the node's cores and its GIL with the event
    loop. So a request at the tip a finished audit ran at (within VERIFY_REUSE_S) gets that
    answer; one at the tip of the audit now running waits for it; any other while one runs
    is answered ``busy``.
    """

    def __init__(self, audit: Callable[[], object], monotonic: Callable[[], float] = time.monotonic) -> None:
        self.audit = audit  # blocking: runs in a worker thread
        self.monotonic = monotonic
        self.running: tuple[bytes, asyncio.Future] | None = None  # (tip, its answer to come)
        self.done: tuple[bytes, float, object] | None = None  # (tip, when it finished, the answer)
        self.audits = 0  # audits run (what the reuse saves shows in it)

    async def answer(self, tip: bytes, convert: Callable[[object], object]) -> object | None:
        """The answer (``convert`` of the report) for ``tip``, or None: busy with another tip."""
        if self.done is not None and self.done[0] == tip and self.monotonic() - self.done[1] <= VERIFY_REUSE_S:
            return self.done[2]
        if self.running is not None:
            running_tip, future = self.running
            return await asyncio.shield(future) if running_tip == tip else None
        future = asyncio.get_running_loop().create_future()
        self.running = (tip, future)
        self.audits += 1
        try:
            answer = convert(await asyncio.to_thread(self.audit))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failure is the asker's, not an unhandled one
            raise
        finally:
            self.running = None
        self.done = (tip, self.monotonic(), answer)
        future.set_result(answer)
        return answer


class ClientSessions:
    """Every operator connection of one node."""

    def __init__(self, view: NodeView, status: Callable[[], dict], name: str,
                 decode: Callable[[object], object] = decode_message, tokens: Tokens | None = None) -> None:
        self.view = view
        self.tokens = tokens  # None: no token is valid (local read sessions only)
        self.status = status
        self.decode = decode  # the node's knows every type its port carries (gridchain.node.port)
        self.sessions: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.admin_sessions: set[asyncio.Task] = set()
        self.subscribers: set[asyncio.Queue] = set()
        self.audits = AuditGate(view.audit)
        self.log = log.bind(node=name)

    async def serve(self, frames: FrameReader, writer: asyncio.StreamWriter, *, local: bool = True,
                    identified: Callable[[], None] = lambda: None, address: str = "") -> None:
        """Answer one connection's requests (gridchain.api.access decides what its role may ask).

        ``local``: from the node's own host (a session without a token is ``read``);
        ``identified`` is called once the first whole frame is in, which takes the connection
        off the listener's budget of strangers.
        """
        task = asyncio.current_task()
        try:
            try:
                first = await frames.next(FIRST_FRAME_TIMEOUT_S)
            except FrameError as exc:
                await self._send(writer, Error(reason=exc.reason, detail=str(exc)))
                return
            if first is None:
                return
            identified()
            if len(self.sessions) >= MAX_CLIENTS:
                await self._send(writer, Error(reason="busy", detail="too many clients"))
                return
            self.sessions[task] = writer
            try:
                role = self._role(first, local)
            except AccessError as exc:
                self.log.info("api.refused", client=address, reason=exc.reason)
                await self._send(writer, Error(reason=exc.reason, detail=exc.detail))
                return
            if role == ADMIN:
                if len(self.admin_sessions) >= MAX_ADMIN_SESSIONS:
                    await self._send(writer, Error(reason="busy", detail="too many admin sessions"))
                    return
                self.admin_sessions.add(task)
            if auth_token(first) is not None:
                await self._send_raw(writer, [AUTH_OK_TYPE, {"role": role}])
                first = None
            await self._serve(frames, writer, role, first)
        except (ConnectionClosed, ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self.sessions.pop(task, None)
            self.admin_sessions.discard(task)
            writer.transport.abort()

    def _role(self, first: object, local: bool) -> str:
        token = auth_token(first)
        if token is None:
            if not local:
                raise AccessError("token-required", "a session from another host opens with auth and a token")
            return READ
        role = self.tokens.role_of(token) if self.tokens is not None else None
        if role is None:
            raise AccessError("bad-token", "no role has this token")
        return role

    async def _serve(self, frames: FrameReader, writer: asyncio.StreamWriter, role: str = READ,
                     first: object = None) -> None:
        while True:
            if first is not None:
                raw, first = first, None
            else:
                try:
                    raw = await frames.next(IDLE_TIMEOUT_S)
                except FrameError as exc:
                    await self._send(writer, Error(reason=exc.reason, detail=str(exc)))
                    return
            if raw is None:
                return
            kind = raw[0] if type(raw) is list and raw and type(raw[0]) is str else ""
            if kind in REQUEST_TYPES and not role_allows(role, kind):
                await self._send(writer, Error(reason="admin-required", detail=f"{kind} needs the admin token"))
                continue
            try:
                request = self.decode(raw)
            except MessageError as exc:
                await self._send(writer, Error(reason=exc.reason, detail=exc.detail))
                continue
            if isinstance(request, Subscribe):
                await self._stream_events(frames.reader, writer)
                return
            await self._send(writer, await self._answer(request))

    async def _send(self, writer: asyncio.StreamWriter, message: object) -> None:
        await self._send_raw(writer, encode_message(message))

    async def _send_raw(self, writer: asyncio.StreamWriter, obj: object) -> None:
        writer.write(encode_frame(obj))
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    async def _answer(self, request: object) -> object:
        try:
            if isinstance(request, StatusRequest):
                return Status(info=self.status())
            if isinstance(request, BlockRequest):
                return self._block(request)
            if isinstance(request, HeadersRequest):
                return self._headers(request)
            if isinstance(request, ReadingsRequest):
                return self._readings(request)
            if isinstance(request, ProofRequest):
                return self._proof(request)
            if isinstance(request, VerifyRequest):
                return await self._verify()
            if isinstance(request, FinalityRequest):
                return self._finality(request)
            if isinstance(request, RawHeadersRequest):
                stop = min(request.stop, self.view.height, request.start + MAX_RAW_HEADERS - 1)
                return RawHeadersReply(headers=tuple(self.view.raw_headers(request.start, stop)))
        except LookupError as exc:
            return Error(reason="not-found", detail=str(exc.args[0]) if exc.args else "not found")
        return Error(reason="unexpected-message", detail=f"{type(request).__name__} is not a client request")

    # --- answers ---------------------------------------------------------------------------
    def _block(self, request: BlockRequest):
        found = self.view.find_block(request.hash, request.height)
        if found is None:
            raise LookupError(f"no block {request.hash.hex() if request.hash else request.height}")
        block, height, main = found
        return BlockReply(block=block, height=height, main=main)

    def _headers(self, request: HeadersRequest):
        # From the block index: decoding a thousand blocks of 10,000 readings each here
        # froze the event loop for seconds.
        stop = min(request.stop, self.view.height, request.start + MAX_HEADERS_PER_REQUEST - 1)
        start = max(0, request.start)
        return HeadersReply(rows=tuple(self.view.header_rows(start, stop)) if start <= stop else ())

    def _readings(self, request: ReadingsRequest):
        rows, after = self.view.readings_page(
            relay=request.relay, since_ms=request.since_ms, until_ms=request.until_ms,
            after=tuple(request.after) if request.after else None, limit=request.limit)
        return ReadingsReply(rows=tuple(tuple(row) for row in rows), next=after)

    def _proof(self, request: ProofRequest):
        location = self.view.reading_location(request.relay, request.timestamp_ms)
        if location is None:
            raise LookupError(f"no reading of {request.relay!r} at {request.timestamp_ms} on the main chain")
        block_hash, height = location
        block = self.view.get_block(block_hash)
        if block is None:
            raise LookupError(f"block {block_hash.hex()} holding the reading is not stored")
        capture = block.capture
        # Readings are in seq order, so the first at this time is the lowest seq, as the store locates it.
        index = next(i for i, r in enumerate(capture.readings) if r.timestamp_ms == request.timestamp_ms)
        try:
            seal, path_to_seal = seal_covering(capture.readings, capture.seals, index)
        except ProvenanceError as exc:  # a stored block's seals partition its readings; never expected
            raise LookupError(f"block {block_hash.hex()}: {exc.detail}") from None
        leaves = payload_leaves(capture, block.miner_name)
        return ProofReply(header=block.header.to_bytes(), leaf=leaves[index + 1], index=index + 1,
                          size=len(leaves), path=tuple(reading_proof(capture, block.miner_name, index)),
                          height=height, hash=block.hash, miner_name=block.miner_name,
                          relay_id=capture.relay_id, substation=capture.substation, relay_key=capture.relay_key,
                          seq=capture.readings[index].seq, seal=seal, seal_path=tuple(path_to_seal))

    def _finality(self, request: FinalityRequest):
        found = self.view.finalized_checkpoint(request.since)
        if found is None:
            raise LookupError("no finalized checkpoint" + ("" if request.since is None else
                                                           f" with a certificate at or above height {request.since}"))
        header, certificate, note = found
        headers: tuple[bytes, ...] = ()
        if request.since is not None:
            # The headers above the asked-for block up to the checkpoint's own; past one
            # reply's cap the client asks for the rest with raw_headers_request.
            height = Header.from_bytes(header).height
            stop = min(height, request.since + MAX_RAW_HEADERS)
            headers = tuple(self.view.raw_headers(request.since + 1, stop)) if stop > request.since else ()
        return FinalityReply(header=header, certificate=certificate, note=note, headers=headers)

    async def _verify(self):
        answer = await self.audits.answer(self.view.tip_info()[1], _verify_reply)
        if answer is None:
            return Error(reason="busy", detail="an audit of another tip is running; ask again when it is done")
        return answer

    # --- tail ---------------------------------------------------------------------------------
    async def _stream_events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.subscribers.add(queue)
        closed = asyncio.create_task(reader.read(1))  # any byte or EOF from the client ends the feed
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    return
                event = getter.result()
                if event is None:
                    return
                await self._send(writer, event)
        finally:
            closed.cancel()
            self.subscribers.discard(queue)

    @property
    def has_subscribers(self) -> bool:
        return bool(self.subscribers)

    def publish(self, joined: list[dict]) -> None:
        """Queue an event for each block that joined the main chain, in order (``joined``:
        its header rows, as NodeView.header_rows gives them)."""
        for row in joined:
            fields = {key: value for key, value in row.items() if key != "miner_key"}
            event = BlockEvent(**fields, finalized=self.view.finalized_height)
            for queue in list(self.subscribers):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self.subscribers.discard(queue)
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.get_nowait()
                        queue.put_nowait(None)  # tells the session to end

    async def close(self) -> None:
        """End every session by closing its socket (each loop then ends at its next read).

        Cancelling the session tasks instead trips a Python 3.11 asyncio bug that logs a
        bogus traceback from StreamReaderProtocol.connection_made.
        """
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        for writer in list(self.sessions.values()):
            writer.transport.abort()
        tasks = list(self.sessions)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()


def _verify_reply(report) -> VerifyReply:
    problems = tuple((p[0], bytes.fromhex(p[1]) if isinstance(p[1], str) else p[1], p[2])
                     for p in report.problems)
    gaps = tuple({**gap.as_dict(), "block_hash": gap.block_hash} for gap in report.gaps[:MAX_GAPS])
    evidence = tuple(e.encode() for e in getattr(report, "evidence", ()))
    return VerifyReply(ok=report.ok, checked=report.checked, problems=problems, gaps=gaps,
                       gaps_omitted=max(0, len(report.gaps) - MAX_GAPS),
                       certificates=getattr(report, "certificates", 0), evidence=evidence)
