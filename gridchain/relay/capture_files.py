"""The prototype's plain-text capture files: one per minute, formatted, parsed and written.

A file is named for its minute (``CAPTURE_2026-11-26_1745.txt``) and reads::

    26 11 2026 17 45
    Relay 1
    Bogota Electrical Substation - U.D.
    Openings caused by faults: 22
    Time Stamp;26 11 2026 17 45 08;Vab;115.314;Vbc;116.048;...;P;236.887;Q;57.743;Seq;1042
    ...

Each record ends with the reading's relay sequence number (``Seq``), so a file can be lined
up with the chain; the header's openings count is that of the newest reading in the file.
The files are a convenience copy for people, not evidence: they carry no signature, quality
flags or per-reading counter (a parsed reading gets the header's count and good quality,
and seq 0 when the record has none, as in the prototype's files). Times are UTC (the prototype used local time; a ledger shared across parties needs one clock)
and have whole seconds, so milliseconds are lost in a file. The parser also accepts the
prototype's own files: a float openings count ("22.0"), blank lines, and records separated by
spaces instead of newlines. Formatting and parsing are pure; ``CaptureFileWriter`` does the I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gridchain.consensus.provenance import VALUE_FIELDS, Reading

MINUTE_MS = 60_000
FILE_PREFIX, FILE_SUFFIX = "CAPTURE_", ".txt"
OPENINGS_LABEL = "Openings caused by faults:"
RECORD_LABEL = "Time Stamp;"
SEQ_LABEL = "Seq"
# The prototype's labels, in VALUE_FIELDS order.
LABELS = ("Vab", "Vbc", "Vca", "Ia", "Ib", "Ic", "F", "FP", "P", "Q")
assert len(LABELS) == len(VALUE_FIELDS)

_RECORD = re.compile(
    r"(\d\d) (\d\d) (\d{4}) (\d\d) (\d\d) (\d\d)"
    + "".join(rf";{label};([^;\s]+)" for label in LABELS)
    + rf"(?:;{SEQ_LABEL};(\d+))?"
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


def format_record(reading: Reading) -> str:
    """One reading as a record line, its sequence number last."""
    fields = ";".join(f"{label};{_number(value)}" for label, value in zip(LABELS, reading.values()))
    return f"{RECORD_LABEL}{_utc(reading.timestamp_ms):%d %m %Y %H %M %S};{fields};{SEQ_LABEL};{reading.seq}"


def format_header(minute_ms: int, relay_id: str, substation: str, openings: int) -> str:
    return f"{_utc(minute_ms):%d %m %Y %H %M}\n{relay_id}\n{substation}\n{OPENINGS_LABEL} {openings}\n"


def format_capture_file(minute_ms: int, relay_id: str, substation: str, openings: int,
                        readings: Iterable[Reading]) -> str:
    records = "".join(format_record(reading) + "\n" for reading in readings)
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
    readings = tuple(_parse_record(record.strip(), number, openings) for number, record in enumerate(records, 1))
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
        self._openings = 0  # the newest reading's count: the header of the file being written

    def write(self, readings: Iterable[Reading]) -> list[Path]:
        """Add readings (oldest first) and return the files that were (re)written."""
        touched: dict[int, None] = {}
        for reading in readings:
            minute_ms = minute_of(reading.timestamp_ms)
            if minute_ms != self._minute_ms:
                if self._minute_ms is not None and self._minute_ms in touched:
                    self._flush()
                self._minute_ms, self._records = minute_ms, []
            self._records.append(format_record(reading) + "\n")
            self._openings = reading.openings
            touched[minute_ms] = None
        if self._minute_ms in touched:
            self._flush()
        return [self.directory / file_name(minute) for minute in touched]

    def _flush(self) -> None:
        assert self._minute_ms is not None
        path = self.directory / file_name(self._minute_ms)
        text = format_header(self._minute_ms, self.relay_id, self.substation, self._openings)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text + "".join(self._records), encoding="utf-8")
        os.replace(temporary, path)


def _parse_record(record: str, number: int, openings: int) -> Reading:
    match = _RECORD.fullmatch(record)
    if match is None:
        raise CaptureFormatError(f"record {number}: not 'DD MM YYYY HH MM SS;Vab;...;Q;...[;Seq;N]': {record[:60]!r}")
    groups = match.groups()
    day, month, year, hour, minute, second = (int(part) for part in groups[:6])
    try:
        values = [float(text) for text in groups[6:16]]
    except ValueError as exc:
        raise CaptureFormatError(f"record {number}: {exc}") from None
    seq = int(groups[16]) if groups[16] is not None else 0
    if seq >= 2**64:
        raise CaptureFormatError(f"record {number}: seq {groups[16][:30]} is beyond 64 bits")
    return Reading(seq, _epoch_ms(year, month, day, hour, minute, second), openings, 0, *values)


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
