"""`gridchain readings`: export main-chain readings as a table, CSV or JSON lines, page by page.

Rows are fetched a page at a time (keyset paging on the node) and written as they come, so
an export of millions of readings runs in constant memory. When the output goes to a file
or a pipe and stderr is a terminal, a counter on stderr shows how far it has got.
"""

from __future__ import annotations

import argparse
import csv
import sys

from gridchain.api.client import NodeClient
from gridchain.consensus.block import READING_FIELDS, Reading
from gridchain.cli.commands.output import Column, Progress, StreamTable, dumps, is_tty, iso_ms, parse_time_ms

FORMATS = ("table", "csv", "json")
CSV_FIELDS = ("relay_id", "timestamp_ms", "time", *READING_FIELDS[1:], "openings", "height", "block_hash")


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


def reading_table(out, indent: str = "", with_relay: bool = True) -> StreamTable:
    head = [Column("RELAY", 10, lambda r: r["relay_id"])] if with_relay else []
    head.append(Column("TIME", 24, lambda r: iso_ms(r["timestamp_ms"])))
    tail = [Column("HEIGHT", 7, lambda r: r.get("height", ""), right=True)] if with_relay else []
    return StreamTable([*head, *VALUE_COLUMNS, *tail], out, indent)


def reading_to_dict(reading: Reading, **extra: object) -> dict:
    return {**extra, **reading.as_dict()}


def row_to_dict(row: object) -> dict:
    """One readings row as a dict.

    A row is (relay_id, timestamp_ms, the ten values, openings, block height, block hash);
    see READINGS_ROW_LENGTH in gridchain.net.messages.
    """
    if isinstance(row, dict):
        return dict(row)
    relay_id, timestamp_ms, *rest = row
    values, extra = rest[: len(READING_FIELDS) - 1], rest[len(READING_FIELDS) - 1:]
    result = {"relay_id": relay_id, "timestamp_ms": timestamp_ms, **dict(zip(READING_FIELDS[1:], values))}
    if len(extra) == 3:
        result["openings"], result["height"] = extra[0], extra[1]
        result["block_hash"] = extra[2].hex() if isinstance(extra[2], (bytes, bytearray)) else extra[2]
    elif len(extra) == 1:
        result["height"] = extra[0]
    return result


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("readings", parents=[common], help="export readings (table, CSV or JSON lines)")
    parser.add_argument("--relay", help="only this relay's readings (its relay id)")
    parser.add_argument("--since", type=_time_arg, metavar="ISO|MS", help="readings at or after this time")
    parser.add_argument("--until", type=_time_arg, metavar="ISO|MS", help="readings at or before this time")
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

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "json":
            self.out.write("".join(dumps(row) + "\n" for row in rows))
        elif self.fmt == "csv":
            for row in rows:
                row["time"] = iso_ms(row["timestamp_ms"])
                self._csv.writerow([row.get(name, "") for name in CSV_FIELDS])
        else:
            self._table.rows(rows)


async def readings_command(args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.json else "table" if is_tty(sys.stdout) else "csv")
    if args.since is not None and args.until is not None and args.until < args.since:
        print("gridchain: error: --until is before --since", file=sys.stderr)
        return 2
    progress = Progress("readings", enabled=is_tty(sys.stderr) and not is_tty(sys.stdout))
    count = 0
    async with NodeClient(args.node, args.timeout) as node:
        writer = _Writer(fmt, sys.stdout)
        async for page in node.readings(args.relay, args.since, args.until, page=max(1, args.page)):
            writer.write([row_to_dict(row) for row in page])
            count += len(page)
            progress.update(count)
    sys.stdout.flush()
    progress.done()
    if is_tty(sys.stderr) and not is_tty(sys.stdout):
        print(f"{count:,} readings", file=sys.stderr)
    return 0
