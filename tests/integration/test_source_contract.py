"""What every gateway source does against its protocol's simulated relay (Modbus TCP with
each register map, DNP3, IEC 61850 MMS), on loopback: serve the device's values and breaker
counter, name each kind of bad device, keep a stale device clock off the reading, and recover
once the device is well again. What only one protocol does is in test_source_<protocol>.py."""

from __future__ import annotations

import pytest

from gridchain.relay.devices.device import Fault
from gridchain.relay.sources import Quality
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
from tests.support.device_rig import RIGS

TICKS = 3  # polls in a row that must each see the device's newest snapshot
VALUE_REASONS = ("value-out-of-range", "identity-changed")  # the device answered: its answer was wrong
TRIP_TICKS = 12  # with a fault certain at every closed tick, the breaker opens within these


@pytest.fixture(params=sorted(RIGS))
async def rig(request):
    async with RIGS[request.param]().running() as rig:
        yield rig


async def test_each_poll_returns_what_the_device_serves(rig):
    for _ in range(TICKS):
        rig.tick()
        got = await rig.poll()
        rig.assert_served(got)
        assert got.quality == (Quality.GOOD,) * 10


async def test_openings_come_from_the_devices_counter(rig):
    rig.device.simulator.fault_probability = 1.0  # trip at the next closed tick
    for _ in range(TRIP_TICKS):
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
async def test_a_bad_device_gets_a_named_error_and_the_source_recovers(rig, fault, reason):
    await rig.poll()
    rig.device.fault = fault
    rig.tick()
    error = await rig.fails(reason)
    if reason not in VALUE_REASONS:  # a link fault says which device it was
        assert rig.source.description in error.detail, error
    rig.device.fault = Fault.NONE
    rig.tick()
    rig.assert_served(await rig.poll())


async def test_a_stale_device_clock_never_reaches_the_reading(rig):
    await rig.poll()
    rig.device.fault = Fault.STALE_TIMESTAMP
    rig.tick()
    if not rig.device_clock:
        got = await rig.poll()  # the protocol carries no device time: the gateway's clock stamps it
        assert got.timestamp_ms is None and got.flags & GATEWAY_CLOCK_FLAG
        return
    await rig.fails("stale-timestamp")
    rig.device.fault = Fault.NONE
    rig.tick()
    rig.assert_served(await rig.poll())
