"""Proof of work: difficulty is the number of leading zero bits of SHA-256(header).

``meets_target`` is the one hash check every caller uses. ``mine`` hashes the fixed
120-byte header prefix once and, per try, copies that prepared state and appends only the
8-byte nonce, checking its cancel flag between chunks so a better tip stops it quickly.
"""

from __future__ import annotations

import hashlib
import threading

MAX_BITS = 255  # 256 zero bits would need a hash of all zeros: no target to meet
# Tries between cancel checks: ~1-2 ms of hashing in CPython, so a cancel lands within a few ms.
MINE_CHUNK = 2048
NONCE_LIMIT = 2**64


def target(bits: int) -> bytes:
    """The 32-byte big-endian bound a block hash must be strictly below."""
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"difficulty bits {bits} outside 0..{MAX_BITS}")
    if bits == 0:
        return b"\xff" * 32  # unreachable by meets_target/mine, which accept any hash at 0 bits
    return (1 << (256 - bits)).to_bytes(32, "big")


def meets_target(block_hash: bytes, bits: int) -> bool:
    # Equal-length byte strings compare like the big-endian integers they encode.
    return bits == 0 or block_hash < target(bits)


def work(bits: int) -> int:
    """Expected number of hashes to meet ``bits``: what a block adds to its chain's work."""
    return 1 << bits


def mine(prefix: bytes, bits: int, start: int = 0, count: int = NONCE_LIMIT,
         cancel: threading.Event | None = None) -> int | None:
    """First nonce in [start, start+count) whose header hash meets ``bits``.

    Returns None when the range is exhausted or ``cancel`` is set.
    """
    if bits == 0:
        return start if start < min(start + count, NONCE_LIMIT) else None
    bound = target(bits)
    prepared = hashlib.sha256(prefix)
    end = min(start + count, NONCE_LIMIT)
    nonce = start
    while nonce < end:
        if cancel is not None and cancel.is_set():
            return None
        chunk_end = min(nonce + MINE_CHUNK, end)
        copy = prepared.copy
        for candidate in range(nonce, chunk_end):
            h = copy()
            h.update(candidate.to_bytes(8, "big"))
            if h.digest() < bound:
                return candidate
        nonce = chunk_end
    return None
