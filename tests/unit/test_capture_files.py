"""The prototype's per-minute capture files: format, parse (ours and the prototype's), write."""

from __future__ import annotations

import pytest

from gridchain.relay.capture_files import (
    CaptureFileWriter, CaptureFormatError, file_name, format_capture_file, minute_of,
    parse_capture_file, read_capture_file,
)
from gridchain.consensus.provenance import Reading
from gridchain.relay.simulator import RelaySimulator

MINUTE = 1_795_700_700_000  # 2026-11-26 13:45:00 UTC

PROTOTYPE = """02 07 2021 18 11
Relay 1
Bogotá Electrical Substation - U.D.

Openings caused by faults: 22.0

Time Stamp;28 09 2021 07 01 18;Vab;115.314;Vbc;116.048;Vca;116.293;Ia;26.082;Ib;30.831;Ic;45.186;F;60.158;FP;0.979;P;236.887;Q;57.743 Time Stamp;28 09 2021 07 01 28;Vab;110.69;Vbc;117.149;Vca;112.374;Ia;41.868;Ib;41.825;Ic;26.057;F;59.877;FP;0.715;P;125.543;Q;615.162 Time Stamp;28 09 2021 07 01 48;Vab;116.332;Vbc;113.905;Vca;115.683;Ia;44.307;Ib;0.065;Ic;29.083;F;59.067;FP;0.81;P;122.33;Q;486.381 Time Stamp;28 09 2021 07 01 48;Vab;116.32;Vbc;115.69;Vca;109.112;Ia;19.199;Ib;22.847;Ic;1.307;F;59.477;FP;0.998;P;155.695;Q;50.381
"""


def rows(start_ms=MINUTE, until_ms=MINUTE + 59_999, interval_ms=10_000, first_seq=1000, openings=4):
    made = RelaySimulator("Relay 1", "Bogotá", interval_ms, seed=1, start_ms=start_ms).advance(until_ms)
    return [Reading(first_seq + i, m.timestamp_ms, openings, 0, *m.values()) for i, m in enumerate(made)]


def test_file_name_and_minute():
    assert minute_of(MINUTE + 59_999) == MINUTE
    assert file_name(MINUTE) == "CAPTURE_2026-11-26_1345.txt"


def test_format_looks_like_the_prototype():
    text = format_capture_file(MINUTE, "Relay 1", "Bogotá", 22, rows()[:1])
    lines = text.splitlines()
    assert lines[:4] == ["26 11 2026 13 45", "Relay 1", "Bogotá", "Openings caused by faults: 22"]
    assert lines[4].startswith("Time Stamp;26 11 2026 13 45 00;Vab;")
    assert lines[4].split(";")[2::2] == ["Vab", "Vbc", "Vca", "Ia", "Ib", "Ic", "F", "FP", "P", "Q", "Seq"]
    assert lines[4].endswith(";Seq;1000")


def test_round_trip_of_whole_second_readings():
    made = rows()
    parsed = parse_capture_file(format_capture_file(MINUTE, "Relay 1", "Bogotá", 4, made))
    assert (parsed.minute_ms, parsed.relay_id, parsed.substation, parsed.openings) == (MINUTE, "Relay 1", "Bogotá", 4)
    assert parsed.readings == tuple(made)  # seq, time, counter and values; flags are good


def test_milliseconds_are_truncated_to_the_second():
    made = rows(MINUTE + 250, MINUTE + 2000, 1000)
    parsed = parse_capture_file(format_capture_file(MINUTE, "r", "s", 0, made))
    assert [r.timestamp_ms for r in parsed.readings] == [MINUTE, MINUTE + 1000]


def test_parses_the_prototypes_own_file():
    parsed = parse_capture_file(PROTOTYPE)
    assert parsed.openings == 22 and parsed.substation == "Bogotá Electrical Substation - U.D."
    assert len(parsed.readings) == 4
    first = parsed.readings[0]
    assert (first.vab, first.reactive_power) == (115.314, 57.743)
    assert (first.seq, first.openings, first.flags) == (0, 22, 0)  # the prototype had no seq
    assert parsed.readings[2].timestamp_ms == parsed.readings[3].timestamp_ms  # its data repeats


def test_empty_minute():
    parsed = parse_capture_file(format_capture_file(MINUTE, "r", "s", 0, []))
    assert parsed.readings == ()


@pytest.mark.parametrize("text", [
    "",
    "26 11 2026\nr\ns\nOpenings caused by faults: 1\n",
    "26 11 2026 13 45\nr\ns\nFaults: 1\n",
    "26 11 2026 13 45\nr\ns\nOpenings caused by faults: 1.5\n",
    "26 11 2026 13 45\nr\ns\nOpenings caused by faults: many\n",
    "26 13 2026 13 45\nr\ns\nOpenings caused by faults: 1\n",
    PROTOTYPE.replace(";Q;57.743", ";Q;"),
    PROTOTYPE.replace("Vca;116.293", "Vca;abc"),
    PROTOTYPE.replace(";Ia;26.082", ";Iz;26.082"),
    PROTOTYPE.replace(";Q;57.743", ";Q;57.743;Seq;x"),
    PROTOTYPE.replace(";Q;57.743", ";Q;57.743;Seq;" + "9" * 25),
])
def test_bad_files(text):
    with pytest.raises(CaptureFormatError):
        parse_capture_file(text)


def test_writer_keeps_one_file_per_minute(tmp_path):
    writer = CaptureFileWriter(tmp_path / "captures", "Relay 1", "Bogotá")
    made = rows(MINUTE + 30_000, MINUTE + 90_000, openings=2)  # 30 s .. 90 s: two minutes
    assert writer.write(made[:2]) == [tmp_path / "captures" / file_name(MINUTE)]
    touched = writer.write(made[2:])
    assert [p.name for p in touched] == [file_name(MINUTE), file_name(MINUTE + 60_000)]
    first = read_capture_file(touched[0])
    second = read_capture_file(touched[1])
    assert [r.timestamp_ms for r in first.readings] == [MINUTE + s * 1000 for s in (30, 40, 50)]
    assert [r.seq for r in first.readings + second.readings] == list(range(1000, 1007))
    assert [r.timestamp_ms for r in second.readings] == [MINUTE + s * 1000 for s in (60, 70, 80, 90)]
    assert (first.openings, second.openings) == (2, 2)
    assert sorted(p.name for p in (tmp_path / "captures").iterdir()) == [p.name for p in touched]


def test_reads_a_latin1_file(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes(PROTOTYPE.encode("latin-1"))
    assert read_capture_file(path).substation.startswith("Bogotá")
