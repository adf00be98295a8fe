"""Node settings: one frozen dataclass, built by the CLI from flags, a TOML file and the environment.

Nothing reads configuration from a global: the CLI builds a NodeConfig and passes it to Node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 5004
DEFAULT_RELAY_PORT = 5010
DEFAULT_NETWORK = "gridchain-demo"
# 16 leading zero bits = 65,536 expected hashes: tens of milliseconds on one core, so the
# proof of work is real without slowing a capture past the prototype's ~10 s budget.
DEFAULT_DIFFICULTY = 16
DEFAULT_CAPTURE_INTERVAL_S = 60.0  # the prototype polled its relay once a minute
MIN_CAPTURE_INTERVAL_S = 0.05


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
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    peers: tuple[Address, ...] = ()
    relays: tuple[Address, ...] = ()
    network: str = DEFAULT_NETWORK
    difficulty: int = DEFAULT_DIFFICULTY
    capture_interval_s: float = DEFAULT_CAPTURE_INTERVAL_S
    name: str = ""  # human-readable miner name; defaults to "node-<port>"
    min_peers: int = 0
    members: frozenset[bytes] | None = None  # permissioned network: allowed miner keys
    max_inbound: int = 64
    ban_seconds: float = 600.0
    mining_threads: int = 1
    redial_max_s: float = 30.0  # cap of the doubling redial delay for configured peers
    extra: dict = field(default_factory=dict)

    @property
    def miner_name(self) -> str:
        return self.name or f"node-{self.port}"
