"""read_frame / write_frame over real loopback sockets: caps, timeouts, closes."""

from __future__ import annotations

import asyncio
import time

import pytest

from gridchain.wire.streams import ConnectionClosed, close_writer, read_frame, write_frame
from gridchain.wire.frames import FrameError, encode_frame


@pytest.fixture
async def pair():
    """(client reader, client writer, server reader, server writer) on 127.0.0.1."""
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with asyncio.timeout(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        server_reader, server_writer = await accepted
    yield reader, writer, server_reader, server_writer
    for w in (writer, server_writer):
        w.transport.abort()  # a full send buffer (see the slow-reader test) would linger on close
    server.close()
    await server.wait_closed()


async def test_round_trip_both_ways(pair):
    reader, writer, server_reader, server_writer = pair
    await write_frame(writer, {"type": "info"}, 1.0)
    assert await read_frame(server_reader, timeout=1.0) == {"type": "info"}
    await write_frame(server_writer, [1, b"\x00", "x"], 1.0)
    assert await read_frame(reader, timeout=1.0) == [1, b"\x00", "x"]


async def test_many_frames_in_one_write(pair):
    reader, _, _, server_writer = pair
    server_writer.write(b"".join(encode_frame(i) for i in range(100)))
    assert [await read_frame(reader, timeout=1.0) for _ in range(100)] == list(range(100))


async def test_cap_is_checked_before_the_body_is_awaited(pair):
    reader, _, _, server_writer = pair
    server_writer.write(b"\xff\xff\xff\xff")  # and never a body
    start = time.monotonic()
    with pytest.raises(FrameError) as info:
        await read_frame(reader, max_frame=1024, timeout=2.0)
    assert info.value.reason == "frame-too-large"
    assert time.monotonic() - start < 1.0


async def test_bad_body(pair):
    reader, _, _, server_writer = pair
    server_writer.write(b"\x00\x00\x00\x01\xc1")
    with pytest.raises(FrameError) as info:
        await read_frame(reader, timeout=1.0)
    assert info.value.reason == "bad-msgpack"


async def test_timeout(pair):
    reader, _, _, server_writer = pair
    server_writer.write(b"\x00\x00\x00\x09")  # a prefix, then silence
    with pytest.raises(TimeoutError):
        await read_frame(reader, timeout=0.1)


@pytest.mark.parametrize("sent, mid_frame", [
    (b"", False),
    (b"\x00\x00", True),
    (b"\x00\x00\x00\x05\x93", True),
])
async def test_close_is_connection_closed(pair, sent, mid_frame):
    reader, _, _, server_writer = pair
    server_writer.write(sent)
    await close_writer(server_writer)
    with pytest.raises(ConnectionClosed) as info:
        await read_frame(reader, timeout=1.0)
    assert info.value.mid_frame is mid_frame


async def test_write_to_a_peer_that_does_not_read_times_out(pair):
    _, writer, _, _ = pair
    big = b"x" * (1 << 20)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(10):
            for _ in range(200):  # loopback buffers hold a few MiB at most
                await write_frame(writer, big, 0.2)


async def test_write_after_close(pair):
    _, writer, _, _ = pair
    writer.close()
    with pytest.raises(ConnectionClosed):
        await write_frame(writer, 1, 1.0)


async def test_write_refuses_an_oversized_message(pair):
    _, writer, _, _ = pair
    with pytest.raises(FrameError):
        await write_frame(writer, b"x" * 100, 1.0, max_frame=50)
