"""Command-line, TOML and environment settings for gridchaind and gridchain-relay.

A node's settings come from four layers, the first that names a setting winning:
flags > environment (``GRIDCHAIN_<NAME>``) > TOML file (``--config``) > defaults. Every
value is checked the same way whatever its source, and a bad one stops the program with one
line naming where it came from and what is wrong (exit status 2, as argparse does), never a
traceback. List settings (peers, relays, members) are replaced by a higher layer, not merged.
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
    DEFAULT_CAPTURE_INTERVAL_S, DEFAULT_DIFFICULTY, DEFAULT_NETWORK, DEFAULT_PORT, DEFAULT_RELAY_PORT,
    MIN_CAPTURE_INTERVAL_S, Address, NodeConfig,
)
from gridchain.cli.logs import FORMATS, LEVELS

ENV_PREFIX = "GRIDCHAIN_"
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
    return Address.parse(raw)


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
    Setting("host", _text(), "127.0.0.1", "address to listen on (0.0.0.0: every interface)"),
    Setting("port", _integer(1, 65535), DEFAULT_PORT, "TCP port for peers and the gridchain client"),
    Setting("peers", _address, (), "a peer to keep connected to (repeatable)", many=True, flag="--peer",
            metavar="HOST:PORT"),
    Setting("relays", _address, (), "a relay to capture from (repeatable)", many=True, flag="--relay",
            metavar="HOST:PORT"),
    Setting("data_dir", _path, None, "where the chain and the node key live (default: gridchain-data/<port>)",
            metavar="DIR"),
    Setting("network", _text(MAX_NAME_BYTES), DEFAULT_NETWORK, "network name; every node of a network agrees"),
    Setting("difficulty", _integer(0, MAX_DIFFICULTY), DEFAULT_DIFFICULTY,
            "proof-of-work bits (leading zero bits of a block hash)", metavar="BITS"),
    Setting("capture_interval", _number(MIN_CAPTURE_INTERVAL_S), DEFAULT_CAPTURE_INTERVAL_S,
            "seconds between relay captures (fractions allowed)", metavar="SECONDS"),
    Setting("name", _text(MAX_NAME_BYTES), "", "miner name written into this node's blocks (default: node-<port>)"),
    Setting("min_peers", _integer(0), 0, "connected peers needed before mining", metavar="N"),
    Setting("members", _member_key, (), "miner key allowed on a permissioned network (repeatable)", many=True,
            flag="--member", metavar="HEXKEY"),
    Setting("max_inbound", _integer(0), 64, "inbound peer connections accepted at once", metavar="N"),
    Setting("ban_seconds", _number(0.0), 600.0, "how long a misbehaving peer's address stays banned", metavar="S"),
    Setting("redial_max", _number(0.1), 30.0, "cap of the doubling redial delay for configured peers",
            metavar="S"),
    Setting("mining_threads", _integer(1, 256), 1, "threads hashing one block", metavar="N"),
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


def build_node_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridchaind", description="Run one gridchain node.",
        epilog=f"Every setting may also come from a TOML file (--config; keys as the flags, with _ for -) "
               f"or from {ENV_PREFIX}<NAME> environment variables (lists comma-separated). "
               "Precedence: flags, environment, file, defaults.")
    for s in NODE_SETTINGS:
        default = "none" if s.many else ("gridchain-data/<port>" if s.default is None else s.default)
        help_text = s.help if s.many or s.key in ("data_dir", "name") else f"{s.help} (default: {default})"
        if s.many:
            parser.add_argument(s.option, dest=s.key, action="append", default=None, metavar=s.metavar, help=help_text)
        else:
            parser.add_argument(s.option, dest=s.key, default=None, metavar=s.metavar or s.key.upper(), help=help_text)
    parser.add_argument("--config", metavar="FILE.toml", default=None,
                        help=f"read settings from this TOML file (or {ENV_PREFIX}CONFIG)")
    return parser


def load_node_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> NodeSettings:
    """Parse gridchaind's flags, environment and config file; exit 2 with one line on bad input."""
    parser = build_node_parser()
    args = parser.parse_args(argv)
    try:
        return resolve_node_settings(vars(args), os.environ if env is None else env)
    except SettingError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def load_node_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> NodeConfig:
    return load_node_settings(argv, env).config


def resolve_node_settings(flags: Mapping[str, object], env: Mapping[str, str]) -> NodeSettings:
    """Layer defaults < file < environment < flags; raises SettingError naming the culprit."""
    values: dict[str, object] = {s.key: s.default for s in NODE_SETTINGS}
    config_file = flags.get("config") or env.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        values.update(_from_file(Path(config_file)))
    values.update(_from_env(env))
    for s in NODE_SETTINGS:
        raw = flags.get(s.key)
        if raw is not None:
            values[s.key] = _checked(s, raw, s.option)
    port = values["port"]
    config = NodeConfig(
        data_dir=values["data_dir"] or DEFAULT_DATA_ROOT / str(port), host=values["host"], port=port,
        peers=tuple(values["peers"]), relays=tuple(values["relays"]), network=values["network"],
        difficulty=values["difficulty"], capture_interval_s=values["capture_interval"], name=values["name"],
        min_peers=values["min_peers"], members=frozenset(values["members"]) or None,
        max_inbound=values["max_inbound"], ban_seconds=values["ban_seconds"],
        mining_threads=values["mining_threads"], redial_max_s=values["redial_max"],
    )
    return NodeSettings(config, values["log_format"], values["log_level"])


def _checked(s: Setting, raw: object, where: str) -> object:
    items = raw if s.many else [raw]
    checked = []
    for item in items:
        try:
            checked.append(s.check(item))
        except ValueError as exc:
            raise SettingError(f"{where}: {exc}") from None
    return tuple(checked) if s.many else checked[0]


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
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
    parser = argparse.ArgumentParser(prog="gridchain-relay", description="Run the simulated protection relay.")
    add = parser.add_argument
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
    add("--log-format", default="auto", choices=FORMATS, help="auto: JSON lines unless stdout is a terminal")
    add("--log-level", default="info", choices=LEVELS, type=str.lower, help="least severe level logged")
    return parser


def load_relay_settings(argv: Sequence[str] | None = None) -> RelaySettings:
    parser = build_relay_parser()
    args = parser.parse_args(argv)
    if args.fault_probability is not None and args.fault_probability > 1.0:
        parser.error(f"argument --fault-probability: {args.fault_probability} is above 1")
    return RelaySettings(args.host, args.port, args.interval, args.relay_id, args.substation, args.seed,
                         args.capture_dir, args.fault_probability, args.log_format, args.log_level)

