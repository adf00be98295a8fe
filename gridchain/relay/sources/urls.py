"""Source URLs: which device a relay reads, parsed and checked before anything connects. Pure
parsing; `open_source` builds the source.

    sim
    modbus://HOST[:PORT]?unit=N&map=NAME|PATH.toml        (port 502, unit 1, map sel751)
    iec61850://HOST[:PORT]/LD                              (port 102)
    dnp3://HOST[:PORT]?outstation=N[&master=M][&map=...]   (port 20000, master 1, map dnp3-feeder)

Every source also takes `timeout=SECONDS` (the poll deadline) and `identity=TEXT` (pin the
device identity instead of learning it on the first poll). Unknown parameters, missing
hosts, out-of-range numbers and unknown schemes are `bad-source-url` errors that quote the
URL, so a typo in a gateway's configuration fails at start, not at the first poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from gridchain.relay.sources.base import DEFAULT_POLL_TIMEOUT_S, Source, SourceError
from gridchain.relay.sources.point_map import DEFAULT_POINT_MAP

DEFAULT_PORTS = {"modbus": 502, "iec61850": 102, "dnp3": 20000}
DEFAULT_MODBUS_MAP = "sel751"
MAX_TIMEOUT_S = 60.0  # a longer poll deadline would hide a dead device for a minute
_PARAMETERS = {
    "sim": set(),
    "modbus": {"unit", "map", "timeout", "identity"},
    "iec61850": {"timeout", "identity"},
    "dnp3": {"outstation", "master", "map", "timeout", "identity"},
}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed source URL."""

    kind: str  # sim | modbus | iec61850 | dnp3
    host: str = ""
    port: int = 0
    unit: int = 1                 # modbus unit id
    map: str = ""                 # modbus register map / dnp3 point map: shipped name or path
    logical_device: str = ""      # iec61850 LD (MMS domain)
    outstation: int = 0           # dnp3 outstation address
    master: int = 1               # dnp3 master address
    timeout_s: float = DEFAULT_POLL_TIMEOUT_S
    identity: str | None = None


def parse_source_url(url: str) -> SourceSpec:
    text = url.strip()
    if text == "sim":
        return SourceSpec("sim")
    parts = urlsplit(text)
    kind = parts.scheme.lower()
    if kind not in DEFAULT_PORTS:
        raise _bad(url, f"unknown scheme {parts.scheme!r}; use sim, modbus://, iec61850:// or dnp3://")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        port = parts.port
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    unknown = sorted(set(query) - _PARAMETERS[kind])
    if unknown:
        raise _bad(url, f"unknown parameter(s) {', '.join(unknown)}; {kind} takes "
                        f"{', '.join(sorted(_PARAMETERS[kind]))}")
    repeated = sorted(k for k, v in query.items() if len(v) > 1)
    if repeated:
        raise _bad(url, f"parameter(s) given twice: {', '.join(repeated)}")
    params = {k: v[0] for k, v in query.items()}
    host = parts.hostname or ""
    if not host:
        raise _bad(url, "no host")
    if port == 0:
        raise _bad(url, "port 0 is not a device's port")
    if parts.username or parts.password or parts.fragment:
        raise _bad(url, "user info and fragments are not part of a source URL")
    common = dict(kind=kind, host=host, port=port or DEFAULT_PORTS[kind],
                  timeout_s=_timeout(url, params.get("timeout")), identity=params.get("identity") or None)
    path = unquote(parts.path).strip("/")
    if kind == "iec61850":
        if not path or "/" in path:
            raise _bad(url, "name exactly one logical device: iec61850://HOST:PORT/LD")
        return SourceSpec(**common, logical_device=path)
    if path:
        raise _bad(url, f"{kind} URLs have no path (got /{path}); use ?parameters")
    if kind == "modbus":
        return SourceSpec(**common, unit=_int(url, params, "unit", 1, 0, 255),
                          map=params.get("map") or DEFAULT_MODBUS_MAP)
    if "outstation" not in params:
        raise _bad(url, "dnp3 needs ?outstation=N (the outstation's link address)")
    return SourceSpec(**common, outstation=_int(url, params, "outstation", 0, 0, 65519),
                      master=_int(url, params, "master", 1, 0, 65519),
                      map=params.get("map") or DEFAULT_POINT_MAP)


def open_source(spec: SourceSpec, *, simulator=None) -> Source:
    """The source a spec names (maps are loaded here, so a bad map fails before polling)."""
    if spec.kind == "sim":
        if simulator is None:
            raise SourceError("bad-source-url", "sim needs the gateway's simulator")
        from gridchain.relay.sources.sim_source import SimSource
        return SimSource(simulator)
    if spec.kind == "modbus":
        from gridchain.relay.sources.modbus_source import ModbusSource
        from gridchain.relay.sources.register_map import load_register_map
        return ModbusSource(spec.host, spec.port, spec.unit, load_register_map(spec.map),
                            timeout_s=spec.timeout_s, expected_identity=spec.identity)
    if spec.kind == "iec61850":
        from gridchain.relay.sources.mms_source import MmsSource
        return MmsSource(spec.host, spec.port, spec.logical_device, timeout_s=spec.timeout_s,
                         expected_identity=spec.identity)
    from gridchain.relay.sources.dnp3_source import Dnp3Source
    from gridchain.relay.sources.point_map import load_point_map
    return Dnp3Source(spec.host, spec.port, spec.outstation, load_point_map(spec.map), master=spec.master,
                      timeout_s=spec.timeout_s, expected_identity=spec.identity)


def _int(url: str, params: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    text = params.get(key)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise _bad(url, f"{key} must be an integer {low}..{high}, got {text!r}")
    return int(text)


def _timeout(url: str, text: str | None) -> float:
    if text is None:
        return DEFAULT_POLL_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_TIMEOUT_S:
        raise _bad(url, f"timeout must be seconds in (0, {MAX_TIMEOUT_S:g}], got {text!r}")
    return value


def _bad(url: str, why: str) -> SourceError:
    return SourceError("bad-source-url", f"{url!r}: {why}")
