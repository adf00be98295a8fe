"""gridchaind and gridchain-relay settings: layering, checks, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridchain.config import DEFAULT_CAPTURE_INTERVAL_S, DEFAULT_DIFFICULTY, MIN_CAPTURE_INTERVAL_S, Address
from gridchain.cli.settings import (
    NODE_SETTINGS, SettingError, build_node_parser, load_node_config, load_node_settings, load_relay_settings,
    resolve_node_settings,
)

KEY = "ab" * 32


def settings(argv: list[str], env: dict | None = None):
    return load_node_settings(argv, env or {})


def error_of(capsys, argv: list[str], env: dict | None = None) -> str:
    with pytest.raises(SystemExit) as exit_info:
        settings(argv, env)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_defaults():
    s = settings([])
    config = s.config
    assert config.port == 5004 and config.host == "127.0.0.1"
    assert config.data_dir == Path("gridchain-data/5004")
    assert config.difficulty == DEFAULT_DIFFICULTY and config.capture_interval_s == DEFAULT_CAPTURE_INTERVAL_S
    assert config.peers == () and config.relays == () and config.members is None
    assert (s.log_format, s.log_level) == ("auto", "info")


def test_flags_build_the_config():
    config = load_node_config(
        ["--port", "5005", "--host", "0.0.0.0", "--peer", "127.0.0.1:5004", "--peer", "node3:5006",
         "--relay", "relay:5010", "--relay", "5011", "--data-dir", "/tmp/x", "--network", "net", "--difficulty", "8",
         "--capture-interval", "1.5", "--name", "alpha", "--min-peers", "2", "--member", KEY, "--max-inbound", "9",
         "--ban-seconds", "30", "--mining-threads", "2"], {})
    assert config.port == 5005 and config.host == "0.0.0.0"
    assert config.peers == (Address("127.0.0.1", 5004), Address("node3", 5006))
    assert config.relays == (Address("relay", 5010), Address("127.0.0.1", 5011))
    assert config.data_dir == Path("/tmp/x") and config.network == "net" and config.difficulty == 8
    assert config.capture_interval_s == 1.5 and config.name == "alpha" and config.min_peers == 2
    assert config.members == frozenset({bytes.fromhex(KEY)})
    assert (config.max_inbound, config.ban_seconds, config.mining_threads) == (9, 30.0, 2)


def test_precedence_flags_over_env_over_file(tmp_path):
    toml = tmp_path / "node.toml"
    toml.write_text('port = 6000\ndifficulty = 4\ncapture_interval = 2.5\nnetwork = "file-net"\n'
                    'peers = ["127.0.0.1:6001", "127.0.0.1:6002"]\nlog_format = "console"\n')
    env = {"GRIDCHAIN_DIFFICULTY": "5", "GRIDCHAIN_PEERS": "a:1, b:2", "GRIDCHAIN_NETWORK": "env-net"}
    s = settings(["--config", str(toml), "--difficulty", "6"], env)
    assert s.config.port == 6000  # file only
    assert s.config.capture_interval_s == 2.5
    assert s.config.difficulty == 6  # flag beats env and file
    assert s.config.network == "env-net"  # env beats file
    assert s.config.peers == (Address("a", 1), Address("b", 2))  # a list is replaced, not merged
    assert s.log_format == "console"
    assert s.config.data_dir == Path("gridchain-data/6000")  # the default follows the port


def test_config_file_from_env_and_empty_env_is_unset(tmp_path):
    toml = tmp_path / "node.toml"
    toml.write_text("port = 6100\n")
    s = settings([], {"GRIDCHAIN_CONFIG": str(toml), "GRIDCHAIN_PORT": "", "GRIDCHAIN_NODE": "x:1"})
    assert s.config.port == 6100


@pytest.mark.parametrize("argv, expected", [
    (["--difficulty", "65"], "gridchaind: error: --difficulty: 65 is outside 0..64"),
    (["--difficulty", "x"], "--difficulty: 'x' is not a whole number"),
    (["--port", "70000"], "--port: 70000 is outside 1..65535"),
    (["--peer", "host:notaport"], "--peer: bad address 'host:notaport'"),
    (["--relay", "relay:0"], "--relay: bad address 'relay:0': port 0 outside 1..65535"),
    (["--capture-interval", "0.001"], f"--capture-interval: 0.001 is below the minimum of {MIN_CAPTURE_INTERVAL_S}"),
    (["--capture-interval", "nan"], "--capture-interval: nan is not finite"),
    (["--min-peers", "-1"], "--min-peers: -1 is below 0"),
    (["--member", "xyz"], "--member: 'xyz' is not hex"),
    (["--member", "abcd"], "--member: 'abcd' is not an Ed25519 public key"),
    (["--log-format", "xml"], "--log-format: 'xml' is not one of auto, json, console"),
    (["--name", "n" * 300], "--name: "),
    (["--config", "/nonexistent/node.toml"], "--config /nonexistent/node.toml: no such file"),
])
def test_bad_flags_give_one_line(capsys, argv, expected):
    assert expected in error_of(capsys, argv)


def test_bad_env_names_the_variable(capsys):
    assert error_of(capsys, [], {"GRIDCHAIN_DIFFICULTY": "99"}) == \
        "gridchaind: error: GRIDCHAIN_DIFFICULTY: 99 is outside 0..64"
    assert "GRIDCHAIN_PEERS: bad address 'a:b'" in error_of(capsys, [], {"GRIDCHAIN_PEERS": "x:1,a:b"})


@pytest.mark.parametrize("text, expected", [
    ("prot = 5004\n", "unknown setting 'prot' (did you mean 'port'?)"),
    ("zzz = 1\n", "unknown setting 'zzz' (known: host, port,"),
    ('peers = "a:1"\n', "peers must be a list"),
    ('peers = ["a:1", "b"]\n', "peers: bad address 'b'"),
    ("difficulty = 99\n", "difficulty: 99 is outside 0..64"),
    ("difficulty = true\n", "difficulty: True is not a whole number"),
    ("capture_interval = 0.0\n", "capture_interval: 0.0 is below the minimum"),
    ("port = [\n", "not valid TOML"),
])
def test_bad_config_file(capsys, tmp_path, text, expected):
    toml = tmp_path / "node.toml"
    toml.write_text(text)
    line = error_of(capsys, ["--config", str(toml)])
    assert line.startswith(f"gridchaind: error: {toml}: ") and expected in line


def test_every_setting_has_a_flag_env_and_toml_key():
    parser = build_node_parser()
    options = {a for action in parser._actions for a in action.option_strings}
    for s in NODE_SETTINGS:
        assert s.option in options
        assert s.env == "GRIDCHAIN_" + s.key.upper()


def test_resolve_raises_setting_error_for_callers_without_argparse():
    with pytest.raises(SettingError, match="--port"):
        resolve_node_settings({"port": "0"}, {})


def test_relay_settings():
    s = load_relay_settings(["--port", "5011", "--host", "0.0.0.0", "--interval", "0.5", "--relay-id", "R2",
                             "--seed", "3", "--capture-dir", "/tmp/c", "--log-format", "json"])
    assert (s.port, s.host, s.interval_s, s.relay_id, s.seed) == (5011, "0.0.0.0", 0.5, "R2", 3)
    assert s.capture_dir == Path("/tmp/c") and s.log_format == "json" and s.fault_probability is None
    d = load_relay_settings([])
    assert (d.port, d.interval_s, d.relay_id) == (5010, 10.0, "Relay 1")
    assert d.substation == "Bogotá Electrical Substation - U.D."


@pytest.mark.parametrize("argv, expected", [
    (["--interval", "0.01"], "argument --interval: 0.01 is below the minimum of 0.1"),
    (["--port", "0"], "argument --port: 0 is outside 1..65535"),
    (["--fault-probability", "2"], "argument --fault-probability: 2.0 is above 1"),
])
def test_bad_relay_flags(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        load_relay_settings(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


# --- the default config path, unknown variables, list flags ---------------------------------------
def test_the_default_config_file_is_read_when_no_config_is_named(tmp_path):
    default = tmp_path / "node.toml"
    assert load_node_settings([], {}, default_config=default).config.port == 5004  # absent: defaults
    default.write_text("port = 6200\n")
    assert load_node_settings([], {}, default_config=default).config.port == 6200
    named = tmp_path / "other.toml"
    named.write_text("port = 6300\n")
    assert load_node_settings(["--config", str(named)], {}, default_config=default).config.port == 6300
    assert load_node_settings([], {"GRIDCHAIN_CONFIG": str(named)}, default_config=default).config.port == 6300
    assert load_node_settings(["--port", "6400"], {}, default_config=default).config.port == 6400


def test_a_typo_in_the_default_config_file_names_it(tmp_path, capsys):
    default = tmp_path / "node.toml"
    default.write_text("prot = 6200\n")
    with pytest.raises(SystemExit):
        load_node_settings([], {}, default_config=default)
    assert capsys.readouterr().err.strip() == f"gridchaind: error: {default}: unknown setting 'prot' (did you mean 'port'?)"


def test_unknown_gridchain_variables_are_refused_by_name(capsys):
    assert error_of(capsys, [], {"GRIDCHAIN_PEER": "a:1"}) == \
        "gridchaind: error: unknown environment variable GRIDCHAIN_PEER (did you mean GRIDCHAIN_PEERS?); " \
        "gridchaind reads GRIDCHAIN_<SETTING> for the settings in --help"
    err = error_of(capsys, [], {"GRIDCHAIN_ZZZ": "1", "GRIDCHAIN_DIFICULTY": "8"})
    assert "unknown environment variables GRIDCHAIN_DIFICULTY (did you mean GRIDCHAIN_DIFFICULTY?), GRIDCHAIN_ZZZ" in err
    # What other gridchain programs read is not a node's typo: the client's node, the tests' seeds.
    s = settings([], {"GRIDCHAIN_NODE": "127.0.0.1:5004", "GRIDCHAIN_CRASH_SEED": "7", "OTHER": "x"})
    assert s.config.port == 5004


def test_a_list_flag_splits_on_commas_and_a_toml_item_holds_one_address(tmp_path, capsys):
    s = settings(["--peer", "a:1,b:2", "--peer", "c:3", "--relay", "r:5010, s:5011"])
    assert s.config.peers == (Address("a", 1), Address("b", 2), Address("c", 3))
    assert s.config.relays == (Address("r", 5010), Address("s", 5011))
    toml = tmp_path / "node.toml"
    toml.write_text('peers = ["a:1,b:2"]\n')
    assert error_of(capsys, ["--config", str(toml)]) == \
        f"gridchaind: error: {toml}: peers: 'a:1,b:2' is not one HOST:PORT (one address per list item)"
    assert "is not one HOST:PORT" in error_of(capsys, ["--peer", "a b:1"])


def test_the_example_deploy_config_passes_the_settings_parser(tmp_path):
    from tests.unit.test_cli import NETWORK

    example = Path(__file__).resolve().parents[2] / "deploy" / "node.toml"
    net = tmp_path / "network.toml"
    net.write_text(NETWORK.to_toml())
    # Every key is read and checked; only the network file's path is swapped for a real file.
    s = load_node_settings(["--config", str(example), "--network-file", str(net), "--name", "operator"], {},
                           default_config=None)
    config = s.config
    assert (config.host, config.port, config.data_dir) == ("10.0.0.1", 5004, Path("/var/lib/gridchain"))
    assert len(config.peers) == 3 and config.relays == (Address("10.0.0.21", 5010),)
    assert (s.log_format, config.min_peers, config.network) == ("json", 1, NETWORK.name)
    import tomllib

    assert tomllib.loads(example.read_text())["network_file"] == "/etc/gridchain/network.toml"


def test_a_relay_on_a_shared_gateway_is_named_by_a_percent_decoded_relay_id(tmp_path):
    s = settings(["--relay", "gw:5010/Feeder%207", "--relay", "gw:5010/Feeder 8", "--relay", "gw:5011"])
    assert s.config.relays == (Address("gw", 5010, "Feeder 7"), Address("gw", 5010, "Feeder 8"), Address("gw", 5011))
    assert [str(r) for r in s.config.relays] == ["gw:5010/Feeder%207", "gw:5010/Feeder%208", "gw:5011"]
    assert all(Address.parse_relay(str(r)) == r for r in s.config.relays)  # the text parses back
    # A comma inside an id is %2C: a list item holds one relay, in flags as in the environment.
    env = {"GRIDCHAIN_RELAYS": "10.0.0.5:5010/Relay%201, 10.0.0.5:5010/Bay%2C%20north"}
    assert settings([], env).config.relays == (Address("10.0.0.5", 5010, "Relay 1"),
                                              Address("10.0.0.5", 5010, "Bay, north"))
    toml = tmp_path / "node.toml"
    toml.write_text('relays = ["10.0.0.5:5010/Relay%201", "10.0.0.5:5010/Bogot%C3%A1 2", "10.0.0.6:5010"]\n')
    assert settings(["--config", str(toml)]).config.relays == (
        Address("10.0.0.5", 5010, "Relay 1"), Address("10.0.0.5", 5010, "Bogotá 2"), Address("10.0.0.6", 5010))
    assert Address("h", 1) != Address("h", 1, "R") and Address("h", 1).relay_id is None


@pytest.mark.parametrize("relay, expected", [
    ("gw:5010/", "--relay: bad relay address 'gw:5010/': nothing after '/'"),
    ("gw:5010/%20", "nothing after '/'"),
    ("gw:5010/%FF", "the relay id is not UTF-8 once percent-decoded"),
    ("gw:5010/R%0A1", "the relay id holds a control character"),
    ("gw:5010/" + "r" * 201, "relay id longer than 200 bytes"),
    ("gw:x/Relay%201", "--relay: bad address 'gw:x': port 'x' is not a number"),
    ("gw 2:5010/R", "is not one HOST:PORT[/RELAY_ID]"),
])
def test_a_bad_relay_address_gives_one_line(capsys, relay, expected):
    assert expected in error_of(capsys, ["--relay", relay])


def test_a_peer_is_never_a_relay_address(capsys):
    assert "--peer: bad address 'a:1/R'" in error_of(capsys, ["--peer", "a:1/R"])


@pytest.mark.parametrize("argv, expected", [
    (["--relay", "gw:5010", "--relay", "gw:5010"], "--relay: gw:5010 is given twice"),
    (["--relay", "gw:5010/Relay%201,gw:5010/Relay%201"], "--relay: gw:5010/Relay%201 is given twice"),
    (["--peer", "a:1,a:1"], "--peer: a:1 is given twice"),
])
def test_a_relay_or_peer_given_twice_is_refused(capsys, argv, expected):
    assert expected in error_of(capsys, argv)


def test_one_gateway_with_two_relay_ids_is_two_relays():
    config = load_node_config(["--relay", "gw:5010/Relay%201", "--relay", "gw:5010/Relay%202"], env={})
    assert [r.relay_id for r in config.relays] == ["Relay 1", "Relay 2"]
