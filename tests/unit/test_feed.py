"""Relay feed messages: encode/decode, and every way a response can be refused."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridchain.consensus.block import Capture, Reading
from gridchain.relay.feed import (
    MAX_READINGS_PER_READ, ErrorResponse, FeedError, InfoRequest, InfoResponse, ReadingsResponse,
    ReadRequest, decode_request, parse_info_response, parse_readings_response,
)
from gridchain.wire.frames import FrameDecoder, encode_frame


def row(ts: int, **changes) -> list:
    values = dict(vab=115.1, vbc=115.2, vca=115.0, ia=300.5, ib=301.0, ic=299.5,
                  frequency=60.01, power_factor=0.93, active_power=55.7, reactive_power=22.0)
    values.update(changes)
    return [ts, *values.values()]


def response(rows=None, **changes) -> dict:
    message = {"type": "readings", "relay_id": "relay-1", "substation": "Bogota", "openings": 3,
               "now_ms": 10_000, "readings": [row(1000), row(2000), row(3000)] if rows is None else rows}
    message.update(changes)
    return message


def reason_of(obj, since_ms=0, limit=100, expected="relay-1") -> str:
    with pytest.raises(FeedError) as info:
        parse_readings_response(obj, since_ms, limit, expected)
    return info.value.reason


# --- requests ---------------------------------------------------------------------------

def test_requests_round_trip():
    assert ReadRequest(5, 10).encode() == {"type": "read", "since_ms": 5, "limit": 10}
    assert decode_request(ReadRequest(5, 10).encode()) == ReadRequest(5, 10)
    assert decode_request(InfoRequest().encode()) == InfoRequest()
    assert decode_request({"type": "read", "since_ms": -1, "limit": 10**6, "extra": 1}) == ReadRequest(-1, 10**6)


@pytest.mark.parametrize("obj, reason", [
    ([], "bad-request"),
    ({}, "bad-request"),
    ({"type": 7}, "bad-request"),
    ({"type": "write"}, "unknown-type"),
    ({"type": "read", "limit": 1}, "bad-request"),
    ({"type": "read", "since_ms": 1.5, "limit": 1}, "bad-request"),
    ({"type": "read", "since_ms": True, "limit": 1}, "bad-request"),
    ({"type": "read", "since_ms": 0, "limit": 0}, "bad-request"),
    ({"type": "read", "since_ms": 2**63, "limit": 1}, "bad-request"),
])
def test_bad_requests(obj, reason):
    with pytest.raises(FeedError) as info:
        decode_request(obj)
    assert info.value.reason == reason


# --- readings responses -----------------------------------------------------------------

def test_good_response_becomes_a_capture():
    capture = parse_readings_response(response(), 0, 100, "relay-1")
    assert isinstance(capture, Capture)
    assert (capture.relay_id, capture.substation, capture.openings) == ("relay-1", "Bogota", 3)
    assert [r.timestamp_ms for r in capture.readings] == [1000, 2000, 3000]
    assert capture.readings[0] == Reading(*row(1000))


def test_encode_decode_round_trip():
    message = ReadingsResponse("r", "s", 0, 5, (tuple(row(1)), tuple(row(2)))).encode()
    message["readings"] = [list(r) for r in message["readings"]]  # as msgpack hands it back
    assert ReadingsResponse.decode(message).readings == (tuple(row(1)), tuple(row(2)))


def test_empty_answer_and_unchecked_relay_id():
    capture = parse_readings_response(response([], relay_id="other"), 0, 1, None)
    assert capture.readings == () and capture.relay_id == "other"


def test_integer_measurements_are_accepted_as_floats():
    capture = parse_readings_response(response([row(1000, ia=0, ib=0, ic=0)]), 0, 10, None)
    assert capture.readings[0].ia == 0.0 and type(capture.readings[0].ia) is float


def test_unknown_extra_keys_are_ignored():
    assert parse_readings_response(response(version=2), 0, 100, None).openings == 3


@pytest.mark.parametrize("obj, reason", [
    ("not a map", "bad-response"),
    ({"type": "info"}, "bad-response"),
    ({"type": "error", "reason": "bad-request", "detail": "x"}, "relay-error"),
    ({"type": "error"}, "relay-error"),
    ({k: v for k, v in response().items() if k != "now_ms"}, "bad-response"),
    (response(relay_id=5), "bad-type"),
    (response(relay_id="x" * 300), "bad-response"),
    (response(openings=-1), "bad-response"),
    (response(openings=True), "bad-type"),
    (response(openings=2.0), "bad-type"),
    (response(now_ms="now"), "bad-type"),
    (response(readings={"a": 1}), "bad-type"),
    (response([row(1000)[:5]]), "bad-type"),
    (response([tuple(row(1000)) + (1,)]), "bad-type"),
    (response(["row"]), "bad-type"),
    (response([[1000.0, *row(0)[1:]]]), "bad-type"),
    (response([[True, *row(0)[1:]]]), "bad-type"),
    (response([row(1000, vab="115")]), "bad-type"),
    (response([row(1000, vab=None)]), "bad-type"),
    (response([row(1000, ia=False)]), "bad-type"),
    (response([row(1000, frequency=math.nan)]), "not-finite"),
    (response([row(1000, active_power=math.inf)]), "not-finite"),
    (response([row(1000), row(2000, reactive_power=-math.inf)]), "not-finite"),
    (response([row(1000, ia=10**400)]), "not-finite"),  # only from Python; msgpack ints fit a float
    (response([row(1000), row(1000)]), "not-increasing"),
    (response([row(2000), row(1000)]), "not-increasing"),
    (response([row(1000), row(3000), row(2000)]), "not-increasing"),
    (response([row(2**63)]), "bad-response"),
    (response(relay_id="relay-2"), "wrong-relay"),
    (response([row(ts) for ts in range(1, 102)]), "too-many"),
])
def test_bad_responses_have_named_reasons(obj, reason):
    assert reason_of(obj) == reason


def test_readings_not_after_since_are_too_old():
    assert reason_of(response(), since_ms=1000) == "too-old"
    assert parse_readings_response(response(), 999, 100, None).readings[0].timestamp_ms == 1000


def test_more_than_the_limit_is_too_many():
    assert reason_of(response(), limit=2) == "too-many"


def test_more_than_the_protocol_maximum_is_too_many_before_rows_are_checked():
    rows = [None] * (MAX_READINGS_PER_READ + 1)
    assert reason_of(response(rows), limit=MAX_READINGS_PER_READ) == "too-many"


def test_relay_error_carries_the_relays_reason():
    with pytest.raises(FeedError) as info:
        parse_readings_response(ErrorResponse("bad-request", "limit").encode(), 0, 1)
    assert info.value.reason == "relay-error" and "bad-request" in info.value.detail


# --- info -------------------------------------------------------------------------------

def test_info_round_trip():
    info = InfoResponse("r", "s", 2, 100, 10_000, 0, None, None)
    assert parse_info_response(info.encode()) == info
    info = InfoResponse("r", "s", 2, 100, 10_000, 3, 10, 30)
    assert parse_info_response(info.encode(), "r") == info
    with pytest.raises(FeedError) as error:
        parse_info_response(info.encode(), "q")
    assert error.value.reason == "wrong-relay"


def test_bad_info():
    message = InfoResponse("r", "s", 2, 100, 10_000, 3, 10, 30).encode()
    for key, value, reason in [("interval_ms", 0, "bad-response"), ("oldest_ms", "x", "bad-type"),
                               ("buffered", None, "bad-type")]:
        with pytest.raises(FeedError) as error:
            parse_info_response({**message, key: value})
        assert error.value.reason == reason


# --- fuzz -------------------------------------------------------------------------------

_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(obj=_anything)
def test_anything_gives_a_capture_or_a_feed_error(obj):
    try:
        parse_readings_response(obj, 0, 100)
    except FeedError:
        pass


@settings(max_examples=300, deadline=None)
@given(readings=st.lists(st.lists(st.integers(-5, 5) | st.floats(), min_size=11, max_size=11), max_size=4))
def test_rows_of_numbers_give_a_valid_capture_or_a_feed_error(readings):
    try:
        capture = parse_readings_response(response(readings), -10, 100, "relay-1")
    except FeedError:
        return
    stamps = [r.timestamp_ms for r in capture.readings]
    assert stamps == sorted(set(stamps)) and all(ts > -10 for ts in stamps)
    assert all(math.isfinite(v) for r in capture.readings for v in r.as_dict().values())


# --- docs/protocol.md -------------------------------------------------------------------

def _hex_blocks(markdown: str) -> list[bytes]:
    """The bytes of each fenced block in the worked example (hex pairs at each line's start)."""
    section = markdown.split("### Worked example", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        pairs = [m.group(1) for line in block.splitlines()
                 if (m := re.match(r"((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:\s|$)", line))]
        blocks.append(bytes.fromhex(" ".join(pairs)))
    return blocks


def test_worked_example_in_protocol_md():
    docs = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
    request, answer, error = _hex_blocks(docs.read_text(encoding="utf-8"))
    assert request == encode_frame(ReadRequest(1795700700000, 360).encode())
    row = (1795700710000, 116.006, 115.869, 115.772, 275.539, 271.781, 271.858, 59.999, 0.933, 51.135, 19.724)
    assert answer == encode_frame(ReadingsResponse("relay-1", "Bogota", 2, 1795700712345, (row,)).encode())
    assert error == encode_frame(ErrorResponse("unknown-type", "unknown request type 'write'").encode())
    capture = parse_readings_response(FrameDecoder().feed(answer)[0], 1795700700000, 360, "relay-1")
    assert capture.readings == (Reading(*row),)
