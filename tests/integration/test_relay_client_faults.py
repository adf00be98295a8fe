"""Bad relays: each misbehaviour gives its own named RelayError, nothing of it is returned, and
the same client object works again as soon as the relay behaves.

The fake relay speaks the documented feed protocol (docs/protocol.md, relay section): it
builds rows, seals and notices byte for byte, and can sign with a key that is not the
relay's, announce another key, tamper with a row after signing, or skip readings.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from gridchain.consensus.provenance import Reading, seal_readings, sign_gap
from gridchain.relay.client import REASONS, RelayClient, RelayError
from gridchain.wire.frames import FrameError, encode_frame
from gridchain.wire.streams import ConnectionClosed, read_frame

RELAY_ID = "relay-1"
RELAY_KEY = Ed25519PrivateKey.from_private_bytes(b"\x11" * 32)
PUBLIC = RELAY_KEY.public_key().public_bytes_raw()
FORGER = Ed25519PrivateKey.from_private_bytes(b"\x22" * 32)
FORGER_PUBLIC = FORGER.public_key().public_bytes_raw()


def reading(seq: int, **changes) -> Reading:
    values = dict(seq=seq, timestamp_ms=1_000_000 + seq * 1000, openings=1, flags=0, vab=115.0, vbc=115.1,
                  vca=114.9, ia=300.0, ib=301.0, ic=299.0, frequency=60.0, power_factor=0.93,
                  active_power=55.6, reactive_power=22.0)
    values.update(changes)
    return Reading(**values)


def readings_frame(readings: list[Reading], *, signer=RELAY_KEY, announced=PUBLIC, relay_id=RELAY_ID,
                   gap=None, spoil=None, now_ms: int | None = None) -> bytes:
    rows = b"".join(r.to_bytes() for r in readings)
    seals = [seal_readings(signer, relay_id, readings)] if readings else []
    if spoil is not None:
        rows = spoil(rows)
    message = {"type": "readings", "relay_id": relay_id, "substation": "Bogota", "relay_key": announced,
               "now_ms": 1_000_000 if now_ms is None else now_ms, "newest_seq": readings[-1].seq if readings else None,
               "rows": rows, "seals": [[s.first_seq, s.count, s.signature] for s in seals],
               "gap": None if gap is None else [gap.resume_seq, gap.boot_ms, gap.signature]}
    return encode_frame(message)


def run_after(after: int, count: int = 2, **changes) -> list[Reading]:
    return [reading(after + 1 + i, **changes) for i in range(count)]


def flip(index: int):
    def spoil(rows: bytes) -> bytes:
        spoiled = bytearray(rows)
        spoiled[index] ^= 0x01
        return bytes(spoiled)
    return spoil


def with_value(after: int, **changes) -> list[Reading]:
    first, second = run_after(after)
    return [first, Reading(**{**{f: getattr(second, f) for f in Reading.__slots__}, **changes})]


# How the fake relay answers a read for ``after_seq`` ``a`` with limit ``n``.
MODES = {
    "good": lambda a, n: readings_frame(run_after(a)),
    "garbage": lambda a, n: b"\x00\x00\x00\x08garbage!",
    "over-cap": lambda a, n: b"\x7f\xff\xff\xff" + b"x" * 100,
    "empty-frame": lambda a, n: b"\x00\x00\x00\x00",
    "nan": lambda a, n: readings_frame(with_value(a, ia=math.nan)),
    "infinity": lambda a, n: readings_frame(with_value(a, reactive_power=-math.inf)),
    "bad-flags": lambda a, n: readings_frame(with_value(a, flags=1 << 24)),
    "tampered-row": lambda a, n: readings_frame(run_after(a), spoil=flip(108 + 60)),
    "tampered-openings": lambda a, n: readings_frame(run_after(a), spoil=flip(108 + 23)),
    "other-key": lambda a, n: readings_frame(run_after(a), signer=FORGER),
    "changed-key": lambda a, n: readings_frame(run_after(a), signer=FORGER, announced=FORGER_PUBLIC),
    "forged-gap": lambda a, n: readings_frame(run_after(a + 100), gap=sign_gap(FORGER, RELAY_ID, a + 101, 0)),
    "skip": lambda a, n: readings_frame(run_after(a + 100)),
    "too-old": lambda a, n: readings_frame(run_after(a - 1)),
    "too-many": lambda a, n: readings_frame(run_after(a, n + 1)),
    "wrong-relay": lambda a, n: readings_frame(run_after(a), relay_id="relay-2"),
    "not-a-map": lambda a, n: encode_frame([1, 2, 3]),
    "error": lambda a, n: encode_frame({"type": "error", "reason": "busy", "detail": ""}),
    "mid-frame-close": lambda a, n: readings_frame(run_after(a))[:20],
    "silent": lambda a, n: b"",
    "signed-gap": lambda a, n: readings_frame(run_after(a + 100), gap=sign_gap(RELAY_KEY, RELAY_ID, a + 101, 5)),
    "clock-ahead": lambda a, n: readings_frame(run_after(a), now_ms=10**13),
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
                if request["type"] == "info":
                    key = FORGER_PUBLIC if mode == "changed-key" else PUBLIC
                    writer.write(encode_frame({"type": "info", "relay_id": RELAY_ID, "substation": "Bogota",
                                               "relay_key": key, "now_ms": 1_000_000, "interval_ms": 1000,
                                               "buffered": 0, "oldest_seq": None, "newest_seq": None,
                                               "newest_ms": None, "openings": 0, "gap": None}))
                    continue
                writer.write(MODES[mode](request["after_seq"], request["limit"]))
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
    options = {"request_timeout": 0.2, "connect_timeout": 0.2, "backoff_initial_s": 0.02,
               "wall_clock": lambda: 1000.0, **options}
    return RelayClient("127.0.0.1", port, RELAY_ID, **options)


@pytest.mark.parametrize("mode, reason", [
    ("garbage", "bad-msgpack"),
    ("over-cap", "frame-too-large"),
    ("empty-frame", "empty-frame"),
    ("nan", "not-finite"),
    ("infinity", "not-finite"),
    ("bad-flags", "bad-reading-flags"),
    ("tampered-row", "bad-relay-signature"),
    ("tampered-openings", "bad-relay-signature"),
    ("other-key", "bad-relay-signature"),
    ("changed-key", "relay-key-mismatch"),
    ("forged-gap", "bad-relay-signature"),
    ("skip", "sequence-gap"),
    ("too-old", "too-old"),
    ("too-many", "too-many"),
    ("wrong-relay", "wrong-relay"),
    ("not-a-map", "bad-response"),
    ("error", "relay-error"),
    ("mid-frame-close", "closed"),
    ("silent", "timeout"),
])
async def test_bad_relay_gives_a_named_reason_then_the_client_recovers(fake, mode, reason):
    client = client_for(fake.port, max_frame=4096, expected_key=PUBLIC)
    fake.mode = mode
    with pytest.raises(RelayError) as info:
        await client.read(5, limit=10)
    assert info.value.reason == reason and reason in REASONS
    assert not client.connected and client.failures == 1
    fake.mode = "good"
    await wait_until(client.ready)
    batch = await client.read(5, limit=10)
    assert [r.seq for r in batch.readings] == [6, 7] and batch.relay_key == PUBLIC
    assert client.failures == 0 and client.backoff_s == 0
    await client.close()


async def test_open_network_pins_the_first_key_and_refuses_a_change(fake):
    client = client_for(fake.port)
    assert (await client.read(0)).relay_key == PUBLIC and client.pinned_key == PUBLIC
    fake.mode = "changed-key"  # a fake relay took the address: its own key, consistently signed
    for call in (lambda: client.read(2), client.info):
        await wait_until(client.ready)
        with pytest.raises(RelayError) as info:
            await call()
        assert info.value.reason == "relay-key-changed"
    fake.mode = "good"
    await wait_until(client.ready)
    assert [r.seq for r in (await client.read(2)).readings] == [3, 4]
    await client.close()


async def test_a_forged_first_answer_pins_nothing(fake):
    client = client_for(fake.port)
    fake.mode = "tampered-row"
    with pytest.raises(RelayError):
        await client.read(0)
    assert client.pinned_key is None


async def test_relays_are_checked_against_the_network_file(fake):
    client = client_for(fake.port, known_relays={"relay-9": PUBLIC})
    with pytest.raises(RelayError) as info:
        await client.info()
    assert info.value.reason == "unknown-relay"
    await wait_until(client.ready)
    client = client_for(fake.port, known_relays={RELAY_ID: FORGER_PUBLIC})
    with pytest.raises(RelayError) as info:
        await client.read(0)
    assert info.value.reason == "relay-key-mismatch"
    client = client_for(fake.port, known_relays={RELAY_ID: PUBLIC})
    assert (await client.info()).relay_key == PUBLIC and len((await client.read(0)).readings) == 2
    await client.close()


async def test_a_signed_gap_notice_lets_the_sequence_skip(fake):
    client = client_for(fake.port, expected_key=PUBLIC)
    fake.mode = "signed-gap"
    batch = await client.read(5)
    assert batch.gap.resume_seq == 106 and batch.first_seq == 106
    await client.close()


async def test_a_relay_clock_minutes_off_is_a_warning_once_not_a_refusal(fake):
    client = client_for(fake.port, expected_key=PUBLIC)
    with capture_logs() as logs:
        fake.mode = "clock-ahead"
        for after in (0, 2, 4):
            assert len((await client.read(after)).readings) == 2
        fake.mode = "good"
        await client.read(6)
    events = [e["event"] for e in logs if e["event"].startswith("relay.clock")]
    assert events == ["relay.clock_skew", "relay.clock_ok"]
    await client.close()


async def test_no_relay_at_all_is_unreachable_until_one_appears():
    port = free_port()
    client = client_for(port)
    with pytest.raises(RelayError) as info:
        await client.read(0)
    assert info.value.reason == "unreachable"
    relay = await FakeRelay(port).start()
    try:
        await wait_until(client.ready)
        assert len((await client.read(0)).readings) == 2
    finally:
        await client.close()
        await relay.close()


async def test_the_connection_is_reused(fake):
    client = client_for(fake.port)
    for after in range(0, 10, 2):
        await client.read(after)
    assert fake.connections == 1
    await client.close()


async def test_a_client_frame_cap_smaller_than_the_answer(fake):
    client = client_for(fake.port, max_frame=100)
    with pytest.raises(RelayError) as info:
        await client.read(0)
    assert info.value.reason == "frame-too-large"


async def test_backoff_doubles_refuses_early_calls_without_connecting_and_resets(fake):
    now = [1000.0]
    client = client_for(fake.port, backoff_initial_s=0.1, backoff_max_s=30.0, clock=lambda: now[0],
                        jitter=lambda low, high: 1.0)  # no jitter: the exact doubling
    fake.mode = "garbage"
    delays = []
    for _ in range(12):
        with pytest.raises(RelayError):
            await client.read(0)
        delays.append(client.backoff_s)
        assert client.next_attempt_at == now[0] + client.backoff_s
        connections = fake.connections
        with pytest.raises(RelayError) as info:
            await client.read(0)  # too early: refused at once
        assert info.value.reason == "backoff" and fake.connections == connections
        assert not client.ready()
        now[0] = client.next_attempt_at
        assert client.ready()
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0])
    fake.mode = "good"
    await client.read(0)
    assert (client.failures, client.backoff_s, client.ready()) == (0, 0.0, True)
    await client.close()


async def test_a_cancelled_read_does_not_leave_its_answer_for_the_next(fake):
    client = client_for(fake.port, request_timeout=2.0)
    fake.delay_s = 0.2
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await client.read(0)  # its answer (seq 1, 2) comes late
    assert not client.connected
    fake.delay_s = 0.0
    batch = await client.read(50)
    assert [r.seq for r in batch.readings] == [51, 52]
    await client.close()


async def test_relay_hanging_up_between_reads_is_not_an_error(fake):
    port = fake.port
    client = client_for(port)
    await client.read(0)
    await fake.close()  # hangs up on the client; the port closes too
    await wait_until(lambda: not client.connected)
    relay = await FakeRelay(port).start()
    try:
        await client.read(2)
        assert client.failures == 0
    finally:
        await client.close()
        await relay.close()


async def test_failures_are_raised_not_logged(fake):
    # The node's RelayWatch logs outages once; the client must not add a second voice.
    client = client_for(fake.port, backoff_initial_s=0.0, expected_key=PUBLIC)
    fake.mode = "tampered-row"
    with capture_logs() as logs:
        with pytest.raises(RelayError):
            await client.read(0)
        fake.mode = "good"
        await client.read(0)
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["relay.key_pinned"]
    await client.close()


async def test_bad_arguments(fake):
    client = client_for(fake.port)
    for after, limit in ((0, 0), (0, 10_001), (-1, 1)):
        with pytest.raises(ValueError):
            await client.read(after, limit)


def test_the_fake_relay_rows_are_the_documented_bytes():
    row = reading(7).to_bytes()
    assert len(row) == 108 and struct.unpack(">QqQI", row[:28]) == (7, 1_007_000, 1, 0)
