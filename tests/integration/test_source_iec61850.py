"""IEC 61850 MMS source against the simulated relay's MMS server: open61850 client and
server, loopback, every bad-device case, quality and device time kept, recovery."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from open61850.data import TimestampData
from open61850.mms.pdu import ObjectName

from gridchain.relay.devices.device import Fault, SimulatedDevice
from gridchain.relay.devices.mms_server import DOMAIN, MmsDeviceServer
from gridchain.relay.sources import NoNewSample, Quality, SourceError, open_source, parse_source_url
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
from gridchain.relay.sources.mms_source import MmsSource

START_MS = 1_700_000_000_000
WAIT_S = 10.0  # every poll in these tests ends well within this, or the test fails
RESOLUTION = 0.001  # float32 of SI values, then kV / MW: well inside the simulator's 3 decimals


class Rig:
    def __init__(self) -> None:
        self.device = SimulatedDevice.create(seed=11, start_ms=START_MS)
        self.now = START_MS
        self.tick()
        self.server = MmsDeviceServer(self.device)
        self.source: MmsSource | None = None

    def tick(self) -> None:
        self.now += 1000
        self.device.refresh(self.now)

    async def poll(self, source: MmsSource | None = None):
        return await asyncio.wait_for((source or self.source).poll(self.now), WAIT_S)

    async def fails(self, reason: str, source: MmsSource | None = None) -> SourceError:
        with pytest.raises(SourceError) as caught:
            await self.poll(source)
        assert caught.value.reason == reason, caught.value
        return caught.value


@pytest.fixture
async def rig():
    rig = Rig()
    await rig.server.start()
    rig.source = open_source(parse_source_url(f"iec61850://127.0.0.1:{rig.server.port}/{DOMAIN}?timeout=0.5"))
    yield rig
    await rig.source.close()
    await rig.server.stop()


def assert_served(rig: Rig, got) -> None:
    snap = rig.device.snapshot
    assert got.values == pytest.approx(snap.values, abs=RESOLUTION)
    assert got.openings == snap.openings
    assert got.timestamp_ms == snap.timestamp_ms  # the device's own clock
    assert not got.flags & GATEWAY_CLOCK_FLAG
    assert got.identity == f"gridchain/GRIDSIM-751/{snap.identity}"


async def test_poll_returns_mmxu_values_opcnt_and_device_time(rig):
    for _ in range(3):
        rig.tick()
        got = await rig.poll()
        assert_served(rig, got)
        assert got.quality == (Quality.GOOD,) * 10


async def test_openings_come_from_xcbr_opcnt(rig):
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
    (Fault.STALE_TIMESTAMP, "stale-timestamp"),
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
    assert_served(rig, await rig.poll())
