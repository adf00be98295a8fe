"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service's command must parse with the real gridchaind / gridchain-relay / gridchain
parsers, and every peer and relay address must name a service of the file on the port that
service listens on. The init service's command is run for real, each named volume standing
in as a temporary directory, and the nodes' settings are loaded from the network file it
wrote there (a node's settings read its network file, so they need one).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from gridchain.cli.commands import build_client_parser, main
from gridchain.cli.commands.health import judge
from gridchain.cli.settings import load_node_settings, load_relay_settings
from gridchain.config import Address
from gridchain.identity.keys import NodeKey
from gridchain.identity.network_file import load_network_file

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
NODES = sorted(name for name in SERVICES if name.startswith("node"))


def command(name: str) -> list[str]:
    cmd = SERVICES[name]["command"]
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def mounts(name: str) -> dict[PurePosixPath, tuple[str, bool]]:
    """A service's mount points: path -> (named volume, read-only)."""
    found = {}
    for spec in SERVICES[name].get("volumes", []):
        volume, mount, *mode = spec.split(":")
        assert volume in COMPOSE["volumes"], f"{name}: {volume} is not a declared named volume"
        found[PurePosixPath(mount)] = (volume, mode == ["ro"])
    return found


def on_volume(name: str, path: str | Path) -> tuple[str, PurePosixPath]:
    """(named volume, path inside it) of a path in a service's container."""
    path = PurePosixPath(path)
    for mount, (volume, _) in mounts(name).items():
        if path == mount or mount in path.parents:
            return volume, path.relative_to(mount)
    raise AssertionError(f"{name}: {path} is on no named volume, so it would not outlive the container")


def on_host(root: Path, name: str, argv: list[str]) -> list[str]:
    """``argv`` with every container path (a whole argument, or NAME=PATH[@EXTRA]) moved to
    the directory standing in for its volume under ``root``."""
    out = []
    for arg in argv:
        label, sep, rest = arg.partition("=")
        if not sep:
            label, rest = "", arg
        path, at, extra = rest.partition("@")
        if path.startswith("/"):
            volume, inside = on_volume(name, path)
            arg = f"{label}{sep}{root / volume / inside}{at}{extra}"
        out.append(arg)
    return out


def init_args():
    program, *argv = command("init")
    assert program == "gridchain"
    args = build_client_parser().parse_args(argv)
    assert (args.command, args.action) == ("network", "init")
    return argv, args


def flag_value(name: str, flag: str) -> str:
    argv = command(name)
    return argv[argv.index(flag) + 1]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """The named volumes after the init service ran (twice: a rerun must succeed too)."""
    root = tmp_path_factory.mktemp("volumes")
    argv, _ = init_args()
    assert main(on_host(root, "init", argv)) == 0
    assert main(on_host(root, "init", argv)) == 0
    return root


@pytest.fixture
def node_settings(volumes):
    """A node's settings from its compose command; only its network file is read from the stand-in volume."""
    def load(name: str):
        program, *argv = command(name)
        assert program == "gridchaind"
        at = argv.index("--network-file") + 1
        argv[at] = on_host(volumes, name, [argv[at]])[0]
        # The service's environment too: its GRIDCHAIN_NODE (for the client) must not stop the node.
        return load_node_settings(argv, env=environment(name), default_config=None)
    return load


def environment(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def published(name: str) -> list[tuple[str, int, int]]:
    """A service's published ports as (host address, host port, container port)."""
    found = []
    for spec in SERVICES[name].get("ports", []):
        parts = str(spec).split(":")
        assert len(parts) == 3, f"{name}: {spec} publishes on every interface (write 127.0.0.1:HOST:CONTAINER)"
        found.append((parts[0], int(parts[1]), int(parts[2])))
    return found


def relay_settings():
    program, *argv = command("relay")
    assert program == "gridchain-relay"
    return load_relay_settings(argv)


def test_the_expected_services_exist():
    assert set(SERVICES) == {"init", "relay", "node1", "node2", "node3", "node4"}


def test_relay_command_parses():
    settings = relay_settings()
    assert settings.host == "0.0.0.0" and settings.port == 5010 and settings.log_format == "json"
    assert on_volume("relay", settings.key_file) == ("relay-data", PurePosixPath("relay.key"))
    assert on_volume("relay", settings.data_dir)[0] == "relay-data"


@pytest.mark.parametrize("name", NODES)
def test_node_command_parses_and_uses_the_prototype_ports(name, node_settings):
    settings = node_settings(name)
    config = settings.config
    assert config.host == "0.0.0.0" and config.port == 5003 + int(name[-1])
    assert str(config.data_dir) == "/data" and settings.log_format == "json"
    assert published(name) == [], "a node publishes no port: peers meet on the compose network"
    assert config.api_host == "127.0.0.1" and config.operator_port == config.port + 1000


@pytest.mark.parametrize("name", NODES)
def test_every_peer_and_relay_names_a_service_and_its_port(name, node_settings):
    config = node_settings(name).config
    peers = {a.host for a in config.peers}
    assert peers == set(NODES) - {name}, "each node peers with every other"
    for address in (*config.peers, *config.relays):
        assert address.host in SERVICES, f"{name}: {address} names no service"
        port = relay_settings().port if address.host == "relay" else node_settings(address.host).config.port
        assert port == address.port, f"{name}: {address} is not where {address.host} listens"
    assert [a.host for a in config.relays] == ["relay"]


def test_init_names_every_node_as_a_member_and_the_relay_by_its_key_file(node_settings):
    _, args = init_args()
    members = {}
    for flag, text in args.members:
        assert flag == "--member-data-dir"  # keys are made on the volumes, never typed in
        name, rest = text.split("=", 1)
        directory, address = rest.split("@")
        members[name] = (directory, Address.parse(address))
    assert set(members) == set(NODES)
    for name, (directory, address) in members.items():
        config = node_settings(name).config
        assert config.name == name, "the member name is the node's miner name"
        assert on_volume("init", directory) == on_volume(name, config.data_dir) == (f"{name}-data", PurePosixPath("."))
        assert address == Address(name, config.port)
    ((flag, text),) = args.relays
    relay = relay_settings()
    relay_id, key_file = text.split("=", 1)
    assert flag == "--relay-key-file" and relay_id == relay.relay_id and "@" not in key_file  # default substation
    assert on_volume("init", key_file) == on_volume("relay", relay.key_file)


@pytest.mark.parametrize("name", NODES)
def test_every_node_reads_the_network_file_init_writes_on_a_read_only_mount(name):
    _, args = init_args()
    volume, inside = on_volume("init", args.out)
    assert on_volume(name, flag_value(name, "--network-file")) == (volume, inside)
    assert [ro for v, ro in mounts(name).values() if v == volume] == [True], "nodes mount the network volume read-only"


def test_the_file_init_writes_names_each_nodes_key_and_the_relays(volumes, node_settings):
    for name in NODES:
        config = node_settings(name).config
        document = load_network_file(config.network_file)
        assert (config.network, config.difficulty) == (document.name, document.difficulty)
        key = NodeKey.load(volumes / f"{name}-data" / "node.key")
        assert document.member(key.public_key).name == name
    relay = relay_settings()
    volume, inside = on_volume("relay", relay.key_file)
    assert document.relay(relay.relay_id).key == NodeKey.load(volumes / volume / inside).public_key
    assert document.relay(relay.relay_id).substation == relay.substation


@pytest.mark.parametrize("name", NODES)
def test_data_on_a_declared_named_volume(name):
    volume, inside = on_volume(name, "/data")
    assert inside == PurePosixPath(".")
    others = {v for other in NODES if other != name for v, _ in mounts(other).values()}
    assert volume not in others, "nodes must not share a data volume"


@pytest.mark.parametrize("name", NODES)
def test_gridchain_in_a_node_container_asks_that_node(name, node_settings):
    """`docker compose exec node2 gridchain status` asks node2: GRIDCHAIN_NODE is its own operator port."""
    args = build_client_parser(env=environment(name)).parse_args(["status"])
    assert args.node == Address("127.0.0.1", node_settings(name).config.operator_port)


@pytest.mark.parametrize("name", NODES)
def test_healthcheck_means_peered_and_synced_on_its_own_node(name, node_settings):
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "gridchain"
    args = build_client_parser(env=environment(name)).parse_args(test[2:])
    assert args.command == "health" and args.min_peers >= 1
    assert args.node == Address("127.0.0.1", node_settings(name).config.operator_port)
    peer = {"state": "ready", "height": 7, "tip": "00ab00ab00ab"}
    assert judge({"height": 7, "tip": "00ab00ab00ab" + "0" * 52, "peers": [peer]}, args.min_peers).healthy
    assert not judge({"height": 7, "tip": "00ab00ab00ab", "peers": [{**peer, "state": "handshake"}]},
                     args.min_peers).healthy, "a node with no ready peer is not healthy"
    assert not judge({"height": 5, "tip": "00cd", "peers": [peer]}, args.min_peers).healthy, "behind is not synced"


def test_published_ports_are_on_loopback_only():
    for name in SERVICES:
        for host, _, _ in published(name):
            assert host == "127.0.0.1", f"{name} publishes on {host}"
    assert published("relay") == [("127.0.0.1", 5010, 5010)]


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_caps_its_logs(name):
    logging = SERVICES[name]["logging"]
    assert logging["driver"] == "json-file"
    size = logging["options"]["max-size"]
    assert size.endswith("m") and 1 <= int(size[:-1]) <= 100
    assert 1 <= int(logging["options"]["max-file"]) <= 10


@pytest.mark.parametrize("name", [*NODES, "relay"])
def test_nodes_and_relay_start_after_init_has_finished(name):
    depends = SERVICES[name]["depends_on"]
    assert depends["init"] == {"condition": "service_completed_successfully"}
    if name != "relay":
        assert "relay" in depends
    assert SERVICES["init"]["restart"] == "no"


def test_dockerfile_basics():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "COPY requirements.lock" in text and "pip install --require-hashes -r requirements.lock" in text
    assert "pip install --no-deps ." in text, "gridchain itself adds no unpinned dependency"
    assert "COPY pyproject.toml README.md LICENSE" in text  # what the build reads
    assert "USER gridchain" in text and "EXPOSE 5004-5010" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    for name in ("init", "relay", *NODES):
        for mount in mounts(name):
            assert str(mount) in text, f"{mount} must exist in the image, so a fresh volume takes its owner"
