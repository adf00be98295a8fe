"""The client's rough edges a new user hit: versions, options, times, prefixes, tables, verify offline."""

from __future__ import annotations

import asyncio
import io
import json
from types import SimpleNamespace

import pytest

from gridchain.api.client import DEFAULT_NODE, default_node
from gridchain.cli.commands import build_client_parser, main
from gridchain.cli.commands.chain import ambiguous_text, prefix_matches, resolve_prefix
from gridchain.cli.commands.health import judge
from gridchain.cli.commands.output import parse_time_ms, plural
from gridchain.cli.commands.readings import BreakerMarks, _Writer, breaker_open, unknown_relay_hint
from gridchain.cli.main import client_main, device_main, node_main, relay_main
from gridchain.config import Address
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.identity.network_file import Member, NetworkDocument, RelayEntry
from gridchain.identity.keys import NodeKey
from gridchain.ledger.store import DB_FILE, Store
from tests.support.blocks import RELAY_KEY

NOW_MS = 1_795_700_700_000


# --- --version ------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry, prog", [(node_main, "gridchaind"), (relay_main, "gridchain-relay"),
                                         (device_main, "gridchain-device"), (client_main, "gridchain")])
def test_every_program_prints_the_package_version(entry, prog, capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        entry(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"{prog} {version('gridchain')} (Python 3.")


# --- global options -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["-1", "0", "nan", "inf", "soon"])
def test_timeout_must_be_a_positive_number(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_client_parser(env={}).parse_args(["--timeout", bad, "status"])
    assert exit_info.value.code == 2
    assert "argument --timeout:" in capsys.readouterr().err
    assert build_client_parser(env={}).parse_args(["status", "--timeout", "0.5"]).timeout == 0.5


def test_gridchain_node_is_the_default_node(capsys):
    assert default_node({}) == DEFAULT_NODE == Address("127.0.0.1", 6004)  # the operator port: peer port + 1000
    assert default_node({"GRIDCHAIN_NODE": "node2:5005"}) == Address("node2", 5005)
    args = build_client_parser(env={"GRIDCHAIN_NODE": "node2:5005"}).parse_args(["status"])
    assert args.node == Address("node2", 5005)
    args = build_client_parser(env={"GRIDCHAIN_NODE": "node2:5005"}).parse_args(["status", "--node", "h:1"])
    assert args.node == Address("h", 1), "--node wins over the environment"


def test_a_bad_gridchain_node_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("GRIDCHAIN_NODE", "node2:http")
    assert main(["status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gridchain: error: GRIDCHAIN_NODE: bad address 'node2:http'") and "\n" not in err


def test_demo_refuses_json(capsys):
    assert main(["demo", "--json", "--duration", "1"]) == 2
    assert "demo has no JSON output" in capsys.readouterr().err


# --- relative times -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, ago_ms", [("1h", 3_600_000), ("30m", 1_800_000), ("2d", 172_800_000),
                                          ("90s", 90_000), ("1h30m", 5_400_000), ("-2h", 7_200_000),
                                          ("15m ago", 900_000), ("now", 0), ("1.5h", 5_400_000)])
def test_relative_times_count_back_from_now(text, ago_ms):
    assert parse_time_ms(text, now_ms=NOW_MS) == NOW_MS - ago_ms


def test_since_takes_a_relative_time_on_the_command_line():
    import time

    args = build_client_parser(env={}).parse_args(["readings", "--since", "1h", "--until", "30m"])
    assert args.since == pytest.approx(time.time() * 1000 - 3_600_000, abs=2000)
    assert args.until - args.since == pytest.approx(1_800_000, abs=1000)
    for bad in ("1x", "h", "1h2"):
        with pytest.raises(ValueError, match="nor a time ago such as 1h"):
            parse_time_ms(bad, NOW_MS)


# --- block by hash prefix -------------------------------------------------------------------------
HEADERS = [{"height": h, "hash": bytes.fromhex(hx + "0" * (64 - len(hx)))}
           for h, hx in enumerate(["97e18ebf5f2e", "000026934773", "0000223ad48d", "0000e95186a5", "00002269aaaa"])]


class FakeNode:
    """What resolve_prefix asks of a NodeClient: the status and the header pages."""

    async def status(self) -> dict:
        return {"height": len(HEADERS) - 1}

    async def header_pages(self, start: int, stop: int):
        for at in range(start, stop + 1, 2):  # two rows a page: matches across pages count
            yield HEADERS[at:min(stop, at + 1) + 1]


def test_a_unique_prefix_names_one_block():
    assert asyncio.run(resolve_prefix(FakeNode(), "000026")) == HEADERS[1]["hash"]
    assert asyncio.run(resolve_prefix(FakeNode(), "0000e9")) == HEADERS[3]["hash"]


def test_an_ambiguous_prefix_counts_its_candidates():
    with pytest.raises(ValueError) as error:
        asyncio.run(resolve_prefix(FakeNode(), "000022"))
    assert str(error.value) == ("hash prefix 000022 is ambiguous: 2 main-chain blocks match (00002269aaaa "
                                "(height 4), 0000223ad48d (height 2)); give more digits")
    many = [{"height": h, "hash": bytes([0, h]) + bytes(30)} for h in range(8)]
    assert "8 main-chain blocks match" in ambiguous_text("00", prefix_matches("00", many))
    assert ambiguous_text("00", many).count("(height") == 5 and "and 3 more" in ambiguous_text("00", many)
    with pytest.raises(LookupError, match="no main-chain block's hash starts with abcd"):
        asyncio.run(resolve_prefix(FakeNode(), "abcd"))


# --- readings: openings, breaker, JSON time, unknown relay ----------------------------------------
def row(seq: int, openings: int, ia: float = 400.0, flags: int = 0) -> dict:
    return {"relay_id": "Relay 1", "seq": seq, "timestamp_ms": NOW_MS + seq * 1000, "openings": openings,
            "flags": flags, "vab": 115.0, "vbc": 115.0, "vca": 115.0, "ia": ia, "ib": ia, "ic": ia,
            "frequency": 60.0, "power_factor": 0.95, "active_power": 80.0, "reactive_power": 12.0,
            "height": 3, "block_hash": "ab" * 32}


def test_the_breaker_is_open_when_its_count_rose_or_no_current_flows():
    assert not breaker_open(row(1, 2), None) and not breaker_open(row(2, 2), 2)
    assert breaker_open(row(2, 3), 2), "a fault tripped the breaker since the previous reading"
    assert breaker_open(row(3, 3, ia=0.0), 3), "dead time: no phase carries current"
    assert not breaker_open(row(3, 3, ia=0.0, flags=0b01 << 6), 3), "a current the relay flagged proves nothing"


def test_the_readings_table_shows_openings_and_marks_an_open_breaker():
    out = io.StringIO()
    writer = _Writer("table", out)
    writer.write([row(1, 2), row(2, 3)])
    writer.write([row(3, 3, ia=0.0), row(4, 3)])  # the previous count carries across pages
    head, *lines = out.getvalue().splitlines()
    assert head.split()[-3:] == ["HEIGHT", "OPENINGS", "BREAKER"]
    cells = [line.split() for line in lines]
    marks = ["open" if c[-1] == "open" else "" for c in cells]
    assert marks == ["", "open", "open", ""]
    assert [c[-2] if mark else c[-1] for c, mark in zip(cells, marks)] == ["2", "3", "3", "3"]
    other = BreakerMarks()
    assert [r["breaker"] for r in other.mark([row(1, 5), {**row(1, 5), "relay_id": "Relay 2"}])] == ["", ""], \
        "each relay has its own count"


def test_readings_json_has_the_iso_time_as_the_csv_does():
    out = io.StringIO()
    _Writer("json", out).write([row(1, 2)])
    shown = json.loads(out.getvalue())
    assert shown["time"] == "2026-11-26T13:45:01.000Z" and shown["timestamp_ms"] == NOW_MS + 1000
    assert list(shown).index("time") == list(shown).index("timestamp_ms") + 1


def test_a_relay_nobody_knows_gets_a_hint_listing_the_known_ones():
    hint = unknown_relay_hint("relay 1", ["Relay 1", "Relay 2"], "127.0.0.1:5004")
    assert hint == ("no relay 'relay 1' on 127.0.0.1:5004 (did you mean 'Relay 1'?); "
                    "known relays: 'Relay 1', 'Relay 2'")
    assert unknown_relay_hint("Feeder 9", ["Relay 1"], "n:1") == "no relay 'Feeder 9' on n:1; known relays: 'Relay 1'"
    assert "knows no relay yet" in unknown_relay_hint("Relay 1", [], "n:1")


def test_plural_agrees():
    assert [plural(n, "reading") for n in (0, 1, 2, 1500)] == ["0 readings", "1 reading", "2 readings",
                                                               "1,500 readings"]


# --- health ---------------------------------------------------------------------------------------
TIP = "0000abcdef01" + "0" * 52


def peer(height: int, tip: str = TIP[:12], state: str = "ready") -> dict:
    return {"state": state, "height": height, "tip": tip}


@pytest.mark.parametrize("info, healthy, reason", [
    ({"height": 9, "tip": TIP, "peers": [peer(9), peer(8, "0000ffff0000")]}, True, "2 ready peers, height 9"),
    ({"height": 10, "tip": TIP, "peers": [peer(9, "0000ffff0000")]}, True, "1 ready peer, height 10"),
    ({"height": 9, "tip": TIP, "peers": []}, False, "0 ready peers, needs 1"),
    ({"height": 9, "tip": TIP, "peers": [peer(9, state="handshake")]}, False, "0 ready peers, needs 1"),
    ({"height": 8, "tip": TIP, "peers": [peer(9, "0000ffff0000")]}, False, "behind: height 8, best peer at 9"),
    ({"height": 9, "tip": TIP, "peers": [peer(9, "0000ffff0000")]}, False, "tip 0000abcdef01 at height 9 differs"),
    ({"height": 9, "tip": TIP, "syncing": True, "peers": [peer(9)]}, False, "catching up"),
])
def test_health_means_peered_and_synced(info, healthy, reason):
    verdict = judge(info)
    assert verdict.healthy is healthy and verdict.reason.startswith(reason), verdict


def test_health_can_ask_for_no_peers():
    assert judge({"height": 0, "tip": TIP, "peers": []}, min_peers=0).healthy


# --- verify --data-dir: the network from the store ------------------------------------------------
def make_store(directory, params: NetworkParams):
    directory.mkdir(parents=True, exist_ok=True)
    Store.open(directory / DB_FILE, params.name, make_genesis(params)).close()
    return directory


def test_verify_reads_the_open_network_from_the_store(tmp_path, capsys):
    data = make_store(tmp_path / "d", NetworkParams("substation-9", 12))
    assert main(["verify", "--data-dir", str(data)]) == 0, capsys.readouterr()
    assert capsys.readouterr().out.startswith("OK: 1 block checked in ")
    assert main(["verify", "--data-dir", str(data), "--network", "substation-9", "--difficulty", "12"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("flags, expected", [
    (["--difficulty", "16"], "the store's network 'substation-9' has difficulty 12 bits, not 16"),
    (["--network", "gridchain-demo"], "the store holds network 'substation-9', not 'gridchain-demo'"),
])
def test_an_option_that_insists_on_another_network_is_one_clear_line(tmp_path, capsys, flags, expected):
    data = make_store(tmp_path / "d", NetworkParams("substation-9", 12))
    assert main(["verify", "--data-dir", str(data), *flags]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"FAILED: {data / DB_FILE}: {expected}\n" and "b'" not in captured.err + captured.out
    assert main(["--json", "verify", "--data-dir", str(data), *flags]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert not shown["ok"] and shown["problems"][0]["reason"] == expected


def test_a_closed_networks_store_asks_for_its_network_file(tmp_path, capsys):
    key = NodeKey.from_seed(bytes([3]) * 32)
    document = NetworkDocument("substation-9", 8, (Member("operator", key.public_key),),
                               (RelayEntry("Relay 1", "Substation 9", RELAY_KEY.public_key),))
    data = make_store(tmp_path / "d", document.params())
    assert main(["verify", "--data-dir", str(data)]) == 1
    assert "holds the closed network 'substation-9'" in capsys.readouterr().out
    net = tmp_path / "net.toml"
    net.write_text(document.to_toml())
    assert main(["verify", "--data-dir", str(data), "--network-file", str(net)]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 block checked")
    other = tmp_path / "other.toml"
    other.write_text(NetworkDocument("substation-9", 9, document.members, document.relays).to_toml())
    assert main(["verify", "--data-dir", str(data), "--network-file", str(other)]) == 1
    out = capsys.readouterr().out
    assert f"{other} is not the network of this store" in out and "b'" not in out and out.count("\n") == 1


# --- the newest reading of nodes whose peers mined it ---------------------------------------------
def test_status_fills_a_relay_rows_newest_reading_from_the_chain():
    from gridchain.cli.commands.chain import with_chain_newest

    info = {"relays": [{"relay_id": "Relay 1", "newest_ms": None}, {"relay_id": "Relay 2", "newest_ms": 5},
                       {"relay_id": None, "newest_ms": None}]}
    rows = [{"relay_id": "Relay 1", "newest_ms": 7}, {"relay_id": "Relay 1", "newest_ms": 9},
            {"relay_id": "Relay 2", "newest_ms": 8}, {"relay_id": "", "newest_ms": None}]
    assert [r["newest_ms"] for r in with_chain_newest(info, rows)["relays"]] == [9, 5, None], \
        "only a missing value is filled; what the relay handed the node stands"


def test_the_demo_view_shows_each_nodes_newest_reading():
    import argparse
    from pathlib import Path

    from gridchain.cli.demo import Child, newest_reading, render_lines, render_screen

    quiet = {"height": 4, "tip": "00ab" * 16, "peers": [], "mining": "idle",
             "relays": [{"relay_id": "Relay 1", "state": "ok", "newest_ms": None}]}
    assert newest_reading(quiet, {"newest_ms": NOW_MS}) == NOW_MS, "its peers mined the readings: the chain has them"
    assert newest_reading(quiet, None) is None
    quiet["newest_ms"] = newest_reading(quiet, {"newest_ms": NOW_MS})
    child = Child("node-5005", None, Path("x.log"), Address("127.0.0.1", 5005))
    args = argparse.Namespace(relay_port=5010, capture_interval=2.0, relay_interval=1.0, difficulty=16)
    screen = render_screen(args, [(child, None, quiet)], None, 3.0, Path("/tmp/d"))
    assert "NEWEST READING" in screen and "2026-11-26T13:45:00.000Z" in screen
    assert "newest readings node-5005=2026-11-26T13:45:00.000Z" in render_lines([(child, None, quiet)], None, 3.0)


def test_the_demo_can_start_again_at_once_on_ports_left_in_time_wait():
    import socket

    from gridchain.cli.demo import _port_free

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert not _port_free(port), "a listening port is in use"
    client = socket.create_connection(("127.0.0.1", port), 2)
    served, _ = listener.accept()
    served.close()  # the listening side closes first, so its end waits in TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    assert _port_free(port), "a stopped demo's TIME_WAIT connections must not block the next one"


def test_the_readme_tour_shows_what_make_demo_gives():
    """`make demo` runs `gridchain demo` with its defaults: the tour's ports and intervals are those."""
    import re
    from pathlib import Path

    from gridchain.cli.demo import render_screen

    args = build_client_parser(env={}).parse_args(["demo"])
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(VENV\)/bin/gridchain demo$", makefile, re.M), "make demo = gridchain demo"
    rows = [(SimpleNamespace(name=f"n{i}", address=Address("127.0.0.1", 1)), None, None) for i in range(args.nodes)]
    header = render_screen(args, rows, None, 5.0, Path("/tmp/d")).splitlines()[0]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    tour = readme[readme.index("## A tour"):readme.index("## Running it")]
    assert header.split("  (")[0] in tour
    ports = [args.base_port + i for i in range(args.nodes)]
    assert f"relay on port {args.relay_port} and four nodes on {ports[0]}-{ports[-1]}" in tour
    assert all(f"node-{port}" in tour for port in ports) and "18004" not in readme
    assert not re.search(r"\b1 readings\b", readme)
