"""Bad relays: each misbehaviour gives its own named RelayError, nothing reaches a Capture,
and the same client object works again as soon as the relay behaves."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest
from structlog.testing import capture_logs

from gridchain.relay.client import REASONS, RelayClient, RelayError
from gridchain.wire.streams import ConnectionClosed, read_frame
from gridchain.wire.frames import FrameError, encode_frame

RELAY_ID = "relay-1"


def good_rows(since_ms: int, count: int = 2) -> list[list]:
    return [[since_ms + 1000 * (i + 1), 115.0, 115.1, 114.9, 300.0, 301.0, 299.0, 60.0, 0.93, 55.6, 22.0]
            for i in range(count)]


def readings(rows: list, relay_id: str = RELAY_ID) -> bytes:
    return encode_frame({"type": "readings", "relay_id": relay_id, "substation": "Bogota",
                         "openings": 1, "now_ms": 0, "readings": rows})


def with_value(since: int, index: int, value: object) -> bytes:
    rows = good_rows(since)
    rows[1][index] = value
    return readings(rows)


# How the fake relay answers a read request for since_ms ``s`` with limit ``n``.
MODES = {
    "good": lambda s, n: readings(good_rows(s)),
    "garbage": lambda s, n: b"\x00\x00\x00\x08garbage!",
    "over-cap": lambda s, n: b"\x7f\xff\xff\xff" + b"x" * 100,
    "empty-frame": lambda s, n: b"\x00\x00\x00\x00",
    "nan": lambda s, n: with_value(s, 4, math.nan),
    "infinity": lambda s, n: with_value(s, 9, -math.inf),
    "backwards": lambda s, n: readings(good_rows(s)[::-1]),
    "repeating": lambda s, n: readings(good_rows(s)[:1] * 2),
    "too-old": lambda s, n: readings(good_rows(s - 1000)),
    "too-many": lambda s, n: readings(good_rows(s, n + 1)),
    "wrong-relay": lambda s, n: readings(good_rows(s), "relay-2"),
    "string-value": lambda s, n: with_value(s, 1, "115.0"),
    "not-a-map": lambda s, n: encode_frame([1, 2, 3]),
    "error": lambda s, n: encode_frame({"type": "error", "reason": "busy", "detail": ""}),
    "mid-frame-close": lambda s, n: readings(good_rows(s))[:20],
    "silent": lambda s, n: b"",
}


class FakeRelay:
    """A relay that misbehaves on demand: ``mode`` (a MODES key) picks the next answers."""

    def __init__(self, port: int = 0) -> None:
        self.mode = "good"
        self.delay_s = 0.0
        self.connections = 0
        self._port = port
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> FakeRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
        return self

    async def close(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                request = await read_frame(reader, timeout=5.0)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                mode = self.mode
                writer.write(MODES[mode](request["since_ms"], request["limit"]))
                if mode == "mid-frame-close":
                    break
        except (ConnectionClosed, FrameError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(predicate, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
async def fake():
    relay = await FakeRelay().start()
    yield relay
    await relay.close()


def client_for(port: int, **options) -> RelayClient:
    options = {"request_timeout": 0.2, "connect_timeout": 0.2, "backoff_initial_s": 0.02, **options}
    return RelayClient("127.0.0.1", port, RELAY_ID, **options)


@pytest.mark.parametrize("mode, reason", [
    ("garbage", "bad-msgpack"),
    ("over-cap", "frame-too-large"),
    ("empty-frame", "empty-frame"),
    ("nan", "not-finite"),
    ("infinity", "not-finite"),
    ("backwards", "not-increasing"),
    ("repeating", "not-increasing"),
    ("too-old", "too-old"),
    ("too-many", "too-many"),
    ("wrong-relay", "wrong-relay"),
    ("string-value", "bad-type"),
    ("not-a-map", "bad-response"),
    ("error", "relay-error"),
    ("mid-frame-close", "closed"),
    ("silent", "timeout"),
])
async def test_bad_relay_gives_a_named_reason_then_the_client_recovers(fake, mode, reason):
    client = client_for(fake.port, max_frame=4096)
    fake.mode = mode
    with pytest.raises(RelayError) as info:
        await client.read_since(5000, limit=10)
    assert info.value.reason == reason and reason in REASONS
    assert not client.connected and client.failures == 1
    fake.mode = "good"
    await wait_until(client.ready)
    capture = await client.read_since(5000, limit=10)
    assert [r.timestamp_ms for r in capture.readings] == [6000, 7000]
    assert client.failures == 0 and client.backoff_s == 0
    await client.close()


async def test_no_relay_at_all_is_unreachable_until_one_appears():
    port = free_port()
    client = client_for(port)
    with pytest.raises(RelayError) as info:
        await client.read_since(0)
    assert info.value.reason == "unreachable"
    relay = await FakeRelay(port).start()
    try:
        await wait_until(client.ready)
        assert len((await client.read_since(0)).readings) == 2
    finally:
        await client.close()
        await relay.close()


async def test_the_connection_is_reused(fake):
    client = client_for(fake.port)
    for since in range(0, 5000, 1000):
        await client.read_since(since)
    assert fake.connections == 1
    await client.close()


async def test_a_client_frame_cap_smaller_than_the_answer(fake):
    client = client_for(fake.port, max_frame=100)
    with pytest.raises(RelayError) as info:
        await client.read_since(0)
    assert info.value.reason == "frame-too-large"


async def test_backoff_doubles_refuses_early_calls_without_connecting_and_resets(fake):
    now = [1000.0]
    client = client_for(fake.port, backoff_initial_s=0.1, backoff_max_s=30.0, clock=lambda: now[0])
    fake.mode = "garbage"
    delays = []
    for _ in range(12):
        with pytest.raises(RelayError):
            await client.read_since(0)
        delays.append(client.backoff_s)
        assert client.next_attempt_at == now[0] + client.backoff_s
        connections = fake.connections
        with pytest.raises(RelayError) as info:
            await client.read_since(0)  # too early: refused at once
        assert info.value.reason == "backoff" and fake.connections == connections
        assert not client.ready()
        now[0] = client.next_attempt_at
        assert client.ready()
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0])
    fake.mode = "good"
    await client.read_since(0)
    assert (client.failures, client.backoff_s, client.ready()) == (0, 0.0, True)
    await client.close()


async def test_a_cancelled_read_does_not_leave_its_answer_for_the_next(fake):
    client = client_for(fake.port, request_timeout=2.0)
    fake.delay_s = 0.2
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await client.read_since(0)  # its answer (6000-ish stamps for since 0) comes late
    assert not client.connected
    fake.delay_s = 0.0
    capture = await client.read_since(50_000)
    assert [r.timestamp_ms for r in capture.readings] == [51_000, 52_000]
    await client.close()


async def test_relay_hanging_up_between_reads_is_not_an_error(fake):
    port = fake.port
    client = client_for(port)
    await client.read_since(0)
    await fake.close()  # hangs up on the client; the port closes too
    await wait_until(lambda: not client.connected)
    relay = await FakeRelay(port).start()
    try:
        await client.read_since(1000)
        assert client.failures == 0
    finally:
        await client.close()
        await relay.close()


async def test_failures_are_raised_not_logged(fake):
    # The node's RelayWatch logs outages once; the client must not add a second voice.
    client = client_for(fake.port, backoff_initial_s=0.0)
    fake.mode = "nan"
    with capture_logs() as logs:
        with pytest.raises(RelayError):
            await client.read_since(0)
        fake.mode = "good"
        await client.read_since(0)
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == []
    await client.close()


async def test_bad_arguments(fake):
    client = client_for(fake.port)
    for limit in (0, 10_001):
        with pytest.raises(ValueError):
            await client.read_since(0, limit)
