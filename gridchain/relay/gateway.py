"""The substation gateway: reads its relays' devices and serves their signed feeds on one port.

A gateway serves one or more relays (channels, gridchain/relay/channels.py), each with its
own relay id, sequence, journal, buffer and gap notices; one gateway key signs them all.
Each channel runs its own task (poll, sign, sleep), so a device that stalls or fails holds
up no other. Nodes never speak a device protocol: they read the signed feed (``read`` /
``info``, docs/protocol.md), naming the relay with ``relay_id`` when the gateway serves
several; a request without one is answered for the only relay, or refused with
``relay-id-required``, and one naming a relay the gateway does not serve gets
``no-such-relay``.

Each connection is a loop of request frame in, response frame out, in order, so a client
may pipeline as many requests as it likes. A malformed request that is still a good frame
gets an ``error`` answer and the connection stays; broken framing gets an ``error`` answer
and the connection is closed (the stream is out of step). A client silent for longer than
the idle timeout, or one that does not read its answers, is dropped. Nothing a client
sends can stop the gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from gridchain.identity.keys import SigningKey
from gridchain.relay.channels import Channel
from gridchain.relay.feed import (
    MAX_READINGS_PER_READ, NO_SUCH_RELAY, RELAY_ID_REQUIRED, ErrorResponse, FeedError, ReadRequest, decode_request,
)
from gridchain.wire.frames import FrameError
from gridchain.wire.streams import ConnectionClosed, close_writer, read_frame, write_frame

DEFAULT_PORT = 5010  # the prototype's relay port
# Nodes ask once per capture interval (10 s by default); two silent minutes means gone.
IDLE_TIMEOUT_S = 120.0
WRITE_TIMEOUT_S = 5.0  # a client that does not read a ~1 MB answer in 5 s is dropped
# Requests are small maps (~40 bytes, ~300 with a long relay id); a bigger frame is not a feed client.
MAX_REQUEST_BYTES = 1024
CLOSE_TIMEOUT_S = 2.0  # shutdown waits this long for client and channel loops before cancelling them
# Four nodes per relay, operator tools and headroom; bounds what a gateway holds open.
MAX_CLIENTS = 64
MAX_RELAYS = 64  # a substation's relays; each costs one task, one journal and its 24 h buffer

log = structlog.get_logger()


class Gateway:
    """Serves ``channels`` on ``host:port`` (port 0 picks a free port; see ``port``)."""

    def __init__(self, channels: Sequence[Channel], key: SigningKey, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, clock: Callable[[], float] = time.time, *, key_created: bool = False,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_clients: int = MAX_CLIENTS) -> None:
        if not 1 <= len(channels) <= MAX_RELAYS:
            raise ValueError(f"a gateway serves 1..{MAX_RELAYS} relays, got {len(channels)}")
        self.channels: dict[str, Channel] = {}
        for channel in channels:
            if channel.relay_id in self.channels:
                raise ValueError(f"relay id {channel.relay_id!r} is given twice")
            self.channels[channel.relay_id] = channel
        self.key = key
        self._key_created = key_created
        self.host = host
        self._requested_port = port
        self.idle_timeout_s = idle_timeout_s
        self.max_request_bytes = max_request_bytes
        self.max_clients = max_clients
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._loops: dict[str, asyncio.Task] = {}
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._closing = False
        self._log = log.bind(gateway=True) if len(self.channels) > 1 else log.bind(relay_id=channels[0].relay_id)

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

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def start(self) -> None:
        """Boot every feed (journal, sequence, gap notice), take a first step, then listen."""
        for channel in self.channels.values():
            channel.boot(self._now_ms(), self._key_created)
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self._requested_port)
        except OSError:  # the port is taken: hang up cleanly, so the next start has no gap
            for channel in self.channels.values():
                await channel.close()
            raise
        # Serve what is already due before the first client asks (devices: one first poll each).
        await asyncio.gather(*(channel.step(self._now_ms()) for channel in self.channels.values()))
        self.resume()
        for channel in self.channels.values():
            log.info("relay.started", relay_id=channel.relay_id, substation=channel.substation,
                     device=channel.description, host=self.host, port=self.port, interval_ms=channel.interval_ms,
                     buffer=channel.feed.buffer.capacity, key=self.key.public_key.hex(),
                     next_seq=channel.feed.next_seq)

    def resume(self) -> None:
        """(Re)start every channel's loop (``pause`` stops them)."""
        for relay_id, channel in self.channels.items():
            if relay_id not in self._loops:
                self._loops[relay_id] = asyncio.create_task(self._run_channel(channel), name=f"relay-{relay_id}")

    def pause(self) -> None:
        """Stop making readings on the clock (answers still served); a test can then release
        exactly one batch with a channel's ``step``/``tick``."""
        for task in self._loops.values():
            task.cancel()
        self._loops.clear()

    async def close(self) -> None:
        """Stop listening, hang up on every client, stop every channel; waits a few seconds."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        loops = list(self._loops.values())
        self.pause()
        # Closing the transports ends each client loop at its next read. Cancelling the
        # handler tasks instead trips a Python 3.11 asyncio bug that logs a bogus traceback.
        for writer in self._clients.values():
            writer.close()
        tasks = [*loops, *self._clients]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
        await self._server.wait_closed()
        self._server = None
        for channel in self.channels.values():
            try:
                await channel.close()
            except Exception:  # one device's failure to hang up must not keep the others' journals open
                log.exception("relay.close_failed", relay_id=channel.relay_id)
            log.info("relay.stopped", relay_id=channel.relay_id, next_seq=channel.feed.next_seq)

    async def _run_channel(self, channel: Channel) -> None:
        while True:  # start() took the first step
            await asyncio.sleep(channel.delay_s(self._clock()))
            try:
                await channel.step(self._now_ms())
            except Exception:  # keep stepping; the failure is in the log
                log.exception("relay.tick_failed", relay_id=channel.relay_id)

    # --- serving -----------------------------------------------------------------------------
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
        except Exception:  # one client's failure must never take the gateway down
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

    def channel_for(self, relay_id: str | None) -> Channel:
        """The channel a request names; FeedError(relay-id-required / no-such-relay) otherwise."""
        if relay_id is None:
            if len(self.channels) == 1:
                return next(iter(self.channels.values()))
            raise FeedError(RELAY_ID_REQUIRED, f"this gateway serves {len(self.channels)} relays; name one with "
                                               f"relay_id: {self._names()}")
        channel = self.channels.get(relay_id)
        if channel is None:
            raise FeedError(NO_SUCH_RELAY, f"no relay {relay_id[:64]!r} here; this gateway serves {self._names()}")
        return channel

    def _names(self) -> str:
        names = ", ".join(repr(r) for r in list(self.channels)[:16])
        return names + (", ..." if len(self.channels) > 16 else "")

    def answer(self, request: object, clog: structlog.typing.FilteringBoundLogger | None = None) -> dict:
        """The response map for one decoded request (an ``error`` map for a bad one)."""
        try:
            decoded = decode_request(request)
            channel = self.channel_for(decoded.relay_id)
        except FeedError as exc:
            (clog or self._log).warning("relay.bad_request", reason=exc.reason, detail=exc.detail[:200])
            return ErrorResponse(exc.reason, exc.detail).encode()
        now_ms = self._now_ms()
        if isinstance(decoded, ReadRequest):
            return channel.feed.read(decoded.after_seq, min(decoded.limit, MAX_READINGS_PER_READ), now_ms).encode()
        return channel.feed.info(now_ms, channel.interval_ms).encode()
