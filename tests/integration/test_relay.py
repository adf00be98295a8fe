"""The relay server and the relay client end to end over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from structlog.testing import capture_logs

from gridchain.relay.capture_files import read_capture_file
from gridchain.relay.client import RelayClient
from gridchain.relay.server import RelayServer, run_relay
from gridchain.relay.simulator import RelaySimulator
from gridchain.wire.streams import ConnectionClosed, read_frame
from gridchain.wire.frames import encode_frame

INTERVAL_MS = 100


def now_ms() -> int:
    return int(time.time() * 1000)


async def wait_until(predicate, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_server(port: int = 0, **options) -> RelayServer:
    fault_probability = options.pop("fault_probability", 0.0)
    sim = RelaySimulator("relay-1", "Bogota", INTERVAL_MS, seed=1, start_ms=now_ms() - 5000,
                         fault_probability=fault_probability)
    return RelayServer(sim, "127.0.0.1", port, **options)


@pytest.fixture
async def relay():
    server = make_server(idle_timeout_s=0.5)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def raw(relay):
    async with asyncio.timeout(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    yield reader, writer
    writer.close()


def client_for(server: RelayServer, **options) -> RelayClient:
    options.setdefault("request_timeout", 0.5)
    options.setdefault("connect_timeout", 0.5)
    return RelayClient("127.0.0.1", server.port, "relay-1", **options)


async def test_client_reads_the_buffer_and_then_only_what_is_new(relay):
    client = client_for(relay)
    first = await client.read_since(0)
    assert len(first.readings) >= 50 and first.relay_id == "relay-1" and first.substation == "Bogota"
    newest = first.newest_ms
    await wait_until(lambda: relay.simulator.snapshot().newest_ms > newest)
    more = await client.read_since(newest)
    assert more.readings[0].timestamp_ms == newest + INTERVAL_MS
    assert client.address == f"127.0.0.1:{relay.port}"
    await client.close()


async def test_a_node_down_for_a_while_catches_up_without_a_gap(relay):
    client = client_for(relay)
    newest = (await client.read_since(0)).newest_ms
    await client.close()  # the node goes down ...
    await wait_until(lambda: relay.simulator.snapshot().newest_ms >= newest + 5 * INTERVAL_MS)
    client = client_for(relay)  # ... and comes back with only its last timestamp
    stamps = [r.timestamp_ms for r in (await client.read_since(newest)).readings]
    assert stamps == list(range(newest + INTERVAL_MS, stamps[-1] + 1, INTERVAL_MS)) and len(stamps) >= 5
    await client.close()


async def test_limit_is_respected(relay):
    client = client_for(relay)
    capture = await client.read_since(0, limit=7)
    assert len(capture.readings) == 7
    await client.close()


async def test_pipelined_requests_are_answered_in_order(relay, raw):
    reader, writer = raw
    since = [relay.simulator.snapshot().oldest_ms + i * INTERVAL_MS for i in range(20)]
    writer.write(b"".join(encode_frame({"type": "read", "since_ms": s, "limit": 1}) for s in since))
    answers = [await read_frame(reader, timeout=1.0) for _ in since]
    assert [a["readings"][0][0] for a in answers] == [s + INTERVAL_MS for s in since]


async def test_info(relay):
    client = client_for(relay)
    info = await client.info()
    snap = relay.simulator.snapshot()
    assert (info.relay_id, info.interval_ms) == ("relay-1", INTERVAL_MS)
    assert info.oldest_ms == snap.oldest_ms and info.buffered >= 50
    await client.close()


async def test_a_bad_request_gets_an_error_and_the_connection_stays(relay, raw):
    reader, writer = raw
    with capture_logs() as logs:
        writer.write(encode_frame({"type": "write"}) + encode_frame(["read"]))
        assert (await read_frame(reader, timeout=1.0))["reason"] == "unknown-type"
        assert (await read_frame(reader, timeout=1.0))["reason"] == "bad-request"
    assert [e["reason"] for e in logs if e["event"] == "relay.bad_request"] == ["unknown-type", "bad-request"]
    writer.write(encode_frame({"type": "read", "since_ms": 0, "limit": 1}))
    assert (await read_frame(reader, timeout=1.0))["type"] == "readings"


@pytest.mark.parametrize("sent, reason", [
    (b"\x00\x00\x00\x01\xc1", "bad-msgpack"),
    (b"\x00\x10\x00\x00", "frame-too-large"),  # 1 MiB: requests are capped far lower
    (b"\x00\x00\x00\x00", "empty-frame"),
    (b"GET / HTTP/1.1\r\n\r\n", "frame-too-large"),
])
async def test_broken_framing_gets_an_error_then_a_close(relay, raw, sent, reason):
    reader, writer = raw
    writer.write(sent)
    answer = await read_frame(reader, timeout=1.0)
    assert answer["type"] == "error" and answer["reason"] == reason
    with pytest.raises(ConnectionClosed):
        await read_frame(reader, timeout=1.0)
    client = client_for(relay)  # the relay itself is unharmed
    assert (await client.read_since(0, 1)).readings
    await client.close()


async def test_idle_clients_are_dropped(relay, raw):
    reader, _ = raw
    start = time.monotonic()
    with pytest.raises(ConnectionClosed):
        await read_frame(reader, timeout=3.0)
    assert 0.4 < time.monotonic() - start < 2.0


async def test_too_many_clients_are_turned_away():
    server = make_server(max_clients=1)
    await server.start()
    try:
        async with asyncio.timeout(2):
            first = await asyncio.open_connection("127.0.0.1", server.port)
            await wait_until(lambda: server.clients == 1)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        with pytest.raises(ConnectionClosed):
            await read_frame(reader, timeout=1.0)
        first[1].write(encode_frame({"type": "info"}))
        assert (await read_frame(first[0], timeout=1.0))["type"] == "info"
        for _, w in (first, (reader, writer)):
            w.close()
    finally:
        await server.close()


async def test_client_survives_a_relay_restart_without_an_error():
    port = free_port()
    server = make_server(port)
    await server.start()
    client = RelayClient("127.0.0.1", port, "relay-1", request_timeout=0.5)
    newest = (await client.read_since(0)).newest_ms
    await server.close()
    await wait_until(lambda: not client.connected)
    server = RelayServer(server.simulator, "127.0.0.1", port)
    await server.start()
    try:
        await wait_until(lambda: server.simulator.snapshot().newest_ms > newest)
        assert (await client.read_since(newest)).readings
        assert client.failures == 0
    finally:
        await client.close()
        await server.close()


async def test_capture_files_are_written(tmp_path):
    server = make_server(capture_dir=tmp_path)
    await server.start()
    try:
        # No await from here on, so the ticker cannot add readings while we compare.
        files = sorted(tmp_path.glob("CAPTURE_*.txt"))
        assert files  # the readings already due at start are written at once
        parsed = [r for f in files for r in read_capture_file(f).readings]
        buffered = server.simulator.read(-1, 10_000)[1]
        assert len(parsed) == len(buffered) >= 50
        assert [p.vab for p in parsed] == [r.vab for r in buffered]
        assert all(p.timestamp_ms == r.timestamp_ms // 1000 * 1000 for p, r in zip(parsed, buffered))
    finally:
        await server.close()


async def test_faults_are_logged():
    server = make_server(fault_probability=1.0)
    with capture_logs() as logs:
        await server.start()
        await server.close()
    events = [e["event"] for e in logs]
    assert events[0] == "relay.fault" and "relay.started" in events and events[-1] == "relay.stopped"
    assert logs[0]["openings"] >= 1


async def test_client_connections_are_logged(relay):
    with capture_logs() as logs:
        client = client_for(relay)
        await client.read_since(0, 1)
        await client.close()
        await wait_until(lambda: any(e["event"] == "relay.client_disconnected" for e in logs))
    connected = next(e for e in logs if e["event"] == "relay.client_connected")
    assert connected["client"].startswith("127.0.0.1:")


async def test_run_relay_serves_until_stopped(tmp_path):
    port, stop = free_port(), asyncio.Event()
    task = asyncio.create_task(run_relay("127.0.0.1", port, 0.1, "relay-9", "Test", 5, None, stop))
    client = RelayClient("127.0.0.1", port, "relay-9", request_timeout=0.5, backoff_initial_s=0.01)

    async def first_capture():
        while True:
            await wait_until(client.ready)
            try:
                return await client.read_since(0)
            except Exception:
                continue

    async with asyncio.timeout(3):
        capture = await first_capture()
        await wait_until(lambda: client.connected)
    assert capture.relay_id == "relay-9"
    stop.set()
    async with asyncio.timeout(3):
        await task
    await client.close()


async def test_run_relay_refuses_a_too_short_interval():
    with pytest.raises(ValueError):
        await run_relay("127.0.0.1", 0, 0.01, "r", "s", 1, None, asyncio.Event())
