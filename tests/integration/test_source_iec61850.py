"""IEC 61850 MMS source against the simulated relay's MMS server: open61850 client and
server, loopback: what only MMS does (logical devices and models, quality and device
time kept, an unsynchronised clock, a server restart). What every source does, bad devices
included: test_source_contract.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from open61850.data import TimestampData
from open61850.mms.pdu import ObjectName

from gridchain.relay.devices.device import Fault
from gridchain.relay.devices.mms_server import DOMAIN, MmsDeviceServer
from gridchain.relay.sources import NoNewSample, Quality, SourceError
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
from gridchain.relay.sources.mms_source import MmsSource
from tests.support.device_rig import WAIT_S, MmsRig


@pytest.fixture
async def rig():
    async with MmsRig().running() as rig:
        yield rig


async def test_an_unchanged_device_is_no_new_sample(rig):
    await rig.poll()
    with pytest.raises(NoNewSample):
        await rig.poll()


async def test_wrong_logical_device_is_wrong_model(rig):
    wrong = MmsSource("127.0.0.1", rig.server.port, "OTHERLD0", timeout_s=0.5)
    try:
        error = await rig.fails("wrong-model", wrong)
        assert "object-non-existent" in error.detail
    finally:
        await wrong.close()


async def test_model_without_mmxu_is_wrong_model(rig):
    rig.server._published = rig.device.snapshot  # nothing left to publish into
    del rig.server.model.logical_devices[DOMAIN]["MMXU1"]
    await rig.fails("wrong-model")


async def test_questionable_and_invalid_values_keep_their_flags(rig):
    rig.device.quality.update(ia=Quality.QUESTIONABLE, vab=Quality.INVALID, reactive_power=Quality.INVALID)
    rig.tick()
    got = await rig.poll()
    assert got.quality_of("ia") is Quality.QUESTIONABLE
    assert got.quality_of("vab") is Quality.INVALID and got.quality_of("reactive_power") is Quality.INVALID
    assert got.flags == (0b10 << 0) | (0b01 << 6) | (0b10 << 18)
    rig.device.quality.clear()
    rig.tick()
    assert (await rig.poll()).quality == (Quality.GOOD,) * 10


async def test_an_invalid_value_may_be_out_of_range_without_failing_the_sample(rig):
    rig.device.quality["vab"] = Quality.INVALID
    rig.device.fault = Fault.OUT_OF_RANGE
    rig.tick()
    got = await rig.poll()
    assert got.quality_of("vab") is Quality.INVALID


async def test_unsynchronised_device_clock_falls_back_to_the_gateway_clock(rig):
    await rig.poll()
    rig.tick()
    rig.server._publish(rig.device.snapshot)
    stamp = datetime.fromtimestamp(rig.now / 1000, tz=timezone.utc)
    with rig.server.model.lock:
        for item in [n for n in rig.server.model.names(DOMAIN) if n.startswith("MMXU1$MX$") and n.endswith("$t")]:
            rig.server.model.set(ObjectName(item, DOMAIN), TimestampData(stamp, 0x20))  # not synchronised
    rig.server._published = rig.device.snapshot  # keep the edited time
    got = await rig.poll()
    assert got.timestamp_ms is None and got.flags & GATEWAY_CLOCK_FLAG


async def test_unreachable_device_is_named():
    source = MmsSource("127.0.0.1", 1, DOMAIN, timeout_s=0.5)
    with pytest.raises(SourceError) as caught:
        await asyncio.wait_for(source.poll(0), WAIT_S)
    assert caught.value.reason == "device-unreachable"
    await source.close()


async def test_server_restart_recovers(rig):
    await rig.poll()
    port = rig.server.port
    await rig.server.stop()
    rig.tick()
    with pytest.raises(SourceError) as caught:
        await rig.poll()
    assert caught.value.reason in ("device-disconnected", "device-unreachable")
    rig.server = MmsDeviceServer(rig.device, port=port)
    await rig.server.start()
    rig.tick()
    rig.assert_served(await rig.poll())
