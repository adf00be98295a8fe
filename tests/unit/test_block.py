"""Block bytes: canonical, round-tripping, every field bound to the hash or the payload root,
and a decoder that checks shape, sizes, rows and the seals' partition of the rows."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridchain.consensus import rules
from gridchain.consensus.block import (
    HEADER_PREFIX_SIZE, HEADER_SIZE, MAX_TEXT_BYTES, READING_SIZE, ROW_FIELDS, Block, BlockDecodeError, Capture,
    GapNotice, Header, Reading, Seal, short_hash,
)
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.provenance import GATEWAY_TIME_FLAG, MAX_SEALS_PER_BLOCK, make_flags
from gridchain.consensus.rules import RuleViolation

from tests.support.blocks import ALICE, RELAY_KEY, capture, gap_notice, make_block, new_chain, sealed

finite = st.floats(allow_nan=False, allow_infinity=False)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=40).filter(lambda s: len(s.encode()) <= MAX_TEXT_BYTES)
sig = st.binary(min_size=64, max_size=64)
flags = st.builds(make_flags, st.lists(st.sampled_from([0, 1, 2]), max_size=10), st.booleans())


@st.composite
def captures(draw) -> Capture:
    """Rows with consecutive seqs cut into seals of random sizes (signatures are noise)."""
    sizes = draw(st.lists(st.integers(1, 4), max_size=4))
    first = draw(st.integers(0, 2**64 - 1 - sum(sizes)))
    readings, seals, seq = [], [], first
    for size in sizes:
        seals.append(Seal(seq, size, draw(sig)))
        for _ in range(size):
            readings.append(Reading(seq, draw(st.integers(-2**63, 2**63 - 1)), draw(u64), draw(flags),
                                    *draw(st.lists(finite, min_size=10, max_size=10))))
            seq += 1
    gap = draw(st.none() | st.builds(GapNotice, u64, st.integers(-2**63, 2**63 - 1), sig))
    return Capture(draw(text), draw(text), draw(st.binary(min_size=32, max_size=32)), tuple(readings),
                   tuple(seals), gap)


headers = st.builds(Header, st.integers(0, 2**32 - 1), u64, st.binary(min_size=32, max_size=32),
                    st.binary(min_size=32, max_size=32), u64, st.integers(0, 2**32 - 1),
                    st.binary(min_size=32, max_size=32), u64)
blocks = st.builds(Block, headers, sig, captures(), text)


@settings(max_examples=200, deadline=None)
@given(blocks)
def test_round_trip_and_canonical(block):
    data = block.encode()
    decoded = Block.decode(data)
    assert decoded == block and decoded.hash == block.hash
    assert decoded.encode() == data
    assert Block.from_fields(block.to_fields()) == block
    assert Header.from_bytes(block.header.to_bytes()) == block.header


@given(headers)
def test_header_layout(header):
    raw = header.to_bytes()
    assert len(raw) == HEADER_SIZE and header.prefix() == raw[:HEADER_PREFIX_SIZE]
    assert raw[HEADER_PREFIX_SIZE:] == header.nonce.to_bytes(8, "big")


def test_reading_row_layout():
    row = capture().readings[0].to_bytes()
    assert len(row) == READING_SIZE == 108
    assert row[:8] == (1).to_bytes(8, "big"), "seq first, big-endian u64"


def test_same_block_same_bytes():
    block = make_block(new_chain().tip, capture())
    c = block.capture
    twin = Block(Header.from_bytes(block.header.to_bytes()), bytes(block.signature),
                 Capture(str(c.relay_id), str(c.substation), bytes(c.relay_key), tuple(c.readings), tuple(c.seals),
                         c.gap), str(block.miner_name))
    assert twin.encode() == block.encode() and twin.hash == block.hash


HEADER_CHANGES = {
    "version": lambda v: v + 1, "height": lambda v: v + 1, "prev_hash": lambda v: bytes([v[0] ^ 1]) + v[1:],
    "payload_root": lambda v: v[:-1] + bytes([v[-1] ^ 0x80]), "time_ms": lambda v: v + 1,
    "bits": lambda v: v + 1, "miner_key": lambda v: bytes([v[0] ^ 4]) + v[1:], "nonce": lambda v: v ^ (1 << 63),
}


@pytest.mark.parametrize("field", list(HEADER_CHANGES))
def test_changing_any_header_field_changes_the_hash(field):
    header = make_block(new_chain().tip, capture()).header
    changed = dataclasses.replace(header, **{field: HEADER_CHANGES[field](getattr(header, field))})
    assert changed.hash() != header.hash()


def _flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 1]) + value[1:]


def _change_payload(block: Block, field: str, index: int) -> Block:
    cap = block.capture
    if field == "miner_name":
        return dataclasses.replace(block, miner_name=block.miner_name + "x")
    if field in ("relay_id", "substation"):
        return dataclasses.replace(block, capture=dataclasses.replace(cap, **{field: getattr(cap, field) + "x"}))
    if field == "relay_key":
        return dataclasses.replace(block, capture=dataclasses.replace(cap, relay_key=_flip(cap.relay_key)))
    if field == "seal_signature":
        seal = dataclasses.replace(cap.seals[0], signature=_flip(cap.seals[0].signature))
        return dataclasses.replace(block, capture=dataclasses.replace(cap, seals=(seal,)))
    if field == "gap":
        notice = gap_notice(cap.relay_id, cap.readings[0].seq)
        return dataclasses.replace(block, capture=dataclasses.replace(cap, gap=notice))
    if field == "drop":
        return dataclasses.replace(block, capture=dataclasses.replace(cap, readings=cap.readings[:-1]))
    old = cap.readings[index]
    value = getattr(old, field)
    if field == "flags":
        new_value = value ^ GATEWAY_TIME_FLAG
    elif isinstance(value, int):
        new_value = value + 1
    else:
        new_value = value * 0.999
    new = dataclasses.replace(old, **{field: new_value})
    readings = cap.readings[:index] + (new,) + cap.readings[index + 1:]
    return dataclasses.replace(block, capture=dataclasses.replace(cap, readings=readings))


PAYLOAD_FIELDS = ["miner_name", "relay_id", "substation", "relay_key", "seal_signature", "gap", "drop", *ROW_FIELDS]


@pytest.mark.parametrize("field", PAYLOAD_FIELDS)
def test_changing_any_payload_field_breaks_the_root(field):
    chain = new_chain()
    block = make_block(chain.tip, capture())
    for index in (0, 3, 5) if field in ROW_FIELDS else (0,):
        tampered = _change_payload(block, field, index)
        assert tampered.hash == block.hash  # the header is untouched...
        with pytest.raises(RuleViolation) as caught:
            rules.check_root(tampered)  # ...but it no longer commits to this payload
        assert caught.value.reason == "bad-root"
        with pytest.raises(RuleViolation) as caught:
            chain.add(tampered, 2**62)
        # A changed seq or a dropped row no longer fits its seal, which is checked first.
        assert caught.value.reason in ("bad-root", "bad-seal")


def test_swapping_readings_breaks_the_root():
    cap = capture()
    swapped = dataclasses.replace(cap, readings=(cap.readings[1], cap.readings[0]) + cap.readings[2:])
    assert payload_root(swapped, "alice") != payload_root(cap, "alice")


def test_metadata_fields_cannot_be_shifted():
    """Moving characters between relay id and substation changes the root."""
    a = Capture("relay-1", "North", RELAY_KEY.public_key)
    b = Capture("relay-1N", "orth", RELAY_KEY.public_key)
    assert payload_root(a, "m") != payload_root(b, "m")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_decode_arbitrary_bytes_raises_only_decode_errors(data):
    try:
        Block.decode(data)
    except BlockDecodeError:
        pass


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | finite | st.text(max_size=8) | st.binary(max_size=140),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(plain, min_size=9, max_size=9) | plain)
def test_decode_wrong_shapes_raises_only_decode_errors(fields):
    try:
        Block.decode(msgpack.packb(fields, use_bin_type=True))
    except BlockDecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decode_mutated_block_raises_only_decode_errors(data):
    raw = bytearray(make_block_cached().encode())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        Block.decode(bytes(raw))
    except BlockDecodeError:
        pass


_cached: list[Block] = []


def make_block_cached() -> Block:
    if not _cached:
        _cached.append(make_block(new_chain().tip, capture()))
    return _cached[0]


def _bad_flag_row(rows: bytes) -> bytes:
    row = bytearray(rows[:READING_SIZE])
    row[24:28] = (1 << 25).to_bytes(4, "big")  # a reserved flag bit
    return bytes(row) + rows[READING_SIZE:]


def test_decode_rejects_wrong_fields_with_reasons():
    good = make_block_cached().to_fields()
    first_seq, count, signature = good[7][0]
    cases = {
        "bad-shape": good[:8],
        "bad-type": [good[0], good[1], 5, *good[3:]],
        "bad-signature-size": [good[0], good[1][:63], *good[2:]],
        "bad-header": [good[0][:127], *good[1:]],
        "bad-relay-key": [*good[:4], good[4][:31], *good[5:]],
        "bad-reading-row": [*good[:6], good[6] + b"\x00", *good[7:]],
        "bad-reading-flags": [*good[:6], _bad_flag_row(good[6]), *good[7:]],
        "too-large": [*good[:7], [[first_seq, count, signature]] * (MAX_SEALS_PER_BLOCK + 1), None],
        "bad-gap-notice": [*good[:8], [1, 2]],
    }
    bad_seals = {
        "count short of the rows": [[first_seq, count - 1, signature]],
        "count past the rows": [[first_seq, count + 1, signature]],
        "wrong first seq": [[first_seq + 1, count, signature]],
        "split with a wrong seq": [[first_seq, 2, signature], [first_seq + 3, count - 2, signature]],
        "zero count": [[first_seq, 0, signature], [first_seq, count, signature]],
        "short signature": [[first_seq, count, signature[:10]]],
        "not an array": [first_seq],
    }
    for name, seals in bad_seals.items():
        cases[f"bad-seal ({name})"] = [*good[:7], seals, None]
    for reason, fields in cases.items():
        with pytest.raises(BlockDecodeError) as caught:
            Block.decode(msgpack.packb(fields, use_bin_type=True))
        assert caught.value.reason == reason.split(" ")[0], (reason, caught.value)
    with pytest.raises(BlockDecodeError) as caught:
        Block.decode(make_block_cached().encode() + b"\x00")
    assert caught.value.reason == "bad-encoding"
    bool_count = [*good[:7], [[first_seq, True, signature]], None]
    with pytest.raises(BlockDecodeError):
        Block.decode(msgpack.packb(bool_count, use_bin_type=True))


def test_seals_may_split_the_rows():
    cap = sealed("relay-1", capture(count=7).readings, per_seal=3)
    assert [s.count for s in cap.seals] == [3, 3, 1]
    block = make_block(new_chain().tip, cap)
    assert Block.decode(block.encode()) == block


def test_short_hash():
    block = make_block_cached()
    assert short_hash(block.hash) == block.hash.hex()[:12]
    assert ALICE.public_key == block.header.miner_key
