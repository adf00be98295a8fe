"""Block bytes: canonical, round-tripping, every field bound to the hash or the payload root."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridchain.consensus import rules
from gridchain.consensus.block import (
    HEADER_PREFIX_SIZE, HEADER_SIZE, MAX_TEXT_BYTES, READING_FIELDS, Block, BlockDecodeError, Capture, Header,
    Reading, short_hash,
)
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.rules import RuleViolation

from .helpers import ALICE, capture, make_block, new_chain

finite = st.floats(allow_nan=False, allow_infinity=False)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=40).filter(lambda s: len(s.encode()) <= MAX_TEXT_BYTES)
readings = st.builds(Reading, st.integers(-2**63, 2**63 - 1), *[finite] * 10)
captures = st.builds(Capture, text, text, st.integers(0, 2**63 - 1), st.lists(readings, max_size=12).map(tuple))
headers = st.builds(Header, st.integers(0, 2**32 - 1), u64, st.binary(min_size=32, max_size=32),
                    st.binary(min_size=32, max_size=32), u64, st.integers(0, 2**32 - 1),
                    st.binary(min_size=32, max_size=32), u64)
blocks = st.builds(Block, headers, st.binary(min_size=64, max_size=64), captures, text)


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


def test_same_block_same_bytes():
    block = make_block(new_chain().tip, capture())
    twin = Block(Header.from_bytes(block.header.to_bytes()), bytes(block.signature),
                 Capture(*dataclasses.astuple(block.capture)[:3], tuple(block.capture.readings)), str(block.miner_name))
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


def _change_payload(block: Block, field: str, index: int) -> Block:
    cap = block.capture
    if field == "miner_name":
        return dataclasses.replace(block, miner_name=block.miner_name + "x")
    if field in ("relay_id", "substation"):
        return dataclasses.replace(block, capture=dataclasses.replace(cap, **{field: getattr(cap, field) + "x"}))
    if field == "openings":
        return dataclasses.replace(block, capture=dataclasses.replace(cap, openings=cap.openings + 1))
    if field == "drop":
        return dataclasses.replace(block, capture=dataclasses.replace(cap, readings=cap.readings[:-1]))
    old = cap.readings[index]
    value = getattr(old, field)
    new = dataclasses.replace(old, **{field: value + 1 if field == "timestamp_ms" else value * 0.999})
    readings = cap.readings[:index] + (new,) + cap.readings[index + 1:]
    return dataclasses.replace(block, capture=dataclasses.replace(cap, readings=readings))


PAYLOAD_FIELDS = ["miner_name", "relay_id", "substation", "openings", "drop", *READING_FIELDS]


@pytest.mark.parametrize("field", PAYLOAD_FIELDS)
def test_changing_any_payload_field_breaks_the_root(field):
    chain = new_chain()
    block = make_block(chain.tip, capture())
    for index in (0, 3, 5) if field in READING_FIELDS else (0,):
        tampered = _change_payload(block, field, index)
        assert tampered.hash == block.hash  # the header is untouched...
        with pytest.raises(RuleViolation) as caught:
            rules.check_root(tampered)  # ...but it no longer commits to this payload
        assert caught.value.reason == "bad-root"
        with pytest.raises(RuleViolation) as caught:
            chain.add(tampered, 2**62)
        assert caught.value.reason in ("bad-root", "bad-reading")  # a later timestamp may unsort them


def test_swapping_readings_breaks_the_root():
    cap = capture()
    swapped = dataclasses.replace(cap, readings=(cap.readings[1], cap.readings[0]) + cap.readings[2:])
    assert payload_root(swapped, "alice") != payload_root(cap, "alice")


def test_metadata_fields_cannot_be_shifted():
    """Length-prefixed labels: moving characters between relay id and substation changes the root."""
    a = Capture("relay-1", "North", 0, ())
    b = Capture("relay-1N", "orth", 0, ())
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
@given(st.lists(plain, min_size=7, max_size=7) | plain)
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


def test_decode_rejects_wrong_field_types_with_reasons():
    good = make_block_cached().to_fields()
    cases = {
        "bad-shape": good[:6],
        "bad-type": [good[0], good[1], 5, *good[3:]],
        "bad-signature-size": [good[0], good[1][:63], *good[2:]],
        "bad-header": [good[0][:127], *good[1:]],
        "bad-readings": [*good[:6], good[6] + b"\x00"],
        "bad-openings": [*good[:4], -1, *good[5:]],
    }
    for reason, fields in cases.items():
        with pytest.raises(BlockDecodeError) as caught:
            Block.decode(msgpack.packb(fields, use_bin_type=True))
        assert caught.value.reason == reason
    with pytest.raises(BlockDecodeError) as caught:
        Block.decode(make_block_cached().encode() + b"\x00")
    assert caught.value.reason == "bad-encoding"
    bool_openings = [*good[:4], True, *good[5:]]
    with pytest.raises(BlockDecodeError):
        Block.decode(msgpack.packb(bool_openings, use_bin_type=True))


def test_short_hash():
    block = make_block_cached()
    assert short_hash(block.hash) == block.hash.hex()[:12]
    assert ALICE.public_key == block.header.miner_key
