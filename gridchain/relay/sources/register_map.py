"""Modbus register maps: TOML files that say where a relay keeps each value. Pure.

A map names, for each of the ten reading values, its register address, its type (u16,
i16, u32, i32, f32), its scale and offset (engineering value = raw * scale + offset), its
unit, the engineering range the relay can really report (a decoded value outside it is a
`value-out-of-range` error, never a reading) and the raw values the relay uses for "not
available" (recorded as quality invalid). It also says where the breaker-openings counter,
the device identity (ASCII) and, optionally, a device timestamp (u64 ms since the epoch)
and a quality word (two bits per value, READING_VALUES order) live, which table (holding or
input registers) and the word order of 32/64-bit values.

The same map decodes what a client read and encodes what the simulated device serves, so
both ends of a test agree on the map by construction and a wrong map shows as a wrong map.
Shipped maps live in `gridchain/relay/sources/maps/`; an operator copies one and points the
source URL's `map=` at the copy.
"""

from __future__ import annotations

import functools
import math
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gridchain.relay.sources.base import READING_VALUES, Quality, SourceError

# A Modbus read returns at most 125 registers (the 253-byte PDU); spans are cut to fit.
MAX_REGISTERS_PER_READ = 125
# Registers this far apart are read in separate requests rather than reading the gap.
MAX_GAP = 16
TABLES = ("holding", "input")
WORD_ORDERS = ("big", "little")  # big = high word first (Modicon); little = low word first
_TYPES = {  # type -> (registers, struct code)
    "u16": (1, "H"), "i16": (1, "h"), "u32": (2, "I"), "i32": (2, "i"),
    "f32": (2, "f"), "u64": (4, "Q"),
}
_VALUE_TYPES = ("u16", "i16", "u32", "i32", "f32")
_UNPACK = {name: struct.Struct(">" + code) for name, (_, code) in _TYPES.items()}
_WORDS = {count: struct.Struct(f">{count}H") for count, _ in _TYPES.values()}


@dataclass(frozen=True, slots=True)
class Register:
    """One value's place and meaning in the register space."""

    name: str
    address: int
    type: str
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    low: float = -math.inf
    high: float = math.inf
    invalid: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return _TYPES[self.type][0]


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A whole map: the value registers plus openings, identity, timestamp and quality."""

    name: str
    table: str
    word_order: str
    values: tuple[Register, ...]  # READING_VALUES order
    openings: Register
    identity_address: int
    identity_registers: int
    timestamp: Register | None = None
    quality: Register | None = None

    # --- reading ----------------------------------------------------------------

    def regions(self) -> list[tuple[int, int]]:
        """Every (address, count) the map uses."""
        used = [(r.address, r.count) for r in self._registers()]
        return used + [(self.identity_address, self.identity_registers)]

    def spans(self) -> list[tuple[int, int]]:
        """The reads one poll makes: (start, count), merged across small gaps, <= 125 each."""
        spans: list[list[int]] = []
        for start, count in sorted(self.regions()):
            end = start + count
            if spans and start <= spans[-1][1] + MAX_GAP and end - spans[-1][0] <= MAX_REGISTERS_PER_READ:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        return [(start, end - start) for start, end in spans]

    def decode(self, registers: Mapping[int, int]) -> tuple[tuple[float, ...], tuple[Quality, ...], int,
                                                          int | None, str]:
        """(values, quality, openings, timestamp_ms, identity) from register contents."""
        values, quality = [], []
        device_quality = self._device_quality(registers)
        for register, reported in zip(self.values, device_quality):
            raw = self._raw(register, registers)
            if (register.invalid and raw in register.invalid) or (isinstance(raw, float) and math.isnan(raw)):
                values.append(0.0)
                quality.append(Quality.INVALID)
                continue
            value = _engineering(register, raw)
            if reported is not Quality.INVALID and not register.low <= value <= register.high:
                raise SourceError("value-out-of-range",
                                  f"{register.name} = {value:g} {register.unit} outside "
                                  f"[{register.low:g}, {register.high:g}] (register {register.address})")
            values.append(float(value))
            quality.append(reported)
        openings = int(self._raw(self.openings, registers))
        stamp = int(self._raw(self.timestamp, registers)) if self.timestamp else None
        return tuple(values), tuple(quality), openings, stamp, self._identity(registers)

    def _device_quality(self, registers: Mapping[int, int]) -> list[Quality]:
        if self.quality is None:
            return [Quality.GOOD] * len(READING_VALUES)
        word = int(self._raw(self.quality, registers))
        codes = [(word >> (2 * i)) & 0b11 for i in range(len(READING_VALUES))]
        if 3 in codes or word >> (2 * len(READING_VALUES)):
            raise SourceError("value-out-of-range", f"quality word {word:#x} has reserved bits set")
        return [Quality(code) for code in codes]

    def _raw(self, register: Register, registers: Mapping[int, int]) -> int | float:
        if register.type == "u16":  # the common case, and a poll decodes a dozen of them
            return registers[register.address]
        words = [registers[register.address + i] for i in range(register.count)]
        if self.word_order == "little":
            words.reverse()
        (raw,) = _UNPACK[register.type].unpack(_WORDS[len(words)].pack(*words))
        return raw

    def _identity(self, registers: Mapping[int, int]) -> str:
        start, count = self.identity_address, self.identity_registers
        raw = struct.pack(f">{count}H", *(registers[a] for a in range(start, start + count)))
        return raw.rstrip(b"\x00 ").decode("ascii", errors="replace")

    def _registers(self) -> list[Register]:
        return [r for r in (*self.values, self.openings, self.timestamp, self.quality) if r is not None]

    # --- serving (the simulated device) -------------------------------------------

    def encode(self, values: tuple[float, ...], quality: tuple[Quality, ...], openings: int,
               timestamp_ms: int | None, identity: str) -> dict[int, int]:
        """Register contents that decode to these values (integers clamped to their type)."""
        out: dict[int, int] = {}
        word = 0
        for index, (register, value, q) in enumerate(zip(self.values, values, quality)):
            sentinel = q is Quality.INVALID and bool(register.invalid)
            if sentinel:
                raw: int | float = register.invalid[0]
            elif q is Quality.INVALID and register.type == "f32":
                raw = math.nan
            else:
                raw = (value - register.offset) / register.scale
            self._put(out, register, raw, sentinel=sentinel)
            word |= int(q) << (2 * index)
        self._put(out, self.openings, openings)
        if self.timestamp is not None:
            self._put(out, self.timestamp, timestamp_ms or 0)
        if self.quality is not None:
            self._put(out, self.quality, word)
        text = identity.encode("ascii", errors="replace")[: 2 * self.identity_registers]
        text = text.ljust(2 * self.identity_registers, b"\x00")
        for i in range(self.identity_registers):
            out[self.identity_address + i] = int.from_bytes(text[2 * i: 2 * i + 2], "big")
        return out

    def _put(self, out: dict[int, int], register: Register, raw: int | float, *,
             sentinel: bool = False) -> None:
        code = _TYPES[register.type][1]
        if code != "f":
            bits = 16 * register.count
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)
            raw = min(high, max(low, round(raw)))
            if raw in register.invalid and not sentinel:
                raw = raw - 1 if raw > low else raw + 1  # a real value never reads as "not available"
        words = list(struct.unpack(f">{register.count}H", struct.pack(">" + code, raw)))
        if self.word_order == "little":
            words.reverse()
        for i, w in enumerate(words):
            out[register.address + i] = w


# --- loading ------------------------------------------------------------------------


def _engineering(register: Register, raw: int | float) -> float:
    """raw * scale + offset, without the binary noise the register's resolution cannot carry."""
    if register.type == "f32":
        raw = _shortest_float32(float(raw))
        return raw if register.scale == 1 and register.offset == 0 else raw * register.scale + register.offset
    return round(raw * register.scale + register.offset, _digits(register.scale))


@functools.lru_cache(maxsize=256)
def _digits(scale: float) -> int:
    return max(0, -math.floor(math.log10(abs(scale)))) + 3  # a scale such as 0.05 keeps its 5


def _shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32 (115.1, not 115.0999984741211)."""
    packed = struct.pack(">f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def shipped_maps() -> list[str]:
    """Names of the maps shipped with gridchain (usable as `map=NAME`)."""
    folder = resources.files("gridchain.relay.sources") / "maps"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml")
                  and not p.name.startswith("dnp3"))


def load_register_map(name_or_path: str) -> RegisterMap:
    """A shipped map by name (`sel751`, `float32`) or an operator's TOML file by path."""
    return parse_register_map(_map_text(name_or_path, shipped_maps()), name_or_path)


def _map_text(name_or_path: str, shipped: list[str]) -> str:
    if name_or_path in shipped:
        folder = resources.files("gridchain.relay.sources") / "maps"
        return (folder / f"{name_or_path}.toml").read_text()
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path.read_text()
    raise SourceError("unknown-map", f"{name_or_path!r} is neither a shipped map ({', '.join(shipped)}) "
                                     f"nor a .toml file")


def parse_register_map(text: str, origin: str = "<map>") -> RegisterMap:
    """Parse and check a map; a mistake is a `bad-map` error naming the field."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourceError("bad-map", f"{origin}: {exc}") from exc
    device = _table(doc, "device", origin)
    table = device.get("table", "holding")
    word_order = device.get("word_order", "big")
    if table not in TABLES:
        raise SourceError("bad-map", f"{origin}: device.table must be one of {TABLES}, got {table!r}")
    if word_order not in WORD_ORDERS:
        raise SourceError("bad-map", f"{origin}: device.word_order must be one of {WORD_ORDERS}")
    values_doc = _table(doc, "values", origin)
    missing = [n for n in READING_VALUES if n not in values_doc]
    extra = sorted(set(values_doc) - set(READING_VALUES))
    if missing or extra:
        raise SourceError("bad-map", f"{origin}: values must be exactly {READING_VALUES}; "
                                     f"missing {missing}, unknown {extra}")
    values = tuple(_register(n, values_doc[n], origin, _VALUE_TYPES) for n in READING_VALUES)
    identity = _table(doc, "identity", origin)
    optional = {key: _register(key, doc[key], origin, ("u16", "u32", "u64"))
                for key in ("timestamp", "quality") if key in doc}
    result = RegisterMap(
        name=str(device.get("name", origin)), table=table, word_order=word_order, values=values,
        openings=_register("openings", _table(doc, "openings", origin), origin, ("u16", "u32")),
        identity_address=_int(identity, "address", origin, "identity"),
        identity_registers=_int(identity, "registers", origin, "identity"), **optional)
    _check_overlaps(result, origin)
    return result


def _table(doc: dict, key: str, origin: str) -> dict:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise SourceError("bad-map", f"{origin}: missing table [{key}]")
    return value


def _int(doc: dict, key: str, origin: str, where: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise SourceError("bad-map", f"{origin}: {where}.{key} must be an integer 0..65535, got {value!r}")
    return value


def _register(name: str, doc: dict, origin: str, types: tuple[str, ...]) -> Register:
    kind = doc.get("type")
    if kind not in types:
        raise SourceError("bad-map", f"{origin}: {name}.type must be one of {types}, got {kind!r}")
    try:
        scale, offset = float(doc.get("scale", 1.0)), float(doc.get("offset", 0.0))
        low, high = float(doc.get("min", -math.inf)), float(doc.get("max", math.inf))
        invalid = tuple(int(v) for v in doc.get("invalid", ()))
    except (TypeError, ValueError) as exc:
        raise SourceError("bad-map", f"{origin}: {name}: {exc}") from exc
    if scale == 0 or low > high:
        raise SourceError("bad-map", f"{origin}: {name}: scale must not be 0 and min <= max")
    return Register(name, _int(doc, "address", origin, name), kind, scale, offset,
                    str(doc.get("unit", "")), low, high, invalid)


def _check_overlaps(regmap: RegisterMap, origin: str) -> None:
    owner: dict[int, str] = {}
    named = [(r.name, r.address, r.count) for r in regmap._registers()]
    named.append(("identity", regmap.identity_address, regmap.identity_registers))
    for name, start, count in named:
        for address in range(start, start + count):
            if address in owner:
                raise SourceError("bad-map", f"{origin}: {name} overlaps {owner[address]} at register {address}")
            owner[address] = name
