"""Node settings: one frozen dataclass, built by the CLI from flags, a TOML file and the environment.

Nothing reads configuration from a global: the CLI builds a NodeConfig and passes it to Node.
Every default a setting has is written here once; the CLI's settings table and the services
(gridchain.net.gossip, ...) import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5004
# The operator API listens on a port of its own, by default the peer port plus this (6004),
# and on 127.0.0.1 only: remote operators come in over TLS with a token (docs/security.md).
API_PORT_OFFSET = 1000
DEFAULT_API_HOST = "127.0.0.1"
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
# A relay id names the relay in every block it is in, whose text fields hold at most 256 bytes.
MAX_RELAY_ID_BYTES = 200

# How long a condition must last before it is an alert (Thresholds, used by gridchain.web.alerts);
# the defaults suit a 60 s capture.
DEFAULT_ALERT_RELAY_DOWN_S = 30.0  # the relay client retries within 30 s at most: a longer outage is real
DEFAULT_ALERT_RELAY_SILENT_S = 180.0  # three capture intervals without a new reading
DEFAULT_ALERT_SIGNATURE_WINDOW_S = 600.0  # a failure stays on the banner ten minutes after the last one
DEFAULT_ALERT_GAP_WINDOW_S = 3600.0  # a lost run of readings is shown for an hour after it was noticed
DEFAULT_ALERT_PEER_DOWN_S = 30.0  # a redial takes up to 30 s (DEFAULT_REDIAL_MAX_S); longer is an outage
DEFAULT_ALERT_FINALITY_STALL_S = 300.0  # five minutes: many vote rounds at any capture interval
DEFAULT_ALERT_FINALITY_LAG_BLOCKS = 3  # with a checkpoint every block, finality runs one or two behind
DEFAULT_ALERT_CLOCK_OFF_S = 60.0  # half the 2-minute limit a block may be ahead: warned before refused


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How long a condition must last before it is an alert (the node's ``alert_*`` settings,
    docs/operations.md; the defaults above, each with its reason)."""

    relay_down_s: float = DEFAULT_ALERT_RELAY_DOWN_S
    relay_silent_s: float = DEFAULT_ALERT_RELAY_SILENT_S
    signature_window_s: float = DEFAULT_ALERT_SIGNATURE_WINDOW_S
    gap_window_s: float = DEFAULT_ALERT_GAP_WINDOW_S
    peer_down_s: float = DEFAULT_ALERT_PEER_DOWN_S
    finality_stall_s: float = DEFAULT_ALERT_FINALITY_STALL_S
    finality_lag_blocks: int = DEFAULT_ALERT_FINALITY_LAG_BLOCKS
    clock_off_ms: int = round(DEFAULT_ALERT_CLOCK_OFF_S * 1000)


@dataclass(frozen=True, slots=True)
class Address:
    """A node's or relay's ``HOST:PORT``; a relay on a shared gateway also has its ``relay_id``."""

    host: str
    port: int
    # Which relay to ask for on a gateway serving several (None: a peer, or a gateway's only relay).
    relay_id: str | None = None

    @classmethod
    def parse_relay(cls, text: str) -> Address:
        """Parse ``HOST:PORT`` or ``HOST:PORT/RELAY_ID``, the id percent-decoded (``Relay%201``)."""
        where, sep, encoded = text.strip().partition("/")
        address = cls.parse(where)
        if not sep:
            return address
        try:
            relay_id = unquote(encoded, errors="strict").strip()
        except UnicodeDecodeError:
            raise ValueError(f"bad relay address {text!r}: the relay id is not UTF-8 once percent-decoded") from None
        if not relay_id:
            raise ValueError(f"bad relay address {text!r}: nothing after '/' (HOST:PORT/RELAY_ID)")
        if len(relay_id.encode()) > MAX_RELAY_ID_BYTES:
            raise ValueError(f"bad relay address {text!r}: relay id longer than {MAX_RELAY_ID_BYTES} bytes")
        if any(not c.isprintable() for c in relay_id):
            raise ValueError(f"bad relay address {text!r}: the relay id holds a control character")
        return cls(address.host, address.port, relay_id)

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
        # Percent-encoded, so the text parses back (parse_relay) to the same address.
        tail = "" if self.relay_id is None else "/" + quote(self.relay_id, safe="")
        return f"{self.host}:{self.port}{tail}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one gridchaind process needs to run."""

    data_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    peers: tuple[Address, ...] = ()
    relays: tuple[Address, ...] = ()  # each with its relay_id when its gateway serves several
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
    api_host: str = DEFAULT_API_HOST
    api_port: int | None = None  # None: port + API_PORT_OFFSET; 0: any free port; -1: none (socket only)
    api_socket: Path | None = None  # also (or only) a Unix socket for the operator API
    alerts: Thresholds = Thresholds()  # alert hold times and windows

    @property
    def operator_port(self) -> int:
        """The operator API's TCP port (-1: none)."""
        if self.api_port is None:
            return self.port + API_PORT_OFFSET if self.port else 0  # an ephemeral peer port: another
        return self.api_port

    @property
    def miner_name(self) -> str:
        return self.name or f"node-{self.port}"
