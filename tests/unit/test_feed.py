"""Relay feed messages: encode/decode, and every way an answer can be refused before it is used."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gridchain.consensus.provenance import GapNotice, Reading, Seal, make_flags, pack_rows, seal_readings, sign_gap
from gridchain.relay.feed import (
    MAX_READINGS_PER_READ, ErrorResponse, FeedBatch, FeedError, InfoRequest, InfoResponse, ReadingsResponse,
    ReadRequest, check_info, check_readings, decode_request,
)
from gridchain.wire.frames import FrameDecoder, encode_frame

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes_raw()
RELAY = "relay-1"


def reading(seq: int, **changes) -> Reading:
    values = dict(seq=seq, timestamp_ms=seq * 1000, openings=3, flags=0, vab=115.1, vbc=115.2, vca=115.0,
                  ia=300.5, ib=301.0, ic=299.5, frequency=60.01, power_factor=0.93, active_power=55.7,
                  reactive_power=22.0)
    values.update(changes)
    return Reading(**values)


def answer(first: int = 1, count: int = 3, *, gap: GapNotice | None = None, key=KEY, relay_id=RELAY,
           readings=None, seals=None) -> dict:
    """A ``readings`` answer as a relay sends it, as msgpack hands it back."""
    readings = readings if readings is not None else [reading(first + i) for i in range(count)]
    if seals is None:
        seals = (seal_readings(key, relay_id, readings),) if readings else ()
    return ReadingsResponse(relay_id, "Bogota", PUBLIC, 10_000, first + count - 1 if count else None,
                            pack_rows(readings), tuple(seals), gap).encode()


def check(obj, after_seq=0, limit=100, key=PUBLIC, expected=RELAY) -> FeedBatch:
    return check_readings(ReadingsResponse.decode(obj), after_seq, limit, key, expected)


def reason_of(obj, **kw) -> str:
    with pytest.raises(FeedError) as info:
        check(obj, **kw)
    return info.value.reason


# --- requests ------------------------------------------------------------------------------

def test_requests_round_trip():
    assert ReadRequest(5, 10).encode() == {"type": "read", "after_seq": 5, "limit": 10}
    assert decode_request(ReadRequest(5, 10).encode()) == ReadRequest(5, 10)
    assert decode_request(InfoRequest().encode()) == InfoRequest()
    assert decode_request({"type": "read", "after_seq": 0, "limit": 10**6, "extra": 1}) == ReadRequest(0, 10**6)


def test_requests_name_a_relay_of_a_gateway_only_when_asked():
    assert ReadRequest(5, 10, "Relay 2").encode() == {"type": "read", "after_seq": 5, "limit": 10,
                                                      "relay_id": "Relay 2"}
    assert InfoRequest("Relay 2").encode() == {"type": "info", "relay_id": "Relay 2"}
    assert "relay_id" not in ReadRequest(5, 10).encode() and InfoRequest().encode() == {"type": "info"}
    assert decode_request(ReadRequest(5, 10, "Relay 2").encode()) == ReadRequest(5, 10, "Relay 2")
    assert decode_request(InfoRequest("Relay 2").encode()) == InfoRequest("Relay 2")
    assert decode_request({"type": "info", "relay_id": None}) == InfoRequest()


@pytest.mark.parametrize("obj, reason", [
    ([], "bad-request"),
    ({}, "bad-request"),
    ({"type": 7}, "bad-request"),
    ({"type": "write"}, "unknown-type"),
    ({"type": "read", "limit": 1}, "bad-request"),
    ({"type": "read", "after_seq": 1.5, "limit": 1}, "bad-request"),
    ({"type": "read", "after_seq": True, "limit": 1}, "bad-request"),
    ({"type": "read", "after_seq": -1, "limit": 1}, "bad-request"),
    ({"type": "read", "after_seq": 2**64, "limit": 1}, "bad-request"),
    ({"type": "read", "after_seq": 0, "limit": 0}, "bad-request"),
    ({"type": "read", "since_ms": 0, "limit": 1}, "bad-request"),  # the old time-keyed read
    ({"type": "read", "after_seq": 0, "limit": 1, "relay_id": 5}, "bad-request"),
    ({"type": "read", "after_seq": 0, "limit": 1, "relay_id": ""}, "bad-request"),
    ({"type": "info", "relay_id": "x" * 257}, "bad-request"),
    ({"type": "info", "relay_id": b"Relay 1"}, "bad-request"),
])
def test_bad_requests(obj, reason):
    with pytest.raises(FeedError) as info:
        decode_request(obj)
    assert info.value.reason == reason


# --- good answers --------------------------------------------------------------------------

def test_a_signed_answer_becomes_a_verified_batch():
    batch = check(answer(1, 3))
    assert (batch.relay_id, batch.substation, batch.relay_key) == (RELAY, "Bogota", PUBLIC)
    assert [r.seq for r in batch.readings] == [1, 2, 3] and batch.readings[0] == reading(1)
    assert len(batch.runs) == 1 and batch.runs[0].seal.count == 3
    assert (batch.first_seq, batch.last_seq, batch.gap, batch.relay_now_ms, batch.newest_seq) == (1, 3, None, 10_000, 3)


def test_several_seals_partition_the_rows():
    readings = [reading(s) for s in range(5, 10)]
    seals = (seal_readings(KEY, RELAY, readings[:2]), seal_readings(KEY, RELAY, readings[2:]))
    batch = check(answer(readings=readings, seals=seals), after_seq=4)
    assert [run.seal.first_seq for run in batch.runs] == [5, 7]
    assert [len(run.readings) for run in batch.runs] == [2, 3]


def test_an_empty_answer_and_extra_keys():
    assert check(answer(1, 0)).runs == ()
    assert check({**answer(), "version": 2}).last_seq == 3


def test_rows_after_a_signed_gap_notice():
    notice = sign_gap(KEY, RELAY, 500, 77)
    batch = check(answer(500, 2, gap=notice), after_seq=10)
    assert batch.gap == notice and batch.first_seq == 500


def test_integral_and_non_good_values_keep_their_word():
    flags = make_flags([1, 2], gateway_time=True)
    batch = check(answer(readings=[reading(1, ia=0.0, flags=flags, openings=2**63)]))
    assert batch.readings[0].flags == flags and batch.readings[0].openings == 2**63


def test_timestamps_and_openings_are_the_relays_word():
    # A relay clock that jumps back, or a counter that moves oddly, is not refused here.
    readings = [reading(1, timestamp_ms=5000, openings=9), reading(2, timestamp_ms=1000, openings=2)]
    assert len(check(answer(readings=readings)).readings) == 2


# --- refused answers -----------------------------------------------------------------------

OTHER = Ed25519PrivateKey.from_private_bytes(b"\x55" * 32)


def tampered_row() -> dict:
    message = answer(1, 3)
    rows = bytearray(message["rows"])
    rows[108 + 40] ^= 0x01  # one bit of the second reading's vab
    return {**message, "rows": bytes(rows)}


@pytest.mark.parametrize("obj, kw, reason", [
    ("not a map", {}, "bad-response"),
    ({"type": "info"}, {}, "bad-response"),
    ({"type": "error", "reason": "bad-request", "detail": "x"}, {}, "relay-error"),
    ({"type": "error"}, {}, "relay-error"),
    ({k: v for k, v in answer().items() if k != "now_ms"}, {}, "bad-response"),
    ({**answer(), "relay_id": 5}, {}, "bad-type"),
    ({**answer(), "relay_id": "x" * 300}, {}, "bad-response"),
    ({**answer(), "relay_key": b"\x00" * 31}, {}, "bad-response"),
    ({**answer(), "relay_key": "00" * 32}, {}, "bad-type"),
    ({**answer(), "rows": [1, 2]}, {}, "bad-type"),
    ({**answer(), "rows": answer()["rows"][:-1]}, {}, "bad-reading-row"),
    ({**answer(), "seals": [[1, 3]]}, {}, "bad-type"),
    ({**answer(), "seals": [[1, 3, b"\x00" * 63]]}, {}, "bad-type"),
    ({**answer(), "seals": [[0, 3, b"\x00" * 64]]}, {}, "bad-response"),
    ({**answer(), "seals": [[True, 3, b"\x00" * 64]]}, {}, "bad-response"),
    ({**answer(), "seals": [[1, 3, b"\x00" * 64]] * 65}, {}, "too-many"),
    ({**answer(), "gap": [1, 2]}, {}, "bad-type"),
    ({**answer(), "gap": [0, 2, b"\x00" * 64]}, {}, "bad-response"),
    ({**answer(), "newest_seq": -1}, {}, "bad-response"),
    (answer(readings=[reading(1, frequency=math.nan)]), {}, "not-finite"),
    (answer(readings=[reading(1), reading(2, active_power=-math.inf)]), {}, "not-finite"),
    (answer(readings=[reading(1, flags=1 << 25)]), {}, "bad-reading-flags"),
    (answer(readings=[reading(1, flags=0b11)]), {}, "bad-reading-flags"),
    (answer(1, 3), {"after_seq": 1}, "too-old"),
    (answer(5, 3), {"after_seq": 1}, "sequence-gap"),
    (answer(5, 3, gap=sign_gap(KEY, RELAY, 6, 0)), {"after_seq": 1}, "sequence-gap"),
    (answer(1, 3), {"limit": 2}, "too-many"),
    (answer(relay_id="relay-2"), {}, "wrong-relay"),
    (tampered_row(), {}, "bad-relay-signature"),
    (answer(key=OTHER), {}, "bad-relay-signature"),
    (answer(1, 3), {"key": OTHER.public_key().public_bytes_raw()}, "bad-relay-signature"),
    (answer(5, 3, gap=sign_gap(OTHER, RELAY, 5, 0)), {"after_seq": 1}, "bad-relay-signature"),
    (answer(readings=[reading(1), reading(3)], seals=[Seal(1, 2, b"\x00" * 64)]), {}, "bad-seal"),
    (answer(readings=[reading(1), reading(2)], seals=[seal_readings(KEY, RELAY, [reading(1)])]), {}, "bad-seal"),
    (answer(readings=[], seals=[Seal(1, 1, b"\x00" * 64)]), {}, "bad-seal"),
    (answer(readings=[reading(1)], seals=[Seal(1, 0, b"\x00" * 64), seal_readings(KEY, RELAY, [reading(1)])]),
     {}, "bad-seal"),
])
def test_bad_answers_have_named_reasons(obj, kw, reason):
    assert reason_of(obj, **kw) == reason


def test_more_than_the_protocol_maximum_is_too_many_before_rows_are_checked():
    message = {**answer(), "rows": b"\x00" * 108 * (MAX_READINGS_PER_READ + 1)}
    assert reason_of(message, limit=MAX_READINGS_PER_READ) == "too-many"


def test_relay_error_carries_the_relays_reason():
    with pytest.raises(FeedError) as info:
        ReadingsResponse.decode(ErrorResponse("bad-request", "limit").encode())
    assert info.value.reason == "relay-error" and "bad-request" in info.value.detail


# --- info ----------------------------------------------------------------------------------

def test_info_round_trip():
    notice = sign_gap(KEY, RELAY, 50, 1)
    for info in (InfoResponse("r", "s", PUBLIC, 100, 10_000, 0, None, None, None, 0),
                 InfoResponse("r", "s", PUBLIC, 100, 10_000, 3, 10, 12, 99, 2, notice)):
        assert check_info(info.encode()) == info
    with pytest.raises(FeedError) as error:
        check_info(InfoResponse("r", "s", PUBLIC, 100, 1, 0, None, None, None, 0).encode(), "q")
    assert error.value.reason == "wrong-relay"


def test_bad_info():
    message = InfoResponse("r", "s", PUBLIC, 100, 10_000, 3, 10, 12, 99, 2).encode()
    for key, value, reason in [("interval_ms", 0, "bad-response"), ("oldest_seq", "x", "bad-type"),
                               ("buffered", None, "bad-type"), ("relay_key", b"", "bad-response")]:
        with pytest.raises(FeedError) as error:
            check_info({**message, key: value})
        assert error.value.reason == reason


# --- fuzz ----------------------------------------------------------------------------------

_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | st.binary(max_size=120),
    lambda children: st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(obj=_anything)
def test_anything_gives_a_batch_or_a_feed_error(obj):
    try:
        check(obj)
    except FeedError:
        pass


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, 3 * 108 - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_of_a_row_is_refused(index, bit):
    message = answer(1, 3)
    rows = bytearray(message["rows"])
    rows[index] ^= 1 << bit
    with pytest.raises(FeedError):
        check({**message, "rows": bytes(rows)})


# --- docs/protocol.md ----------------------------------------------------------------------

EXAMPLE_KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
EXAMPLE_READING = Reading(1042, 1795700710000, 2, 0, 116.006, 115.869, 115.772, 275.539, 271.781, 271.858,
                          59.999, 0.933, 51.135, 19.724)


def example_answer() -> ReadingsResponse:
    seal = seal_readings(EXAMPLE_KEY, RELAY, [EXAMPLE_READING])
    return ReadingsResponse(RELAY, "Bogota", EXAMPLE_KEY.public_key().public_bytes_raw(), 1795700712345, 1042,
                            EXAMPLE_READING.to_bytes(), (seal,), None)


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
    request, response, error = _hex_blocks(docs.read_text(encoding="utf-8"))
    assert request == encode_frame(ReadRequest(1041, 360).encode())
    assert response == encode_frame(example_answer().encode())
    assert error == encode_frame(ErrorResponse("unknown-type", "unknown request type 'write'").encode())
    decoded = ReadingsResponse.decode(FrameDecoder().feed(response)[0])
    batch = check_readings(decoded, 1041, 360, EXAMPLE_KEY.public_key().public_bytes_raw(), RELAY)
    assert batch.readings == (EXAMPLE_READING,)
