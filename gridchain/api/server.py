"""The operator's API on the node's port: status, blocks, readings, proofs, verify, tail.

The node's listener hands over each connection whose first frame is a client request (not a
peer hello). It never joins the gossip; requests are answered in order, and a `subscribe`
turns the connection into a feed of block events. The server reads the node only through
``NodeView`` and a status callable, which the node supplies: it never imports the node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

import structlog

from gridchain.api.messages import (
    MAX_GAPS, BlockEvent, BlockReply, BlockRequest, Error, HeadersReply, HeadersRequest, MessageError, ProofReply,
    ProofRequest, ReadingsReply, ReadingsRequest, Status, StatusRequest, Subscribe, VerifyReply,
    VerifyRequest, decode_message, encode_message,
)
from gridchain.consensus.block import Block
from gridchain.consensus.merkle import payload_leaves, reading_proof
from gridchain.consensus.provenance import ProvenanceError, seal_covering
from gridchain.wire.frames import FrameError, encode_frame
from gridchain.wire.streams import ConnectionClosed, FrameReader

log = structlog.get_logger()

# Operator connections at once; each is cheap, but a runaway script should not exhaust fds.
MAX_CLIENTS = 32
# Block events queued for a `tail` client; one that falls this far behind is disconnected.
SUBSCRIBER_QUEUE = 1000
MAX_HEADERS_PER_REQUEST = 1000
WRITE_TIMEOUT_S = 10.0
# An operator connection with no whole request for this long is closed (tools hold none open idle).
IDLE_TIMEOUT_S = 180.0


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


class ClientSessions:
    """Every operator connection of one node."""

    def __init__(self, view: NodeView, status: Callable[[], dict], name: str,
                 decode: Callable[[object], object] = decode_message) -> None:
        self.view = view
        self.status = status
        self.decode = decode  # the node's knows every type its port carries (gridchain.node.port)
        self.sessions: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.subscribers: set[asyncio.Queue] = set()
        self.log = log.bind(node=name)

    async def serve(self, frames: FrameReader, writer: asyncio.StreamWriter) -> None:
        """Answer one connection's requests; its first frame is still unread in ``frames``."""
        if len(self.sessions) >= MAX_CLIENTS:
            writer.write(encode_frame(encode_message(Error(reason="busy", detail="too many clients"))))
            writer.transport.abort()
            return
        task = asyncio.current_task()
        self.sessions[task] = writer
        try:
            await self._serve(frames, writer)
        except (ConnectionClosed, ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self.sessions.pop(task, None)
            writer.transport.abort()

    async def _serve(self, frames: FrameReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                raw = await frames.next(IDLE_TIMEOUT_S)
            except FrameError as exc:
                await self._send(writer, Error(reason=exc.reason, detail=str(exc)))
                return
            if raw is None:
                return
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
        writer.write(encode_frame(encode_message(message)))
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
        stop = min(request.stop, self.view.height, request.start + MAX_HEADERS_PER_REQUEST - 1)
        rows = []
        for height in range(max(0, request.start), stop + 1):
            rows.append(_header_row(self.view.main_block(height), height))
        return HeadersReply(rows=tuple(rows))

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

    async def _verify(self):
        report = await asyncio.to_thread(self.view.audit)
        problems = tuple((p[0], bytes.fromhex(p[1]) if isinstance(p[1], str) else p[1], p[2])
                         for p in report.problems)
        gaps = tuple({**gap.as_dict(), "block_hash": gap.block_hash} for gap in report.gaps[:MAX_GAPS])
        return VerifyReply(ok=report.ok, checked=report.checked, problems=problems, gaps=gaps,
                           gaps_omitted=max(0, len(report.gaps) - MAX_GAPS))

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

    def publish(self, joined: list[tuple[Block, int]]) -> None:
        """Queue an event for each (block, height) that joined the main chain, in order."""
        for block, height in joined:
            event = BlockEvent(**_event_fields(block, height))
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


def _event_fields(block, height: int) -> dict:
    capture = block.capture
    return {"height": height, "hash": block.hash, "miner_name": block.miner_name, "relay_id": capture.relay_id,
            "readings": len(capture.readings), "newest_ms": capture.newest_ms, "time_ms": block.header.time_ms}


def _header_row(block, height: int) -> dict:
    return {**_event_fields(block, height), "miner_key": block.header.miner_key}
