"""DNP3 point maps: TOML files that say which outstation point carries which value. Pure.

A map gives each reading value an analog input index, a scale and offset (engineering =
raw * scale + offset), a unit and the range a relay can really report; it names the
counter that counts breaker openings and, optionally, a counter that holds the device's
serial number (its identity). `decode` turns the points one integrity poll returned into
a sample; the outstation server uses `encode` to publish the simulator through the same map.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gridchain.relay.sources.base import READING_VALUES, DeviceSample, Quality, SourceError

DEFAULT_POINT_MAP = "dnp3-feeder"
# DNP3 point flags (IEEE 1815-2012, objects 20 and 30), the same octet for both.
ONLINE, RESTART, COMM_LOST, REMOTE_FORCED, LOCAL_FORCED, OVER_RANGE, REFERENCE_ERR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40)
_INVALID_FLAGS = RESTART | COMM_LOST | OVER_RANGE
_QUESTIONABLE_FLAGS = REMOTE_FORCED | LOCAL_FORCED | REFERENCE_ERR


@dataclass(frozen=True, slots=True)
class AnalogPoint:
    name: str
    index: int
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    low: float = -math.inf
    high: float = math.inf


@dataclass(frozen=True, slots=True)
class PointMap:
    name: str
    values: tuple[AnalogPoint, ...]  # READING_VALUES order
    openings_counter: int
    identity_counter: int | None = None

    def decode(self, analogs: Mapping[int, tuple[float, int]], counters: Mapping[int, tuple[int, int]],
               outstation: int, where: str) -> DeviceSample:
        """A sample from {index: (value, flags)} of analog inputs and counters."""
        values, quality = [], []
        for point in self.values:
            if point.index not in analogs:
                raise SourceError("wrong-map", f"{where}: analog input {point.index} ({point.name}) "
                                               f"not in the outstation's answer")
            raw, flags = analogs[point.index]
            q = flag_quality(flags)
            value = round(raw * point.scale + point.offset, 9)
            if q is not Quality.INVALID and not point.low <= value <= point.high:
                raise SourceError("value-out-of-range", f"{where}: analog input {point.index} ({point.name}) "
                                                        f"= {value:g} {point.unit} outside "
                                                        f"[{point.low:g}, {point.high:g}]")
            values.append(value)
            quality.append(q)
        openings = self._counter(counters, self.openings_counter, "openings", where)
        identity = f"dnp3 outstation {outstation}"
        if self.identity_counter is not None:
            identity += f" serial {self._counter(counters, self.identity_counter, 'identity', where)}"
        return DeviceSample(tuple(values), tuple(quality), openings, None, identity)

    def _counter(self, counters: Mapping[int, tuple[int, int]], index: int, what: str, where: str) -> int:
        if index not in counters:
            raise SourceError("wrong-map", f"{where}: counter {index} ({what}) not in the outstation's answer")
        value, flags = counters[index]
        if flag_quality(flags) is not Quality.GOOD:
            raise SourceError("device-exception", f"{where}: counter {index} ({what}) flags {flags:#04x}: "
                                                  f"the device does not vouch for it")
        return value

    def encode(self, values: tuple[float, ...]) -> dict[int, int]:
        """Raw analog input values (32-bit integers, as g30v1 carries them) for these values."""
        out = {}
        for point, value in zip(self.values, values):
            raw = round((value - point.offset) / point.scale)
            out[point.index] = max(-(1 << 31), min((1 << 31) - 1, raw))
        return out


def flag_quality(flags: int) -> Quality:
    if not flags & ONLINE or flags & _INVALID_FLAGS:
        return Quality.INVALID
    if flags & _QUESTIONABLE_FLAGS:
        return Quality.QUESTIONABLE
    return Quality.GOOD


def quality_flags(quality: Quality) -> int:
    """The point flags a device sets for a value of this quality (the server's side)."""
    return {Quality.GOOD: ONLINE, Quality.QUESTIONABLE: ONLINE | LOCAL_FORCED,
            Quality.INVALID: COMM_LOST}[quality]


def load_point_map(name_or_path: str = DEFAULT_POINT_MAP) -> PointMap:
    folder = resources.files("gridchain.relay.sources") / "maps"
    shipped = sorted(p.name[:-5] for p in folder.iterdir() if p.name.startswith("dnp3") and p.name.endswith(".toml"))
    if name_or_path in shipped:
        text = (folder / f"{name_or_path}.toml").read_text()
    elif name_or_path.endswith(".toml") and Path(name_or_path).is_file():
        text = Path(name_or_path).read_text()
    else:
        raise SourceError("unknown-map", f"{name_or_path!r} is neither a shipped point map "
                                         f"({', '.join(shipped)}) nor a .toml file")
    return parse_point_map(text, name_or_path)


def parse_point_map(text: str, origin: str = "<map>") -> PointMap:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourceError("bad-map", f"{origin}: {exc}") from exc
    values_doc = doc.get("values")
    if not isinstance(values_doc, dict) or sorted(values_doc) != sorted(READING_VALUES):
        raise SourceError("bad-map", f"{origin}: [values] must name exactly {READING_VALUES}")
    points = tuple(_point(name, values_doc[name], origin) for name in READING_VALUES)
    indexes = [p.index for p in points]
    if len(set(indexes)) != len(indexes):
        raise SourceError("bad-map", f"{origin}: two values share an analog input index")
    openings = _index(doc.get("openings", {}), "counter", origin, "openings")
    identity = _index(doc["identity"], "counter", origin, "identity") if "identity" in doc else None
    if identity == openings:
        raise SourceError("bad-map", f"{origin}: identity and openings use the same counter")
    return PointMap(str(doc.get("device", {}).get("name", origin)), points, openings, identity)


def _point(name: str, doc: dict, origin: str) -> AnalogPoint:
    try:
        point = AnalogPoint(name, _index(doc, "index", origin, name), float(doc.get("scale", 1.0)),
                            float(doc.get("offset", 0.0)), str(doc.get("unit", "")),
                            float(doc.get("min", -math.inf)), float(doc.get("max", math.inf)))
    except (TypeError, ValueError) as exc:
        raise SourceError("bad-map", f"{origin}: {name}: {exc}") from exc
    if point.scale == 0 or point.low > point.high:
        raise SourceError("bad-map", f"{origin}: {name}: scale must not be 0 and min <= max")
    return point


def _index(doc: object, key: str, origin: str, where: str) -> int:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise SourceError("bad-map", f"{origin}: {where}.{key} must be a point index 0..65535, got {value!r}")
    return value
