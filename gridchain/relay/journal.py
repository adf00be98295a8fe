"""The relay's durable memory: a journal of its rows and a state file, and what a boot does.

Two files in the relay's data dir:

``relay.journal`` — append-only. An 8-byte magic ``GCRJNL01`` then records, each a tag byte,
a body and the CRC-32 of tag and body (u32, big-endian):
  ``R`` + one 108-byte reading row                          (113 bytes)
  ``G`` + resume_seq u64 + boot_ms i64 + signature 64 bytes (85 bytes): a signed gap notice
Rows follow one another with seq + 1, except that the row after a ``G`` record carries its
resume_seq. New rows are written and fsync'd *before* the relay serves them, so whatever a
node may have seen is on disk. When the journal holds more than twice the buffer, it is
rewritten with the buffer's rows (temporary file, fsync, rename): its size stays bounded by
two buffers, 24 h of readings each.

``relay.state`` — small JSON, replaced atomically: the relay id, ``next_seq`` as of the last
write, ``reserved_seq`` (a seq the relay has not used and will not use before raising it
durably) and ``clean`` (true only after an orderly shutdown).

At boot, ``plan_boot`` (pure) decides: a brand-new relay starts at seq 1; a relay whose state
and journal agree resumes right after its last row with its buffer, no gap; anything else
(a journal damaged or missing, a state file lost) resumes beyond any seq it can have used —
the reserved mark, or the clock when the state is gone — and the relay signs a gap notice.
A damaged journal tail is cut at the last good record with a ``relay.journal_damaged``
warning; it never stops the relay.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gridchain.consensus.errors import GridchainError
from gridchain.consensus.provenance import MAX_SEQ, ROW_SIZE, GapNotice

JOURNAL_FILE = "relay.journal"
STATE_FILE = "relay.state"
MAGIC = b"GCRJNL01"
ROW_TAG, GAP_TAG = b"R", b"G"
_CRC = struct.Struct(">I")
_GAP = struct.Struct(">Qq64s")
ROW_RECORD = 1 + ROW_SIZE + _CRC.size  # 113
GAP_RECORD = 1 + _GAP.size + _CRC.size  # 85
# The reserved mark runs this far ahead of the newest seq: one durable state write per this
# many readings (a day at 10 s), and the most a gap after a lost journal skips.
RESERVE_AHEAD = 8640
# With the state file gone, the relay resumes at the clock in microseconds: a relay makes at
# most ten readings a second (relay.server.MIN_INTERVAL_S), a million times slower than that
# clock runs, so it stays above every seq used before unless the clock went back by more
# than the whole time since the last clock resume.
CLOCK_SEQ_PER_MS = 1000
STATE_VERSION = 1
MAX_STATE_BYTES = 4096  # a state file is ~150 bytes

log = structlog.get_logger()


class RelayStateError(GridchainError):
    """The relay's data dir cannot be used (wrong relay, unwritable); the relay does not start."""


@dataclass(frozen=True, slots=True)
class RelayState:
    """What ``relay.state`` says."""

    relay_id: str
    next_seq: int
    reserved_seq: int
    clean: bool

    def encode(self) -> bytes:
        return json.dumps({"version": STATE_VERSION, "relay_id": self.relay_id, "next_seq": self.next_seq,
                           "reserved_seq": self.reserved_seq, "clean": self.clean}).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> RelayState:
        """Raise ValueError for anything that is not a state this version wrote."""
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("version") != STATE_VERSION:
            raise ValueError("not a version 1 relay state")
        relay_id, next_seq, reserved, clean = (obj.get(k) for k in ("relay_id", "next_seq", "reserved_seq", "clean"))
        if not isinstance(relay_id, str) or type(clean) is not bool:
            raise ValueError("relay_id or clean of the wrong type")
        for value in (next_seq, reserved):
            if type(value) is not int or not 1 <= value <= MAX_SEQ:
                raise ValueError("next_seq or reserved_seq out of range")
        if reserved < next_seq:
            raise ValueError("reserved_seq below next_seq")
        return cls(relay_id, next_seq, reserved, clean)


@dataclass(slots=True)
class JournalContents:
    """What a journal held when it was opened: its good rows and its newest gap notice."""

    exists: bool = False
    rows: list[tuple[int, bytes]] = field(default_factory=list)  # (seq, row), oldest first
    gap: GapNotice | None = None
    damage: str | None = None  # why the tail was cut; None when every byte was good
    good_bytes: int = len(MAGIC)  # where the good part ends
    pending_resume: int | None = None  # a gap record's resume_seq with no row after it yet

    @property
    def last_seq(self) -> int | None:
        return self.rows[-1][0] if self.rows else None

    @property
    def next_seq(self) -> int | None:
        """The seq the journal's next row must carry (None: an empty journal)."""
        if self.pending_resume is not None:
            return self.pending_resume
        return self.last_seq + 1 if self.rows else None


def parse_journal(data: bytes) -> JournalContents:
    """Every good record up to the first bad one (pure; ``damage`` names the first bad one)."""
    contents = JournalContents(exists=True)
    if not data.startswith(MAGIC):
        contents.good_bytes = 0
        contents.damage = "bad-magic" if data else None
        return contents
    at, size = len(MAGIC), len(data)
    previous: int | None = None
    resume: int | None = None  # the row after a gap record must carry its resume_seq
    while at < size:
        tag = data[at:at + 1]
        length = ROW_RECORD if tag == ROW_TAG else GAP_RECORD if tag == GAP_TAG else None
        if length is None:
            contents.damage = f"unknown record tag at byte {at}"
            break
        if at + length > size:
            contents.damage = f"record cut short at byte {at} ({size - at} of {length} bytes)"
            break
        body = data[at:at + length - _CRC.size]
        if zlib.crc32(body) != _CRC.unpack_from(data, at + length - _CRC.size)[0]:
            contents.damage = f"checksum mismatch in the record at byte {at}"
            break
        if tag == GAP_TAG:
            resume_seq, boot_ms, signature = _GAP.unpack_from(body, 1)
            if previous is not None and resume_seq <= previous + 1:
                contents.damage = f"gap record at byte {at} resumes at {resume_seq} after seq {previous}"
                break
            contents.gap, resume = GapNotice(resume_seq, boot_ms, signature), resume_seq
        else:
            seq = struct.unpack_from(">Q", body, 1)[0]
            due = resume if resume is not None else (previous + 1 if previous is not None else None)
            if due is not None and seq != due:
                contents.damage = f"row at byte {at} has seq {seq} where {due} was due"
                break
            contents.rows.append((seq, bytes(body[1:])))
            previous, resume = seq, None
        at += length
    contents.good_bytes = at
    contents.pending_resume = resume
    return contents


def row_record(row: bytes) -> bytes:
    body = ROW_TAG + row
    return body + _CRC.pack(zlib.crc32(body))


def gap_record(notice: GapNotice) -> bytes:
    body = GAP_TAG + _GAP.pack(notice.resume_seq, notice.boot_ms, notice.signature)
    return body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True, slots=True)
class BootPlan:
    """Where a booting relay's sequence resumes, and whether it must sign a gap notice."""

    next_seq: int
    gap: bool
    why: str  # fresh, continued, journal-damaged, journal-missing, state-missing, state-damaged, inconsistent


def plan_boot(state: RelayState | None, state_damaged: bool, journal: JournalContents, key_created: bool,
              now_ms: int) -> BootPlan:
    """Decide where the sequence resumes (pure; see the module docstring)."""
    if state is None and not state_damaged and not journal.exists and key_created:
        return BootPlan(1, False, "fresh")
    if state is None:
        why = "state-damaged" if state_damaged else "state-missing"
        floor = max(now_ms * CLOCK_SEQ_PER_MS, (journal.next_seq or 0) + 1)
        return BootPlan(floor, True, why)
    following = journal.next_seq
    floor = max(state.reserved_seq, (following or 0) + 1, 2)
    if journal.damage is not None:
        return BootPlan(floor, True, "journal-damaged")
    if following is None:
        if not journal.exists and state.next_seq > 1:
            return BootPlan(floor, True, "journal-missing")
        return BootPlan(state.next_seq, False, "continued")
    # Rows are on disk before they are served, so an intact journal names the newest seq any
    # node can hold, clean shutdown or not; a clean state must agree with it exactly.
    if following > state.reserved_seq or (state.clean and state.next_seq != following):
        return BootPlan(floor, True, "inconsistent")
    return BootPlan(following, False, "continued")


class Journal:
    """The two files in ``data_dir``; every write is durable when the call returns."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.directory = Path(data_dir)
        self.path = self.directory / JOURNAL_FILE
        self.state_path = self.directory / STATE_FILE
        self.records = 0  # records in the journal file now (for deciding when to compact)
        self._file = None

    def open(self) -> tuple[RelayState | None, bool, JournalContents]:
        """Read state and journal, cut a damaged tail; (state, state_damaged, contents)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RelayStateError("data-dir-unusable", f"{self.directory}: {exc.strerror or exc}") from None
        state, state_damaged = self._read_state()
        contents = JournalContents()
        if self.path.exists():
            contents = parse_journal(self.path.read_bytes())
            if contents.damage is not None:
                log.warning("relay.journal_damaged", path=str(self.path), damage=contents.damage,
                            kept_rows=len(contents.rows), cut_at=contents.good_bytes)
                self._cut(contents.good_bytes)
        self.records = len(contents.rows) + (contents.gap is not None)
        self._file = self.path.open("ab")
        if self._file.tell() == 0:
            self._file.write(MAGIC)
            self._sync()
        return state, state_damaged, contents

    def append(self, rows: Iterable[bytes] = (), gap: GapNotice | None = None) -> None:
        """Write a gap notice (if any) then rows, and fsync before returning."""
        records = ([gap_record(gap)] if gap is not None else []) + [row_record(r) for r in rows]
        if not records:
            return
        assert self._file is not None, "open() the journal first"
        self._file.write(b"".join(records))
        self._sync()
        self.records += len(records)

    def rewrite(self, rows: Iterable[tuple[int, bytes]], gap: GapNotice | None) -> None:
        """Replace the journal by ``rows`` (oldest first) with ``gap`` before its resume row."""
        temp = self.path.with_name(self.path.name + ".tmp")
        count = 0
        with temp.open("wb") as handle:
            handle.write(MAGIC)
            placed = gap is None
            for seq, row in rows:
                if not placed and seq >= gap.resume_seq:
                    handle.write(gap_record(gap))
                    placed, count = True, count + 1
                handle.write(row_record(row))
                count += 1
            if not placed:
                handle.write(gap_record(gap))
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        if self._file is not None:
            self._file.close()
        os.replace(temp, self.path)
        _fsync_dir(self.directory)
        self._file = self.path.open("ab")
        self.records = count

    def write_state(self, state: RelayState) -> None:
        temp = self.state_path.with_name(self.state_path.name + ".tmp")
        with temp.open("wb") as handle:
            handle.write(state.encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.state_path)
        _fsync_dir(self.directory)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._sync()
            self._file.close()
            self._file = None

    def _read_state(self) -> tuple[RelayState | None, bool]:
        try:
            with self.state_path.open("rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None, False
        except OSError as exc:
            raise RelayStateError("data-dir-unusable", f"{self.state_path}: {exc.strerror or exc}") from None
        try:
            if len(data) > MAX_STATE_BYTES:
                raise ValueError("too large")
            return RelayState.decode(data), False
        except ValueError as exc:
            log.warning("relay.state_damaged", path=str(self.state_path), error=str(exc)[:200])
            return None, True

    def _cut(self, good_bytes: int) -> None:
        with self.path.open("r+b") as handle:
            handle.truncate(good_bytes)
            handle.flush()
            os.fsync(handle.fileno())

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
