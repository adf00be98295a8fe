"""The relay's buffer of signed-format rows, indexed by sequence number. Pure.

Rows are kept as the exact 108-byte strings the relay signs and serves, each beside its
RFC 6962 leaf hash, so an answer is one slice of bytes and a seal costs only the interior
hashes and one signature. Sequence numbers rise by one per reading, except across a gap
the relay signed (a restart that lost readings): the buffer is a list of *runs*, each of
consecutive sequence numbers, and an answer never spans two runs, so one seal covers it.
The oldest rows are dropped once more than ``capacity`` are held.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from gridchain.consensus.provenance import ROW_SIZE, Reading, unpack_rows


@dataclass(frozen=True, slots=True)
class Slice:
    """Consecutive rows out of the buffer: ``count`` rows from ``first_seq``."""

    first_seq: int
    rows: bytes
    leaves: tuple[bytes, ...]

    @property
    def count(self) -> int:
        return len(self.leaves)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def readings(self) -> tuple[Reading, ...]:
        return unpack_rows(self.rows)


class RowBuffer:
    """Rows by sequence number, oldest dropped past ``capacity``; ``append`` keeps order."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        # One bytearray and one list for every run, with a moving start so trimming the
        # oldest is O(1) amortised; ``_runs`` holds (first_seq, index of its first row).
        self._rows = bytearray()
        self._leaves: list[bytes] = []
        self._runs: list[tuple[int, int]] = []
        self._start = 0

    def __len__(self) -> int:
        return len(self._leaves) - self._start

    @property
    def oldest_seq(self) -> int | None:
        return self._seq_at(self._start) if len(self) else None

    @property
    def newest_seq(self) -> int | None:
        return self._seq_at(len(self._leaves) - 1) if len(self) else None

    def newest(self) -> Reading | None:
        if not len(self):
            return None
        end = len(self._leaves) * ROW_SIZE
        return Reading.from_bytes(bytes(self._rows[end - ROW_SIZE:end]))

    def oldest(self) -> Reading | None:
        if not len(self):
            return None
        at = self._start * ROW_SIZE
        return Reading.from_bytes(bytes(self._rows[at:at + ROW_SIZE]))

    def append(self, seq: int, row: bytes, leaf: bytes) -> None:
        """Add the row of ``seq``: the next after the newest, or the start of a new run."""
        newest = self.newest_seq
        if newest is not None and seq <= newest:
            raise ValueError(f"seq {seq} is not after the newest buffered seq {newest}")
        if newest is None or seq != newest + 1:
            self._runs.append((seq, len(self._leaves)))
        self._rows += row
        self._leaves.append(leaf)
        self._trim()

    def read(self, after_seq: int, limit: int) -> Slice | None:
        """Up to ``limit`` rows from the first buffered seq > ``after_seq``, within one run."""
        if not len(self) or limit < 1:
            return None
        index = self._index_after(after_seq)
        if index is None:
            return None
        run = bisect.bisect_right(self._runs, index, key=lambda r: r[1]) - 1
        run_end = self._runs[run + 1][1] if run + 1 < len(self._runs) else len(self._leaves)
        end = min(run_end, index + limit)
        return Slice(self._seq_at(index), bytes(self._rows[index * ROW_SIZE:end * ROW_SIZE]),
                     tuple(self._leaves[index:end]))

    def rows_from(self, index: int = 0) -> Sequence[tuple[int, bytes]]:
        """(seq, row) of every buffered row, oldest first (for rewriting the journal)."""
        out = []
        for i in range(self._start + index, len(self._leaves)):
            out.append((self._seq_at(i), bytes(self._rows[i * ROW_SIZE:(i + 1) * ROW_SIZE])))
        return out

    def _index_after(self, after_seq: int) -> int | None:
        # The run holding after_seq + 1, else the first run that starts after it.
        runs = self._runs
        run = bisect.bisect_right(runs, after_seq + 1, key=lambda r: r[0]) - 1
        if run >= 0:
            first, at = runs[run]
            end = runs[run + 1][1] if run + 1 < len(runs) else len(self._leaves)
            index = at + (after_seq + 1 - first)
            if index < end:
                return max(index, self._start)
        if run + 1 < len(runs):
            return max(runs[run + 1][1], self._start)
        return None

    def _seq_at(self, index: int) -> int:
        run = bisect.bisect_right(self._runs, index, key=lambda r: r[1]) - 1
        first, at = self._runs[run]
        return first + index - at

    def _trim(self) -> None:
        self._start = max(self._start, len(self._leaves) - self.capacity)
        if self._start < self.capacity:  # compact rarely, so trimming stays O(1) amortised
            return
        drop = self._start
        # Runs that lie wholly before the new start go; the one holding it is rebased.
        runs = []
        for number, (first, at) in enumerate(self._runs):
            end = self._runs[number + 1][1] if number + 1 < len(self._runs) else len(self._leaves)
            if end <= drop:
                continue
            if at < drop:
                first, at = first + drop - at, drop
            runs.append((first, at - drop))
        del self._rows[:drop * ROW_SIZE]
        del self._leaves[:drop]
        self._runs, self._start = runs, 0
