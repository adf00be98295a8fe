"""Reading the JSON log lines a node or relay writes (``--log-format json``), whole or as they come.

Timings taken from the lines' ISO timestamps (one machine, one clock) add no work to the
processes measured; each event read carries them as ``t``, in seconds since the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterable
from pathlib import Path

FOLLOW_POLL_S = 0.003  # ``next_event`` re-reads the log this often, to strike while it happens


def parse_time(stamp: str) -> float:
    """Seconds since the epoch of a log line's ISO-8601 timestamp."""
    return dt.datetime.fromisoformat(stamp).timestamp()


def read_events(path: Path, names: Iterable[str] | None = None) -> list[dict]:
    """The JSON log events in ``path`` (every start of a node appends), optionally only these
    events, each with ``t`` in epoch seconds where the line has a timestamp; none if no file."""
    wanted = set(names) if names is not None else None
    events: list[dict] = []
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
            event = json.loads(line)
            if wanted is None or event.get("event") in wanted:
                if "timestamp" in event:
                    event["t"] = parse_time(event["timestamp"])
                events.append(event)
    return events


async def next_event(path: Path, names: Iterable[str], timeout: float) -> dict | None:
    """The first event named one of ``names`` written to ``path`` from now on (None: none
    within ``timeout``). Polls the file every few milliseconds."""
    wanted = set(names)
    offset = path.stat().st_size if path.exists() else 0
    deadline = time.monotonic() + timeout
    buffered = b""
    while time.monotonic() < deadline:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        offset += len(chunk)
        *lines, buffered = (buffered + chunk).split(b"\n")
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") in wanted:
                    return event
        await asyncio.sleep(FOLLOW_POLL_S)
    return None


def log_tail(path: Path, lines: int = 3) -> list[str]:
    """The last ``lines`` lines of a log, to name in a failure."""
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]
