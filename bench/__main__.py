"""`make bench`: run every benchmark module, print one table, write bench/results.json.

Each bench/bench_*.py module has ``run() -> list[dict]`` returning rows with ``name``,
``value``, ``unit``, ``goal`` and, where a physical limit applies, ``limit`` and ``ratio``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results.json"


def _modules(only: list[str]) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    return [n for n in names if not only or any(o in n for o in only)]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def print_table(rows: list[dict]) -> None:
    columns = ("suite", "name", "value", "unit", "goal", "limit", "ratio")
    table = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description="run gridchain's benchmarks")
    parser.add_argument("only", nargs="*", help="run only modules whose name contains one of these")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    rows: list[dict] = []
    for name in _modules(args.only):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        for row in module.run():
            rows.append({"suite": name.removeprefix("bench_"), **row})
    print_table(rows)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
