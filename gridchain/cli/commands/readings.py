"""`gridchain readings`: export main-chain readings as a table, CSV or JSON lines, page by page.

Rows are fetched a page at a time (keyset paging on the node) and written as they come, so
an export of millions of readings runs in constant memory. When the output goes to a file
or a pipe and stderr is a terminal, a counter on stderr shows how far it has got.

The table shows each reading's breaker openings count and marks ``open`` where the breaker
was open: the count rose since that relay's previous reading (a fault tripped it), or no
phase carried current, all three current values good (the dead time before it recloses).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import sys

from gridchain.api.client import NodeClient
from gridchain.consensus.block import ROW_FIELDS
from gridchain.consensus.provenance import QUALITY_NAMES, VALUE_FIELDS, Reading, quality_of
from gridchain.cli.commands.output import Column, Progress, StreamTable, dumps, is_tty, iso_ms, parse_time_ms, plural

FORMATS = ("table", "csv", "json")
CSV_FIELDS = ("relay_id", "seq", "timestamp_ms", "time", *VALUE_FIELDS, "openings", "flags", "height", "block_hash")
# A readings row as the node sends it: the relay, the signed row's fields in wire order, and
# the main-chain block holding it (the store's READING_COLUMNS).
ROW_NAMES = ("relay_id", *ROW_FIELDS, "height", "block_hash")
CURRENTS = ("ia", "ib", "ic")
# Recent blocks whose relay ids name the relays a node knows, for the hint when --relay
# matches nothing (the status lists only the relays the node itself polls).
KNOWN_RELAY_BLOCKS = 1000


def _num(key: str, width: int, places: int) -> Column:
    return Column(key.upper().replace("_", " ") if len(key) > 3 else key.upper(), width,
                  lambda r: f"{r[key]:.{places}f}", right=True)


VALUE_COLUMNS = (
    _num("vab", 8, 3), _num("vbc", 8, 3), _num("vca", 8, 3),  # kV
    _num("ia", 8, 2), _num("ib", 8, 2), _num("ic", 8, 2),  # A
    Column("FREQ", 7, lambda r: f"{r['frequency']:.3f}", right=True),  # Hz
    Column("PF", 5, lambda r: f"{r['power_factor']:.3f}", right=True),
    Column("P MW", 8, lambda r: f"{r['active_power']:.3f}", right=True),
    Column("Q MVAR", 8, lambda r: f"{r['reactive_power']:.3f}", right=True),
)


def breaker_open(row: dict, previous_openings: int | None) -> bool:
    """Was the breaker open at this reading? Its openings count rose since the relay's previous
    reading, or no phase carried current (and the relay vouched for all three values)."""
    if previous_openings is not None and row["openings"] > previous_openings:
        return True
    flags = row.get("flags", 0)
    return all(row[name] == 0.0 and quality_of(flags, VALUE_FIELDS.index(name)) == 0 for name in CURRENTS)


class BreakerMarks:
    """Sets each row's ``breaker`` to ``open`` or ``""``, remembering each relay's last count."""

    def __init__(self) -> None:
        self._openings: dict[str, int] = {}

    def mark(self, rows, relay_id: str | None = None):
        for row in rows:
            relay = row.get("relay_id", relay_id)
            row["breaker"] = "open" if breaker_open(row, self._openings.get(relay)) else ""
            self._openings[relay] = row["openings"]
            yield row


def reading_table(out, indent: str = "", with_relay: bool = True) -> StreamTable:
    """Rows need a ``breaker`` key (BreakerMarks.mark) for the last column."""
    head = [Column("RELAY", 10, lambda r: r["relay_id"])] if with_relay else []
    # Sequence numbers rise by one per reading: a jump in this column is a gap the relay signed.
    # 16 digits: a gateway numbers readings from its boot time in ms, times 1000.
    head.append(Column("SEQ", 16, lambda r: r["seq"], right=True))
    head.append(Column("TIME", 24, lambda r: iso_ms(r["timestamp_ms"])))
    tail = [Column("OPENINGS", 8, lambda r: r["openings"], right=True),
            Column("BREAKER", 7, lambda r: r.get("breaker", ""))]
    if with_relay:
        tail.insert(0, Column("HEIGHT", 7, lambda r: r.get("height", ""), right=True))
    return StreamTable([*head, *VALUE_COLUMNS, *tail], out, indent)


def reading_to_dict(reading: Reading, **extra: object) -> dict:
    """A reading's signed fields for people and scripts (quality named only where not good)."""
    quality = {name: QUALITY_NAMES[reading.quality(name)] for name in VALUE_FIELDS if reading.quality(name)}
    return {**extra, **{name: getattr(reading, name) for name in ROW_FIELDS}, "quality": quality,
            "gateway_time": reading.gateway_time}


def row_to_dict(row: object) -> dict:
    """One readings row as a dict: (relay_id, seq, timestamp_ms, openings, flags, the ten
    values, block height, block hash), ROW_NAMES; a dict row is taken as it is."""
    if isinstance(row, dict):
        return dict(row)
    row = list(row)
    if len(row) != len(ROW_NAMES):
        raise ValueError(f"a readings row has {len(ROW_NAMES)} values, not {len(row)}")
    result = dict(zip(ROW_NAMES, row))
    if isinstance(result["block_hash"], (bytes, bytearray)):
        result["block_hash"] = bytes(result["block_hash"]).hex()
    return result


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("readings", parents=[common], help="export readings (table, CSV or JSON lines)")
    parser.add_argument("--relay", help="only this relay's readings (its relay id)")
    parser.add_argument("--since", type=_time_arg, metavar="TIME", help="readings at or after this time: "
                        "ISO-8601, milliseconds, or a time ago such as 1h, 30m, 2d, 90s")
    parser.add_argument("--until", type=_time_arg, metavar="TIME", help="readings at or before this time (as --since)")
    parser.add_argument("--format", choices=FORMATS, help="default: table on a terminal, CSV otherwise; "
                        "json writes one object per line")
    parser.add_argument("--page", type=int, default=1000, metavar="N", help=argparse.SUPPRESS)
    parser.set_defaults(func=readings_command)


def _time_arg(text: str) -> int:
    try:
        return parse_time_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Writer:
    """Writes reading dicts in one of FORMATS."""

    def __init__(self, fmt: str, out) -> None:
        self.out = out
        self.fmt = fmt
        if fmt == "csv":
            self._csv = csv.writer(out, lineterminator="\n")
            self._csv.writerow(CSV_FIELDS)
        elif fmt == "table":
            self._table = reading_table(out)
            self._table.header()
            self._marks = BreakerMarks()

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "json":
            self.out.write("".join(dumps(with_time(row)) + "\n" for row in rows))
        elif self.fmt == "csv":
            for row in rows:
                self._csv.writerow([with_time(row).get(name, "") for name in CSV_FIELDS])
        else:
            self._table.rows(self._marks.mark(rows))


def with_time(row: dict) -> dict:
    """The row with ``time``, its timestamp as ISO-8601 UTC, right after ``timestamp_ms``."""
    out = {}
    for key, value in row.items():
        out[key] = value
        if key == "timestamp_ms":
            out["time"] = iso_ms(value)
    return out


async def readings_command(args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.json else "table" if is_tty(sys.stdout) else "csv")
    if args.since is not None and args.until is not None and args.until < args.since:
        print("gridchain: error: --until is before --since", file=sys.stderr)
        return 2
    progress = Progress("readings", enabled=is_tty(sys.stderr) and not is_tty(sys.stdout))
    count = 0
    known: list[str] = []
    async with NodeClient(args.node, args.timeout) as node:
        writer = _Writer(fmt, sys.stdout)
        async for page in node.readings(args.relay, args.since, args.until, page=max(1, args.page)):
            writer.write([row_to_dict(row) for row in page])
            count += len(page)
            progress.update(count)
        if count == 0 and args.relay is not None:
            known = await known_relays(node)
    sys.stdout.flush()
    progress.done()
    if count == 0 and args.relay is not None and args.relay not in known:
        print(f"gridchain: {unknown_relay_hint(args.relay, known, str(args.node))}", file=sys.stderr)
        return 1
    if is_tty(sys.stderr) and not is_tty(sys.stdout):
        print(plural(count, "reading"), file=sys.stderr)
    return 0


async def known_relays(node: NodeClient) -> list[str]:
    """Relay ids the node polls or whose readings are in its newest blocks, sorted."""
    info = await node.status()
    names = {r["relay_id"] for r in info.get("relays", []) if r.get("relay_id")}
    height = int(info.get("height", 0))
    async for rows in node.header_pages(max(1, height - KNOWN_RELAY_BLOCKS + 1), height):
        names.update(row["relay_id"] for row in rows if row.get("relay_id"))
    return sorted(names)


def unknown_relay_hint(relay: str, known: list[str], where: str) -> str:
    """One line: no such relay, the relays there are, and the likeliest one meant."""
    if not known:
        return f"no readings of relay {relay!r}: {where} knows no relay yet"
    close = difflib.get_close_matches(relay, known, n=1, cutoff=0.5)
    lowered = [k for k in known if k.lower() == relay.lower()]
    guess = lowered[0] if lowered else close[0] if close else None
    return (f"no relay {relay!r} on {where}" + (f" (did you mean {guess!r}?)" if guess else "")
            + f"; known relays: {', '.join(repr(k) for k in known)}")
