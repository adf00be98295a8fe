"""Proof of work: targets, the one hash check, mining and cancelling it."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from gridchain.consensus import pow

PREFIX = bytes(range(120))


def header_hash(nonce: int) -> bytes:
    return hashlib.sha256(PREFIX + nonce.to_bytes(8, "big")).digest()


def test_target_values():
    assert pow.target(1) == b"\x80" + bytes(31)
    assert pow.target(8) == b"\x01" + bytes(31)
    assert pow.target(255) == bytes(31) + b"\x02"
    for bad in (-1, 256):
        with pytest.raises(ValueError):
            pow.target(bad)


def test_meets_target_edges():
    assert pow.meets_target(b"\xff" * 32, 0)
    assert pow.meets_target(b"\x00" + b"\xff" * 31, 8)
    assert not pow.meets_target(b"\x01" + bytes(31), 8)  # equal to the target is not below it
    assert pow.meets_target(b"\x00\x7f" + b"\xff" * 30, 9)
    assert not pow.meets_target(b"\x00\x80" + bytes(30), 9)
    assert pow.meets_target(bytes(32), 255)
    assert pow.meets_target(bytes(31) + b"\x01", 255)
    assert not pow.meets_target(bytes(31) + b"\x02", 255)
    with pytest.raises(ValueError):
        pow.meets_target(bytes(32), 256)


def test_work_doubles_per_bit():
    assert [pow.work(b) for b in (0, 1, 8, 20)] == [1, 2, 256, 2**20]


@pytest.mark.parametrize("bits", [1, 4, 8, 12])
def test_mine_finds_the_first_nonce_meeting_the_target(bits):
    nonce = pow.mine(PREFIX, bits)
    assert nonce is not None and pow.meets_target(header_hash(nonce), bits)
    assert not any(pow.meets_target(header_hash(n), bits) for n in range(nonce))


def test_mine_respects_start_and_count():
    first = pow.mine(PREFIX, 8)
    assert pow.mine(PREFIX, 8, start=first, count=1) == first
    assert pow.mine(PREFIX, 8, start=0, count=first) is None  # the range ends before it
    later = pow.mine(PREFIX, 8, start=first + 1)
    assert later > first and pow.meets_target(header_hash(later), 8)


def test_mine_stops_at_the_nonce_limit():
    assert pow.mine(PREFIX, 64, start=pow.NONCE_LIMIT - 10, count=100) is None
    assert pow.mine(PREFIX, 0, start=pow.NONCE_LIMIT, count=1) is None
    assert pow.mine(PREFIX, 0, start=5) == 5


def test_mine_with_cancel_already_set_returns_none():
    cancel = threading.Event()
    cancel.set()
    assert pow.mine(PREFIX, 1, cancel=cancel) is None


class WatchedEvent(threading.Event):
    """A cancel flag that tells when the miner first looks at it (it is then in its loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = threading.Event()

    def is_set(self) -> bool:
        self.checked.set()
        return super().is_set()


def test_cancel_stops_mining_quickly():
    cancel = WatchedEvent()
    done = threading.Event()
    result: list[int | None] = []
    stopped_at: list[float] = []

    def work() -> None:
        result.append(pow.mine(PREFIX, 200, cancel=cancel))  # never found
        stopped_at.append(time.perf_counter())
        done.set()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    assert cancel.checked.wait(5), "mining did not start"
    assert not done.is_set()
    cancelled_at = time.perf_counter()
    cancel.set()
    assert done.wait(5), "mining did not stop after cancel"
    worker.join(5)
    assert result == [None]
    assert stopped_at[0] - cancelled_at < 0.2
