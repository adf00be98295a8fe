"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service's command must parse with the real gridchaind / gridchain-relay / gridchain
parsers, and every peer and relay address must name a service of the file on the port that
service listens on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gridchain.cli.commands import build_client_parser
from gridchain.config import Address
from gridchain.cli.settings import load_node_settings, load_relay_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
NODES = sorted(name for name in SERVICES if name.startswith("node"))


def command(name: str) -> list[str]:
    cmd = SERVICES[name]["command"]
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def node_config(name: str):
    program, *argv = command(name)
    assert program == "gridchaind"
    return load_node_settings(argv, env={})


def listen_port(name: str) -> int:
    program, *argv = command(name)
    if program == "gridchain-relay":
        return load_relay_settings(argv).port
    return node_config(name).config.port


def test_the_expected_services_exist():
    assert set(SERVICES) == {"relay", "node1", "node2", "node3", "node4"}


def test_relay_command_parses():
    program, *argv = command("relay")
    assert program == "gridchain-relay"
    settings = load_relay_settings(argv)
    assert settings.host == "0.0.0.0" and settings.port == 5010 and settings.log_format == "json"


@pytest.mark.parametrize("name", NODES)
def test_node_command_parses_and_uses_the_prototype_ports(name):
    settings = node_config(name)
    config = settings.config
    assert config.host == "0.0.0.0" and config.port == 5003 + int(name[-1])
    assert str(config.data_dir) == "/data" and settings.log_format == "json"
    assert f"{config.port}:{config.port}" in SERVICES[name]["ports"]


@pytest.mark.parametrize("name", NODES)
def test_every_peer_and_relay_names_a_service_and_its_port(name):
    config = node_config(name).config
    peers = {a.host for a in config.peers}
    assert peers == set(NODES) - {name}, "each node peers with every other"
    for address in (*config.peers, *config.relays):
        assert address.host in SERVICES, f"{name}: {address} names no service"
        assert listen_port(address.host) == address.port, f"{name}: {address} is not where {address.host} listens"
    assert [a.host for a in config.relays] == ["relay"]


@pytest.mark.parametrize("name", NODES)
def test_data_on_a_declared_named_volume(name):
    volumes = SERVICES[name]["volumes"]
    (mount,) = [v for v in volumes if v.endswith(":/data")]
    volume = mount.split(":")[0]
    assert volume in COMPOSE["volumes"]
    others = {v.split(":")[0] for other in NODES if other != name for v in SERVICES[other]["volumes"]}
    assert volume not in others, "nodes must not share a data volume"


@pytest.mark.parametrize("name", NODES)
def test_healthcheck_runs_gridchain_status_against_its_own_port(name):
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "gridchain"
    args = build_client_parser().parse_args(test[2:])
    assert args.command == "status" and args.json
    assert args.node == Address("127.0.0.1", node_config(name).config.port)


@pytest.mark.parametrize("name", NODES)
def test_nodes_depend_on_the_relay(name):
    depends = SERVICES[name]["depends_on"]
    assert "relay" in (depends if isinstance(depends, list) else list(depends))


def test_dockerfile_basics():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text and "pip install ." in text
    assert "USER gridchain" in text and "EXPOSE 5004-5010" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
