"""How the client writes: aligned tables for people, JSON for scripts, progress on stderr.

Times are shown as ISO-8601 UTC and hashes as 12 hex digits (``short_hash``) in tables, and
in full in JSON. Tables that may be long are written row by row with fixed column widths,
so output starts at once and nothing accumulates in memory.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TextIO

# Progress lines are redrawn at most this often, so a fast export is not slowed by them.
PROGRESS_EVERY_S = 0.2


def iso_ms(ms: int | None) -> str:
    """``2026-11-26T13:45:00.000Z`` for milliseconds since the epoch ("-" for None)."""
    if ms is None:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# Units of a relative time (``1h``, ``30m``, ``1h30m``, ``2d``), as journalctl and kubectl take them.
RELATIVE_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def relative_ms(text: str) -> int | None:
    """``1h`` -> 3,600,000; ``1h30m``, ``-2d`` and ``90s ago`` too; None when not a relative time."""
    text = text.strip().lower().removesuffix("ago").strip().removeprefix("-")
    if not text or _RELATIVE.sub("", text):
        return None
    return round(sum(float(n) * RELATIVE_UNITS_MS[unit] for n, unit in _RELATIVE.findall(text)))


def parse_time_ms(text: str, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch from an integer, an ISO-8601 time (UTC when no zone), ``now``
    or a time ago (``1h``, ``30m``, ``2d``, ``90s``: before ``now_ms``, default the clock)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    ago = 0 if text.lower() == "now" else relative_ms(text)
    if ago is not None:
        return (round(time.time() * 1000) if now_ms is None else now_ms) - ago
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither milliseconds, an ISO-8601 time such as 2026-11-26T13:45:00Z "
                         "nor a time ago such as 1h, 30m, 2d or 90s") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(moment.timestamp() * 1000)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 reading``, ``2 readings``, ``1,000 readings``: a count with its noun agreeing."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def duration(seconds: float) -> str:
    """``3d 04h``, ``1h 02m``, ``2m 05s`` or ``4.2s``: two units are enough for an uptime."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def to_jsonable(value: object) -> object:
    """Bytes as hex and tuples as lists, recursively: what ``json.dumps`` needs."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return value


def dumps(value: object, pretty: bool = False) -> str:
    return json.dumps(to_jsonable(value), indent=2 if pretty else None,
                      separators=None if pretty else (",", ":"), ensure_ascii=False)


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its title, width, alignment and how a row's value becomes text."""

    title: str
    width: int
    get: Callable[[object], object]
    right: bool = False

    def cell(self, row: object) -> str:
        text = str(self.get(row))
        return text.rjust(self.width) if self.right else text.ljust(self.width)


class StreamTable:
    """Writes a header line, then each row as it comes, in fixed-width columns."""

    def __init__(self, columns: Sequence[Column], out: TextIO, indent: str = "") -> None:
        self.columns = columns
        self.out = out
        self.indent = indent
        self._started = False

    def _line(self, cells: Iterable[str]) -> None:
        self.out.write(self.indent + "  ".join(cells).rstrip() + "\n")

    def header(self) -> None:
        if not self._started:
            self._started = True
            self._line(c.title.rjust(c.width) if c.right else c.title.ljust(c.width) for c in self.columns)

    def rows(self, rows: Iterable[object]) -> None:
        self.header()
        for row in rows:
            self._line(c.cell(row) for c in self.columns)


def table(columns: Sequence[Column], rows: Sequence[object], out: TextIO, indent: str = "") -> None:
    """A table whose columns are widened to fit every row (for short lists)."""
    fitted = [Column(c.title, max([len(c.title)] + [len(str(c.get(r))) for r in rows]), c.get, c.right)
              for c in columns]
    StreamTable(fitted, out, indent).rows(rows)


class Progress:
    """A one-line counter redrawn on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = is_tty(self.stream) if enabled is None else enabled
        self.label = label
        self.started = time.monotonic()
        self._last = 0.0
        self._width = 0

    def update(self, done: int, total: int | None = None, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        rate = done / max(now - self.started, 1e-6)
        of = f"/{total:,}" if total else ""
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        text = f"{self.label}: {done:,}{of}{pct}, {rate:,.0f}/s"
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
