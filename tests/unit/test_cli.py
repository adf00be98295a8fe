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
from gridchain.consensus.block import BLOCK_VERSION, Block, Header
from gridchain.consensus.merkle import payload_leaves, payload_root, reading_proof
from gridchain.consensus.pow import mine
from gridchain.identity.keys import NodeKey, RelayKey
from gridchain.identity.network_file import Member, NetworkDocument, RelayEntry
from tests.support.blocks import RELAY_KEY, reading, sealed

BITS = 6
MINER = NodeKey.from_seed(bytes([7]) * 32)
NETWORK = NetworkDocument("substation-7", BITS, (Member("operator", MINER.public_key),),
                          (RelayEntry("Relay 1", "Test Substation", RELAY_KEY.public_key),))


def make_block(readings: int = 5, signer: RelayKey = RELAY_KEY, miner: NodeKey = MINER) -> Block:
    rows = [reading(41 + i, 1_795_700_700_000 + 10_000 * i, openings=2, vab=115.0 + i) for i in range(readings)]
    capture = sealed("Relay 1", rows, "Test Substation", signer, per_seal=3)  # two seals: 41..43, 44..45
    header = Header(BLOCK_VERSION, 7, b"\x11" * 32, payload_root(capture, "node-5004"), 1_795_700_800_000, BITS,
                    miner.public_key)
    header = header.with_nonce(mine(header.prefix(), BITS))
    return Block(header, miner.sign(header.hash()), capture, "node-5004")


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
    assert default.node == Address("127.0.0.1", 6004) and not default.json


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
    with pytest.raises(ValueError, match="neither milliseconds, an ISO-8601 time .* nor a time ago"):
        parse_time_ms("yesterday")
    assert iso_ms(1_795_700_700_250) == "2026-11-26T13:45:00.250Z" and iso_ms(None) == "-"
    assert parse_time_ms(iso_ms(1_795_700_700_251)) == 1_795_700_700_251


def test_block_refs():
    assert parse_block_ref("42") == {"height": 42}
    assert parse_block_ref("AB" * 32) == {"hash": bytes.fromhex("ab" * 32)}
    assert parse_block_ref("1a2b3c4d5e6f") == {"prefix": "1a2b3c4d5e6f"}  # the 12 digits tables print
    assert parse_block_ref("000026934773") == {"prefix": "000026934773"}  # a proof-of-work hash starts with 0
    assert parse_block_ref("0") == {"height": 0}
    for bad in ("abc", "xyz123", "ab" * 33):
        with pytest.raises(ValueError, match="neither a height"):
            parse_block_ref(bad)


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


def test_python_m_gridchain_knows_the_programs():
    assert set(PROGRAMS) == {"node", "relay", "device", "client"}


# --- output -----------------------------------------------------------------------------------
def test_readings_rows_csv_and_json():
    row = ("Relay 1", 42, 1_795_700_700_000, 2, 0, 115.0, 115.1, 114.9, 400.0, 401.5, 399.0, 60.0, 0.95, 80.0, 12.5,
           9, b"\xab" * 32)
    as_dict = row_to_dict(row)
    assert as_dict["relay_id"] == "Relay 1" and as_dict["seq"] == 42 and as_dict["ia"] == 400.0
    assert as_dict["height"] == 9 and as_dict["openings"] == 2 and as_dict["block_hash"] == "ab" * 32
    out = io.StringIO()
    _Writer("csv", out).write([row_to_dict(row)])
    header, line = out.getvalue().splitlines()
    assert header.split(",") == list(CSV_FIELDS)
    assert line.startswith("Relay 1,42,1795700700000,2026-11-26T13:45:00.000Z,115.0,")
    assert line.endswith(",12.5,2,0,9," + "ab" * 32)
    out = io.StringIO()
    _Writer("json", out).write([row_to_dict(row)])
    assert json.loads(out.getvalue()) == {**as_dict, "time": "2026-11-26T13:45:00.000Z"}  # the ISO time, as in CSV
    out = io.StringIO()
    _Writer("table", out).write([row_to_dict(row)])
    head, body = out.getvalue().splitlines()
    assert head.split()[:4] == ["RELAY", "SEQ", "TIME", "VAB"]
    assert body.split()[2:4] == ["42", "2026-11-26T13:45:00.000Z"]
    with pytest.raises(ValueError, match="17 values"):
        row_to_dict(row[:-1])


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
def test_a_fresh_proof_checks_and_carries_the_relays_seal():
    block = make_block()
    doc = proof_for(block, 3)  # seq 44: first reading of the second seal
    second = block.capture.seals[1]
    assert doc["seal"]["first_seq"] == 44 and doc["seal"]["count"] == 2
    assert doc["seal"]["signature"] == second.signature.hex()
    assert len(doc["seal"]["path"]) == 1 and doc["seq"] == 44
    problems, facts = check_proof(doc)
    assert problems == []
    assert facts["timestamp_ms"] == block.capture.readings[3].timestamp_ms and facts["height"] == 7
    assert facts["hash"] == block.hash.hex() and facts["relay_id"] == "Relay 1" and facts["seq"] == 44
    assert facts["member"] is None and facts["network"] is None  # no network file: keys not named


def test_with_the_network_file_the_check_names_the_relay_and_the_member():
    problems, facts = check_proof(proof_for(make_block(), 0), NETWORK)
    assert problems == [] and facts["member"] == "operator" and facts["relay_known"]


@pytest.mark.parametrize("tamper, expected", [
    (lambda d: d["reading"].update(vab=1.0), "bad-claim: the readable 'reading' values differ"),
    (lambda d: d.update(leaf=d["leaf"][:-2] + ("01" if d["leaf"][-2:] != "01" else "02")), "bad-merkle-path"),
    (lambda d: d.update(leaf=d["leaf"][:-2] + ("01" if d["leaf"][-2:] != "01" else "02")), "bad-relay-signature"),
    (lambda d: d.update(relay_id="Relay 2"), "bad-metadata"),
    (lambda d: d["metadata"].update(relay_key="00" * 32), "bad-metadata"),
    (lambda d: d["seal"].update(signature=d["metadata"]["seals"][1][2]), "bad-relay-signature"),
    (lambda d: d["seal"].update(first_seq=40), "bad-seal"),
    (lambda d: d.update(seq=d["seq"] + 1), "bad-claim: the proven reading has seq"),
    (lambda d: d.update(timestamp_ms=d["timestamp_ms"] + 1), "bad-claim: the proven reading has timestamp_ms"),
    (lambda d: d.update(hash="00" * 32), "bad-hash"),
    (lambda d: d.update(signature="00" * 64), "bad-signature: the block signature is not the miner's"),
    (lambda d: d.update(index=0), "bad-index: leaf 0 is the block's metadata"),
])
def test_a_tampered_proof_fails(tamper, expected):
    doc = proof_for(make_block(), 1)
    tamper(doc)
    problems, _ = check_proof(doc)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_reading_signed_by_another_key_is_caught_by_the_network_file():
    # Internally consistent: the forger's key is in the block and signs its seals.
    forged = proof_for(make_block(signer=RelayKey.from_seed(bytes([66]) * 32)), 2)
    assert check_proof(forged)[0] == []
    problems, _ = check_proof(forged, NETWORK)
    assert [p.split(":")[0] for p in problems] == ["relay-key-mismatch"]


@pytest.mark.parametrize("network, expected", [
    (NetworkDocument("substation-7", BITS, (Member("other", NodeKey.from_seed(bytes([8]) * 32).public_key),),
                     NETWORK.relays), "not-a-member"),
    (NetworkDocument("substation-7", BITS, NETWORK.members, (RelayEntry("Relay 9", "X", RELAY_KEY.public_key),)),
     "unknown-relay"),
    (NetworkDocument("substation-7", BITS + 1, NETWORK.members, NETWORK.relays), "bad-difficulty"),
])
def test_keys_the_network_does_not_list_fail_the_check(network, expected):
    problems, _ = check_proof(proof_for(make_block(), 0), network)
    assert [p.split(":")[0] for p in problems] == [expected]


def test_a_header_without_work_fails():
    block = make_block()
    doc = proof_for(block, 0)
    header = bytearray(bytes.fromhex(doc["header"]))
    header[-8:] = (block.header.nonce + 1).to_bytes(8, "big")  # almost surely misses 6 bits
    doc["header"] = header.hex()
    problems, _ = check_proof(doc)
    assert any(p.startswith("bad-hash") for p in problems)


def test_proof_check_command_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(proof_for(make_block(), 2)))
    net = tmp_path / "net.toml"
    net.write_text(NETWORK.to_toml())
    assert main(["proof", "--check", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: reading seq 43 of Relay 1 at 2026-11-26T13:45:20.000Z is in block 7")
    assert "not checked against a network file" in out
    assert main(["proof", "--check", str(good), "--network-file", str(net)]) == 0
    out = capsys.readouterr().out
    assert "measured and signed by relay Relay 1 (Test Substation" in out and "seal over seq 41..43" in out
    assert "mined by member 'operator' of network 'substation-7'" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["proof", "--check", str(bad)]) == 1
    assert capsys.readouterr().out.startswith("FAILED: not a proof file")
    assert main(["proof", "--check", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["proof", "--check", str(good), "--network-file", str(tmp_path / "none.toml")]) == 2
    assert "--network-file" in capsys.readouterr().err
    assert main(["--json", "proof", "--check", str(good), "--network-file", str(net)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ok"] is True and shown["member"] == "operator" and shown["seal"] == {"first_seq": 41, "count": 3}


# --- verify: gaps and the offline network --------------------------------------------------------
def test_verify_lists_the_gaps_a_relay_signed(capsys):
    from gridchain.cli.commands.verify import gap_row, report
    from gridchain.ledger.store import Gap

    gap = Gap("Relay 1", 101, 250, 1_795_700_700_000, 1_795_700_800_000, 1_795_700_790_000, 12, b"\xab" * 32)
    assert report(True, 40, [], "the store", False, [gap_row(gap)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "OK: 40 blocks checked in the store, no problems; 1 gap signed by the relay"
    assert out[1] == ("  gap  Relay 1: seq 101..250 (150 readings) lost between 2026-11-26T13:45:00.000Z and "
                      "2026-11-26T13:46:40.000Z; the relay restarted at 2026-11-26T13:46:30.000Z and signed the "
                      "loss (block 12)")
    assert report(True, 40, [], "the store", True, [gap_row(gap.as_dict())]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["gaps"][0]["missing"] == 150 and shown["gaps"][0]["first_seq"] == 101


def test_verify_offline_takes_the_network_from_its_file(tmp_path, capsys):
    net = tmp_path / "net.toml"
    net.write_text(NETWORK.to_toml())
    (tmp_path / "chain.sqlite3").write_text("")
    assert main(["verify", "--data-dir", str(tmp_path), "--network-file", str(net), "--network", "x"]) == 2
    assert "come from the network file" in capsys.readouterr().err
    assert main(["verify", "--network-file", str(net)]) == 2  # a running node knows its network
    assert "go with --data-dir" in capsys.readouterr().err
    assert main(["verify", "--data-dir", str(tmp_path), "--network-file", str(tmp_path / "none.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
