"""The prototype's plain-text capture files: one per minute, formatted, parsed and written.

A file is named for its minute (``CAPTURE_2026-11-26_1745.txt``) and reads::

    26 11 2026 17 45
    Relay 1
    Bogota Electrical Substation - U.D.
    Openings caused by faults: 22
    Time Stamp;26 11 2026 17 45 08;Vab;115.314;Vbc;116.048;...;P;236.887;Q;57.743
    ...

Times are UTC (the prototype used local time; a ledger shared across parties needs one clock)
and have whole seconds, so milliseconds are lost in a file. The parser also accepts the
prototype's own files: a float openings count ("22.0"), blank lines, and records separated by
spaces instead of newlines. Formatting and parsing are pure; ``CaptureFileWriter`` does the I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gridchain.consensus.block import READING_FIELDS, Reading

MINUTE_MS = 60_000
FILE_PREFIX, FILE_SUFFIX = "CAPTURE_", ".txt"
OPENINGS_LABEL = "Openings caused by faults:"
RECORD_LABEL = "Time Stamp;"
# The prototype's labels, in READING_FIELDS order after the timestamp.
LABELS = ("Vab", "Vbc", "Vca", "Ia", "Ib", "Ic", "F", "FP", "P", "Q")
assert len(LABELS) == len(READING_FIELDS) - 1

_RECORD = re.compile(
    r"(\d\d) (\d\d) (\d{4}) (\d\d) (\d\d) (\d\d)"
    + "".join(rf";{label};([^;\s]+)" for label in LABELS)
)
_MINUTE = re.compile(r"(\d\d) (\d\d) (\d{4}) (\d\d) (\d\d)")


class CaptureFormatError(ValueError):
    """Text that is not a capture file; the message says where."""


@dataclass(frozen=True, slots=True)
class CaptureFile:
    """The contents of one capture file (timestamps in ms, whole seconds)."""

    minute_ms: int
    relay_id: str
    substation: str
    openings: int
    readings: tuple[Reading, ...]


def minute_of(timestamp_ms: int) -> int:
    return timestamp_ms - timestamp_ms % MINUTE_MS


def file_name(minute_ms: int) -> str:
    return f"{FILE_PREFIX}{_utc(minute_ms):%Y-%m-%d_%H%M}{FILE_SUFFIX}"


def format_record(row: Sequence) -> str:
    """One reading (a Reading's fields or a wire row, timestamp first) as a record line."""
    fields = ";".join(f"{label};{_number(value)}" for label, value in zip(LABELS, row[1:]))
    return f"{RECORD_LABEL}{_utc(row[0]):%d %m %Y %H %M %S};{fields}"


def format_header(minute_ms: int, relay_id: str, substation: str, openings: int) -> str:
    return f"{_utc(minute_ms):%d %m %Y %H %M}\n{relay_id}\n{substation}\n{OPENINGS_LABEL} {openings}\n"


def format_capture_file(minute_ms: int, relay_id: str, substation: str, openings: int,
                        rows: Iterable[Sequence]) -> str:
    records = "".join(format_record(row) + "\n" for row in rows)
    return format_header(minute_ms, relay_id, substation, openings) + records


def parse_capture_file(text: str) -> CaptureFile:
    lines = text.splitlines()
    if len(lines) < 3:
        raise CaptureFormatError("a capture file starts with date, relay and substation lines")
    minute = _MINUTE.fullmatch(lines[0].strip())
    if minute is None:
        raise CaptureFormatError(f"line 1: expected 'DD MM YYYY HH MM', got {lines[0][:40]!r}")
    day, month, year, hour, mins = (int(part) for part in minute.groups())
    minute_ms = _epoch_ms(year, month, day, hour, mins, 0)
    rest = "\n".join(lines[3:]).strip()
    if not rest.startswith(OPENINGS_LABEL):
        raise CaptureFormatError(f"expected {OPENINGS_LABEL!r} after the substation line")
    openings_text, found, body = rest[len(OPENINGS_LABEL):].partition(RECORD_LABEL)
    openings = _openings(openings_text.strip())
    records = body.split(RECORD_LABEL) if found else []
    readings = tuple(_parse_record(record.strip(), number) for number, record in enumerate(records, 1))
    return CaptureFile(minute_ms, lines[1].strip(), lines[2].strip(), openings, readings)


def read_capture_file(path: str | os.PathLike) -> CaptureFile:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # the prototype wrote with the platform's default encoding
    return parse_capture_file(text)


class CaptureFileWriter:
    """Keeps the current minute's file up to date in ``directory`` as readings arrive.

    Each write rewrites the minute's file through a temporary file and ``os.replace``, so a
    reader never sees half a file and the header's openings count is that of the newest write.
    """

    def __init__(self, directory: str | os.PathLike, relay_id: str, substation: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.relay_id, self.substation = relay_id, substation
        self._minute_ms: int | None = None
        self._records: list[str] = []

    def write(self, rows: Iterable[Sequence], openings: int) -> list[Path]:
        """Add readings (oldest first) and return the files that were (re)written."""
        touched: dict[int, None] = {}
        for row in rows:
            minute_ms = minute_of(row[0])
            if minute_ms != self._minute_ms:
                if self._minute_ms is not None and self._minute_ms in touched:
                    self._flush(openings)
                self._minute_ms, self._records = minute_ms, []
            self._records.append(format_record(row) + "\n")
            touched[minute_ms] = None
        if self._minute_ms in touched:
            self._flush(openings)
        return [self.directory / file_name(minute) for minute in touched]

    def _flush(self, openings: int) -> None:
        assert self._minute_ms is not None
        path = self.directory / file_name(self._minute_ms)
        text = format_header(self._minute_ms, self.relay_id, self.substation, openings)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text + "".join(self._records), encoding="utf-8")
        os.replace(temporary, path)


def _parse_record(record: str, number: int) -> Reading:
    match = _RECORD.fullmatch(record)
    if match is None:
        raise CaptureFormatError(f"record {number}: not 'DD MM YYYY HH MM SS;Vab;...;Q;...': {record[:60]!r}")
    day, month, year, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        values = [float(text) for text in match.groups()[6:]]
    except ValueError as exc:
        raise CaptureFormatError(f"record {number}: {exc}") from None
    return Reading(_epoch_ms(year, month, day, hour, minute, second), *values)


def _openings(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise CaptureFormatError(f"openings count {text[:20]!r} is not a number") from None
    if not value.is_integer() or value < 0:
        raise CaptureFormatError(f"openings count {text[:20]!r} is not a non-negative whole number")
    return int(value)


def _epoch_ms(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError as exc:
        raise CaptureFormatError(f"bad date or time: {exc}") from None
    return int(moment.timestamp()) * 1000


def _utc(timestamp_ms: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ms // 1000, tz=timezone.utc)


def _number(value: float) -> str:
    return repr(round(float(value), 3))  # the prototype's style: 110.69, 115.314
