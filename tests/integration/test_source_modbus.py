"""Modbus TCP source against the simulated relay's Modbus server: pymodbus on both sides,
loopback: what only Modbus does (exception codes, register maps and word order, quality
flags, a link dropped mid-poll, a device restart). What every source does, bad devices
included: test_source_contract.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gridchain.relay.devices.device import Fault
from gridchain.relay.sources import NoNewSample, Quality, SourceError
from gridchain.relay.sources.modbus_source import ModbusSource
from gridchain.relay.sources.register_map import load_register_map, parse_register_map
from tests.support.device_rig import ModbusRig


@pytest.fixture(params=["sel751", "float32"])
async def rig(request):
    async with ModbusRig(request.param).running() as rig:
        yield rig


async def test_an_unchanged_device_is_no_new_sample_not_a_failure():
    rig = ModbusRig("float32")
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
    rig = ModbusRig("float32")
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
    rig = ModbusRig("sel751")
    source = ModbusSource("127.0.0.1", port, 1, rig.map, timeout_s=0.5)
    try:
        await rig.fails("device-unreachable", source)
        rig.server.port = port
        await rig.server.start()
        rig.assert_served(await rig.poll(source))
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
    rig.assert_served(got)
