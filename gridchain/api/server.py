"""The operator's API on the node's port: status, blocks, readings, proofs, verify, tail.

A connection whose first frame is a client request (not a peer hello) is served here. It
never joins the gossip; requests are answered in order, and a `subscribe` turns the
connection into a feed of block events.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from gridchain.consensus.merkle import payload_leaves, reading_proof
from gridchain.ledger.audit import audit_store
from gridchain.net.messages import (
    BlockEvent, BlockReply, BlockRequest, Error, HeadersReply, HeadersRequest, MessageError, ProofReply,
    ProofRequest, ReadingsReply, ReadingsRequest, Status, StatusRequest, Subscribe, VerifyReply,
    VerifyRequest, decode_message, encode_message,
)
from gridchain.net.peer import IDLE_TIMEOUT_S, READ_CHUNK
from gridchain.wire.frames import FrameDecoder, FrameError, encode_frame

if TYPE_CHECKING:
    from gridchain.consensus.chain import ChainEntry
    from gridchain.node.node import Node

log = structlog.get_logger()

# Operator connections at once; each is cheap, but a runaway script should not exhaust fds.
MAX_CLIENTS = 32
# Block events queued for a `tail` client; one that falls this far behind is disconnected.
SUBSCRIBER_QUEUE = 1000
MAX_HEADERS_PER_REQUEST = 1000
WRITE_TIMEOUT_S = 10.0


class ClientSessions:
    """Every operator connection of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.subscribers: set[asyncio.Queue] = set()
        self.log = log.bind(node=node.name)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    decoder: FrameDecoder, first: list[object]) -> None:
        if len(self.sessions) >= MAX_CLIENTS:
            writer.write(encode_frame(encode_message(Error(reason="busy", detail="too many clients"))))
            writer.transport.abort()
            return
        task = asyncio.current_task()
        self.sessions[task] = writer
        try:
            await self._serve(reader, writer, decoder, list(first))
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self.sessions.pop(task, None)
            writer.transport.abort()

    async def _serve(self, reader, writer, decoder: FrameDecoder, pending: list[object]) -> None:
        while True:
            while not pending:
                async with asyncio.timeout(IDLE_TIMEOUT_S * 4):
                    data = await reader.read(READ_CHUNK)
                if not data:
                    return
                try:
                    pending.extend(decoder.feed(data))
                except FrameError as exc:
                    await self._send(writer, Error(reason=exc.reason, detail=str(exc)))
                    return
            raw = pending.pop(0)
            try:
                request = decode_message(raw)
            except MessageError as exc:
                await self._send(writer, Error(reason=exc.reason, detail=exc.detail))
                continue
            if isinstance(request, Subscribe):
                await self._stream_events(reader, writer)
                return
            await self._send(writer, await self._answer(request))

    async def _send(self, writer: asyncio.StreamWriter, message: object) -> None:
        writer.write(encode_frame(encode_message(message)))
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    async def _answer(self, request: object) -> object:
        try:
            if isinstance(request, StatusRequest):
                return Status(info=self.node.status())
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
        ledger = self.node.ledger
        if request.hash is not None:
            entry = ledger.chain.get(request.hash)
        else:
            entry = ledger.chain.main_at(request.height)
        if entry is None:
            raise LookupError(f"no block {request.hash.hex() if request.hash else request.height}")
        return BlockReply(block=ledger.get_block(entry.hash), height=entry.height,
                          main=ledger.chain.is_main(entry))

    def _headers(self, request: HeadersRequest):
        chain = self.node.ledger.chain
        stop = min(request.stop, chain.height, request.start + MAX_HEADERS_PER_REQUEST - 1)
        rows = []
        for height in range(max(0, request.start), stop + 1):
            block = self.node.ledger.get_block(chain.main_at(height).hash)
            rows.append(_header_row(block, height))
        return HeadersReply(rows=tuple(rows))

    def _readings(self, request: ReadingsRequest):
        rows, after = self.node.ledger.store.readings_page(
            relay=request.relay, since_ms=request.since_ms, until_ms=request.until_ms,
            after=tuple(request.after) if request.after else None, limit=request.limit)
        return ReadingsReply(rows=tuple(tuple(row) for row in rows), next=after)

    def _proof(self, request: ProofRequest):
        ledger = self.node.ledger
        location = ledger.store.reading_location(request.relay, request.timestamp_ms)
        if location is None:
            raise LookupError(f"no reading of {request.relay!r} at {request.timestamp_ms} on the main chain")
        block_hash, height = location
        block = ledger.get_block(block_hash)
        capture = block.capture
        index = next(i for i, r in enumerate(capture.readings) if r.timestamp_ms == request.timestamp_ms)
        leaves = payload_leaves(capture, block.miner_name)
        return ProofReply(header=block.header.to_bytes(), leaf=leaves[index + 1], index=index + 1,
                          size=len(leaves), path=tuple(reading_proof(capture, block.miner_name, index)),
                          height=height, hash=block.hash, miner_name=block.miner_name,
                          relay_id=capture.relay_id, substation=capture.substation, openings=capture.openings)

    async def _verify(self):
        report = await asyncio.to_thread(audit_store, self.node.ledger.store.path, self.node.params)
        problems = tuple((p[0], bytes.fromhex(p[1]) if isinstance(p[1], str) else p[1], p[2])
                         for p in report.problems)
        return VerifyReply(ok=report.ok, checked=report.checked, problems=problems)

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

    def publish_new_tip(self, old_tip: ChainEntry) -> None:
        """Queue an event for each block that joined the main chain since ``old_tip``."""
        if not self.subscribers:
            return
        chain = self.node.ledger.chain
        fork = old_tip
        while fork is not None and not chain.is_main(fork):
            fork = fork.parent
        start = fork.height + 1 if fork is not None else 0
        for height in range(start, chain.height + 1):
            block = self.node.ledger.get_block(chain.main_at(height).hash)
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
