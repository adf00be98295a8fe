"""The frame codec: exact bytes, incremental decoding, caps before bodies, hostile input."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridchain.wire.frames import (
    MAX_FRAME_BYTES, PREFIX_SIZE, FrameDecoder, FrameError, decode_body, encode_frame, frame_length,
)


def frame_of_body(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_encode_frame_is_length_prefix_then_msgpack():
    assert encode_frame({"type": "info"}) == bytes.fromhex("0000000b 81a474797065a4696e666f")
    assert encode_frame(b"\x01") == b"\x00\x00\x00\x03\xc4\x01\x01"  # bytes travel as bin


def test_encode_frame_refuses_a_body_over_the_cap():
    with pytest.raises(FrameError) as info:
        encode_frame("x" * 100, max_frame=50)
    assert info.value.reason == "frame-too-large"
    assert "frame-too-large" in str(info.value)


def test_round_trip_of_many_frames_in_one_feed():
    messages = [{"type": "read", "since_ms": i, "limit": 10} for i in range(50)] + [None, 0, "é", [1.5]]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(m) for m in messages)) == messages
    assert decoder.buffered == 0


def test_one_byte_at_a_time():
    messages = [{"a": [1, 2, {"b": b"\x00" * 300}]}, "second", 3]
    data = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i:i + 1])
        assert decoder.buffered == (i + 1) - sum(len(encode_frame(m)) for m in out)
    assert out == messages


@pytest.mark.parametrize("split", range(1, 12))
def test_every_split_point(split):
    data = encode_frame({"k": "v"}) + encode_frame([1, 2])
    decoder = FrameDecoder()
    assert decoder.feed(data[:split]) + decoder.feed(data[split:]) == [{"k": "v"}, [1, 2]]


def test_feed_of_nothing_returns_nothing():
    assert FrameDecoder().feed(b"") == []


def test_cap_is_checked_on_the_prefix_before_any_body_arrives():
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(FrameError) as info:
        decoder.feed(b"\x00\x65")  # 101: refused with no body byte sent
    assert info.value.reason == "frame-too-large"
    assert decoder.buffered == 0


def test_largest_possible_prefix_is_refused_without_allocating():
    with pytest.raises(FrameError) as info:
        FrameDecoder().feed(b"\xff\xff\xff\xff" + b"x" * 10)
    assert info.value.reason == "frame-too-large"
    assert str(2**32 - 1) in info.value.detail


def test_body_of_exactly_the_cap_is_accepted():
    body = msgpack.packb(b"z" * 95)
    decoder = FrameDecoder(max_frame=len(body))
    assert decoder.feed(frame_of_body(body)) == [b"z" * 95]


def test_default_cap_is_four_mib():
    assert MAX_FRAME_BYTES == 4 * 1024 * 1024
    assert frame_length(struct.pack(">I", MAX_FRAME_BYTES)) == MAX_FRAME_BYTES
    with pytest.raises(FrameError):
        frame_length(struct.pack(">I", MAX_FRAME_BYTES + 1))


def test_empty_frame():
    with pytest.raises(FrameError) as info:
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    assert info.value.reason == "empty-frame"


@pytest.mark.parametrize("body", [
    msgpack.packb(1) + msgpack.packb(2),  # trailing bytes after one object
    b"\xc1",  # the one byte msgpack never uses
    b"\x92\x01",  # array of 2 with only one element
    b"\xd4\x01\x00",  # fixext 1
    b"\xc7\x02\x05ab",  # ext 8
    b"\xd6\xff\x00\x00\x00\x00",  # the built-in timestamp extension
    b"\x91" * 5000 + b"\xc0",  # nesting deeper than the unpacker's stack
    b"\x81\x01\x02",  # an integer map key
    b"\xa2\xff\xfe",  # str that is not UTF-8
])
def test_bad_bodies_are_bad_msgpack(body):
    with pytest.raises(FrameError) as info:
        FrameDecoder().feed(frame_of_body(body))
    assert info.value.reason == "bad-msgpack"


def test_a_length_inside_the_body_cannot_exceed_the_frame():
    body = b"\xdb\xff\xff\xff\xff" + b"a" * 10  # str 32 claiming 4 GiB
    with pytest.raises(FrameError) as info:
        decode_body(body, max_frame=64)
    assert info.value.reason == "bad-msgpack"


def test_decoder_is_poisoned_after_an_error():
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as first:
        decoder.feed(frame_of_body(b"\xc1"))
    with pytest.raises(FrameError) as again:
        decoder.feed(encode_frame("fine"))
    assert again.value is first.value
    assert decoder.buffered == 0  # nothing is kept of a frame that broke the rules


def test_messages_before_a_bad_frame_in_the_same_feed_are_lost_with_the_connection():
    # The caller drops the connection on FrameError; nothing half-trusted is handed out.
    with pytest.raises(FrameError):
        FrameDecoder().feed(encode_frame("ok") + frame_of_body(b"\xc1"))


def test_large_frame_fed_in_small_chunks_is_linear():
    payload = b"p" * (1 << 20)
    data = encode_frame(payload)
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(data), 512):
        out += decoder.feed(data[i:i + 512])
    assert out == [payload]


def test_bad_max_frame():
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=0)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=2**32)


def test_prefix_size():
    assert PREFIX_SIZE == 4


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), chunk=st.integers(min_value=1, max_value=17))
def test_any_bytes_give_messages_or_frame_error(data, chunk):
    decoder = FrameDecoder(max_frame=64)
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i:i + chunk])
    except FrameError as exc:
        assert exc.reason in {"empty-frame", "frame-too-large", "bad-msgpack"}


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=1, max_size=100))
def test_any_body_gives_a_message_or_frame_error(body):
    try:
        FrameDecoder().feed(frame_of_body(body))
    except FrameError as exc:
        assert exc.reason == "bad-msgpack"


_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(_values, max_size=5), chunk=st.integers(min_value=1, max_value=64))
def test_round_trip_in_any_chunking(messages, chunk):
    data = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i:i + chunk])
    assert out == messages
