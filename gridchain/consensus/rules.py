"""Block validation: each rule is one small function, each failure one named reason.

Two groups, so a caller can run the cheap, context-free part before it looks anything up
(and in threads: the Ed25519 checks release the GIL):

- ``check_block(block, params, now_ms)``: what a block must be on its own, cheapest first:
  size, version, difficulty, proof of work, clock, readings, seals, gap notice, payload
  root, miner, relay (named, its substation and key as the network document says), the
  miner's signature and last the relay's signatures (one Ed25519 verify per seal).
- ``check_context(block, parent_height, median_time_ms, last_seq, relay_key, gaps)``: what
  it must be on its parent's branch: height, median time, the relay key the branch already
  uses for this relay, no reading the branch holds, no reading skipped.
- Finality's rule, ``conflicts-finalized`` (a block not on the finalized block's branch),
  is the block tree's to check (consensus/chain.py): it depends on votes, not on the block.

A relay's readings on a branch are its sequence up to ``last_seq`` less a few open gap
ranges: holes the relay signed as lost (a gap notice) that the branch has not filled. A
block continues the sequence, jumps past a hole with the relay's notice (opening a range),
or fills: every row inside one open range (which shrinks or splits; ``gaps_after``). Fills
exist because a notice is the relay's word about its own buffer, not about any chain: a
branch that forks below readings another branch already holds and jumps straight to the
notice must still be able to take those readings, or a reorg would lose them for good.

Timestamps and openings are the relay's signed word: no rule compares them with the block's
time or with earlier readings. The reasons are stable strings for logs, ``reject`` messages
and tests (REASONS). Genesis is never checked here: every node derives it (genesis.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import isfinite

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridchain.consensus import pow
from gridchain.consensus.block import (
    BLOCK_VERSION, MAX_BLOCK_BYTES, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, Block, Capture, Header,
    seal_partition_error,
)
from gridchain.consensus.errors import GridchainError
from gridchain.consensus.merkle import payload_root, reading_leaves
from gridchain.consensus.params import NetworkParams, RelayInfo
from gridchain.consensus.provenance import MAX_RELAY_ID_BYTES, MAX_SEALS_PER_BLOCK, ProvenanceError, seal_message, verify_gap
from gridchain.consensus.signing import verify_signature
from gridchain.consensus.tree import merkle_root

# Sequence numbers and counters are stored in SQLite's signed 64-bit integers; an honest
# relay (+1 per reading, resuming from its clock) stays far below this for ever.
MAX_STORED_INT = 2**63 - 1

REASONS = frozenset({
    "too-large", "bad-version", "bad-difficulty", "bad-pow", "time-too-new", "bad-reading", "bad-seal",
    "bad-gap-notice", "bad-root", "not-a-member", "unknown-relay", "wrong-substation", "relay-key-mismatch",
    "bad-signature", "bad-relay-signature", "unknown-parent", "bad-height", "time-too-old",
    "duplicate-reading", "sequence-gap", "bad-gap-fill",
    "conflicts-finalized",  # raised by Chain.add: the block's branch lacks the finalized block
})

# Open gap ranges kept per relay per branch: a relay loses its buffer a handful of times in
# its life, and the tuple is copied whenever a block opens, shrinks or splits a range. Past
# this the lowest (oldest) range is closed for good: its readings can no longer be filled,
# and it stays a listed gap of the chain.
MAX_OPEN_GAPS = 16

GapRanges = tuple[tuple[int, int], ...]  # (first, last) seqs, inclusive, ascending, disjoint


class RuleViolation(GridchainError):
    """A block breaks a consensus rule; ``reason`` is one of REASONS, ``detail`` says how."""


# --- context-free rules -------------------------------------------------------------------

def check_encoded_size(nbytes: int) -> None:
    if nbytes > MAX_BLOCK_BYTES:
        raise RuleViolation("too-large", f"{nbytes} bytes > {MAX_BLOCK_BYTES}")


def check_size(block: Block) -> None:
    capture = block.capture
    if len(capture.readings) > MAX_READINGS_PER_BLOCK:
        raise RuleViolation("too-large", f"{len(capture.readings)} readings > {MAX_READINGS_PER_BLOCK}")
    if len(capture.seals) > MAX_SEALS_PER_BLOCK:
        raise RuleViolation("too-large", f"{len(capture.seals)} seals > {MAX_SEALS_PER_BLOCK}")
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
    """A signable relay id, at least one reading, storable numbers, finite values, |pf| <= 1."""
    if not 0 < len(capture.relay_id.encode()) <= MAX_RELAY_ID_BYTES:
        raise RuleViolation("bad-reading", f"relay_id must be 1..{MAX_RELAY_ID_BYTES} bytes")
    if not capture.readings:
        raise RuleViolation("bad-reading", "no readings")
    for index, reading in enumerate(capture.readings):
        for name, low in (("seq", 1), ("openings", 0)):  # sequences start at 1
            value = getattr(reading, name)
            if type(value) is not int or not low <= value <= MAX_STORED_INT:
                raise RuleViolation("bad-reading", f"reading {index}: {name} {value!r} out of range")
        _check_values(index, reading)


def _check_values(index: int, reading) -> None:
    try:
        finite = all(map(isfinite, reading.values()))
    except TypeError:  # a value that is not a number at all (only possible for in-memory blocks)
        finite = False
    if not finite:
        raise RuleViolation("bad-reading", f"reading {index}: non-finite or non-numeric value")
    if not -1.0 <= reading.power_factor <= 1.0:
        raise RuleViolation("bad-reading", f"reading {index}: power factor {reading.power_factor} outside [-1, 1]")


def check_seals(capture: Capture) -> None:
    """Seals cover the readings in order, each over consecutive sequence numbers."""
    problem = "no seals" if not capture.seals else seal_partition_error(capture.readings, capture.seals)
    if problem is not None:
        raise RuleViolation("bad-seal", problem)


def check_gap_notice(capture: Capture) -> None:
    """A gap notice, if any, says where this block's readings resume: at its first one."""
    gap = capture.gap
    if gap is not None and gap.resume_seq != capture.readings[0].seq:
        raise RuleViolation("bad-gap-notice", f"gap notice resumes at {gap.resume_seq}, the block's readings "
                            f"start at {capture.readings[0].seq}")


def check_root(block: Block, leaves: Sequence[bytes] | None = None) -> None:
    expected = payload_root(block.capture, block.miner_name, leaves)
    if block.header.payload_root != expected:
        raise RuleViolation("bad-root", f"header root {block.header.payload_root.hex()} != payload {expected.hex()}")


def check_miner(header: Header, members: frozenset[bytes] | None) -> None:
    if members is not None and header.miner_key not in members:
        raise RuleViolation("not-a-member", f"key {header.miner_key.hex()} is not a network member")


def check_relay_known(capture: Capture, relays: Mapping[str, RelayInfo] | None) -> None:
    if relays is not None and capture.relay_id not in relays:
        raise RuleViolation("unknown-relay", f"relay {capture.relay_id!r} is not in the network document")


def check_substation(capture: Capture, relays: Mapping[str, RelayInfo] | None) -> None:
    # The seals do not cover the substation label; the network document does.
    info = None if relays is None else relays.get(capture.relay_id)
    if info is not None and capture.substation != info.substation:
        raise RuleViolation("wrong-substation", f"relay {capture.relay_id!r} is at {info.substation!r}, "
                            f"not {capture.substation!r}")


def check_relay_key(capture: Capture, expected: bytes | None) -> None:
    """The block's relay key is the expected one: the network document's, or the branch's."""
    if expected is not None and capture.relay_key != expected:
        raise RuleViolation("relay-key-mismatch", f"relay {capture.relay_id!r} signs with "
                            f"{expected.hex()[:16]}, the block names {capture.relay_key.hex()[:16]}")


def check_signature(block: Block) -> None:
    if not verify_signature(block.header.miner_key, block.signature, block.hash):
        raise RuleViolation("bad-signature", f"signature does not verify for key {block.header.miner_key.hex()}")


def check_relay_signatures(capture: Capture, leaves: Sequence[bytes] | None = None) -> None:
    """Every seal (one verify each, over the readings' shared leaves) and the gap notice."""
    if leaves is None:
        leaves = reading_leaves(capture)
    try:
        key = Ed25519PublicKey.from_public_bytes(capture.relay_key)
        start = 0
        for seal in capture.seals:
            root = merkle_root(list(leaves[start:start + seal.count]))
            start += seal.count
            key.verify(seal.signature, seal_message(capture.relay_id, seal.first_seq, seal.count, root))
        if capture.gap is not None:
            verify_gap(capture.relay_key, capture.relay_id, capture.gap)
    except (InvalidSignature, ValueError, ProvenanceError):
        raise RuleViolation("bad-relay-signature", f"a seal or the gap notice of relay {capture.relay_id!r} "
                            f"does not verify for key {capture.relay_key.hex()[:16]}") from None


def check_block(block: Block, params: NetworkParams, now_ms: int) -> None:
    """Every rule a block must pass on its own, cheapest first; raises RuleViolation."""
    header, capture = block.header, block.capture
    check_size(block)
    check_version(header)
    check_difficulty(header, params)
    check_pow(block.hash, header.bits)
    check_not_too_new(header, now_ms, params.max_future_ms)
    check_readings(capture)
    check_seals(capture)
    check_gap_notice(capture)
    leaves = reading_leaves(capture)  # hashed once for the payload root and every seal
    check_root(block, leaves)
    check_miner(header, params.members)
    check_relay_known(capture, params.relays)
    check_substation(capture, params.relays)
    check_relay_key(capture, params.relay_key(capture.relay_id))
    check_signature(block)
    check_relay_signatures(capture, leaves)


# --- contextual rules ---------------------------------------------------------------------

def check_height(header: Header, parent_height: int) -> None:
    if header.height != parent_height + 1:
        raise RuleViolation("bad-height", f"height {header.height} on a parent at {parent_height}")


def check_not_too_old(header: Header, median_time_ms: int) -> None:
    if header.time_ms <= median_time_ms:
        raise RuleViolation("time-too-old", f"time {header.time_ms} not after median {median_time_ms}")


def open_gap_of(gaps: GapRanges, first: int, last: int) -> tuple[int, int] | None:
    """The open gap range holding every seq from ``first`` to ``last``, or None."""
    for low, high in gaps:
        if low <= first and last <= high:
            return low, high
    return None


def check_fill(capture: Capture, last_seq: int | None, gaps: GapRanges = ()) -> None:
    """A block that goes back to or below the branch's last seq must fill one open gap: all
    its rows inside one range, so none is on the branch; and no gap notice (a fill skips
    nothing). Rows that touch no open range are duplicates."""
    # Sequence numbers rise by one inside a block (check_seals, check_runs_on): first and last decide.
    first, last = capture.readings[0].seq, capture.readings[-1].seq
    if last_seq is None or first > last_seq:
        return
    where = f"relay {capture.relay_id!r}: seq {first}..{last}"
    if open_gap_of(gaps, first, last) is not None:
        if capture.gap is not None:
            raise RuleViolation("bad-gap-fill", f"{where} fills an open gap but carries a gap notice")
        return
    top = min(last, last_seq)
    touched = [f"{low}..{high}" for low, high in gaps if low <= top and first <= high]
    if touched:
        raise RuleViolation("bad-gap-fill", f"{where} is not inside one open gap of the branch "
                            f"(it meets {', '.join(touched)} and readings the branch holds)")
    raise RuleViolation("duplicate-reading", f"{where} is not after the branch's last seq {last_seq} "
                        f"and fills no open gap of it")


def check_runs_on(capture: Capture) -> None:
    """Inside the block the seals follow each other without a hole (each is consecutive: check_seals)."""
    for before, after in zip(capture.seals, capture.seals[1:]):
        if after.first_seq != before.last_seq + 1:
            raise RuleViolation("sequence-gap", f"relay {capture.relay_id!r}: seq {before.last_seq} then "
                                f"{after.first_seq} inside the block")


def check_sequence(capture: Capture, last_seq: int | None) -> None:
    """Unless they fill (check_fill), the readings continue the branch's sequence; the one
    exception is a hole the relay signed as lost (a gap notice resuming here)."""
    expected = (last_seq or 0) + 1
    first = capture.readings[0].seq
    if first < expected:
        return  # a fill, checked by check_fill
    gap = capture.gap
    if first != expected and not (gap is not None and gap.resume_seq == first):
        raise RuleViolation("sequence-gap", f"relay {capture.relay_id!r}: seq {first} where {expected} was due, "
                            f"and no gap notice of the relay resumes there")


def gaps_after(gaps: GapRanges, last_seq: int | None, first: int, last: int) -> GapRanges:
    """The branch's open gap ranges once a valid block with seqs ``first``..``last`` is on it.

    A jump past ``last_seq + 1`` opens the range it skips; a fill shrinks or splits its
    range; a continuation leaves them (the very tuple: shared, O(1)). Past MAX_OPEN_GAPS
    the lowest ranges close for good.
    """
    prior = last_seq or 0
    if first > prior:
        if first == prior + 1:
            return gaps
        gaps = (*gaps, (prior + 1, first - 1))
    else:
        for index, (low, high) in enumerate(gaps):
            if low <= first and last <= high:
                parts = tuple(part for part in ((low, first - 1), (last + 1, high)) if part[0] <= part[1])
                gaps = gaps[:index] + parts + gaps[index + 1:]
                break
        else:
            return gaps  # not a fill: a block the rules refuse leaves the ranges as they were
    return gaps[-MAX_OPEN_GAPS:] if len(gaps) > MAX_OPEN_GAPS else gaps


def check_context(block: Block, parent_height: int, median_time_ms: int,
                  last_seq: int | None, relay_key: bytes | None, gaps: GapRanges = ()) -> None:
    """Rules that depend on the parent's branch; run after check_block.

    ``last_seq``/``relay_key``/``gaps`` are the relay's highest seq, key and open gap ranges
    on the parent's branch (None, None, () when the branch holds no reading of that relay).
    """
    check_height(block.header, parent_height)
    check_not_too_old(block.header, median_time_ms)
    check_relay_key(block.capture, relay_key)
    check_runs_on(block.capture)
    check_fill(block.capture, last_seq, gaps)
    check_sequence(block.capture, last_seq)
