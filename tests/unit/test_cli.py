"""The client's pure parts: argument parsing, formatting, and offline proof checking."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from gridchain.__main__ import PROGRAMS
from gridchain.cli.main import node_main
from gridchain.cli.commands import build_client_parser, main
from gridchain.cli.commands.chain import BLOCK_COLUMNS, parse_block_ref
from gridchain.cli.commands.output import StreamTable, duration, iso_ms, parse_time_ms, table, to_jsonable, Column
from gridchain.cli.commands.proof import check_proof, proof_document
from gridchain.cli.commands.readings import CSV_FIELDS, _Writer, row_to_dict
from gridchain.config import Address
from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header, Reading
from gridchain.consensus.merkle import payload_leaves, payload_root, reading_proof
from gridchain.consensus.pow import mine
from gridchain.identity.keys import NodeKey

BITS = 6


def make_block(readings: int = 5) -> Block:
    key = NodeKey.generate()
    capture = Capture("Relay 1", "Test Substation", 2, tuple(
        Reading(1_795_700_700_000 + 10_000 * i, 115.0 + i, 115.1, 114.9, 400.0, 401.5, 399.0, 60.0, 0.95, 80.0, 12.5)
        for i in range(readings)))
    header = Header(BLOCK_VERSION, 7, b"\x11" * 32, payload_root(capture, "node-5004"), 1_795_700_800_000, BITS,
                    key.public_key)
    header = header.with_nonce(mine(header.prefix(), BITS))
    return Block(header, key.sign(header.hash()), capture, "node-5004")


def proof_for(block: Block, index: int) -> dict:
    leaves = payload_leaves(block.capture, block.miner_name)
    reply = SimpleNamespace(header=block.header.to_bytes(), leaf=leaves[index + 1], index=index + 1,
                            size=len(leaves), path=reading_proof(block.capture, block.miner_name, index),
                            height=block.height, hash=block.hash)
    return json.loads(json.dumps(proof_document(reply, block)))  # exactly what a saved file holds


# --- parsing ----------------------------------------------------------------------------------
def test_global_options_before_or_after_the_subcommand():
    parser = build_client_parser()
    before = parser.parse_args(["--node", "10.0.0.2:5005", "--json", "status"])
    after = parser.parse_args(["status", "--node", "10.0.0.2:5005", "--json"])
    default = parser.parse_args(["status"])
    assert before.node == after.node == Address("10.0.0.2", 5005) and before.json and after.json
    assert default.node == Address("127.0.0.1", 5004) and not default.json


def test_bad_node_address_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--node", "host:port", "status"])
    assert exit_info.value.code == 2
    assert "bad address 'host:port'" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("1795700700000", 1_795_700_700_000),
    ("2026-11-26T13:45:00Z", 1_795_700_700_000),
    ("2026-11-26T13:45:00", 1_795_700_700_000),  # no zone means UTC
    ("2026-11-26T14:45:00+01:00", 1_795_700_700_000),
    ("2026-11-26T13:45:00.250Z", 1_795_700_700_250),
])
def test_times_as_ms_or_iso(text, expected):
    assert parse_time_ms(text) == expected


def test_bad_time_and_iso_round_trip():
    with pytest.raises(ValueError, match="neither milliseconds nor an ISO-8601 time"):
        parse_time_ms("yesterday")
    assert iso_ms(1_795_700_700_250) == "2026-11-26T13:45:00.250Z" and iso_ms(None) == "-"
    assert parse_time_ms(iso_ms(1_795_700_700_251)) == 1_795_700_700_251


def test_block_refs():
    assert parse_block_ref("42") == {"height": 42}
    assert parse_block_ref("AB" * 32) == {"hash": bytes.fromhex("ab" * 32)}
    with pytest.raises(ValueError, match="short hashes"):
        parse_block_ref("1a2b3c4d5e6f")


def test_readings_flags(capsys):
    args = build_client_parser().parse_args(["readings", "--relay", "Relay 1", "--since", "2026-11-26T13:45:00Z",
                                             "--until", "1795700800000", "--format", "csv"])
    assert (args.relay, args.since, args.until, args.format) == ("Relay 1", 1_795_700_700_000, 1_795_700_800_000, "csv")
    with pytest.raises(SystemExit):
        build_client_parser().parse_args(["readings", "--since", "soon"])
    assert "--since: 'soon' is neither" in capsys.readouterr().err


def test_gridchaind_bad_flag_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        node_main(["--difficulty", "100"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "gridchaind: error: --difficulty: 100 is outside 0..64"


def test_python_m_gridchain_knows_the_three_programs():
    assert set(PROGRAMS) == {"node", "relay", "client"}


# --- output -----------------------------------------------------------------------------------
def test_readings_rows_csv_and_json():
    row = ("Relay 1", 1_795_700_700_000, 115.0, 115.1, 114.9, 400.0, 401.5, 399.0, 60.0, 0.95, 80.0, 12.5, 2, 9,
           b"\xab" * 32)
    as_dict = row_to_dict(row)
    assert as_dict["relay_id"] == "Relay 1" and as_dict["ia"] == 400.0 and as_dict["height"] == 9
    assert as_dict["openings"] == 2 and as_dict["block_hash"] == "ab" * 32
    out = io.StringIO()
    _Writer("csv", out).write([row_to_dict(row)])
    header, line = out.getvalue().splitlines()
    assert header.split(",") == list(CSV_FIELDS)
    assert line.startswith("Relay 1,1795700700000,2026-11-26T13:45:00.000Z,115.0,") and line.endswith(",2,9," + "ab" * 32)
    out = io.StringIO()
    _Writer("json", out).write([row_to_dict(row)])
    assert json.loads(out.getvalue()) == as_dict
    out = io.StringIO()
    _Writer("table", out).write([row_to_dict(row)])
    head, body = out.getvalue().splitlines()
    assert head.split()[:3] == ["RELAY", "TIME", "VAB"] and "2026-11-26T13:45:00.000Z" in body


def test_tables_align_and_stream():
    out = io.StringIO()
    rows = [{"height": 9, "hash": b"\xab" * 32, "time_ms": 1_795_700_700_000, "miner_name": "node-5004",
             "relay_id": "Relay 1", "readings": 6, "newest_ms": 1_795_700_690_000}]
    StreamTable(BLOCK_COLUMNS, out).rows(rows)
    head, line = out.getvalue().splitlines()
    assert head.index("HASH") == line.index("abababababab") and len(line.split()[1]) == 12
    out = io.StringIO()
    table([Column("A", 0, lambda r: r[0]), Column("NUMBER", 0, lambda r: r[1], right=True)],
          [("x", 1), ("longer", 22)], out)
    assert out.getvalue().splitlines() == ["A       NUMBER", "x            1", "longer      22"]


def test_json_and_durations():
    assert to_jsonable({"h": b"\x01\x02", "t": (1, 2)}) == {"h": "0102", "t": [1, 2]}
    assert (duration(4.21), duration(125), duration(3725), duration(3 * 86400 + 4 * 3600)) == \
        ("4.2s", "2m 05s", "1h 02m", "3d 04h")


# --- proofs -----------------------------------------------------------------------------------
def test_a_fresh_proof_checks():
    block = make_block()
    doc = proof_for(block, 3)
    problems, facts = check_proof(doc)
    assert problems == []
    assert facts["timestamp_ms"] == block.capture.readings[3].timestamp_ms and facts["height"] == 7
    assert facts["hash"] == block.hash.hex() and facts["relay_id"] == "Relay 1"


@pytest.mark.parametrize("tamper, expected", [
    (lambda d: d["reading"].update(vab=1.0), "readable 'reading' values differ"),
    (lambda d: d.update(leaf=d["leaf"][:-2] + ("01" if d["leaf"][-2:] != "01" else "02")),
     "Merkle path does not lead"),
    (lambda d: d.update(relay_id="Relay 2"), "relay id, substation, openings or miner name"),
    (lambda d: d["metadata"].update(openings=0), "relay id, substation, openings or miner name"),
    (lambda d: d.update(timestamp_ms=d["timestamp_ms"] + 1), "the file claims"),
    (lambda d: d.update(hash="00" * 32), "not to the block hash"),
    (lambda d: d.update(signature="00" * 64), "signature is not the miner's"),
    (lambda d: d.update(index=0), "leaf 0 is the capture metadata"),
])
def test_a_tampered_proof_fails(tamper, expected):
    doc = proof_for(make_block(), 1)
    tamper(doc)
    problems, _ = check_proof(doc)
    assert any(expected in p for p in problems), problems


def test_a_header_without_work_fails():
    block = make_block()
    doc = proof_for(block, 0)
    header = bytearray(bytes.fromhex(doc["header"]))
    header[-8:] = (block.header.nonce + 1).to_bytes(8, "big")  # almost surely misses 6 bits
    doc["header"] = header.hex()
    problems, _ = check_proof(doc)
    assert any("not to the block hash" in p for p in problems)


def test_proof_check_command_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(proof_for(make_block(), 2)))
    assert main(["proof", "--check", str(good)]) == 0
    assert capsys.readouterr().out.startswith("OK: the reading of Relay 1 at 2026-11-26T13:45:20.000Z is in block 7")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["proof", "--check", str(bad)]) == 1
    assert capsys.readouterr().out.startswith("FAILED: not a proof file")
    assert main(["proof", "--check", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["--json", "proof", "--check", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
