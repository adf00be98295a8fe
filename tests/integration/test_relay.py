"""The relay server and the relay client end to end over real loopback sockets, including
restarts: clean (sequence and buffer kept), lost journal or state (a signed gap notice), a
crash, and a damaged journal tail."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from gridchain.consensus.provenance import verify_gap
from gridchain.identity.keys import RELAY_KEY_FILE, RelayKey
from gridchain.relay.capture_files import read_capture_file
from gridchain.relay.client import RelayClient, RelayError
from gridchain.relay.journal import CLOCK_SEQ_PER_MS, JOURNAL_FILE, STATE_FILE, RelayStateError
from gridchain.relay.server import RelayServer, run_relay
from gridchain.relay.simulator import RelaySimulator
from gridchain.wire.streams import ConnectionClosed, read_frame
from gridchain.wire.frames import encode_frame
from tests.support.ports import free_port
from tests.support.wait import wait_until

INTERVAL_MS = 100


def now_ms() -> int:
    return int(time.time() * 1000)


def make_server(port: int = 0, data_dir=None, **options) -> RelayServer:
    fault_probability = options.pop("fault_probability", 0.0)
    sim = RelaySimulator("relay-1", "Bogota", INTERVAL_MS, seed=1, start_ms=now_ms() - 5000,
                         fault_probability=fault_probability)
    if data_dir is not None:
        options["key"], options["key_created"] = RelayKey.open_path(data_dir / RELAY_KEY_FILE)
    return RelayServer(sim, "127.0.0.1", port, data_dir=data_dir, **options)


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
    first = await client.read(0)
    assert len(first.readings) >= 50 and first.relay_id == "relay-1" and first.substation == "Bogota"
    assert first.relay_key == relay.key.public_key == client.pinned_key
    assert [r.seq for r in first.readings] == list(range(1, first.last_seq + 1))
    assert all(r.flags == 0 and r.openings == 0 for r in first.readings)  # device time, good
    last = first.last_seq
    await wait_until(lambda: relay.feed.next_seq > last + 1)
    more = await client.read(last)
    assert more.first_seq == last + 1 and more.gap is None
    assert client.address == f"127.0.0.1:{relay.port}"
    await client.close()


async def test_a_node_down_for_a_while_catches_up_without_a_gap(relay):
    client = client_for(relay)
    last = (await client.read(0)).last_seq
    await client.close()  # the node goes down ...
    await wait_until(lambda: relay.feed.next_seq > last + 5)
    client = client_for(relay)  # ... and comes back with only its last seq
    seqs = [r.seq for r in (await client.read(last)).readings]
    assert seqs == list(range(last + 1, last + 1 + len(seqs))) and len(seqs) >= 5
    await client.close()


async def test_limit_is_respected_and_one_seal_covers_each_answer(relay):
    client = client_for(relay)
    batch = await client.read(0, limit=7)
    assert len(batch.readings) == 7 and [run.seal.count for run in batch.runs] == [7]
    await client.close()


async def test_answers_to_the_same_range_share_one_cached_seal(relay):
    relay.pause()
    clients = [client_for(relay) for _ in range(4)]
    signed = relay.feed.seals_signed
    batches = [await c.read(10, limit=100) for c in clients]
    assert len({b.runs[0].seal for b in batches}) == 1 and relay.feed.seals_signed == signed + 1
    for c in clients:
        await c.close()


async def test_pipelined_requests_are_answered_in_order(relay, raw):
    reader, writer = raw
    after = list(range(20))
    writer.write(b"".join(encode_frame({"type": "read", "after_seq": a, "limit": 1}) for a in after))
    answers = [await read_frame(reader, timeout=1.0) for _ in after]
    assert [int.from_bytes(a["rows"][:8], "big") for a in answers] == [a + 1 for a in after]


async def test_info(relay):
    client = client_for(relay)
    info = await client.info()
    assert (info.relay_id, info.interval_ms, info.relay_key) == ("relay-1", INTERVAL_MS, relay.key.public_key)
    assert info.oldest_seq == 1 and info.buffered >= 50 and info.gap is None
    assert client.pinned_key == relay.key.public_key
    await client.close()


async def test_a_bad_request_gets_an_error_and_the_connection_stays(relay, raw):
    reader, writer = raw
    with capture_logs() as logs:
        writer.write(encode_frame({"type": "write"}) + encode_frame(["read"]))
        assert (await read_frame(reader, timeout=1.0))["reason"] == "unknown-type"
        assert (await read_frame(reader, timeout=1.0))["reason"] == "bad-request"
    assert [e["reason"] for e in logs if e["event"] == "relay.bad_request"] == ["unknown-type", "bad-request"]
    writer.write(encode_frame({"type": "read", "after_seq": 0, "limit": 1}))
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
    assert (await client.read(0, 1)).readings
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


async def restarted(data_dir, port: int, old: RelayServer | None = None) -> RelayServer:
    if old is not None:
        await old.close()
    server = make_server(port, data_dir)
    await server.start()
    return server


async def test_a_clean_restart_keeps_the_sequence_and_the_buffer(tmp_path):
    port = free_port()
    server = await restarted(tmp_path, port)
    client = RelayClient("127.0.0.1", port, "relay-1", request_timeout=0.5)
    first = await client.read(0)
    key, oldest = server.key.public_key, server.feed.buffer.oldest_seq
    server = await restarted(tmp_path, port, server)
    try:
        assert server.feed.boot_plan.why == "continued" and server.feed.gap is None
        assert server.key.public_key == key and server.feed.buffer.oldest_seq == oldest  # buffer kept
        await wait_until(lambda: server.feed.next_seq > first.last_seq + 1)
        more = await client.read(first.last_seq)  # same client: the key it pinned still holds
        assert more.first_seq == first.last_seq + 1 and more.gap is None and client.failures == 0
        again = await client.read(0, limit=first.last_seq)
        assert again.readings == first.readings  # the same signed rows, served again after the restart
    finally:
        await client.close()
        await server.close()


async def test_a_crash_with_an_intact_journal_continues_without_a_gap(tmp_path):
    port = free_port()
    server = await restarted(tmp_path, port)
    last = server.feed.next_seq - 1
    server.pause()
    server._server.close()  # no orderly shutdown: the state file still says "running"
    await server._server.wait_closed()
    server = await restarted(tmp_path, port)
    try:
        assert (server.feed.boot_plan.why, server.feed.boot_plan.gap) == ("continued", False)
        assert server.feed.buffer.read(last - 1, 10).first_seq == last
    finally:
        await server.close()


@pytest.mark.parametrize("lose, why", [(JOURNAL_FILE, "journal-missing"), (STATE_FILE, "state-missing")])
async def test_a_restart_that_lost_its_buffer_signs_a_gap_notice(tmp_path, lose, why):
    port = free_port()
    server = await restarted(tmp_path, port)
    client = RelayClient("127.0.0.1", port, "relay-1", request_timeout=0.5)
    last = (await client.read(0, limit=10)).last_seq  # a node that has not read everything yet
    used = server.feed.next_seq - 1
    assert used > last
    await server.close()
    (tmp_path / lose).unlink()
    with capture_logs() as logs:
        server = await restarted(tmp_path, port)
    try:
        plan = server.feed.boot_plan
        assert (plan.why, plan.gap) == (why, True) and plan.next_seq > used
        if lose == STATE_FILE:
            assert plan.next_seq >= (now_ms() - 60_000) * CLOCK_SEQ_PER_MS
        gapped = [e for e in logs if e["event"] == "relay.gap_signed"]
        assert gapped and gapped[0]["resume_seq"] == plan.next_seq
        await wait_until(lambda: server.feed.next_seq > plan.next_seq)
        batch = await client.read(last)  # verified against the key pinned before the restart
        assert batch.gap.resume_seq == plan.next_seq and client.failures == 0
        verify_gap(server.key.public_key, "relay-1", batch.gap)
        if lose == STATE_FILE:  # the journal survived: the rows before the gap are still served
            assert batch.first_seq == last + 1
            batch = await client.read(used)
        assert batch.first_seq == plan.next_seq
        assert (await client.info()).gap == batch.gap
    finally:
        await client.close()
        await server.close()
    server = await restarted(tmp_path, port)  # a clean restart after that still hands out the notice
    try:
        assert server.feed.boot_plan.why == "continued" and server.feed.gap == batch.gap
    finally:
        await server.close()


@pytest.mark.parametrize("damage", ["torn", "flipped", "garbage"])
async def test_a_damaged_journal_tail_is_cut_with_a_warning(tmp_path, damage):
    port = free_port()
    server = await restarted(tmp_path, port)
    used = server.feed.next_seq - 1
    await server.close()
    journal = tmp_path / JOURNAL_FILE
    data = journal.read_bytes()
    journal.write_bytes({"torn": data[:-50], "flipped": data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:],
                         "garbage": data + b"\x00garbage"}[damage])
    with capture_logs() as logs:
        server = await restarted(tmp_path, port)
    try:
        warned = [e for e in logs if e["event"] == "relay.journal_damaged"]
        assert len(warned) == 1 and warned[0]["log_level"] == "warning" and warned[0]["kept_rows"] >= used - 1
        plan = server.feed.boot_plan
        assert (plan.why, plan.gap) == ("journal-damaged", True) and plan.next_seq > used
        client = RelayClient("127.0.0.1", port, "relay-1", expected_key=server.key.public_key, request_timeout=0.5)
        first = await client.read(0)
        assert first.first_seq == 1 and first.gap == server.feed.gap  # the good rows, and the notice
        await client.close()
    finally:
        await server.close()
    assert server.feed.boot_plan.why == "journal-damaged"
    server = await restarted(tmp_path, port)
    try:
        assert server.feed.boot_plan.why == "continued"  # the cut journal is whole again
    finally:
        await server.close()


async def test_a_data_dir_of_another_relay_is_refused(tmp_path):
    server = await restarted(tmp_path, free_port())
    await server.close()
    sim = RelaySimulator("relay-2", "Bogota", INTERVAL_MS, seed=1, start_ms=now_ms())
    other = RelayServer(sim, "127.0.0.1", 0, data_dir=tmp_path, key=RelayKey.generate())
    with pytest.raises(RelayStateError) as caught:
        await other.start()
    assert caught.value.reason == "relay-id-changed"


async def test_client_refuses_a_relay_restarted_with_another_key(tmp_path):
    port = free_port()
    server = await restarted(tmp_path, port)
    client = RelayClient("127.0.0.1", port, "relay-1", request_timeout=0.5, backoff_initial_s=0.01)
    last = (await client.read(0)).last_seq
    await server.close()
    (tmp_path / RELAY_KEY_FILE).unlink()  # a new key: a different relay as far as anyone can tell
    server = await restarted(tmp_path, port)
    try:
        with pytest.raises(RelayError) as caught:
            await client.read(last)
        assert caught.value.reason == "relay-key-changed"
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
        buffered = server.feed.buffer.read(0, 10_000).readings()
        assert len(parsed) == len(buffered) >= 50
        assert [p.seq for p in parsed] == [r.seq for r in buffered]
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
        await client.read(0, 1)
        await client.close()
        await wait_until(lambda: any(e["event"] == "relay.client_disconnected" for e in logs))
    connected = next(e for e in logs if e["event"] == "relay.client_connected")
    assert connected["client"].startswith("127.0.0.1:")


async def test_run_relay_serves_until_stopped(tmp_path):
    port, stop = free_port(), asyncio.Event()
    task = asyncio.create_task(run_relay("127.0.0.1", port, 0.1, "relay-9", "Test", 5, None, stop,
                                         data_dir=tmp_path / "relay"))
    client = RelayClient("127.0.0.1", port, "relay-9", request_timeout=0.5, backoff_initial_s=0.01)

    async def first_capture():
        while True:
            await wait_until(client.ready)
            try:
                return await client.read(0)
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
    key_file = tmp_path / "relay" / RELAY_KEY_FILE
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert capture.relay_key == RelayKey.load(key_file).public_key
    assert (tmp_path / "relay" / STATE_FILE).exists() and (tmp_path / "relay" / JOURNAL_FILE).exists()


async def test_run_relay_uses_the_key_file_given(tmp_path):
    stop = asyncio.Event()
    key, _ = RelayKey.open_path(tmp_path / "elsewhere.key")
    stop.set()  # start, then stop at once
    await run_relay("127.0.0.1", 0, 0.1, "relay-9", "Test", 5, None, stop, data_dir=tmp_path / "d",
                    key_file=tmp_path / "elsewhere.key")
    assert not (tmp_path / "d" / RELAY_KEY_FILE).exists() and (tmp_path / "d" / STATE_FILE).exists()
    assert key.public_key == RelayKey.load(tmp_path / "elsewhere.key").public_key


async def test_run_relay_refuses_a_too_short_interval():
    with pytest.raises(ValueError):
        await run_relay("127.0.0.1", 0, 0.01, "r", "s", 1, None, asyncio.Event())


def test_relay_settings_name_the_data_dir_and_key_file(tmp_path):
    from gridchain.cli.settings import DEFAULT_RELAY_DATA_DIR, load_relay_settings

    default = load_relay_settings([])
    assert (default.data_dir, default.key_file) == (DEFAULT_RELAY_DATA_DIR, None)
    given = load_relay_settings(["--data-dir", str(tmp_path), "--key-file", str(tmp_path / "k.pem")])
    assert (given.data_dir, given.key_file) == (tmp_path, tmp_path / "k.pem")
