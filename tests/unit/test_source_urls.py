"""Source URLs, register and point maps, the sample guard and the flags word: pure logic."""

from __future__ import annotations

import math

import pytest

from gridchain.relay.simulator import RelaySimulator
from gridchain.relay.sources import DeviceSample, NoNewSample, Quality, SourceError, open_source, parse_source_url
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG, READING_VALUES
from gridchain.relay.sources.dnp3_source import Dnp3Source
from gridchain.relay.sources.guard import SampleGuard
from gridchain.relay.sources.mms_source import MmsSource
from gridchain.relay.sources.modbus_source import ModbusSource
from gridchain.relay.sources.point_map import load_point_map, parse_point_map
from gridchain.relay.sources.register_map import load_register_map, parse_register_map, shipped_maps
from gridchain.relay.sources.sim_source import SimSource

VALUES = (115.1, 115.2, 115.3, 300.1, 301.2, 302.3, 60.01, 0.93, 55.5, -20.1)
GOOD = (Quality.GOOD,) * 10


def sample(stamp: int | None = 1000, identity: str = "relay A", values=VALUES, quality=GOOD) -> DeviceSample:
    return DeviceSample(values, quality, 3, stamp, identity)


def reason(call) -> str:
    with pytest.raises(SourceError) as caught:
        call()
    return caught.value.reason


# --- URLs ---------------------------------------------------------------------------------

def test_modbus_url_with_defaults_and_parameters():
    assert parse_source_url("modbus://10.0.0.2").port == 502
    spec = parse_source_url("modbus://10.0.0.2:1502?unit=3&map=float32&timeout=0.5&identity=SEL%20751")
    assert (spec.kind, spec.host, spec.port, spec.unit, spec.map, spec.timeout_s, spec.identity) == \
        ("modbus", "10.0.0.2", 1502, 3, "float32", 0.5, "SEL 751")
    assert parse_source_url("modbus://h").map == "sel751"


def test_iec61850_and_dnp3_and_sim_urls():
    spec = parse_source_url("iec61850://relay7/IED1LD0")
    assert (spec.port, spec.logical_device) == (102, "IED1LD0")
    spec = parse_source_url("dnp3://h:20001?outstation=10&master=2")
    assert (spec.port, spec.outstation, spec.master, spec.map) == (20001, 10, 2, "dnp3-feeder")
    assert parse_source_url(" sim ").kind == "sim"


@pytest.mark.parametrize("url", [
    "ftp://h", "modbus://", "modbus://h?unti=1", "modbus://h?unit=256", "modbus://h?unit=-1",
    "modbus://h?unit=1&unit=2", "modbus://h:0", "modbus://h:99999", "modbus://h/path",
    "modbus://h?timeout=0", "modbus://h?timeout=61", "modbus://h?timeout=soon", "modbus://u:p@h",
    "iec61850://h", "iec61850://h/LD/extra", "iec61850://h/LD?unit=1",
    "dnp3://h", "dnp3://h?outstation=70000", "dnp3://h?outstation=1&unit=2", "",
])
def test_bad_urls_are_named_errors_that_quote_the_url(url):
    with pytest.raises(SourceError) as caught:
        parse_source_url(url)
    assert caught.value.reason == "bad-source-url"
    assert repr(url) in caught.value.detail


def test_open_source_builds_each_kind_without_connecting():
    assert isinstance(open_source(parse_source_url("modbus://h?map=float32")), ModbusSource)
    assert isinstance(open_source(parse_source_url("iec61850://h/LD")), MmsSource)
    assert isinstance(open_source(parse_source_url("dnp3://h?outstation=4")), Dnp3Source)
    assert isinstance(open_source(parse_source_url("sim"), simulator=RelaySimulator("R", "S")), SimSource)
    assert reason(lambda: open_source(parse_source_url("modbus://h?map=nosuch"))) == "unknown-map"
    assert reason(lambda: open_source(parse_source_url("dnp3://h?outstation=1&map=nosuch"))) == "unknown-map"
    assert reason(lambda: open_source(parse_source_url("sim"))) == "bad-source-url"


def test_an_operator_map_file_is_loaded_by_path(tmp_path):
    text = (load_register_map.__globals__["resources"].files("gridchain.relay.sources") / "maps" /
            "sel751.toml").read_text().replace('word_order = "big"', 'word_order = "little"')
    path = tmp_path / "my-relay.toml"
    path.write_text(text)
    spec = parse_source_url(f"modbus://h?map={path}")
    assert open_source(spec).map.word_order == "little"


# --- register maps --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sel751", "float32"])
def test_shipped_register_maps_round_trip_within_their_resolution(name):
    regmap = load_register_map(name)
    registers = regmap.encode(VALUES, GOOD, 7, 1_700_000_000_123, "SEL-751 SN42")
    values, quality, openings, stamp, identity = regmap.decode(registers)
    assert values == pytest.approx(VALUES, abs=0.01)
    assert (quality, openings, identity) == (GOOD, 7, "SEL-751 SN42")
    assert stamp == (1_700_000_000_123 if name == "float32" else None)
    assert all(count <= 125 for _start, count in regmap.spans())
    assert set(shipped_maps()) >= {"sel751", "float32"}


def test_decoded_values_carry_no_binary_noise():
    for name in ("sel751", "float32"):
        regmap = load_register_map(name)
        values = regmap.decode(regmap.encode(VALUES, GOOD, 0, 1, "x"))[0]
        assert values[0] == 115.1 and values[3] == 300.1  # not 115.10000000000001 / 115.0999984


def test_word_order_changes_the_registers_not_the_values():
    big = load_register_map("float32")
    little = parse_register_map(_float32_text().replace('word_order = "big"', 'word_order = "little"'))
    a, b = big.encode(VALUES, GOOD, 7, 5, "x"), little.encode(VALUES, GOOD, 7, 5, "x")
    assert a != b and (a[1000], a[1001]) == (b[1001], b[1000])
    assert big.decode(a)[0] == little.decode(b)[0]


def test_not_available_values_and_nan_are_invalid_and_questionable_is_kept():
    sel, flt = load_register_map("sel751"), load_register_map("float32")
    quality = (Quality.INVALID,) + (Quality.GOOD,) * 8 + (Quality.QUESTIONABLE,)
    assert sel.decode(sel.encode(VALUES, quality, 0, 0, "x"))[1][0] is Quality.INVALID
    values, got, *_ = flt.decode(flt.encode(VALUES, quality, 0, 0, "x"))
    assert got == quality and values[-1] == pytest.approx(-20.1)
    registers = flt.encode(VALUES, GOOD, 0, 0, "x")
    registers[1000], registers[1001] = 0x7FC0, 0x0000  # a NaN the device itself sends
    assert flt.decode(registers)[1][0] is Quality.INVALID


def test_a_value_outside_its_range_is_refused():
    regmap = load_register_map("float32")
    registers = regmap.encode((900.0,) + VALUES[1:], GOOD, 0, 0, "x")
    assert reason(lambda: regmap.decode(registers)) == "value-out-of-range"
    sel = load_register_map("sel751")
    registers = sel.encode(VALUES[:6] + (70.0,) + VALUES[7:], GOOD, 0, 0, "x")  # 70 Hz > 65
    assert reason(lambda: sel.decode(registers)) == "value-out-of-range"


def test_a_reserved_quality_code_is_refused():
    regmap = load_register_map("float32")
    registers = regmap.encode(VALUES, GOOD, 0, 0, "x")
    registers[1110], registers[1111] = 0, 0b11
    assert reason(lambda: regmap.decode(registers)) == "value-out-of-range"


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace("[values.vab]", "[values.vxx]"), "values must be exactly"),
    (lambda t: t.replace('type = "f32"', 'type = "f64"', 1), "type must be one of"),
    (lambda t: t.replace("address = 1002", "address = 1001"), "overlaps"),
    (lambda t: t.replace('table = "input"', 'table = "coils"'), "device.table"),
    (lambda t: t.replace("[openings]", "[opening]"), "missing table [openings]"),
    (lambda t: t + "\n[[[", "<map>"),
])
def test_bad_register_maps_name_the_field(edit, fragment):
    with pytest.raises(SourceError) as caught:
        parse_register_map(edit(_float32_text()))
    assert caught.value.reason == "bad-map" and fragment in caught.value.detail


def _float32_text() -> str:
    from importlib import resources
    return (resources.files("gridchain.relay.sources") / "maps" / "float32.toml").read_text()


# --- DNP3 point maps ----------------------------------------------------------------------------

def test_point_map_decodes_flags_to_quality_and_refuses_missing_points():
    points = load_point_map()
    raw = points.encode(VALUES)
    flags = [0x01] * 10
    flags[3], flags[4], flags[5] = 0x01 | 0x10, 0x04, 0x00  # forced, comm lost, offline
    analogs = {i: (raw[i], flags[i]) for i in raw}
    got = points.decode(analogs, {0: (4, 0x01), 1: (42, 0x01)}, 10, "d")
    assert got.values == pytest.approx(VALUES) and got.openings == 4
    assert got.quality[3:6] == (Quality.QUESTIONABLE, Quality.INVALID, Quality.INVALID)
    assert got.identity == "dnp3 outstation 10 serial 42" and got.timestamp_ms is None
    del analogs[9]
    assert reason(lambda: points.decode(analogs, {0: (4, 1), 1: (42, 1)}, 10, "d")) == "wrong-map"
    assert reason(lambda: points.decode({i: (raw[i], 1) for i in raw}, {1: (42, 1)}, 10, "d")) == "wrong-map"


def test_bad_point_maps_are_named():
    assert reason(lambda: parse_point_map("[values]\nvab = {index = 0}")) == "bad-map"
    assert reason(lambda: load_point_map("nosuch")) == "unknown-map"


# --- guard and flags ------------------------------------------------------------------------------

def test_guard_refuses_a_clock_that_stops_or_goes_back_and_skips_exact_repeats():
    guard = SampleGuard()
    guard.check(sample(1000))
    with pytest.raises(NoNewSample):
        guard.check(sample(1000))
    assert reason(lambda: guard.check(sample(1000, values=(116.0,) + VALUES[1:]))) == "stale-timestamp"
    assert reason(lambda: guard.check(sample(999))) == "stale-timestamp"
    assert guard.check(sample(1001)).timestamp_ms == 1001  # recovers once the clock moves on


def test_guard_pins_the_identity_and_recovers_when_the_device_does():
    guard = SampleGuard()
    guard.check(sample(1))
    assert reason(lambda: guard.check(sample(2, identity="relay B"))) == "identity-changed"
    assert guard.check(sample(3)).identity == "relay A"
    assert reason(lambda: SampleGuard("relay B").check(sample(1))) == "identity-changed"


def test_gateway_clock_samples_skip_the_time_check():
    guard = SampleGuard()
    guard.check(sample(None))
    assert guard.check(sample(None)).timestamp_or(77) == 77


def test_flags_word_follows_the_provenance_contract():
    quality = [Quality.GOOD] * 10
    quality[0], quality[9] = Quality.QUESTIONABLE, Quality.INVALID
    assert sample(5, quality=tuple(quality)).flags == 0b01 | (0b10 << 18)
    assert sample(None).flags == GATEWAY_CLOCK_FLAG
    assert len(READING_VALUES) == 10 and READING_VALUES[0] == "vab" and READING_VALUES[-1] == "reactive_power"
    with pytest.raises(ValueError):
        DeviceSample(VALUES[:9], GOOD, 0, None, "x")
    assert math.isfinite(sample().value("vab"))


async def test_sim_source_serves_the_simulator():
    sim = RelaySimulator("R1", "S", 1000, seed=3, start_ms=0)
    source = SimSource(sim)
    got = await source.poll(5000)
    assert got.timestamp_ms == 5000 and got.values == sim.latest.values() and got.quality == GOOD
    with pytest.raises(NoNewSample):
        await source.poll(5000)
