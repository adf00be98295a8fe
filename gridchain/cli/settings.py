"""Command-line, TOML and environment settings for gridchaind and gridchain-relay.

A node's settings come from four layers, the first that names a setting winning:
flags > environment (``GRIDCHAIN_<NAME>``) > TOML file (``--config``, else
``/etc/gridchain/node.toml`` when it exists) > defaults. Every
value is checked the same way whatever its source, and a bad one stops the program with one
line naming where it came from and what is wrong (exit status 2, as argparse does), never a
traceback. List settings (peers, relays, members) are replaced by a higher layer, not merged.
A ``GRIDCHAIN_*`` variable that names no setting is refused as a TOML typo is: a misspelt
``GRIDCHAIN_PEER`` must not leave a node running alone.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridchain.config import (
    DEFAULT_ALERT_CLOCK_OFF_S, DEFAULT_ALERT_FINALITY_LAG_BLOCKS, DEFAULT_ALERT_FINALITY_STALL_S,
    DEFAULT_ALERT_GAP_WINDOW_S, DEFAULT_ALERT_PEER_DOWN_S, DEFAULT_ALERT_RELAY_DOWN_S, DEFAULT_ALERT_RELAY_SILENT_S,
    DEFAULT_ALERT_SIGNATURE_WINDOW_S, DEFAULT_BAN_SECONDS, DEFAULT_CAPTURE_INTERVAL_S, DEFAULT_DIFFICULTY,
    DEFAULT_HOST, DEFAULT_MAX_INBOUND,
    DEFAULT_MIN_PEERS, DEFAULT_MINING_THREADS, DEFAULT_NETWORK, DEFAULT_PORT, DEFAULT_REDIAL_MAX_S,
    DEFAULT_RELAY_PORT, MIN_CAPTURE_INTERVAL_S, API_PORT_OFFSET, DEFAULT_API_HOST, Address, NodeConfig, Thresholds,
)
from gridchain.cli.logs import FORMATS, LEVELS
from gridchain.cli.version import add_version_flag
from gridchain.identity.network_file import NetworkFileError
from gridchain.identity.node_network import NetworkSettingConflict, settings_from_network_file

ENV_PREFIX = "GRIDCHAIN_"
# Read when neither --config nor GRIDCHAIN_CONFIG names a file (deploy/node.toml is an example).
DEFAULT_CONFIG_PATH = Path("/etc/gridchain/node.toml")
# GRIDCHAIN_* variables other gridchain programs read (the client's default node, the test
# suite's replay seeds and soak knobs): a node started beside them must not refuse them.
OTHER_PROGRAMS_ENV = frozenset({
    "GRIDCHAIN_NODE", "GRIDCHAIN_TOKEN", "GRIDCHAIN_TOKEN_FILE", "GRIDCHAIN_NODE_KEY", "GRIDCHAIN_SOAK_SECONDS", "GRIDCHAIN_SOAK_SEED", "GRIDCHAIN_SOAK_REPORT",
    "GRIDCHAIN_CRASH_SEED", "GRIDCHAIN_PARTITION_SEED",
})
# Leading zero bits of a block hash; past 64 no machine would ever mine a block.
MAX_DIFFICULTY = 64
# Miner and network names end up in blocks, whose text fields hold at most 256 bytes
# (the genesis block's substation is "gridchain network <name>").
MAX_NAME_BYTES = 200
DEFAULT_DATA_ROOT = Path("gridchain-data")  # a node's default data dir is gridchain-data/<port>
MIN_RELAY_INTERVAL_S = 0.1  # the relay refuses finer ticks (relay.server.MIN_INTERVAL_S)
DEFAULT_RELAY_INTERVAL_S = 10.0  # the prototype relay's reading interval
DEFAULT_RELAY_ID = "Relay 1"
DEFAULT_SUBSTATION = "Bogotá Electrical Substation - U.D."
DEFAULT_RELAY_DATA_DIR = DEFAULT_DATA_ROOT / "relay"  # the relay's key, journal and state
# A relay's clock offset is measured to tens of milliseconds and drifts by as much: a
# clock_off limit under a second would raise and clear the alert on noise alone.
MIN_ALERT_CLOCK_OFF_S = 1.0


class SettingError(ValueError):
    """A setting's value is unusable; str() is ``<where>: <problem>``."""


# --- value checks: each takes a raw value (str from flags/env, native from TOML) ---------------
def _integer(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def check(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"{raw!r} is not a whole number")
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"{value} is outside {lo}..{hi}" if hi is not None else f"{value} is below {lo}")
        return value
    return check


def _number(lo: float) -> Callable[[object], float]:
    def check(raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"{raw!r} is not a number")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
        if not math.isfinite(value) or value < lo:
            raise ValueError(f"{raw} is below the minimum of {lo}" if math.isfinite(value) else f"{raw} is not finite")
        return value
    return check


def _text(max_bytes: int | None = None) -> Callable[[object], str]:
    def check(raw: object) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{raw!r} is not a non-empty string")
        if max_bytes is not None and len(raw.encode()) > max_bytes:
            raise ValueError(f"{raw!r} is longer than {max_bytes} bytes")
        return raw.strip()
    return check


def _choice(options: Sequence[str]) -> Callable[[object], str]:
    def check(raw: object) -> str:
        if not isinstance(raw, str) or raw.lower() not in options:
            raise ValueError(f"{raw!r} is not one of {', '.join(options)}")
        return raw.lower()
    return check


def _address(raw: object) -> Address:
    if not isinstance(raw, str):
        raise ValueError(f"{raw!r} is not a HOST:PORT string")
    if "," in raw or any(c.isspace() for c in raw.strip()):
        raise ValueError(f"{raw!r} is not one HOST:PORT (one address per list item)")
    return Address.parse(raw)


def _relay_address(raw: object) -> Address:
    """``HOST:PORT`` or ``HOST:PORT/RELAY_ID`` (the id percent-decoded, spaces allowed in it)."""
    if not isinstance(raw, str):
        raise ValueError(f"{raw!r} is not a HOST:PORT[/RELAY_ID] string")
    where = raw.strip().partition("/")[0]
    if "," in raw or any(c.isspace() for c in where):
        raise ValueError(f"{raw!r} is not one HOST:PORT[/RELAY_ID] (one relay per list item; "
                         "write a comma in a relay id as %2C)")
    return Address.parse_relay(raw)


def _member_key(raw: object) -> bytes:
    if isinstance(raw, str):
        try:
            key = bytes.fromhex(raw.strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not hex") from None
        if len(key) == 32:
            return key
    raise ValueError(f"{raw!r} is not an Ed25519 public key (64 hex digits)")


def _path(raw: object) -> Path:
    return Path(_text()(raw))


@dataclass(frozen=True, slots=True)
class Setting:
    """One node setting: its TOML key, flag, check, default and help."""

    key: str
    check: Callable[[object], object]
    default: object
    help: str
    many: bool = False  # a list: a repeatable flag, a TOML array, a comma-separated env var
    flag: str = ""
    metavar: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


NODE_SETTINGS: tuple[Setting, ...] = (
    Setting("host", _text(), DEFAULT_HOST, "address to listen on (0.0.0.0: every interface)"),
    Setting("port", _integer(1, 65535), DEFAULT_PORT, "TCP port for peers (the peer protocol only)"),
    Setting("api_host", _text(), DEFAULT_API_HOST, "address the operator API listens on (other than 127.0.0.1: "
            "TLS and a token only)"),
    Setting("api_port", _integer(0, 65535), None, f"TCP port of the operator API (the gridchain client) "
            f"(default: --port + {API_PORT_OFFSET}; 0: none, with --api-socket)", metavar="PORT"),
    Setting("api_socket", _path, None, "also serve the operator API on this Unix socket (mode 0600)",
            metavar="PATH"),
    Setting("peers", _address, (), "a peer to keep connected to (repeatable)", many=True, flag="--peer",
            metavar="HOST:PORT"),
    Setting("relays", _relay_address, (), "a relay to capture from (repeatable); /RELAY_ID names one relay of a "
            "gateway serving several, percent-encoded (10.0.0.5:5010/Feeder%207)", many=True, flag="--relay",
            metavar="HOST:PORT[/RELAY_ID]"),
    Setting("data_dir", _path, None, "where the chain and the node key live (default: gridchain-data/<port>)",
            metavar="DIR"),
    Setting("network", _text(MAX_NAME_BYTES), DEFAULT_NETWORK, "network name; every node of a network agrees"),
    Setting("difficulty", _integer(0, MAX_DIFFICULTY), DEFAULT_DIFFICULTY,
            "proof-of-work bits (leading zero bits of a block hash)", metavar="BITS"),
    Setting("capture_interval", _number(MIN_CAPTURE_INTERVAL_S), DEFAULT_CAPTURE_INTERVAL_S,
            "seconds between relay captures (fractions allowed)", metavar="SECONDS"),
    Setting("name", _text(MAX_NAME_BYTES), "", "miner name written into this node's blocks (default: node-<port>)"),
    Setting("min_peers", _integer(0), DEFAULT_MIN_PEERS, "connected peers needed before mining", metavar="N"),
    Setting("members", _member_key, (), "miner key allowed on a permissioned network (repeatable)", many=True,
            flag="--member", metavar="HEXKEY"),
    Setting("network_file", _path, None, "the network file naming its members and relays (gridchain network "
            "init); it decides network, difficulty and members (default: an open development network)",
            metavar="FILE"),
    Setting("max_inbound", _integer(0), DEFAULT_MAX_INBOUND, "inbound peer connections accepted at once",
            metavar="N"),
    Setting("ban_seconds", _number(0.0), DEFAULT_BAN_SECONDS, "how long a misbehaving peer's address stays banned",
            metavar="S"),
    Setting("redial_max", _number(0.1), DEFAULT_REDIAL_MAX_S, "cap of the doubling redial delay for configured peers",
            metavar="S"),
    Setting("mining_threads", _integer(1, 256), DEFAULT_MINING_THREADS, "threads hashing one block", metavar="N"),
    # Alert hold times and windows (gridchain.config.Thresholds); 0 holds for no time at all.
    Setting("alert_relay_down", _number(0.0), DEFAULT_ALERT_RELAY_DOWN_S,
            "seconds a relay is unreachable or sends bad data before alert.relay_down", metavar="S"),
    Setting("alert_relay_silent", _number(0.0), DEFAULT_ALERT_RELAY_SILENT_S,
            "age in seconds of a reachable relay's newest reading that raises alert.relay_silent", metavar="S"),
    Setting("alert_signature_window", _number(0.0), DEFAULT_ALERT_SIGNATURE_WINDOW_S,
            "seconds alert.relay_signature_failure stays up after a relay's last signature failure", metavar="S"),
    Setting("alert_gap_window", _number(0.0), DEFAULT_ALERT_GAP_WINDOW_S,
            "seconds alert.reading_gap shows a hole in a relay's readings after it was noticed", metavar="S"),
    Setting("alert_peer_down", _number(0.0), DEFAULT_ALERT_PEER_DOWN_S,
            "seconds a configured peer is not connected before alert.peer_down", metavar="S"),
    Setting("alert_finality_stall", _number(0.0), DEFAULT_ALERT_FINALITY_STALL_S,
            "seconds the finalized height stands still (with the tip --alert-finality-lag past it) before "
            "alert.finality_stalled", metavar="S"),
    Setting("alert_finality_lag", _integer(1), DEFAULT_ALERT_FINALITY_LAG_BLOCKS,
            "blocks the tip must be past a stalled finalized height for alert.finality_stalled", metavar="N"),
    Setting("alert_clock_off", _number(MIN_ALERT_CLOCK_OFF_S), DEFAULT_ALERT_CLOCK_OFF_S,
            "seconds this node's clock may be off the median of its relays' before alert.clock_off", metavar="S"),
    Setting("log_format", _choice(FORMATS), "auto", "auto: JSON lines unless stdout is a terminal",
            metavar="{" + ",".join(FORMATS) + "}"),
    Setting("log_level", _choice(LEVELS), "info", "least severe level logged", metavar="LEVEL"),
)
_BY_KEY = {s.key: s for s in NODE_SETTINGS}


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What gridchaind needs: the node's config plus how to log."""

    config: NodeConfig
    log_format: str
    log_level: str


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What gridchain-relay needs (flags only: a relay has few settings)."""

    host: str
    port: int
    interval_s: float
    relay_id: str
    substation: str
    seed: int | None
    capture_dir: Path | None
    fault_probability: float | None
    log_format: str
    log_level: str
    data_dir: Path = DEFAULT_RELAY_DATA_DIR
    key_file: Path | None = None  # None: <data_dir>/relay.key
    # (relay id, source URL) per relay the gateway serves; empty: one simulated relay, relay_id.
    devices: tuple[tuple[str, str], ...] = ()
    poll_interval_s: float | None = None  # None: the same as interval_s


def build_node_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridchaind", description="Run one gridchain node.",
        epilog=f"Every setting may also come from a TOML file (--config; keys as the flags, with _ for -) "
               f"or from {ENV_PREFIX}<NAME> environment variables (lists comma-separated). "
               f"Precedence: flags, environment, file, defaults. Without --config, {DEFAULT_CONFIG_PATH} is read "
               "when it exists. List flags also take comma-separated values (--peer a:1,b:2).")
    add_version_flag(parser)
    for s in NODE_SETTINGS:
        default = "none" if s.many else ("gridchain-data/<port>" if s.default is None else s.default)
        help_text = s.help if s.many or s.key in ("data_dir", "name", "api_port", "api_socket", "network_file") \
            else f"{s.help} (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help: Feeder%207 is text, not a format
        if s.many:
            parser.add_argument(s.option, dest=s.key, action="append", default=None, metavar=s.metavar, help=help_text)
        else:
            parser.add_argument(s.option, dest=s.key, default=None, metavar=s.metavar or s.key.upper(), help=help_text)
    parser.add_argument("--config", metavar="FILE.toml", default=None,
                        help=f"read settings from this TOML file (or {ENV_PREFIX}CONFIG; default: "
                             f"{DEFAULT_CONFIG_PATH} if it exists)")
    return parser


def load_node_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                       default_config: Path | None = DEFAULT_CONFIG_PATH) -> NodeSettings:
    """Parse gridchaind's flags, environment and config file; exit 2 with one line on bad input."""
    parser = build_node_parser()
    args = parser.parse_args(argv)
    try:
        return resolve_node_settings(vars(args), os.environ if env is None else env, default_config)
    except SettingError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def load_node_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> NodeConfig:
    return load_node_settings(argv, env).config


def resolve_node_settings(flags: Mapping[str, object], env: Mapping[str, str],
                          default_config: Path | None = DEFAULT_CONFIG_PATH) -> NodeSettings:
    """Layer defaults < file < environment < flags; raises SettingError naming the culprit.

    ``default_config`` is read when no file is named and it exists (None: never).
    """
    values: dict[str, object] = {s.key: s.default for s in NODE_SETTINGS}
    config_file = flags.get("config") or env.get(ENV_PREFIX + "CONFIG", "").strip() or None
    if config_file is None and default_config is not None and default_config.is_file():
        config_file = default_config
    layers = [_from_file(Path(config_file)) if config_file else {}, _from_env(env)]
    for layer in layers:
        values.update(layer)
    for s in NODE_SETTINGS:
        raw = flags.get(s.key)
        if raw is not None:
            if s.many:  # --peer a:1,b:2 is two peers, as GRIDCHAIN_PEERS=a:1,b:2 is
                raw = [part.strip() for item in raw for part in str(item).split(",") if part.strip()]
            values[s.key] = _checked(s, raw, s.option)
    if values["network_file"] is not None:
        explicit = {key for layer in layers for key in layer} | {k for k, v in flags.items() if v is not None}
        try:
            values.update(settings_from_network_file(values["network_file"], values, explicit))
        except (NetworkFileError, NetworkSettingConflict) as exc:
            raise SettingError(f"--network-file: {exc}") from None
    port = values["port"]
    config = NodeConfig(
        data_dir=values["data_dir"] or DEFAULT_DATA_ROOT / str(port), host=values["host"], port=port,
        peers=tuple(values["peers"]), relays=tuple(values["relays"]), network=values["network"],
        difficulty=values["difficulty"], capture_interval_s=values["capture_interval"], name=values["name"],
        min_peers=values["min_peers"], members=frozenset(values["members"]) or None,
        max_inbound=values["max_inbound"], ban_seconds=values["ban_seconds"],
        mining_threads=values["mining_threads"], redial_max_s=values["redial_max"],
        network_file=values["network_file"], api_host=values["api_host"],
        api_port=_api_port(values["api_port"], port, values["api_socket"]), api_socket=values["api_socket"],
        alerts=Thresholds(
            relay_down_s=values["alert_relay_down"], relay_silent_s=values["alert_relay_silent"],
            signature_window_s=values["alert_signature_window"], gap_window_s=values["alert_gap_window"],
            peer_down_s=values["alert_peer_down"], finality_stall_s=values["alert_finality_stall"],
            finality_lag_blocks=values["alert_finality_lag"], clock_off_ms=round(values["alert_clock_off"] * 1000)),
    )
    return NodeSettings(config, values["log_format"], values["log_level"])


def _api_port(api_port: int | None, port: int, socket_path: Path | None) -> int:
    """The operator port: as set (0 with a socket: none), else the peer port + API_PORT_OFFSET."""
    if api_port is None:
        if port + API_PORT_OFFSET > 65535:
            raise SettingError(f"--port {port}: the operator API's default port {port + API_PORT_OFFSET} is past "
                               "65535; set --api-port")
        return port + API_PORT_OFFSET
    if api_port == port:
        raise SettingError(f"--api-port {api_port}: the peer port; the operator API has a port of its own")
    if api_port == 0:
        if socket_path is None:
            raise SettingError("--api-port 0: no operator API at all; give --api-socket PATH too")
        return -1
    return api_port


def _checked(s: Setting, raw: object, where: str) -> object:
    items = raw if s.many else [raw]
    checked = []
    for item in items:
        try:
            value = s.check(item)
        except ValueError as exc:
            raise SettingError(f"{where}: {exc}") from None
        if s.many and value in checked:  # a relay polled twice would capture each reading twice
            raise SettingError(f"{where}: {item} is given twice")
        checked.append(value)
    return tuple(checked) if s.many else checked[0]


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    known = {s.env for s in NODE_SETTINGS} | {ENV_PREFIX + "CONFIG"} | OTHER_PROGRAMS_ENV
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known - OTHER_PROGRAMS_ENV), n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise SettingError(f"unknown environment variable{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                           f"gridchaind reads {ENV_PREFIX}<SETTING> for the settings in --help")
    values = {}
    for s in NODE_SETTINGS:
        raw = env.get(s.env, "").strip()
        if not raw:
            continue  # unset and empty mean the same, as compose files often write NAME=
        items = [part.strip() for part in raw.split(",") if part.strip()] if s.many else raw
        values[s.key] = _checked(s, items, s.env)
    return values


def _from_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise SettingError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"{path}: not valid TOML: {exc}") from None
    values = {}
    for key, raw in document.items():
        s = _BY_KEY.get(key)
        if s is None:
            close = difflib.get_close_matches(key, _BY_KEY, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(_BY_KEY)})"
            raise SettingError(f"{path}: unknown setting {key!r}{hint}")
        if s.many and not isinstance(raw, list):
            raise SettingError(f"{path}: {key} must be a list, e.g. {key} = [\"...\"]")
        values[key] = _checked(s, raw, f"{path}: {key}")
    return values


# --- gridchain-relay ----------------------------------------------------------------------------
def _argparse_type(check: Callable[[object], object]) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def build_relay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridchain-relay", description="Run the substation gateway: read relays over Modbus TCP, IEC 61850 or "
        "DNP3 (or the built-in simulator), sign their readings, serve them to the nodes.")
    add_version_flag(parser)
    add = parser.add_argument
    add("--device", dest="devices", action="append", default=[], type=_argparse_type(_device),
        metavar="RELAY_ID=URL", help="a relay and the device it reads (repeatable): URL is sim, "
        "modbus://HOST:PORT?unit=N&map=NAME, iec61850://HOST:PORT/LD or dnp3://HOST:PORT?outstation=N "
        "(default: one simulated relay named by --relay-id)")
    add("--poll-interval", default=None, type=_argparse_type(_number(MIN_RELAY_INTERVAL_S)), metavar="SECONDS",
        help="seconds between polls of each device (default: --interval)")
    add("--host", default="127.0.0.1", type=_argparse_type(_text()), help="address to listen on (default: 127.0.0.1)")
    add("--port", default=DEFAULT_RELAY_PORT, type=_argparse_type(_integer(1, 65535)),
        help=f"TCP port (default: {DEFAULT_RELAY_PORT})")
    add("--interval", default=DEFAULT_RELAY_INTERVAL_S, type=_argparse_type(_number(MIN_RELAY_INTERVAL_S)),
        metavar="SECONDS", help=f"seconds between readings (default: {DEFAULT_RELAY_INTERVAL_S:g})")
    add("--relay-id", default=DEFAULT_RELAY_ID, type=_argparse_type(_text(MAX_NAME_BYTES)),
        help=f"the relay's name (default: {DEFAULT_RELAY_ID!r})")
    add("--substation", default=DEFAULT_SUBSTATION, type=_argparse_type(_text(MAX_NAME_BYTES)),
        help=f"the substation's name (default: {DEFAULT_SUBSTATION!r})")
    add("--seed", default=None, type=_argparse_type(_integer(0)), metavar="N",
        help="random seed, for a reproducible feed")
    add("--capture-dir", default=None, type=Path, metavar="DIR", help="also write capture files here")
    add("--fault-probability", default=None, type=_argparse_type(_number(0.0)), metavar="P",
        help="chance of a fault per reading (default: one every 30 minutes on average)")
    add("--data-dir", default=DEFAULT_RELAY_DATA_DIR, type=_argparse_type(_path), metavar="DIR",
        help=f"where the relay keeps its key, sequence and buffer (default: {DEFAULT_RELAY_DATA_DIR})")
    add("--key-file", default=None, type=_argparse_type(_path), metavar="FILE",
        help="the relay's Ed25519 key, made 0600 on first start (default: <data-dir>/relay.key)")
    add("--log-format", default="auto", choices=FORMATS, help="auto: JSON lines unless stdout is a terminal")
    add("--log-level", default="info", choices=LEVELS, type=str.lower, help="least severe level logged")
    return parser


def _device(text: object) -> tuple[str, str]:
    """``RELAY_ID=URL``: the URL is checked here, so a typo fails before anything starts."""
    from gridchain.relay.sources.base import SourceError
    from gridchain.relay.sources.urls import parse_source_url

    relay_id, sep, url = str(text).partition("=")
    relay_id, url = relay_id.strip(), url.strip()
    if not sep or not relay_id or not url:
        raise ValueError(f"{text!r} is not RELAY_ID=URL (e.g. 'Relay 1=modbus://10.0.0.21:502?unit=1')")
    _text(MAX_NAME_BYTES)(relay_id)
    try:
        parse_source_url(url)
    except SourceError as exc:
        raise ValueError(exc.detail) from None
    return relay_id, url


def load_relay_settings(argv: Sequence[str] | None = None) -> RelaySettings:
    parser = build_relay_parser()
    args = parser.parse_args(argv)
    if args.fault_probability is not None and args.fault_probability > 1.0:
        parser.error(f"argument --fault-probability: {args.fault_probability} is above 1")
    ids = [relay_id for relay_id, _ in args.devices]
    if len(set(ids)) != len(ids):
        parser.error(f"argument --device: relay id {next(i for i in ids if ids.count(i) > 1)!r} is given twice")
    return RelaySettings(args.host, args.port, args.interval, args.relay_id, args.substation, args.seed,
                         args.capture_dir, args.fault_probability, args.log_format, args.log_level,
                         args.data_dir, args.key_file, tuple(args.devices), args.poll_interval)



# --- gridchain-device ---------------------------------------------------------------------------
def build_device_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridchain-device", description="Serve the simulated relay as a real device: a Modbus TCP server, "
        "an IEC 61850 MMS server and/or a DNP3 outstation (for tests, demos and trying a gateway).")
    add_version_flag(parser)
    add = parser.add_argument
    port = _argparse_type(_integer(0, 65535))
    add("--host", default="127.0.0.1", type=_argparse_type(_text()), help="address to listen on (default: 127.0.0.1)")
    add("--modbus", type=port, metavar="PORT", help="serve Modbus TCP on this port")
    add("--iec61850", type=port, metavar="PORT", help="serve IEC 61850 MMS on this port (logical device GRIDSIMLD0)")
    add("--dnp3", type=port, metavar="PORT", help="serve a DNP3 outstation on this port")
    add("--interval", default=1.0, type=_argparse_type(_number(MIN_RELAY_INTERVAL_S)), metavar="SECONDS",
        help="seconds between the device's measurements (default: 1)")
    add("--seed", default=1, type=_argparse_type(_integer(0)), metavar="N", help="random seed (default: 1)")
    add("--identity", default="GRIDSIM-751 SN0001", type=_argparse_type(_text(64)),
        help="the device's identity (serial number)")
    add("--unit", default=1, type=_argparse_type(_integer(0, 255)), help="Modbus unit id (default: 1)")
    add("--modbus-map", default="sel751", help="register map: sel751, float32 or a .toml file (default: sel751)")
    add("--outstation", default=10, type=_argparse_type(_integer(0, 65519)), help="DNP3 outstation address (default: 10)")
    add("--dnp3-map", default="dnp3-feeder", help="DNP3 point map (default: dnp3-feeder)")
    add("--fault-probability", default=None, type=_argparse_type(_number(0.0)), metavar="P",
        help="chance of a breaker fault per measurement")
    add("--log-format", default="auto", choices=FORMATS, help="auto: JSON lines unless stdout is a terminal")
    add("--log-level", default="info", choices=LEVELS, type=str.lower, help="least severe level logged")
    return parser


def load_device_settings(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_device_parser()
    args = parser.parse_args(argv)
    if args.modbus is None and args.iec61850 is None and args.dnp3 is None:
        parser.error("name at least one of --modbus PORT, --iec61850 PORT, --dnp3 PORT")
    if args.fault_probability is not None and args.fault_probability > 1.0:
        parser.error(f"argument --fault-probability: {args.fault_probability} is above 1")
    return args
