"""The network file: parsing and validation, canonical hash, init/show/keys, --network-file."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import msgpack
import pytest
from structlog.testing import capture_logs

from gridchain.cli.commands import main
from gridchain.cli.settings import load_node_settings
from gridchain.config import Address, NodeConfig
from gridchain.identity.keys import NodeKey
from gridchain.identity.network_file import (
    Member, NetworkDocument, NetworkFileError, RelayEntry, load_network_file, parse_network_text,
)
from gridchain.identity.node_network import node_params

OPERATOR, REGULATOR, CUSTOMER, RELAY = (NodeKey.from_seed(bytes([n]) * 32).public_key for n in (1, 2, 3, 4))

TEXT = f"""\
[network]
name = "substation-7"
difficulty = 16

[[members]]
name = "operator"
key = "{OPERATOR.hex()}"
address = "10.0.0.1:5004"

[[members]]
name = "regulator"
key = "{REGULATOR.hex()}"

[[relays]]
id = "Relay 1"
substation = "Substation 7"
key = "{RELAY.hex()}"
"""


def error_of(text: str) -> str:
    with pytest.raises(NetworkFileError) as info:
        parse_network_text(text, "net.toml")
    assert info.value.reason == "bad-network-file"
    return str(info.value)


# --- parsing and validation -------------------------------------------------------------------
def test_a_network_file_parses_into_its_members_and_relays():
    doc = parse_network_text(TEXT)
    assert (doc.name, doc.difficulty, doc.is_open) == ("substation-7", 16, False)
    assert doc.members == (Member("operator", OPERATOR, Address("10.0.0.1", 5004)), Member("regulator", REGULATOR))
    assert doc.relays == (RelayEntry("Relay 1", "Substation 7", RELAY),)
    assert doc.member(REGULATOR).name == "regulator" and doc.member(CUSTOMER) is None
    assert doc.relay("Relay 1").key == RELAY and doc.relay("Relay 2") is None


def test_to_toml_round_trips(tmp_path):
    doc = parse_network_text(TEXT)
    path = tmp_path / "net.toml"
    path.write_text(doc.to_toml())
    assert load_network_file(path) == doc
    assert doc.network_hash().hex() in doc.to_toml()  # the header comment names the hash


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace(REGULATOR.hex(), "zz" * 32), "net.toml:12: members[2].key: 'zz"),
    (lambda t: t.replace(REGULATOR.hex(), REGULATOR.hex()[:62]), "net.toml:12: members[2].key: 31 bytes"),
    (lambda t: t.replace(REGULATOR.hex(), OPERATOR.hex()), "net.toml:12: members[2].key: "
                                                          f"{OPERATOR.hex()[:16]} is already used by members[1]"),
    (lambda t: t.replace('"regulator"', '"operator"'), "net.toml:11: members[2].name: 'operator' is already used"),
    (lambda t: t.replace("difficulty = 16", "difficulty = 65"), "net.toml:3: network.difficulty: 65 is not"),
    (lambda t: t.replace("difficulty = 16", 'difficulty = "16"'), "net.toml:3: network.difficulty: '16' is not"),
    (lambda t: t.replace('name = "substation-7"\n', ""), "net.toml:1: network.name: missing"),
    (lambda t: t.replace('address = "10.0.0.1:5004"', 'adress = "10.0.0.1:5004"'),
     "net.toml:8: members[1].adress: unknown field (known: name, key, address)"),
    (lambda t: t.replace('address = "10.0.0.1:5004"', 'address = "10.0.0.1:99999"'),
     "net.toml:8: members[1].address: bad address"),
    (lambda t: t.replace('substation = "Substation 7"\n', ""), "net.toml:14: relays[1].substation: missing"),
    (lambda t: t.replace('"Relay 1"', '" Relay 1"'), "net.toml:15: relays[1].id: ' Relay 1' starts or ends"),
    (lambda t: t + '\n[[relays]]\nid = "Relay 1"\nsubstation = "B"\nkey = "' + CUSTOMER.hex() + '"\n',
     "net.toml:20: relays[2].id: 'Relay 1' is already used by relays[1]"),
    (lambda t: t + "\n[finality]\ndepth = 6\n",
     "net.toml:20: finality.depth: unknown field (known: checkpoint_interval, quorum)"),
    (lambda t: "finality = 3\n" + t, "net.toml:1: finality: must be a table"),
    (lambda t: t.split("[[relays]]")[0], "net.toml: relays: the network names no relays"),
    (lambda t: "[network]\nname = \"x\"\ndifficulty = 1\n", "net.toml: members: the network names no members"),
    (lambda t: t.replace("[network]", "[netwrk]"), "net.toml:1: netwrk: unknown table or key"),
    (lambda t: t + "\n[[members\n", "net.toml: not valid TOML"),
])
def test_errors_name_the_file_line_and_field(edit, expected):
    assert error_of(edit(TEXT)).startswith(expected)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(NetworkFileError) as info:
        load_network_file(tmp_path / "missing.toml")
    assert info.value.reason == "network-file-missing" and "missing.toml: no such file" in str(info.value)
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(NetworkFileError, match="not UTF-8"):
        load_network_file(tmp_path / "binary.toml")


# --- canonical bytes and the network hash -----------------------------------------------------
def test_canonical_bytes_are_the_documented_msgpack_map():
    doc = parse_network_text(TEXT)
    expected = {"difficulty": 16, "members": sorted([[OPERATOR, "operator"], [REGULATOR, "regulator"]]),
                "name": "substation-7", "relays": [["Relay 1", "Substation 7", RELAY]]}
    assert doc.canonical_bytes() == msgpack.packb(expected, use_bin_type=True)
    assert doc.network_hash() == hashlib.sha256(doc.canonical_bytes()).digest()


def test_reordering_members_or_relays_or_moving_addresses_keeps_the_hash():
    doc = parse_network_text(TEXT)
    second_relay = RelayEntry("Relay 0", "Substation 7", CUSTOMER)
    reordered = NetworkDocument(doc.name, doc.difficulty, doc.members[::-1], doc.relays)
    moved = NetworkDocument(doc.name, doc.difficulty, (Member("operator", OPERATOR, Address("10.9.9.9", 1)),
                                                       doc.members[1]), doc.relays)
    assert reordered.network_hash() == moved.network_hash() == doc.network_hash()
    with_two = NetworkDocument(doc.name, doc.difficulty, doc.members, (*doc.relays, second_relay))
    with_two_reversed = NetworkDocument(doc.name, doc.difficulty, doc.members, (second_relay, *doc.relays))
    assert with_two.network_hash() == with_two_reversed.network_hash() != doc.network_hash()


@pytest.mark.parametrize("edit", [
    lambda t: t.replace(REGULATOR.hex(), CUSTOMER.hex()),  # a member's key
    lambda t: t.replace(RELAY.hex(), CUSTOMER.hex()),  # the relay's key
    lambda t: t.replace('"regulator"', '"regulator-2"'),  # a member's name
    lambda t: t.replace('"Substation 7"', '"Substation 8"'),
    lambda t: t.replace("difficulty = 16", "difficulty = 17"),
    lambda t: t.replace('"substation-7"', '"substation-8"'),
])
def test_changing_anything_but_an_address_changes_the_hash(edit):
    assert parse_network_text(edit(TEXT)).network_hash() != parse_network_text(TEXT).network_hash()


def test_the_hash_of_a_known_document_is_stable():
    # Pinned: a change here changes every network's genesis, so it must be deliberate.
    doc = NetworkDocument("n", 1, (Member("m", bytes(range(32))),), (RelayEntry("r", "s", bytes(32)),))
    assert doc.network_hash().hex() == hashlib.sha256(
        b"\x84\xaadifficulty\x01\xa7members\x91\x92\xc4\x20" + bytes(range(32)) + b"\xa1m"
        b"\xa4name\xa1n\xa6relays\x91\x93\xa1r\xa1s\xc4\x20" + bytes(32)).hexdigest()


def test_an_open_network_is_name_and_difficulty_alone():
    doc = NetworkDocument.open_network("gridchain-demo", 16)
    assert doc.is_open and doc.members is None and doc.relays is None
    assert doc.canonical_bytes() == msgpack.packb({"difficulty": 16, "name": "gridchain-demo"}, use_bin_type=True)
    with pytest.raises(ValueError):
        doc.to_toml()
    with pytest.raises(NetworkFileError):
        NetworkDocument.open_network("", 16)


# --- [finality] ---------------------------------------------------------------------------------
FOUR = TEXT.replace("[[relays]]", f"""[[members]]
name = "customer"
key = "{CUSTOMER.hex()}"

[[members]]
name = "auditor"
key = "{NodeKey.from_seed(bytes([5]) * 32).public_key.hex()}"

[[relays]]""")


def finality_error(text: str) -> NetworkFileError:
    with pytest.raises(NetworkFileError) as info:
        parse_network_text(text, "net.toml")
    return info.value


def test_finality_defaults_without_a_table_and_the_hash_is_unchanged():
    doc = parse_network_text(FOUR)
    assert (doc.checkpoint_interval, doc.quorum, doc.finality_quorum) == (1, None, 3)
    params = doc.params()
    assert (params.checkpoint_interval, params.quorum) == (1, 3)
    assert b"finality" not in doc.canonical_bytes()  # networks from before finality keep their hash
    stated = parse_network_text(FOUR + "\n[finality]\ncheckpoint_interval = 1\nquorum = 3\n")
    assert stated.network_hash() == doc.network_hash()  # spelling out the defaults is the same network
    assert params.network_hash == doc.network_hash()


def test_finality_settings_are_read_hashed_and_carried_to_the_params(tmp_path):
    doc = parse_network_text(FOUR + "\n[finality]\ncheckpoint_interval = 10\nquorum = 4\n")
    assert (doc.checkpoint_interval, doc.quorum) == (10, 4)
    assert msgpack.unpackb(doc.canonical_bytes())["finality"] == {"checkpoint_interval": 10, "quorum": 4}
    assert list(msgpack.unpackb(doc.canonical_bytes())) == ["difficulty", "finality", "members", "name", "relays"]
    others = [parse_network_text(FOUR + extra).network_hash() for extra in
              ("", "\n[finality]\ncheckpoint_interval = 10\n", "\n[finality]\nquorum = 4\n")]
    assert len({doc.network_hash(), *others}) == 4
    params = doc.params()
    assert (params.checkpoint_interval, params.quorum, params.network_hash) == (10, 4, doc.network_hash())
    path = tmp_path / "net.toml"
    path.write_text(doc.to_toml())
    assert load_network_file(path) == doc and "[finality]" in doc.to_toml()
    assert doc.as_dict()["finality"] == {"checkpoint_interval": 10, "quorum": 4}
    assert "[finality]" not in parse_network_text(FOUR).to_toml()


@pytest.mark.parametrize("table, reason, message", [
    ("quorum = 2", "quorum-too-small", "net.toml:28: finality.quorum: 2 of 4 members is not more than two thirds"),
    ("quorum = 5", "quorum-too-large", "net.toml:28: finality.quorum: 5 is more than the 4 members"),
    ("quorum = 0", "quorum-too-small", "net.toml:28: finality.quorum: 0 of 4"),
    ('quorum = "3"', "bad-quorum", "net.toml:28: finality.quorum: '3' is not a whole number"),
    ("quorum = true", "bad-quorum", "net.toml:28: finality.quorum: True"),
    ("checkpoint_interval = 0", "bad-checkpoint-interval", "net.toml:28: finality.checkpoint_interval: 0 is not"),
    ("checkpoint_interval = 10081", "bad-checkpoint-interval", "net.toml:28: finality.checkpoint_interval: 10081"),
    ("checkpoint_interval = 1.5", "bad-checkpoint-interval", "net.toml:28: finality.checkpoint_interval: 1.5"),
])
def test_bad_finality_settings_are_named(table, reason, message):
    error = finality_error(FOUR + f"\n[finality]\n{table}\n")
    assert error.reason == reason and str(error).startswith(message)


def test_the_quorum_bound_is_more_than_two_thirds():
    from gridchain.consensus.params import default_quorum

    assert [default_quorum(n) for n in (1, 2, 3, 4, 5, 6, 7, 16, 100)] == [1, 2, 3, 3, 4, 5, 5, 11, 67]
    assert parse_network_text(TEXT + "\n[finality]\nquorum = 2\n").quorum == 2  # 2 of 2
    assert finality_error(TEXT + "\n[finality]\nquorum = 1\n").reason == "quorum-too-small"  # 1 of 2


def test_params_keep_their_old_constructor_and_hash():
    from gridchain.consensus.params import NetworkParams

    open_net = NetworkParams("dev", 3)
    assert (open_net.checkpoint_interval, open_net.quorum) == (1, None)  # an open network has no finality
    assert open_net.network_hash == hashlib.sha256(msgpack.packb({"difficulty": 3, "name": "dev"})).digest()
    named = NetworkParams("n", 1, members=frozenset({OPERATOR, REGULATOR, CUSTOMER}))
    assert named.quorum == 3 and named.network_hash == NetworkParams("n", 1, members=named.members,
                                                                     quorum=3).network_hash
    assert NetworkParams("n", 1, members=named.members, checkpoint_interval=5).network_hash != named.network_hash


# --- NetworkParams ----------------------------------------------------------------------------
def test_params_carry_the_members_relays_and_hash():
    from gridchain.consensus.params import RelayInfo

    doc = parse_network_text(TEXT)
    params = doc.params()
    assert (params.name, params.bits) == ("substation-7", 16)
    assert params.members == frozenset({OPERATOR, REGULATOR})
    assert params.member_names == {OPERATOR: "operator", REGULATOR: "regulator"}
    assert params.relays == {"Relay 1": RelayInfo(RELAY, "Substation 7")}
    assert params.network_hash == doc.network_hash()


def test_an_open_network_has_the_same_hash_in_consensus_and_here():
    params = NetworkDocument.open_network("gridchain-demo", 16).params()
    assert params.relays is None and params.members is None
    assert params.network_hash == NetworkDocument.open_network("gridchain-demo", 16).network_hash()


def test_a_node_without_a_file_warns_that_its_network_is_open(tmp_path):
    with capture_logs() as logs:
        params = node_params(NodeConfig(data_dir=tmp_path, network="dev", difficulty=3))
    assert (params.name, params.bits) == ("dev", 3)
    (event,) = [e for e in logs if e["event"] == "network.open"]
    assert event["log_level"] == "warning" and "open development network" in event["detail"]


def test_a_node_with_a_file_runs_its_network_without_the_warning(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(TEXT)
    with capture_logs() as logs:
        params = node_params(NodeConfig(data_dir=tmp_path, network="substation-7", network_file=path))
    assert params.network_hash == parse_network_text(TEXT).network_hash()
    assert not [e for e in logs if e["event"] == "network.open"]


# --- gridchaind --network-file -----------------------------------------------------------------
@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(TEXT)
    return path


def test_network_file_decides_name_and_difficulty(net_file):
    config = load_node_settings(["--network-file", str(net_file)], env={}).config
    assert (config.network, config.difficulty, config.network_file) == ("substation-7", 16, net_file)
    same = load_node_settings(["--network-file", str(net_file), "--network", "substation-7", "--difficulty", "16"],
                              env={}).config
    assert (same.network, same.difficulty) == ("substation-7", 16)  # agreeing is fine


def test_network_file_from_env_and_toml(net_file, tmp_path):
    by_env = load_node_settings([], env={"GRIDCHAIN_NETWORK_FILE": str(net_file)}).config
    toml = tmp_path / "node.toml"
    toml.write_text(f'network_file = "{net_file}"\n')
    by_toml = load_node_settings(["--config", str(toml)], env={}).config
    assert by_env.network_file == by_toml.network_file == net_file and by_toml.network == "substation-7"


@pytest.mark.parametrize("argv, env, expected", [
    (["--network", "other"], {}, "--network 'other' contradicts the network file"),
    (["--difficulty", "8"], {}, "--difficulty 8 contradicts the network file"),
    ([], {"GRIDCHAIN_DIFFICULTY": "8"}, "--difficulty 8 contradicts the network file"),
    (["--network", "gridchain-demo"], {}, "--network 'gridchain-demo' contradicts"),  # the default, but given
    (["--member", OPERATOR.hex()], {}, "--member is not used with a network file"),
])
def test_contradicting_the_network_file_is_an_error(net_file, capsys, argv, env, expected):
    with pytest.raises(SystemExit) as info:
        load_node_settings(["--network-file", str(net_file), *argv], env=env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gridchaind: error: --network-file: ") and expected in err and err.count("\n") == 1


def test_a_bad_network_file_stops_gridchaind_with_one_line(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(TEXT.replace(RELAY.hex(), "00"))
    with pytest.raises(SystemExit) as info:
        load_node_settings(["--network-file", str(path)], env={})
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"gridchaind: error: --network-file: {path}:17: relays[1].key: "
                                       "1 bytes, an Ed25519 public key is 32 (64 hex digits)\n")


# --- gridchain network init / show, gridchain keys ----------------------------------------------
def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_network_init_writes_a_file_that_loads_back(tmp_path, capsys):
    out = tmp_path / "net.toml"
    code, text, _ = run(capsys, "network", "init", "--name", "substation-7", "--difficulty", "16",
                        "--member", f"operator={OPERATOR.hex()}@10.0.0.1:5004",
                        "--member", f"regulator={REGULATOR.hex()}",
                        "--relay", f"Relay 1={RELAY.hex()}@Substation 7", "--out", str(out))
    assert code == 0 and "written" in text
    assert load_network_file(out) == parse_network_text(TEXT)


def test_network_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "net.toml"
    base = ["network", "init", "--name", "n", "--member", f"a={OPERATOR.hex()}", "--relay", f"r={RELAY.hex()}",
            "--out", str(out)]
    assert run(capsys, *base)[0] == 0
    code, text, _ = run(capsys, *base)
    assert code == 0 and "unchanged" in text  # the same content again: an init step may rerun
    code, _, err = run(capsys, *base, "--difficulty", "3")
    assert code == 1 and "already exists and differs; --force replaces it" in err
    assert load_network_file(out).difficulty == 16
    assert run(capsys, *base, "--difficulty", "3", "--force")[0] == 0
    assert load_network_file(out).difficulty == 3


@pytest.mark.parametrize("extra, expected", [
    (["--member", "a"], "--member 'a': expected NAME=KEYHEX[@HOST:PORT]"),
    (["--member", "a=abc"], "--member 'a=abc': 'abc' is not hex"),
    (["--member", f"a={OPERATOR.hex()}@host"], "bad address"),
    (["--member", f"a={OPERATOR.hex()}", "--member", f"b={OPERATOR.hex()}"], "members[2].key:"),
    (["--relay", f"r={RELAY.hex()}", "--relay", f"r={CUSTOMER.hex()}"], "relays[2].id: 'r' is already used"),
])
def test_network_init_usage_errors_name_the_flag(tmp_path, capsys, extra, expected):
    argv = ["network", "init", "--name", "n", "--out", str(tmp_path / "net.toml")]
    if not any(a == "--member" for a in extra):
        argv += ["--member", f"a={OPERATOR.hex()}"]
    if not any(a == "--relay" for a in extra):
        argv += ["--relay", f"r={RELAY.hex()}"]
    code, _, err = run(capsys, *argv, *extra)
    assert code == 2 and expected in err and not (tmp_path / "net.toml").exists()


def test_network_init_makes_keys_in_data_dirs(tmp_path, capsys):
    out = tmp_path / "net.toml"
    code, _, _ = run(capsys, "network", "init", "--name", "demo",
                     "--member-data-dir", f"a={tmp_path / 'a'}@127.0.0.1:6000",
                     "--member", f"b={REGULATOR.hex()}", "--relay-key-file", f"Relay 1={tmp_path / 'r' / 'relay.key'}",
                     "--out", str(out))
    assert code == 0
    doc = load_network_file(out)
    node_key = NodeKey.load(tmp_path / "a" / "node.key")
    relay_key = NodeKey.load(tmp_path / "r" / "relay.key")
    assert [m.name for m in doc.members] == ["a", "b"]  # the command line's order
    assert doc.members[0].key == node_key.public_key and doc.members[0].address == Address("127.0.0.1", 6000)
    assert doc.relays[0].key == relay_key.public_key
    for path in (tmp_path / "a" / "node.key", tmp_path / "r" / "relay.key"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "PRIVATE" not in out.read_text()


def test_network_show_prints_the_hash(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(TEXT)
    digest = parse_network_text(TEXT).network_hash().hex()
    code, text, _ = run(capsys, "network", "show", str(path))
    assert code == 0 and f"network hash  {digest}" in text and OPERATOR.hex() in text and "10.0.0.1:5004" in text
    code, text, _ = run(capsys, "network", "show", str(path), "--json")
    shown = json.loads(text)
    assert code == 0 and shown["network_hash"] == digest and shown["members"][1]["address"] is None
    code, _, err = run(capsys, "network", "show", str(tmp_path / "nope.toml"))
    assert code == 1 and "no such file" in err


def test_keys_prints_a_nodes_and_a_relays_public_key(tmp_path, capsys):
    node = NodeKey.load_or_create(tmp_path)
    code, text, _ = run(capsys, "keys", "--data-dir", str(tmp_path))
    assert code == 0 and text.split()[:2] == ["node", node.public_key.hex()]
    code, text, _ = run(capsys, "keys", "--relay-key-file", str(tmp_path / "relay.key"), "--create", "--json")
    relay = json.loads(text)
    assert code == 0 and relay["role"] == "relay"
    assert relay["key"] == NodeKey.load(tmp_path / "relay.key").public_key.hex()
    code, text, _ = run(capsys, "keys", "--data-dir", str(tmp_path), "--json")  # a dir holding both
    assert code == 0 and [k["role"] for k in json.loads(text)] == ["node", "relay"]


def test_keys_without_a_key_says_so(tmp_path, capsys):
    code, _, err = run(capsys, "keys", "--data-dir", str(tmp_path))
    assert code == 1 and "holds no node.key or relay.key" in err
    assert run(capsys, "keys")[0] == 2
    code, text, _ = run(capsys, "keys", "--data-dir", str(tmp_path / "new"), "--create")
    assert code == 0 and text.split()[1] == NodeKey.load(tmp_path / "new" / "node.key").public_key.hex()
    (tmp_path / "new" / "node.key").chmod(0o644)
    code, _, err = run(capsys, "keys", "--data-dir", str(tmp_path / "new"))
    assert code == 1 and "insecure-permissions" in err
