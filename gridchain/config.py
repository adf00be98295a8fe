"""Node settings: one frozen dataclass, built by the CLI from flags, a TOML file and the environment.

Nothing reads configuration from a global: the CLI builds a NodeConfig and passes it to Node.
Every default a setting has is written here once; the CLI's settings table and the services
(gridchain.net.gossip, ...) import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5004
DEFAULT_RELAY_PORT = 5010
DEFAULT_NETWORK = "gridchain-demo"
# 16 leading zero bits = 65,536 expected hashes: tens of milliseconds on one core, so the
# proof of work is real without slowing a capture past the prototype's ~10 s budget.
DEFAULT_DIFFICULTY = 16
DEFAULT_CAPTURE_INTERVAL_S = 60.0  # the prototype polled its relay once a minute
MIN_CAPTURE_INTERVAL_S = 0.05
DEFAULT_MIN_PEERS = 0  # mine without waiting for peers
# Inbound peer connections at once (sockets still in their handshake count too).
DEFAULT_MAX_INBOUND = 64
DEFAULT_BAN_SECONDS = 600.0  # ten minutes: long enough to stop a loop, short enough to forgive a bug
DEFAULT_REDIAL_MAX_S = 30.0  # cap of the doubling redial delay for configured peers
DEFAULT_MINING_THREADS = 1


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_host: str = "127.0.0.1") -> Address:
        """Parse ``HOST:PORT`` (or ``:PORT`` / ``PORT``); raises ValueError naming the problem."""
        host, sep, port_text = text.strip().rpartition(":")
        if not sep:
            host, port_text = "", text.strip()
        host = host.strip("[]") or default_host
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad address {text!r}: port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad address {text!r}: port {port} outside 1..65535")
        return cls(host, port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one gridchaind process needs to run."""

    data_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    peers: tuple[Address, ...] = ()
    relays: tuple[Address, ...] = ()
    network: str = DEFAULT_NETWORK
    difficulty: int = DEFAULT_DIFFICULTY
    capture_interval_s: float = DEFAULT_CAPTURE_INTERVAL_S
    name: str = ""  # human-readable miner name; defaults to "node-<port>"
    min_peers: int = DEFAULT_MIN_PEERS
    members: frozenset[bytes] | None = None  # permissioned network: allowed miner keys
    network_file: Path | None = None  # the network's members and relays; None: open development network
    max_inbound: int = DEFAULT_MAX_INBOUND
    ban_seconds: float = DEFAULT_BAN_SECONDS
    mining_threads: int = DEFAULT_MINING_THREADS
    redial_max_s: float = DEFAULT_REDIAL_MAX_S

    @property
    def miner_name(self) -> str:
        return self.name or f"node-{self.port}"
