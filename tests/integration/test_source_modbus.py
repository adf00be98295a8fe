"""Modbus TCP source against the simulated relay's Modbus server: pymodbus on both sides,
loopback, every bad-device case, quality kept, recovery."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gridchain.relay.devices.device import Fault, SimulatedDevice
from gridchain.relay.devices.modbus_server import ModbusDeviceServer
from gridchain.relay.sources import NoNewSample, Quality, SourceError, open_source, parse_source_url
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
from gridchain.relay.sources.modbus_source import ModbusSource
from gridchain.relay.sources.register_map import load_register_map, parse_register_map

START_MS = 1_700_000_000_000
WAIT_S = 10.0  # every poll in these tests ends well within this, or the test fails
# Resolution of the sel751 map (0.01 kV, 0.1 A, 0.001 Hz/PF/MW); float32 is finer.
RESOLUTION = {"sel751": 0.051, "float32": 0.001}


class Rig:
    def __init__(self, map_name: str) -> None:
        self.map_name = map_name
        self.map = load_register_map(map_name)
        self.device = SimulatedDevice.create(seed=7, start_ms=START_MS)
        self.now = START_MS
        self.tick()
        self.server = ModbusDeviceServer(self.device, self.map)
        self.source: ModbusSource | None = None

    def tick(self) -> None:
        self.now += 1000
        self.device.refresh(self.now)

    async def poll(self, source: ModbusSource | None = None):
        return await asyncio.wait_for((source or self.source).poll(self.now), WAIT_S)

    async def fails(self, reason: str, source: ModbusSource | None = None) -> SourceError:
        with pytest.raises(SourceError) as caught:
            await self.poll(source)
        assert caught.value.reason == reason, caught.value
        return caught.value


@pytest.fixture(params=["sel751", "float32"])
async def rig(request):
    rig = Rig(request.param)
    await rig.server.start()
    url = f"modbus://127.0.0.1:{rig.server.port}?unit=1&map={request.param}&timeout=0.5"
    rig.source = open_source(parse_source_url(url))
    yield rig
    await rig.source.close()
    await rig.server.stop()


def assert_served(rig: Rig, got) -> None:
    snap = rig.device.snapshot
    assert got.values == pytest.approx(snap.values, abs=RESOLUTION[rig.map_name])
    assert got.openings == snap.openings
    assert got.identity == snap.identity
    if rig.map.timestamp is None:
        assert got.timestamp_ms is None and got.flags & GATEWAY_CLOCK_FLAG
    else:
        assert got.timestamp_ms == snap.timestamp_ms


async def test_poll_returns_what_the_device_serves(rig):
    for _ in range(3):
        rig.tick()
        got = await rig.poll()
        assert_served(rig, got)
        assert got.quality == (Quality.GOOD,) * 10


async def test_openings_come_from_the_device_counter(rig):
    sim = rig.device.simulator
    sim.fault_probability = 1.0  # trip at the next closed tick
    for _ in range(12):
        rig.tick()
    got = await rig.poll()
    assert got.openings == rig.device.snapshot.openings >= 1


@pytest.mark.parametrize("fault, reason", [
    (Fault.EXCEPTION, "device-exception"),
    (Fault.STALL, "device-timeout"),
    (Fault.DISCONNECT, "device-disconnected"),
    (Fault.OUT_OF_RANGE, "value-out-of-range"),
    (Fault.CHANGED_IDENTITY, "identity-changed"),
])
async def test_bad_device_gets_a_named_error_and_the_source_recovers(rig, fault, reason):
    await rig.poll()
    rig.device.fault = fault
    rig.tick()
    error = await rig.fails(reason)
    assert rig.source.description in error.detail or reason in ("value-out-of-range", "identity-changed")
    rig.device.fault = Fault.NONE
    rig.tick()
    assert_served(rig, await rig.poll())


async def test_stale_device_timestamp(rig):
    await rig.poll()
    rig.device.fault = Fault.STALE_TIMESTAMP
    rig.tick()
    if rig.map.timestamp is None:
        got = await rig.poll()  # no device clock on this map: the gateway's clock stamps it
        assert got.timestamp_ms is None and got.flags & GATEWAY_CLOCK_FLAG
    else:
        await rig.fails("stale-timestamp")
        rig.device.fault = Fault.NONE
        rig.tick()
        assert_served(rig, await rig.poll())


async def test_an_unchanged_device_is_no_new_sample_not_a_failure():
    rig = Rig("float32")
    await rig.server.start()
    source = ModbusSource("127.0.0.1", rig.server.port, 1, rig.map, timeout_s=0.5)
    try:
        await rig.poll(source)
        with pytest.raises(NoNewSample):
            await rig.poll(source)
    finally:
        await source.close()
        await rig.server.stop()


async def test_exception_response_names_the_code_and_registers(rig):
    rig.device.fault = Fault.EXCEPTION
    error = await rig.fails("device-exception")
    assert "exception 04" in error.detail and f"{rig.map.table} registers" in error.detail


async def test_disconnect_mid_poll_is_seen_at_once_not_at_the_timeout(rig):
    await rig.poll()
    rig.device.fault = Fault.DISCONNECT
    loop = asyncio.get_running_loop()
    started = loop.time()
    await rig.fails("device-disconnected")
    assert loop.time() - started < 0.4  # the poll timeout is 0.5 s


async def test_wrong_map_is_named(rig):
    other = "float32" if rig.map_name == "sel751" else "sel751"
    wrong = ModbusSource("127.0.0.1", rig.server.port, 1, load_register_map(other), timeout_s=0.5)
    try:
        error = await rig.fails("wrong-map", wrong)
        assert "exception 02" in error.detail
    finally:
        await wrong.close()


async def test_word_order_mismatch_is_caught_by_the_range_check():
    rig = Rig("float32")
    await rig.server.start()
    text = (parse_register_map.__globals__["resources"].files("gridchain.relay.sources") / "maps" /
            "float32.toml").read_text().replace('word_order = "big"', 'word_order = "little"')
    wrong = ModbusSource("127.0.0.1", rig.server.port, 1, parse_register_map(text), timeout_s=0.5)
    try:
        await rig.fails("value-out-of-range", wrong)
    finally:
        await wrong.close()
        await rig.server.stop()


async def test_questionable_and_invalid_values_keep_their_flags(rig):
    rig.device.quality.update(ia=Quality.QUESTIONABLE, vab=Quality.INVALID)
    rig.tick()
    got = await rig.poll()
    assert got.quality_of("vab") is Quality.INVALID
    expected_ia = Quality.QUESTIONABLE if rig.map.quality is not None else Quality.GOOD  # sel751: no quality word
    assert got.quality_of("ia") is expected_ia
    assert got.flags & 0b11 == 0b10
    rig.device.quality.clear()
    rig.tick()
    assert (await rig.poll()).quality_of("vab") is Quality.GOOD


async def test_unreachable_device_then_device_comes_up():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rig = Rig("sel751")
    source = ModbusSource("127.0.0.1", port, 1, rig.map, timeout_s=0.5)
    try:
        await rig.fails("device-unreachable", source)
        rig.server.port = port
        await rig.server.start()
        assert_served(rig, await rig.poll(source))
    finally:
        await source.close()
        await rig.server.stop()


async def test_device_restart_between_polls_recovers(rig):
    await rig.poll()
    rig.server.drop_connections()
    rig.tick()
    try:
        got = await rig.poll()
    except SourceError as exc:  # the drop may land during the poll
        assert exc.reason == "device-disconnected"
        rig.tick()
        got = await rig.poll()
    assert_served(rig, got)
