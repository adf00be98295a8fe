"""Block validation: each rule is one small function, each failure one named reason.

Two groups, so a caller can run the cheap, context-free part before it looks anything up:

- ``check_block(block, params, now_ms)``: what a block must be on its own, cheapest first
  (size, version, difficulty, proof of work, clock, readings — well-formed and not ahead of
  the block's time —, payload root, miner, signature), so junk costs a receiver as little
  as possible before the Ed25519 check.
- ``check_context(block, parent_height, median_time_ms, newest_ms, newest_openings)``:
  what it must be on top of its parent's branch (height, median time, fresh readings,
  the relay's openings counter never going down).

The reasons are stable strings that appear in logs, ``reject`` messages and tests:
too-large, bad-version, bad-difficulty, bad-pow, time-too-new, bad-reading, bad-root,
unknown-miner, bad-signature, unknown-parent, bad-height, time-too-old, duplicate-reading,
bad-openings. Genesis is never checked here: every node derives it (see genesis.py).
"""

from __future__ import annotations

from math import isfinite

from gridchain.consensus import pow
from gridchain.consensus.block import (
    BLOCK_VERSION, MAX_BLOCK_BYTES, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, Block, Capture, Header,
)
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.signing import verify_signature

# Readings and the openings counter are packed as signed/unsigned 64-bit integers.
MAX_TIMESTAMP_MS = 2**63 - 1
MAX_OPENINGS = 2**63 - 1

REASONS = frozenset({
    "too-large", "bad-version", "bad-difficulty", "bad-pow", "time-too-new", "bad-reading",
    "bad-root", "unknown-miner", "bad-signature", "unknown-parent", "bad-height",
    "time-too-old", "duplicate-reading", "bad-openings",
})


class RuleViolation(Exception):
    """A block breaks a consensus rule; ``reason`` is one of REASONS, ``detail`` says how."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- context-free rules -------------------------------------------------------------------

def check_encoded_size(nbytes: int) -> None:
    if nbytes > MAX_BLOCK_BYTES:
        raise RuleViolation("too-large", f"{nbytes} bytes > {MAX_BLOCK_BYTES}")


def check_size(block: Block) -> None:
    count = len(block.capture.readings)
    if count > MAX_READINGS_PER_BLOCK:
        raise RuleViolation("too-large", f"{count} readings > {MAX_READINGS_PER_BLOCK}")
    capture = block.capture
    for name, text in (("relay_id", capture.relay_id), ("substation", capture.substation),
                       ("miner_name", block.miner_name)):
        if len(text.encode()) > MAX_TEXT_BYTES:
            raise RuleViolation("too-large", f"{name} longer than {MAX_TEXT_BYTES} bytes")


def check_version(header: Header) -> None:
    if header.version != BLOCK_VERSION:
        raise RuleViolation("bad-version", f"version {header.version}, expected {BLOCK_VERSION}")


def check_difficulty(header: Header, params: NetworkParams) -> None:
    if header.bits != params.bits:
        raise RuleViolation("bad-difficulty", f"bits {header.bits}, network needs {params.bits}")


def check_pow(block_hash: bytes, bits: int) -> None:
    if not pow.meets_target(block_hash, bits):
        raise RuleViolation("bad-pow", f"hash {block_hash.hex()} does not meet {bits} bits")


def check_not_too_new(header: Header, now_ms: int, max_future_ms: int) -> None:
    if header.time_ms > now_ms + max_future_ms:
        raise RuleViolation("time-too-new", f"time {header.time_ms} is {header.time_ms - now_ms} ms ahead")


def check_readings(capture: Capture) -> None:
    """Well-formed readings: a named relay, at least one reading, finite values, rising times."""
    if not capture.relay_id:
        raise RuleViolation("bad-reading", "empty relay_id")
    if not capture.readings:
        raise RuleViolation("bad-reading", "no readings")
    if type(capture.openings) is not int or not 0 <= capture.openings <= MAX_OPENINGS:
        raise RuleViolation("bad-openings", f"openings {capture.openings!r} out of range")
    previous = -1
    for index, reading in enumerate(capture.readings):
        ts = reading.timestamp_ms
        if type(ts) is not int or not 0 <= ts <= MAX_TIMESTAMP_MS:
            raise RuleViolation("bad-reading", f"reading {index}: timestamp {ts!r} out of range")
        if ts <= previous:
            raise RuleViolation("bad-reading", f"reading {index}: timestamp {ts} not after {previous}")
        previous = ts
        _check_values(index, reading)


def _check_values(index: int, reading) -> None:
    values = (reading.vab, reading.vbc, reading.vca, reading.ia, reading.ib, reading.ic,
              reading.frequency, reading.power_factor, reading.active_power, reading.reactive_power)
    try:
        finite = all(map(isfinite, values))
    except TypeError:  # a value that is not a number at all (only possible for in-memory blocks)
        finite = False
    if not finite:
        raise RuleViolation("bad-reading", f"reading {index}: non-finite or non-numeric value")
    if not -1.0 <= reading.power_factor <= 1.0:
        raise RuleViolation("bad-reading", f"reading {index}: power factor {reading.power_factor} outside [-1, 1]")


def check_readings_not_ahead(block: Block, max_future_ms: int) -> None:
    # A reading far in the future would make every later reading of its relay a
    # "duplicate" on that branch for good; the relay's clock may lead the miner's by no
    # more than a block's time may lead ours.
    newest = block.capture.readings[-1].timestamp_ms
    if newest > block.header.time_ms + max_future_ms:
        raise RuleViolation("bad-reading", f"reading at {newest} is {newest - block.header.time_ms} ms "
                            f"after the block's time {block.header.time_ms}")


def check_root(block: Block) -> None:
    expected = payload_root(block.capture, block.miner_name)
    if block.header.payload_root != expected:
        raise RuleViolation("bad-root", f"header root {block.header.payload_root.hex()} != payload {expected.hex()}")


def check_miner(header: Header, members: frozenset[bytes] | None) -> None:
    if members is not None and header.miner_key not in members:
        raise RuleViolation("unknown-miner", f"key {header.miner_key.hex()} is not a network member")


def check_signature(block: Block) -> None:
    if not verify_signature(block.header.miner_key, block.signature, block.hash):
        raise RuleViolation("bad-signature", f"signature does not verify for key {block.header.miner_key.hex()}")


def check_block(block: Block, params: NetworkParams, now_ms: int) -> None:
    """Every rule a block must pass on its own, cheapest first; raises RuleViolation."""
    header = block.header
    check_size(block)
    check_version(header)
    check_difficulty(header, params)
    check_pow(block.hash, header.bits)
    check_not_too_new(header, now_ms, params.max_future_ms)
    check_readings(block.capture)
    check_readings_not_ahead(block, params.max_future_ms)
    check_root(block)
    check_miner(header, params.members)
    check_signature(block)


# --- contextual rules ---------------------------------------------------------------------

def check_height(header: Header, parent_height: int) -> None:
    if header.height != parent_height + 1:
        raise RuleViolation("bad-height", f"height {header.height} on a parent at {parent_height}")


def check_not_too_old(header: Header, median_time_ms: int) -> None:
    if header.time_ms <= median_time_ms:
        raise RuleViolation("time-too-old", f"time {header.time_ms} not after median {median_time_ms}")


def check_fresh_readings(capture: Capture, newest_ms: int | None) -> None:
    # Readings rise strictly inside a capture (check_readings), so the first one decides.
    if newest_ms is not None and capture.readings[0].timestamp_ms <= newest_ms:
        raise RuleViolation("duplicate-reading", f"relay {capture.relay_id!r}: reading at "
                            f"{capture.readings[0].timestamp_ms} not after the branch's newest {newest_ms}")


def check_openings(capture: Capture, newest_openings: int | None) -> None:
    if newest_openings is not None and capture.openings < newest_openings:
        raise RuleViolation("bad-openings", f"relay {capture.relay_id!r}: openings {capture.openings} "
                            f"below the branch's {newest_openings}")


def check_context(block: Block, parent_height: int, median_time_ms: int,
                  newest_ms: int | None, newest_openings: int | None) -> None:
    """Rules that depend on the parent's branch; run after check_block.

    ``newest_ms``/``newest_openings`` describe the newest block of the same relay on the
    parent's branch (None when the branch holds no reading of that relay).
    """
    check_height(block.header, parent_height)
    check_not_too_old(block.header, median_time_ms)
    check_fresh_readings(block.capture, newest_ms)
    check_openings(block.capture, newest_openings)
