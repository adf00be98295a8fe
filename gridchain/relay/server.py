"""The simulated relay as a TCP service: ticks a RelaySimulator and answers feed requests.

Each connection is a loop of request frame in, response frame out, in order, so a client
may pipeline as many requests as it likes. A malformed request that is still a good frame
gets an ``error`` answer and the connection stays; broken framing gets an ``error`` answer
and the connection is closed (the stream is out of step). A client silent for longer than
the idle timeout, or one that does not read its answers, is dropped. Nothing a client
sends can stop the relay.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import structlog

from gridchain.relay.capture_files import CaptureFileWriter
from gridchain.relay.feed import (
    MAX_READINGS_PER_READ, ErrorResponse, FeedError, InfoResponse, ReadingsResponse, ReadRequest,
    decode_request,
)
from gridchain.relay.simulator import RelaySimulator
from gridchain.wire.streams import ConnectionClosed, close_writer, read_frame, write_frame
from gridchain.wire.frames import FrameError

DEFAULT_PORT = 5010  # the prototype's relay port
MIN_INTERVAL_S = 0.1  # finer ticks would only burn CPU; timestamps stay whole milliseconds
# Nodes ask once per capture interval (10 s by default); two silent minutes means gone.
IDLE_TIMEOUT_S = 120.0
WRITE_TIMEOUT_S = 5.0  # a client that does not read a ~1 MB answer in 5 s is dropped
# Requests are small maps (~40 bytes); a bigger frame is not a feed client.
MAX_REQUEST_BYTES = 1024
CLOSE_TIMEOUT_S = 2.0  # shutdown waits this long for client loops before cancelling them
MAX_CLIENTS = 64  # four nodes, operator tools and headroom; bounds what a relay holds open

log = structlog.get_logger()


class RelayServer:
    """Serves one simulator on ``host:port`` (port 0 picks a free port; see ``port``)."""

    def __init__(self, simulator: RelaySimulator, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 interval_s: float | None = None, capture_dir: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_request_bytes: int = MAX_REQUEST_BYTES, max_clients: int = MAX_CLIENTS) -> None:
        self.simulator = simulator
        self.host = host
        self._requested_port = port
        # How often the ticker wakes; by default the simulator's own reading interval.
        self.interval_s = simulator.interval_ms / 1000.0 if interval_s is None else interval_s
        if self.interval_s < MIN_INTERVAL_S:
            raise ValueError(f"interval_s must be at least {MIN_INTERVAL_S}, got {self.interval_s}")
        self.idle_timeout_s = idle_timeout_s
        self.max_request_bytes = max_request_bytes
        self.max_clients = max_clients
        self._clock = clock
        self._captures = (CaptureFileWriter(capture_dir, simulator.relay_id, simulator.substation)
                          if capture_dir is not None else None)
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task | None = None
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._closing = False
        self._log = log.bind(relay_id=simulator.relay_id)

    @property
    def port(self) -> int:
        """The bound port once started (the real one when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return self._server.sockets[0].getsockname()[1]

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return len(self._clients)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self.tick()  # serve the readings that are already due before the first client asks
        self._server = await asyncio.start_server(self._serve, self.host, self._requested_port)
        self._ticker = asyncio.create_task(self._tick_forever(), name="relay-ticker")
        self._log.info("relay.started", host=self.host, port=self.port, substation=self.simulator.substation,
                       interval_ms=self.simulator.interval_ms, buffer=self.simulator.capacity,
                       capture_dir=str(self._captures.directory) if self._captures else None)

    async def close(self) -> None:
        """Stop listening, hang up on every client, stop ticking; waits at most a few seconds."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        # Closing the transports ends each client loop at its next read. Cancelling the
        # handler tasks instead trips a Python 3.11 asyncio bug that logs a bogus traceback.
        for writer in self._clients.values():
            writer.close()
        tasks = [task for task in (self._ticker, *self._clients) if task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
        await self._server.wait_closed()
        self._server = None
        self._log.info("relay.stopped", openings=self.simulator.openings)

    def tick(self) -> list[tuple]:
        """Advance the simulator to the clock's now; write capture files; log faults."""
        sim = self.simulator
        openings, was_closed = sim.openings, sim.breaker_closed
        rows = sim.advance_rows(int(self._clock() * 1000))
        if sim.openings > openings:
            self._log.warning("relay.fault", openings=sim.openings, faults=sim.openings - openings)
        elif not was_closed and sim.breaker_closed:
            self._log.info("relay.reclosed", openings=sim.openings)
        if rows and self._captures is not None:
            try:
                self._captures.write(rows, sim.openings)
            except OSError as exc:  # a full disk must not stop the feed the nodes depend on
                self._log.error("relay.capture_write_failed", error=str(exc))
        return rows

    def pause(self) -> None:
        """Stop making readings on the clock (answers still served); ``tick()`` still works.

        Lets a test hold the feed still, then release exactly one batch of readings.
        """
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick_forever(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # keep ticking; the failure is in the log
                self._log.exception("relay.tick_failed")
            due_in = self.simulator.next_tick_ms / 1000.0 - self._clock()
            await asyncio.sleep(min(self.interval_s, max(0.0, due_in)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if len(self._clients) >= self.max_clients:
            self._log.warning("relay.client_rejected", client=client, clients=len(self._clients))
            await close_writer(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        clog = self._log.bind(client=client)
        clog.info("relay.client_connected", clients=len(self._clients))
        why = "closed"
        try:
            why = await self._request_loop(reader, writer, clog)
        except (ConnectionClosed, ConnectionError):
            why = "relay-stopping" if self._closing else "closed"
        except TimeoutError:
            why = "slow-reader"
        except Exception:  # one client's failure must never take the relay down
            clog.exception("relay.client_failed")
            why = "error"
        finally:
            self._clients.pop(task, None)
            await close_writer(writer)
            clog.info("relay.client_disconnected", reason=why)

    async def _request_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            clog: structlog.typing.FilteringBoundLogger) -> str:
        while True:
            try:
                request = await read_frame(reader, self.max_request_bytes, self.idle_timeout_s)
            except TimeoutError:
                return "idle"
            except FrameError as exc:
                clog.warning("relay.bad_request", reason=exc.reason, detail=exc.detail)
                await write_frame(writer, ErrorResponse(exc.reason, exc.detail).encode(), WRITE_TIMEOUT_S)
                return exc.reason
            await write_frame(writer, self.answer(request, clog), WRITE_TIMEOUT_S)

    def answer(self, request: object, clog: structlog.typing.FilteringBoundLogger | None = None) -> dict:
        """The response map for one decoded request (an ``error`` map for a bad one)."""
        try:
            decoded = decode_request(request)
        except FeedError as exc:
            (clog or self._log).warning("relay.bad_request", reason=exc.reason, detail=exc.detail)
            return ErrorResponse(exc.reason, exc.detail).encode()
        sim = self.simulator
        now_ms = int(self._clock() * 1000)
        if isinstance(decoded, ReadRequest):
            openings, rows = sim.read_rows(decoded.since_ms, min(decoded.limit, MAX_READINGS_PER_READ))
            return ReadingsResponse(sim.relay_id, sim.substation, openings, now_ms, tuple(rows)).encode()
        snap = sim.snapshot()
        return InfoResponse(sim.relay_id, sim.substation, snap.openings, now_ms, sim.interval_ms,
                            snap.buffered, snap.oldest_ms, snap.newest_ms).encode()


async def run_relay(host: str, port: int, interval_s: float, relay_id: str, substation: str,
                    seed: int | None, capture_dir: str | os.PathLike | None, stop: asyncio.Event, *,
                    fault_probability: float | None = None,
                    clock: Callable[[], float] = time.time) -> None:
    """Run a relay until ``stop`` is set, then close it cleanly (the CLI's entry point).

    Raises OSError if the port cannot be bound and ValueError for a bad interval.
    """
    if interval_s < MIN_INTERVAL_S:
        raise ValueError(f"interval_s must be at least {MIN_INTERVAL_S}, got {interval_s}")
    simulator = RelaySimulator(relay_id, substation, round(interval_s * 1000), seed,
                               start_ms=int(clock() * 1000), fault_probability=fault_probability)
    server = RelayServer(simulator, host, port, interval_s, capture_dir, clock)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close()
