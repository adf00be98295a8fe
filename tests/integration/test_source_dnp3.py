"""DNP3 source against the simulated relay's outstation: dnp3py master and outstation,
loopback, every bad-device case, point flags kept as quality, recovery."""

from __future__ import annotations

import asyncio

import pytest

from gridchain.relay.devices.device import Fault, SimulatedDevice
from gridchain.relay.devices.dnp3_server import Dnp3DeviceServer, serial_number
from gridchain.relay.sources import Quality, SourceError, open_source, parse_source_url
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
from gridchain.relay.sources.dnp3_source import Dnp3Source
from gridchain.relay.sources.point_map import load_point_map, parse_point_map

START_MS = 1_700_000_000_000
WAIT_S = 10.0  # every poll in these tests ends well within this, or the test fails
RESOLUTION = 0.0011  # the point map's 0.001 scale on 32-bit integers
OUTSTATION = 10


class Rig:
    def __init__(self) -> None:
        self.map = load_point_map()
        self.device = SimulatedDevice.create(seed=5, start_ms=START_MS)
        self.now = START_MS
        self.tick()
        self.server = Dnp3DeviceServer(self.device, self.map, outstation=OUTSTATION)
        self.source: Dnp3Source | None = None

    def tick(self) -> None:
        self.now += 1000
        self.device.refresh(self.now)

    async def poll(self, source: Dnp3Source | None = None):
        return await asyncio.wait_for((source or self.source).poll(self.now), WAIT_S)

    async def fails(self, reason: str, source: Dnp3Source | None = None) -> SourceError:
        with pytest.raises(SourceError) as caught:
            await self.poll(source)
        assert caught.value.reason == reason, caught.value
        return caught.value


@pytest.fixture
async def rig():
    rig = Rig()
    await rig.server.start()
    rig.source = open_source(parse_source_url(
        f"dnp3://127.0.0.1:{rig.server.port}?outstation={OUTSTATION}&master=1&timeout=0.5"))
    yield rig
    await rig.source.close()
    await rig.server.stop()


def assert_served(rig: Rig, got) -> None:
    snap = rig.device.snapshot
    assert got.values == pytest.approx(snap.values, abs=RESOLUTION)
    assert got.openings == snap.openings
    assert got.timestamp_ms is None and got.flags & GATEWAY_CLOCK_FLAG  # static DNP3 data has no time
    assert got.identity == f"dnp3 outstation {OUTSTATION} serial {serial_number(snap.identity)}"


async def test_integrity_poll_returns_analogs_and_the_counter(rig):
    for _ in range(3):
        rig.tick()
        got = await rig.poll()
        assert_served(rig, got)
        assert got.quality == (Quality.GOOD,) * 10


async def test_openings_come_from_the_counter(rig):
    rig.device.simulator.fault_probability = 1.0
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
    await rig.fails(reason)
    rig.device.fault = Fault.NONE
    rig.tick()
    assert_served(rig, await rig.poll())


async def test_a_stale_device_clock_cannot_reach_the_reading(rig):
    await rig.poll()
    rig.device.fault = Fault.STALE_TIMESTAMP
    rig.tick()
    got = await rig.poll()  # DNP3 static values carry no device time: the gateway's clock stamps them
    assert got.timestamp_ms is None and got.flags & GATEWAY_CLOCK_FLAG


async def test_exception_names_the_internal_indication(rig):
    rig.device.fault = Fault.EXCEPTION
    error = await rig.fails("device-exception")
    assert "DEVICE_TROUBLE" in error.detail


async def test_point_map_naming_points_the_outstation_lacks_is_wrong_map(rig):
    text = (parse_point_map.__globals__["resources"].files("gridchain.relay.sources") / "maps" /
            "dnp3-feeder.toml").read_text().replace("index = 9", "index = 40")
    wrong = Dnp3Source("127.0.0.1", rig.server.port, OUTSTATION, parse_point_map(text), timeout_s=0.5)
    try:
        error = await rig.fails("wrong-map", wrong)
        assert "analog input 40" in error.detail
    finally:
        await wrong.close()


async def test_wrong_outstation_address_times_out(rig):
    wrong = Dnp3Source("127.0.0.1", rig.server.port, OUTSTATION + 1, rig.map, timeout_s=0.5)
    try:
        await rig.fails("device-timeout", wrong)  # frames from another address are ignored
    finally:
        await wrong.close()


async def test_questionable_and_invalid_values_keep_their_flags(rig):
    rig.device.quality.update(ia=Quality.QUESTIONABLE, vab=Quality.INVALID)
    rig.tick()
    got = await rig.poll()
    assert got.quality_of("ia") is Quality.QUESTIONABLE and got.quality_of("vab") is Quality.INVALID
    assert got.flags & 0xFFFFF == (0b10 << 0) | (0b01 << 6)
    rig.device.quality.clear()
    rig.tick()
    assert (await rig.poll()).quality == (Quality.GOOD,) * 10


async def test_unreachable_device_is_named():
    source = Dnp3Source("127.0.0.1", 1, OUTSTATION, load_point_map(), timeout_s=0.5)
    with pytest.raises(SourceError) as caught:
        await asyncio.wait_for(source.poll(0), WAIT_S)
    assert caught.value.reason == "device-unreachable"
    await source.close()


async def test_link_drop_between_polls_recovers(rig):
    await rig.poll()
    rig.server.drop_connections()
    rig.tick()
    try:
        got = await rig.poll()
    except SourceError as exc:
        assert exc.reason == "device-disconnected"
        rig.tick()
        got = await rig.poll()
    assert_served(rig, got)
