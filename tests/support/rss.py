"""What /proc says about a process: its resident memory and the CPU time it has used."""

from __future__ import annotations

import os
from pathlib import Path


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in kB (VmRSS), or None if it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB; NaN if it has gone (a missing sample stays visible)."""
    kb = rss_kb(pid)
    return float("nan") if kb is None else kb / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
