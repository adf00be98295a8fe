"""One relay's readings over a time range as columns for plotting, kept in step with the tip.

The page plots a day at 10 s (8,640 readings x 10 series). Rows come from the node's
readings query (``NodeView.readings_page``, the store's keyset pages) once per relay and
range start, into a ``RelaySeries``: one float64 array per column, sorted by time. After
that the series follows the chain from the blocks the node publishes (``follow``): a
block's readings are appended, a reorg drops the rows above the fork first; a series
whose tip is not the node's (a change it was not told of) is read again. A range is then a
bisect and a slice, so an answer costs milliseconds however often the page asks.

Two encodings of the same answer: JSON (``{"columns": {name: [...]}}``, the default) and
``f64``, what the page uses: one line of JSON (the same fields without the columns, padded
so the data starts 8-byte aligned) and then each column as ``count`` little-endian float64,
in ``COLUMNS`` order, which the browser maps straight into Float64Arrays. Encoding 86,400
floats as JSON text costs ~50 ms of the event loop; the binary form well under one.
"""

from __future__ import annotations

import array
import bisect
import json
import operator
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from gridchain.consensus.block import Block
from gridchain.consensus.provenance import VALUE_FIELDS

# Readings one answer may hold: two days at the relay's 10 s interval. A longer range keeps
# its oldest MAX_POINTS and says so (``truncated``): the page then asks for a shorter one.
MAX_POINTS = 20_000
PAGE = 10_000  # rows per readings_page call (the store's own page cap)
# Rows a relay's series may hold (a week at 10 s, ~4.8 MB of arrays); past it a range is read directly.
MAX_SERIES_POINTS = 60_480
MAX_SERIES = 16  # relays with a series kept: the ones operators are looking at
CACHE_ENTRIES = 16  # encoded answers kept, for pages asking the same range again
MAX_SPAN_MS = 31 * 24 * 3600 * 1000  # a month: the longest range a page asks for
COLUMNS = ("t", "seq", "openings", "flags", *VALUE_FIELDS)
# Where each column sits in a READING_ROW (gridchain.ledger.store): relay_id, seq, timestamp_ms, ...
_ROW_INDEX = {"t": 2, "seq": 1, "openings": 3, "flags": 4, **{name: 5 + i for i, name in enumerate(VALUE_FIELDS)}}
_HEIGHT_INDEX = 15
FORMATS = ("json", "f64")


class ReadingsSource(Protocol):
    """The part of the node's view this module reads (gridchain.api.server.NodeView's query)."""

    def readings_page(self, relay: str | None, since_ms: int | None, until_ms: int | None,
                      after: tuple[int, str, int] | None, limit: int
                      ) -> tuple[list[tuple], tuple[int, str, int] | None]: ...


def fetch_rows(source: ReadingsSource, relay: str, since_ms: int | None, until_ms: int | None,
               max_points: int) -> tuple[list[tuple], bool]:
    """Main-chain rows of ``relay`` in the range, oldest first; True if more than ``max_points``."""
    rows: list[tuple] = []
    after = None
    while len(rows) < max_points:
        page, after = source.readings_page(relay, since_ms, until_ms, after, min(PAGE, max_points - len(rows)))
        rows += page
        if after is None:
            return rows, False
    probe, _ = source.readings_page(relay, since_ms, until_ms, after, 1)
    return rows, bool(probe)


class RelaySeries:
    """One relay's main-chain readings from ``since_ms`` on, as of ``tip``, a float64 array per column."""

    def __init__(self, relay: str, since_ms: int | None, tip: object, rows: Iterable[tuple]) -> None:
        self.relay = relay
        self.since_ms = since_ms
        self.tip = tip
        rows = list(rows)
        t = _ROW_INDEX["t"]
        if any(rows[i][t] < rows[i - 1][t] for i in range(1, len(rows))):
            rows.sort(key=operator.itemgetter(t))  # stable: as _append would have placed a gap fill
        # A column at a time from the rows (a day in ~10 ms), not a row at a time into every column.
        self.columns = {name: array.array("d", map(operator.itemgetter(index), rows))
                        for name, index in _ROW_INDEX.items()}
        self.heights = array.array("q", map(operator.itemgetter(_HEIGHT_INDEX), rows))

    def __len__(self) -> int:
        return len(self.heights)

    def _append(self, row: tuple) -> None:
        t = self.columns["t"]
        at = len(t) if not t or row[2] >= t[-1] else bisect.bisect_right(t, row[2])  # a gap fill is older
        for name, index in _ROW_INDEX.items():
            self.columns[name].insert(at, row[index])
        self.heights.insert(at, row[_HEIGHT_INDEX])

    def follow(self, joined: list[tuple[Block, int]], tip: object) -> None:
        """Apply blocks that joined the main chain (from the fork up, in order), now at ``tip``."""
        if joined and self.heights and max(self.heights) >= joined[0][1]:
            keep = [i for i, h in enumerate(self.heights) if h < joined[0][1]]  # a reorg: rows above the fork go
            for name, column in self.columns.items():
                self.columns[name] = array.array("d", (column[i] for i in keep))
            self.heights = array.array("q", (self.heights[i] for i in keep))
        for block, height in joined:
            capture = block.capture
            if capture.relay_id != self.relay:
                continue
            for r in capture.readings:
                if self.since_ms is None or r.timestamp_ms >= self.since_ms:
                    self._append((capture.relay_id, r.seq, r.timestamp_ms, r.openings, r.flags, r.vab, r.vbc, r.vca,
                                  r.ia, r.ib, r.ic, r.frequency, r.power_factor, r.active_power, r.reactive_power,
                                  height))
        if len(self) > MAX_SERIES_POINTS:  # the oldest rows go: the series stays a bounded window
            cut = len(self) - MAX_SERIES_POINTS
            self.since_ms = int(self.columns["t"][cut])
            for column in self.columns.values():
                del column[:cut]
            del self.heights[:cut]
        self.tip = tip

    def covers(self, since_ms: int | None) -> bool:
        return self.since_ms is None or (since_ms is not None and since_ms >= self.since_ms)

    def window(self, since_ms: int | None, until_ms: int | None, max_points: int) -> tuple[int, int, bool]:
        """Indexes [lo, hi) of the rows in the range (inclusive ends), at most ``max_points``."""
        t = self.columns["t"]
        lo = 0 if since_ms is None else bisect.bisect_left(t, since_ms)
        hi = len(t) if until_ms is None else bisect.bisect_right(t, until_ms)
        return lo, min(hi, lo + max_points), hi - lo > max_points


def encode_answer(relay: str | None, since_ms: int | None, until_ms: int | None, columns: dict[str, array.array],
                  lo: int, hi: int, truncated: bool, fmt: str) -> bytes:
    """The answer in ``fmt`` (json or f64) for rows [lo, hi) of ``columns``."""
    meta = {"relay": relay, "since": since_ms, "until": until_ms, "count": hi - lo, "truncated": truncated}
    if fmt == "json":
        meta["columns"] = {name: [int(v) for v in columns[name][lo:hi]] if name in ("t", "seq", "openings", "flags")
                           else columns[name][lo:hi].tolist() for name in COLUMNS}
        return json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    meta["columns"] = list(COLUMNS)
    line = json.dumps(meta, separators=(",", ":")).encode()
    line += b" " * (-(len(line) + 1) % 8) + b"\n"  # the float64 data starts 8-byte aligned
    parts = [line]
    for name in COLUMNS:
        part = columns[name][lo:hi]
        if sys.byteorder != "little":
            part.byteswap()
        parts.append(part.tobytes())
    return b"".join(parts)


def empty_answer(fmt: str) -> bytes:
    """The answer for no relay at all (a node that has none yet): no rows, ``relay`` null."""
    return encode_answer(None, None, None, {name: array.array("d") for name in COLUMNS}, 0, 0, False, fmt)


class ReadingsCache:
    """Readings answers for the dashboard: a series per relay kept in step, encoded answers by key."""

    def __init__(self, source: ReadingsSource, tip: Callable[[], object]) -> None:
        self.source = source
        self.tip = tip  # anything that changes whenever the main chain does: (tip hash, height)
        self._series: OrderedDict[str, RelaySeries] = OrderedDict()
        self._answers: OrderedDict[tuple, bytes] = OrderedDict()
        self.loads = 0  # series read from the store (for tests and benchmarks)

    def get(self, relay: str, since_ms: int | None, until_ms: int | None, fmt: str = "json") -> bytes:
        tip = self.tip()
        key = (tip, relay, since_ms, until_ms, fmt)
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
            return answer
        series = self._series_for(relay, since_ms, tip)
        if series is None:  # more than a series holds: read the range itself
            rows, truncated = fetch_rows(self.source, relay, since_ms, until_ms, MAX_POINTS)
            direct = RelaySeries(relay, since_ms, tip, rows)
            answer = encode_answer(relay, since_ms, until_ms, direct.columns, 0, len(direct), truncated, fmt)
        else:
            lo, hi, truncated = series.window(since_ms, until_ms, MAX_POINTS)
            answer = encode_answer(relay, since_ms, until_ms, series.columns, lo, hi, truncated, fmt)
        self._answers[key] = answer
        while len(self._answers) > CACHE_ENTRIES:
            self._answers.popitem(last=False)
        return answer

    def _series_for(self, relay: str, since_ms: int | None, tip: object) -> RelaySeries | None:
        series = self._series.get(relay)
        if series is not None and series.tip == tip and series.covers(since_ms):
            self._series.move_to_end(relay)
            return series
        start = since_ms if series is None or series.since_ms is None or since_ms is None \
            else min(since_ms, series.since_ms)
        rows, more = fetch_rows(self.source, relay, start, None, MAX_SERIES_POINTS)
        self.loads += 1
        if more:
            self._series.pop(relay, None)
            return None
        series = self._series[relay] = RelaySeries(relay, start, tip, rows)
        while len(self._series) > MAX_SERIES:
            self._series.popitem(last=False)
        return series

    def follow(self, joined: list[tuple[Block, int]], tip: object) -> None:
        """Blocks joined the main chain and ``tip`` is the node's tip now: bring every series along."""
        self._answers.clear()
        for series in self._series.values():
            series.follow(joined, tip)
