"""DNP3 source against the simulated relay's outstation: dnp3py master and outstation,
loopback: what only DNP3 does (internal indications, point maps, outstation addresses,
point flags kept as quality, a link drop). What every source does, bad devices included:
test_source_contract.py."""

from __future__ import annotations

import asyncio

import pytest

from gridchain.relay.devices.device import Fault
from gridchain.relay.sources import Quality, SourceError
from gridchain.relay.sources.dnp3_source import Dnp3Source
from gridchain.relay.sources.point_map import load_point_map, parse_point_map
from tests.support.device_rig import OUTSTATION, WAIT_S, Dnp3Rig


@pytest.fixture
async def rig():
    async with Dnp3Rig().running() as rig:
        yield rig


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
    rig.assert_served(got)
