"""Crash safety: a writer killed with SIGKILL at random moments never loses a reported block.

The writer (crash_writer.py) commits blocks through a Ledger and prints each hash only
after the ledger returned it as committed. Each round starts it on the same data dir (so
the chain grows across rounds), kills it at a random moment, then requires that the store
opens, passes a full audit, and holds every hash any round ever reported.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from gridchain.ledger.audit import audit_store
from gridchain.ledger.ledger import Ledger
from gridchain.ledger.store import DB_FILE

from .crash_writer import NOW_MS, PARAMS

WRITER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 24
READY_TIMEOUT_S = 10.0  # interpreter start, imports and the ledger's open, on a loaded machine
# Kill this long after the writer said ready: up to a few hundred commits of a round.
KILL_AFTER_S = (0.0, 0.2)
# Every fourth round is killed this long after it was started: during start or open.
EARLY_KILL_S = (0.0, 0.15)


def _start(data_dir: Path, seed: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(WRITER), str(data_dir), str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def _wait_ready(proc: subprocess.Popen) -> bytes:
    """Read the writer's output until its "ready" line; returns what was read."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT_S
    fd = proc.stdout.fileno()
    while b"ready\n" not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"writer not ready after {READY_TIMEOUT_S}s: {proc.stderr.read1()!r}"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            assert chunk, f"writer exited early: {proc.wait(5)} {proc.stderr.read()!r}"
            data += chunk
    return data


def _reported(output: bytes) -> set[bytes]:
    """Hashes from complete lines only: a kill may cut the last line short."""
    lines = output.split(b"\n")[:-1]
    return {bytes.fromhex(line.decode()) for line in lines if len(line) == 64}


def test_sigkill_at_random_moments_loses_no_reported_block(tmp_path):
    rng = random.Random(20240601)
    reported: set[bytes] = set()
    heights = []
    for round_no in range(ROUNDS):
        proc = _start(tmp_path, round_no)
        early = round_no % 4 == 3
        output = b""
        try:
            if early:
                time.sleep(rng.uniform(*EARLY_KILL_S))  # the kill moment itself, not a wait
            else:
                output = _wait_ready(proc)
                time.sleep(rng.uniform(*KILL_AFTER_S))
            proc.send_signal(signal.SIGKILL)
            rest, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        output += rest
        assert proc.returncode == -signal.SIGKILL, f"round {round_no}: writer failed: {err.decode()[-2000:]}"
        reported |= _reported(output)

        ledger = Ledger.open(tmp_path, PARAMS, NOW_MS)
        heights.append(ledger.height)
        ledger.close()
        report = audit_store(tmp_path / DB_FILE, PARAMS)
        assert report.ok, f"round {round_no}: {report.problems[:5]}"
        db = sqlite3.connect(tmp_path / DB_FILE)
        stored = {row[0] for row in db.execute("SELECT hash FROM blocks")}
        db.close()
        lost = reported - stored
        assert not lost, f"round {round_no}: {len(lost)} reported block(s) missing after the kill"
    assert heights[-1] > heights[0] and len(reported) > ROUNDS, "the chain grew across the rounds"
