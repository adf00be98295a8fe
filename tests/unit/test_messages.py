"""Peer and operator messages: round trips through real frames, strict refusals, and fuzzing.

The fuzz tests hold decode_message to its contract: for any input it returns a message or
raises MessageError with one of the five reasons, never any other exception.
"""

from __future__ import annotations

import dataclasses
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridchain.consensus.block import Block, Capture, Header, Reading
from gridchain.consensus.chain import MAX_LOCATOR_HASHES
from gridchain.consensus.provenance import GapNotice, Seal, make_flags
from gridchain.wire import fields
from gridchain.api.messages import FinalityReply, FinalityRequest, RawHeadersReply, RawHeadersRequest
from gridchain.consensus.finality import Certificate, Checkpoint, Evidence, Vote
from gridchain.net.messages import CertificatesMessage, EvidenceMessage, HelloProof, VoteMessage
from gridchain.node import port as m
from gridchain.node.port import (
    ALL_MESSAGES, CLIENT_REPLIES, CLIENT_REQUESTS, MAX_BLOCKS_PER_MESSAGE, MAX_HEADERS, MAX_LOCATOR,
    MAX_READINGS_PAGE, PEER_MESSAGES, PROTOCOL_VERSION, MessageError, decode_message, encode_message,
    work_to_bytes,
)
from gridchain.wire.frames import FrameDecoder, encode_frame

from tests.support.blocks import ALICE, GENESIS, capture, reading

REASONS = {"bad-shape", "unknown-type", "bad-field", "too-many", "bad-block"}
H = b"\xab" * 32  # a hash-sized value
BLOCK = GENESIS  # a real block for the shape checks (decoding checks shape, not validity)
BLOCK_WITH_READINGS = Block(
    Header(1, 1, GENESIS.hash, H, 1_700_000_000_000, 6, ALICE.public_key, 42), b"\x01" * 64, capture(), "alice")


def through_wire(message: object) -> object:
    """Encode, frame, unframe and decode, as a message really travels."""
    (raw,) = FrameDecoder().feed(encode_frame(encode_message(message)))
    return decode_message(raw)


def refused(obj: object) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode_message(obj)
    assert info.value.reason in REASONS
    return info.value


# --- strategies ----------------------------------------------------------------------------

u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
heights = st.integers(min_value=0, max_value=2**63 - 1)
hashes = st.binary(min_size=32, max_size=32)
labels = st.text(max_size=30)
codes = st.text(max_size=16)  # reject codes and error reasons: at most 64 bytes, 4 per code point
finite = st.floats(allow_nan=False, allow_infinity=False)
works = st.integers(min_value=0, max_value=2**512 - 1)

seqs = st.integers(min_value=0, max_value=2**63 - 1)  # as the store keeps them
signatures = st.binary(min_size=64, max_size=64)
flag_words = st.builds(make_flags, st.lists(st.integers(0, 2), max_size=10), st.booleans())


@st.composite
def readings(draw, seq=None):
    return Reading(draw(seqs) if seq is None else seq, draw(i64), draw(seqs), draw(flag_words),
                   *[draw(finite) for _ in range(10)])


@st.composite
def captures(draw):
    """A capture that decodes: its readings are a run of seqs and the seals split it in order
    (the signatures are random bytes: decoding checks shape, not signatures)."""
    count = draw(st.integers(0, 4))
    first = draw(st.integers(1, 2**63 - 1 - count))
    rows = tuple(draw(readings(seq=first + i)) for i in range(count))
    seals, start = [], 0
    while start < count:
        step = draw(st.integers(1, count - start))
        seals.append(Seal(first + start, step, draw(signatures)))
        start += step
    gap = draw(st.none() | st.builds(GapNotice, st.just(first), i64, signatures))
    return Capture(draw(labels), draw(labels), draw(hashes), rows, tuple(seals), gap)


headers = st.builds(Header, st.integers(0, 2**32 - 1), u64, hashes, hashes, u64, st.integers(0, 2**32 - 1),
                    hashes, u64)
blocks = st.builds(Block, headers, signatures, captures(), labels)

plain_scalars = st.none() | st.booleans() | i64 | finite | labels
plain_values = st.recursive(plain_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(labels, inner, max_size=3), max_leaves=10)
cursors = st.none() | st.tuples(i64, labels, seqs)
row_values = st.tuples(labels, seqs, i64, seqs, flag_words, *[finite] * 10, heights, hashes)
gap_rows = st.builds(
    lambda relay_id, first, missing, after_ms, resume_ms, boot_ms, height, block_hash: {
        "relay_id": relay_id, "first_seq": first, "last_seq": first + missing - 1, "missing": missing,
        "after_ms": after_ms, "resume_ms": resume_ms, "boot_ms": boot_ms, "height": height, "block_hash": block_hash},
    labels, st.integers(1, 2**62), st.integers(1, 2**62), st.none() | i64, st.none() | i64, i64, heights, hashes)
header_rows = st.fixed_dictionaries({
    "height": heights, "hash": hashes, "time_ms": u64, "miner_name": labels, "miner_key": hashes,
    "relay_id": labels, "readings": st.integers(0, 10_000), "newest_ms": st.none() | i64})


@st.composite
def headers_requests(draw):
    start = draw(heights)
    return m.HeadersRequest(start, min(start + draw(st.integers(0, MAX_HEADERS - 1)), 2**63 - 1))


@st.composite
def proof_replies(draw):
    size = draw(st.integers(2, 10_001))
    row = draw(readings())
    count = draw(st.integers(1, 10_000))
    first = draw(st.integers(max(0, row.seq - count + 1), row.seq))
    return m.ProofReply(draw(st.binary(min_size=128, max_size=128)), row.to_bytes(),
                        draw(st.integers(1, size - 1)), size, tuple(draw(st.lists(hashes, max_size=14))),
                        draw(heights), draw(hashes), draw(labels), draw(labels), draw(labels), draw(hashes),
                        row.seq, Seal(first, count, draw(signatures)), tuple(draw(st.lists(hashes, max_size=14))))


checkpoints = st.builds(Checkpoint, u64, hashes)
votes = st.builds(Vote, hashes, checkpoints, checkpoints, signatures)
certificates = st.builds(Certificate, checkpoints, checkpoints,
                         st.lists(st.tuples(hashes, signatures), max_size=4).map(tuple))
raw_headers = st.lists(st.binary(min_size=128, max_size=128), max_size=3).map(tuple)

MESSAGES = {
    m.Hello: st.builds(m.Hello, st.integers(0, 2**32 - 1), labels, hashes, hashes, st.integers(0, 65535), heights,
                       hashes, works, labels, labels, st.just(b"") | hashes),
    HelloProof: st.builds(HelloProof, signatures),
    m.Tip: st.builds(m.Tip, heights, hashes, works),
    m.BlockMessage: st.builds(m.BlockMessage, blocks),
    m.GetBlocks: st.builds(m.GetBlocks, st.lists(hashes, min_size=1, max_size=MAX_LOCATOR).map(tuple),
                           st.integers(1, MAX_BLOCKS_PER_MESSAGE)),
    m.Blocks: st.builds(m.Blocks, st.lists(blocks, max_size=3).map(tuple), st.booleans(), st.none() | certificates),
    VoteMessage: st.builds(VoteMessage, votes),
    EvidenceMessage: st.builds(lambda a, b: EvidenceMessage(Evidence.of(a, b)), votes, votes),
    CertificatesMessage: st.builds(CertificatesMessage, st.lists(certificates, max_size=3).map(tuple)),
    FinalityRequest: st.builds(FinalityRequest, st.none() | heights),
    FinalityReply: st.builds(FinalityReply, st.binary(min_size=128, max_size=128), st.binary(max_size=300), labels,
                             raw_headers),
    RawHeadersRequest: st.builds(RawHeadersRequest, heights, heights),
    RawHeadersReply: st.builds(RawHeadersReply, raw_headers),
    m.Ping: st.builds(m.Ping, u64),
    m.Pong: st.builds(m.Pong, u64),
    m.Reject: st.builds(m.Reject, codes, labels),
    m.StatusRequest: st.just(m.StatusRequest()),
    m.Status: st.builds(m.Status, st.dictionaries(labels, plain_values, max_size=5)),
    m.BlockRequest: st.builds(m.BlockRequest, hash=hashes) | st.builds(m.BlockRequest, height=heights),
    m.BlockReply: st.builds(m.BlockReply, st.none() | blocks, heights, st.booleans()),
    m.HeadersRequest: headers_requests(),
    m.HeadersReply: st.builds(m.HeadersReply, st.lists(header_rows, max_size=4).map(tuple)),
    m.ReadingsRequest: st.builds(m.ReadingsRequest, st.none() | labels, st.none() | i64, st.none() | i64, cursors,
                                 st.integers(1, MAX_READINGS_PAGE)),
    m.ReadingsReply: st.builds(m.ReadingsReply, st.lists(row_values, max_size=4).map(tuple), cursors),
    m.ProofRequest: st.builds(m.ProofRequest, labels, i64),
    m.ProofReply: proof_replies(),
    m.VerifyRequest: st.just(m.VerifyRequest()),
    m.VerifyReply: st.builds(m.VerifyReply, st.booleans(), heights, st.lists(
        st.tuples(heights | st.just(-1), st.sampled_from([b"", H]), labels), max_size=3).map(tuple),
        st.lists(gap_rows, max_size=3).map(tuple), st.integers(0, 2**63 - 1)),
    m.Subscribe: st.just(m.Subscribe()),
    m.BlockEvent: st.builds(m.BlockEvent, heights, hashes, labels, labels, st.integers(0, 10_000),
                            st.none() | i64, u64, st.none() | heights),
    m.Error: st.builds(m.Error, codes, labels),
}
any_message = st.one_of(*MESSAGES.values())


# --- the catalogue -------------------------------------------------------------------------

def test_every_message_has_a_strategy_and_a_unique_type():
    assert set(MESSAGES) == set(ALL_MESSAGES)
    assert len({cls.TYPE for cls in ALL_MESSAGES}) == len(ALL_MESSAGES)
    assert set(PEER_MESSAGES) | set(CLIENT_REQUESTS) | set(CLIENT_REPLIES) == set(ALL_MESSAGES)
    assert {cls.TYPE for cls in PEER_MESSAGES}.isdisjoint(cls.TYPE for cls in CLIENT_REQUESTS)
    assert {cls.TYPE for cls in PEER_MESSAGES} == {
        "hello", "hello_proof", "tip", "block", "get_blocks", "blocks", "vote", "evidence", "certificates", "ping",
        "pong", "reject"}


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda cls: cls.TYPE)
def test_messages_are_small_frozen_documented_dataclasses(cls):
    assert dataclasses.is_dataclass(cls) and cls.__doc__
    instance = through_wire(example_of(cls))
    assert not hasattr(instance, "__dict__")  # slots
    for field in dataclasses.fields(cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(instance, field.name, None)


def example_of(cls):
    return {
        m.Hello: m.Hello(PROTOCOL_VERSION, "main", H, H, 5004, 0, H, 1, "gridchain/0.1.0", "north"),
        HelloProof: HelloProof(bytes(64)),
        m.Tip: m.Tip(1, H, 3), m.BlockMessage: m.BlockMessage(BLOCK), m.GetBlocks: m.GetBlocks((H,), 500),
        m.Blocks: m.Blocks((BLOCK,), False), m.Ping: m.Ping(1), m.Pong: m.Pong(1), m.Reject: m.Reject("bad-pow"),
        m.Status: m.Status({"height": 1}), m.BlockRequest: m.BlockRequest(height=1),
        m.BlockReply: m.BlockReply(BLOCK, 0, True), m.HeadersRequest: m.HeadersRequest(0, 9),
        m.HeadersReply: m.HeadersReply(()), m.ReadingsRequest: m.ReadingsRequest(),
        m.ReadingsReply: m.ReadingsReply((), None), m.ProofRequest: m.ProofRequest("r", 1),
        m.ProofReply: m.ProofReply(bytes(128), reading(7).to_bytes(), 1, 2, (H,), 1, H, "a", "r", "s", H, 7,
                                   Seal(5, 3, bytes(64)), (H, H)),
        m.VerifyReply: m.VerifyReply(True, 1), m.Error: m.Error("not-found"),
        m.BlockEvent: m.BlockEvent(1, H, "a", "r", 6, None, 5),
        m.StatusRequest: m.StatusRequest(), m.VerifyRequest: m.VerifyRequest(), m.Subscribe: m.Subscribe(),
        VoteMessage: VoteMessage(VOTE), EvidenceMessage: EvidenceMessage(Evidence.of(VOTE, OTHER_VOTE)),
        CertificatesMessage: CertificatesMessage((CERT,)), FinalityRequest: FinalityRequest(3),
        FinalityReply: FinalityReply(bytes(128), CERT.encode(), "note\n", (bytes(128),)),
        RawHeadersRequest: RawHeadersRequest(1, 2), RawHeadersReply: RawHeadersReply(()),
    }[cls]


VOTE = Vote(b"\x01" * 32, Checkpoint(4, H), Checkpoint(5, b"\x02" * 32), b"\x03" * 64)
OTHER_VOTE = Vote(b"\x01" * 32, Checkpoint(4, H), Checkpoint(5, b"\x04" * 32), b"\x05" * 64)
CERT = Certificate(Checkpoint(4, H), Checkpoint(5, b"\x02" * 32), ((b"\x01" * 32, b"\x03" * 64),))


def test_a_vote_travels_as_its_176_bytes_and_evidence_as_352():
    body = encode_message(VoteMessage(VOTE))[1]
    assert body == {"vote": VOTE.encode()} and len(body["vote"]) == 176
    assert encode_message(EvidenceMessage(Evidence.of(VOTE, OTHER_VOTE)))[1]["evidence"] == \
        Evidence.of(VOTE, OTHER_VOTE).encode()
    assert refused(["vote", {"vote": VOTE.encode()[:-1]}]).reason == "bad-field"
    backwards = Evidence.of(VOTE, OTHER_VOTE)
    raw = backwards.second.encode() + backwards.first.encode()
    assert refused(["evidence", {"evidence": raw}]).reason == "bad-field"  # not canonical: one form per pair


def test_blocks_carry_one_certificate_and_the_stored_form_frame_matches():
    from gridchain.net.messages import blocks_frame
    message = m.Blocks((BLOCK,), True, CERT)
    assert through_wire(message) == message
    assert blocks_frame([BLOCK.encode()], True, certificate=CERT.encode()) == encode_frame(encode_message(message))
    assert through_wire(m.Blocks((BLOCK,), False)).certificate is None
    assert refused(["blocks", {"blocks": [], "more": False, "certificate": b"\x00" * 10}]).reason == "bad-field"
    assert refused(["certificates", {"certificates": [b"\x00" * 81]}]).reason == "bad-field"


def test_protocol_constants():
    assert PROTOCOL_VERSION == 1
    assert MAX_BLOCKS_PER_MESSAGE == 500
    # Every locator the chain builds must fit in a get_blocks message.
    assert MAX_LOCATOR_HASHES <= MAX_LOCATOR == 64


def test_worked_examples_in_the_protocol():
    # The same bytes as the worked examples in docs/protocol.md (peer protocol).
    frame = encode_frame(encode_message(m.Ping(nonce=1)))
    assert frame == bytes.fromhex("0000000e 92 a470696e67 81 a56e6f6e6365 01")
    assert frame[4:] == msgpack.packb(["ping", {"nonce": 1}], use_bin_type=True)
    tip_frame = encode_frame(encode_message(m.Tip(height=3, tip=bytes(range(32)), work=0x0300)))
    assert tip_frame == bytes.fromhex("0000003d 92 a3746970 83 a6686569676874 03 a3746970 c420"
                                      + bytes(range(32)).hex() + " a4776f726b c4020300")
    assert len(tip_frame) == 65


def test_work_travels_as_minimal_big_endian_bytes():
    assert work_to_bytes(0) == b"" and work_to_bytes(256) == b"\x01\x00"
    assert encode_message(m.Tip(5, H, 2**256))[1]["work"] == b"\x01" + bytes(32)
    # Leading zero bytes from another encoder are accepted; the value is what counts.
    assert decode_message(["tip", {"height": 5, "tip": H, "work": b"\x00\x00\x07"}]).work == 7


# --- round trips ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=any_message)
def test_every_message_round_trips_through_a_frame(message):
    assert through_wire(message) == message


def test_a_block_with_readings_round_trips_in_each_carrier():
    for message in (m.BlockMessage(BLOCK_WITH_READINGS), m.Blocks((BLOCK, BLOCK_WITH_READINGS), True),
                    m.BlockReply(BLOCK_WITH_READINGS, 1, False)):
        decoded = through_wire(message)
        assert decoded == message
    assert through_wire(m.BlockMessage(BLOCK_WITH_READINGS)).block.hash == BLOCK_WITH_READINGS.hash


def test_unknown_extra_keys_are_ignored():
    assert decode_message(["ping", {"nonce": 7, "added_in_v2": [1, 2]}]) == m.Ping(7)


def test_a_full_batch_of_blocks_decodes():
    message = m.Blocks((BLOCK_WITH_READINGS,) * MAX_BLOCKS_PER_MESSAGE, False)
    assert len(through_wire(message).blocks) == MAX_BLOCKS_PER_MESSAGE


# --- strict refusals -------------------------------------------------------------------------

def tip(**changes) -> list:
    return ["tip", {"height": 1, "tip": H, "work": b"\x01", **changes}]


def hello(**changes) -> list:
    body = encode_message(example_of(m.Hello))[1]
    return ["hello", {**body, **changes}]


NAN = float("nan")
EXT = msgpack.ExtType(5, b"\x00")
GAP = {"relay_id": "Relay 1", "first_seq": 101, "last_seq": 250, "missing": 150, "after_ms": 5, "resume_ms": 9,
       "boot_ms": 8, "height": 12, "block_hash": H}


def verify_with_gap(**changes) -> list:
    return ["verify_reply", {"ok": True, "checked": 1, "problems": [], "gaps": [{**GAP, **changes}],
                             "gaps_omitted": 0}]


@pytest.mark.parametrize("obj, reason, field", [
    (tip(tip=5), "bad-field", "tip"),  # an int where a hash belongs
    (tip(tip=b"\x00" * 31), "bad-field", "tip"),
    (tip(tip=b"\x00" * 33), "bad-field", "tip"),
    (tip(tip="ab" * 32), "bad-field", "tip"),  # hex text is not a hash
    (tip(height="7"), "bad-field", "height"),
    (tip(height=NAN), "bad-field", "height"),
    (tip(height=7.0), "bad-field", "height"),
    (tip(height=True), "bad-field", "height"),  # bool is not int
    (tip(height=-1), "bad-field", "height"),
    (tip(height=None), "bad-field", "height"),
    (tip(height=EXT), "bad-field", "height"),
    (tip(height=msgpack.Timestamp(1, 0)), "bad-field", "height"),
    (tip(work=3), "bad-field", "work"),
    (tip(work=b"\x01" * 65), "bad-field", "work"),
    (["tip", {"tip": H, "work": b""}], "bad-field", "height"),  # missing
    (["ping", {"nonce": 2**64}], "bad-field", "nonce"),
    (["ping", {"nonce": False}], "bad-field", "nonce"),
    (["ping", {"nonce": 10**5000}], "bad-field", "nonce"),  # too big even to print
    (["ping", {}], "bad-field", "nonce"),
    (hello(listen_port=65536), "bad-field", "listen_port"),
    (hello(listen_port=True), "bad-field", "listen_port"),
    (hello(node_key=b"k" * 31), "bad-field", "node_key"),
    (hello(genesis=None), "bad-field", "genesis"),
    (hello(version=-1), "bad-field", "version"),
    (hello(name="n" * 257), "bad-field", "name"),
    (hello(name="é" * 129), "bad-field", "name"),  # 129 characters but 258 bytes
    (hello(agent=b"gridchain"), "bad-field", "agent"),
    (["get_blocks", {"locator": [H] * (MAX_LOCATOR + 1), "limit": 1}], "too-many", "locator"),
    (["get_blocks", {"locator": [], "limit": 1}], "bad-field", "locator"),
    (["get_blocks", {"locator": [H, b"short"], "limit": 1}], "bad-field", "locator[1]"),
    (["get_blocks", {"locator": (H,), "limit": 1}], "bad-field", "locator"),
    (["get_blocks", {"locator": [H], "limit": 0}], "bad-field", "limit"),
    (["get_blocks", {"locator": [H], "limit": MAX_BLOCKS_PER_MESSAGE + 1}], "bad-field", "limit"),
    (["blocks", {"blocks": [BLOCK.to_fields()] * (MAX_BLOCKS_PER_MESSAGE + 1), "more": False}], "too-many", "blocks"),
    (["blocks", {"blocks": [], "more": 1}], "bad-field", "more"),
    (["blocks", {"blocks": [BLOCK.to_fields(), [1, 2]], "more": True}], "bad-block", "blocks[1]"),
    (["block", {}], "bad-field", "block"),
    (["block", {"block": None}], "bad-block", "block"),
    (["reject", {"code": "bad-pow"}], "bad-field", "detail"),
    (["status", {"info": {"key": b"bytes"}}], "bad-field", "info.key"),
    (["status", {"info": {"nan": NAN, 1: "int key"}}], "bad-field", "info key"),
    (["status", {"info": [1]}], "bad-field", "info"),
    (["block_request", {"hash": H, "height": 3}], "bad-field", "hash, height"),
    (["block_request", {"hash": None, "height": None}], "bad-field", "hash, height"),
    (["block_request", {"height": 3}], "bad-field", "hash"),  # nil must be said, not left out
    (["block_reply", {"block": None, "height": 0, "main": None}], "bad-field", "main"),
    (["headers_request", {"start": 5, "stop": 4}], "bad-field", "stop"),
    (["headers_request", {"start": 0, "stop": MAX_HEADERS}], "too-many", "start..stop"),
    (["headers_reply", {"rows": [{"height": 1}]}], "bad-field", "rows[0].hash"),
    (["readings_request", {"relay": None, "since_ms": None, "until_ms": None, "after": [1], "limit": 10}],
     "bad-field", "after"),
    (["readings_request", {"relay": None, "since_ms": None, "until_ms": None, "after": ["x", "r", 1], "limit": 10}],
     "bad-field", "after[0]"),
    (["readings_request", {"relay": None, "since_ms": None, "until_ms": None, "after": [1, "r"], "limit": 10}],
     "bad-field", "after"),  # the old two-item cursor: the seq is what makes a position unique
    (["readings_request", {"relay": None, "since_ms": None, "until_ms": None, "after": [1, "r", -1], "limit": 10}],
     "bad-field", "after[2]"),
    (["readings_request", {"relay": None, "since_ms": 2**63, "until_ms": None, "after": None, "limit": 10}],
     "bad-field", "since_ms"),
    (["readings_request", {"relay": None, "since_ms": None, "until_ms": None, "after": None,
                           "limit": MAX_READINGS_PAGE + 1}], "bad-field", "limit"),
    (["readings_reply", {"rows": [[0] * 17], "next": None}], "bad-field", "rows[0][0]"),
    (["readings_reply", {"rows": [["r", 1, *[1.0] * 10, 0, 1, H]], "next": None}], "bad-field", "rows[0]"),  # 15: old
    (["readings_reply", {"rows": [["r", 1, 1, 0, 3 << 18, *[1.0] * 10, 1, H]], "next": None}],
     "bad-field", "rows[0][4]"),  # quality code 11 is reserved
    (["readings_reply", {"rows": [["r", 1, 1, 0, 1 << 25, *[1.0] * 10, 1, H]], "next": None}],
     "bad-field", "rows[0][4]"),  # a reserved flag bit
    (["readings_reply", {"rows": [["r", -1, 1, 0, 0, *[1.0] * 10, 1, H]], "next": None}], "bad-field", "rows[0][1]"),
    (["readings_reply", {"rows": [], "next": [1, "r"]}], "bad-field", "next"),
    (["proof_request", {"relay": "r"}], "bad-field", "timestamp_ms"),
    (["verify_reply", {"ok": True, "checked": 1, "problems": [[1, b"\x00" * 5, "bad-pow"]]}],
     "bad-field", "problems[0][1]"),
    (["verify_reply", {"ok": True, "checked": 1, "problems": [[-2, H, "bad-pow"]]}], "bad-field", "problems[0][0]"),
    (["verify_reply", {"ok": True, "checked": 1, "problems": [[1, H, "x"]] * 1001}], "too-many", "problems"),
    (["verify_reply", {"ok": True, "checked": 1, "problems": []}], "bad-field", "gaps"),
    (verify_with_gap(missing=3), "bad-field", "gaps[0].missing"),
    (verify_with_gap(last_seq=100), "bad-field", "gaps[0].last_seq"),  # before first_seq
    (verify_with_gap(block_hash=H.hex()), "bad-field", "gaps[0].block_hash"),
    (verify_with_gap(after_ms=1.5), "bad-field", "gaps[0].after_ms"),
    (verify_with_gap(relay_id=None), "bad-field", "gaps[0].relay_id"),
    (["verify_reply", {"ok": True, "checked": 1, "problems": [], "gaps": [GAP] * 1001, "gaps_omitted": 0}],
     "too-many", "gaps"),
    (["block_event", {"height": 1}], "bad-field", "hash"),
    (["error", {"reason": 5, "detail": ""}], "bad-field", "reason"),
])
def test_malformed_fields_are_refused_with_the_field_named(obj, reason, field):
    error = refused(obj)
    assert error.reason == reason
    assert error.detail.startswith(field), error.detail
    assert len(str(error)) < 300  # never echoes a huge foreign value


@pytest.mark.parametrize("obj", [
    None, 5, "ping", b"ping", {"ping": {}}, [], ["ping"], ["ping", {"nonce": 1}, None], ("ping", {"nonce": 1}),
    EXT, msgpack.ExtType(1, b""), [b"ping", {"nonce": 1}], [None, {}], ["ping", None], ["ping", [["nonce", 1]]],
])
def test_anything_but_a_type_and_a_map_is_bad_shape(obj):
    assert refused(obj).reason == "bad-shape"


@pytest.mark.parametrize("kind", ["", "PING", "inv", "hello ", "x" * 1000])
def test_unknown_types_are_named_briefly(kind):
    error = refused([kind, {}])
    assert error.reason == "unknown-type" and len(error.detail) < 50


def test_a_block_that_fails_to_decode_keeps_its_reason():
    fields = BLOCK_WITH_READINGS.to_fields()
    fields[1] = b"\x00" * 63
    error = refused(["block", {"block": fields}])
    assert error.reason == "bad-block" and "bad-signature-size" in error.detail
    fields = BLOCK_WITH_READINGS.to_fields()
    fields[6] = fields[6][:-1]
    assert "bad-reading-row" in refused(["blocks", {"blocks": [fields], "more": False}]).detail


@pytest.mark.parametrize("value", [NAN, math.inf, -math.inf, 1, True, None, "1.0"])
def test_readings_rows_hold_only_finite_floats(value):
    row = list(encode_message(m.ReadingsReply(((("r", 1, 1, 0, 0, *[1.0] * 10, 1, H)),), None))[1]["rows"][0])
    assert decode_message(["readings_reply", {"rows": [row], "next": None}]).rows[0][0] == "r"
    row[5] = value
    assert refused(["readings_reply", {"rows": [row], "next": None}]).detail.startswith("rows[0][5]")


def test_proof_index_must_name_a_reading_leaf():
    body = encode_message(example_of(m.ProofReply))[1]
    assert refused(["proof_reply", {**body, "index": 0}]).detail.startswith("index")  # leaf 0 is metadata
    assert refused(["proof_reply", {**body, "index": 2, "size": 2}]).detail.startswith("index")
    assert refused(["proof_reply", {**body, "header": bytes(127)}]).detail.startswith("header")
    assert refused(["proof_reply", {**body, "path": [H] * 33}]).reason == "too-many"


def test_a_proof_names_the_seal_that_covers_its_reading():
    body = encode_message(example_of(m.ProofReply))[1]  # the reading is seq 7, under seal 5+3
    assert through_wire(example_of(m.ProofReply)).seal == Seal(5, 3, bytes(64))
    assert refused(["proof_reply", {**body, "seq": 6}]).detail.startswith("seq: 6 is not the leaf's seq 7")
    assert refused(["proof_reply", {**body, "seal": [8, 3, bytes(64)]}]).detail.startswith("seal: 8+3 does not cover")
    assert refused(["proof_reply", {**body, "seal": [4, 3, bytes(64)]}]).detail.startswith("seal: 4+3 does not cover")
    assert refused(["proof_reply", {**body, "seal": [5, 0, bytes(64)]}]).detail.startswith("seal[1]")
    assert refused(["proof_reply", {**body, "seal": [5, 3, bytes(63)]}]).detail.startswith("seal[2]")
    assert refused(["proof_reply", {**body, "relay_key": bytes(31)}]).detail.startswith("relay_key")
    assert refused(["proof_reply", {**body, "seal_path": [H] * 33}]).reason == "too-many"
    bad_flags = bytearray(body["leaf"])
    bad_flags[24:28] = (1 << 25).to_bytes(4, "big")  # a reserved bit of the signed row's flags
    assert refused(["proof_reply", {**body, "leaf": bytes(bad_flags)}]).detail.startswith("leaf: reserved bits")


def test_status_nesting_is_bounded():
    deep: object = 1
    for _ in range(m.MAX_INFO_DEPTH + 1):
        deep = [deep]
    assert refused(["status", {"info": {"deep": deep}}]).detail.startswith("info.deep")
    shallow = [[["ok"]]]
    assert decode_message(["status", {"info": {"x": shallow}}]).info == {"x": shallow}


def test_the_field_checks_names_stay_importable_from_messages():
    assert m.MessageError is fields.MessageError
    assert {m.BAD_SHAPE, m.UNKNOWN_TYPE, m.BAD_FIELD, m.TOO_MANY, m.BAD_BLOCK} == REASONS
    assert m.READINGS_ROW_LENGTH == fields.READINGS_ROW_LENGTH == 17


def test_locator_and_path_entries_are_named_by_index():
    error = refused(["get_blocks", {"locator": [H, H, H, bytes(31)], "limit": 1}])
    assert error.reason == "bad-field" and error.detail == "locator[3]: expected bin of 32 bytes, got bin of 31 bytes"
    body = encode_message(example_of(m.ProofReply))[1]
    assert refused(["proof_reply", {**body, "path": [H, "ab"]}]).detail.startswith("path[1]: expected bin of 32")


# --- fuzzing: nothing but MessageError, ever -------------------------------------------------

def check_contract(obj: object) -> None:
    try:
        message = decode_message(obj)
    except MessageError as exc:
        assert exc.reason in REASONS
        str(exc)  # formatting the error must not fail either
    else:
        assert isinstance(message, ALL_MESSAGES)


FIELD_NAMES = sorted({f.name for cls in ALL_MESSAGES for f in dataclasses.fields(cls)} | {"rows", "next"})
TYPE_NAMES = sorted(cls.TYPE for cls in ALL_MESSAGES)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
           | st.binary(max_size=40) | st.sampled_from([H, bytes(64), bytes(108), bytes(128), EXT, b""]))
values = st.recursive(
    scalars | st.just(BLOCK.to_fields()),
    lambda inner: st.lists(inner, max_size=16) | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5),
                                                                 inner, max_size=6),
    max_leaves=12,
)
bodies = st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=8)


@settings(max_examples=600, deadline=None)
@given(obj=values)
def test_any_value_gives_a_message_or_message_error(obj):
    check_contract(obj)


@settings(max_examples=600, deadline=None)
@given(kind=st.sampled_from(TYPE_NAMES) | st.text(max_size=12), body=bodies)
def test_any_body_for_any_type_gives_a_message_or_message_error(kind, body):
    check_contract([kind, body])


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=any_message, data=st.data())
def test_one_field_replaced_gives_a_message_or_message_error(message, data):
    kind, body = encode_message(message)
    if body:
        key = data.draw(st.sampled_from(sorted(body)))
        body[key] = data.draw(values)
    check_contract([kind, body])


@settings(max_examples=800, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_that_unpack_give_a_message_or_message_error(raw):
    try:
        obj = msgpack.unpackb(raw, raw=False)
    except Exception:  # not msgpack at all: the frame codec refuses it before us
        return
    check_contract(obj)


@settings(max_examples=600, deadline=None)
@given(message=any_message, position=st.integers(min_value=0), byte=st.integers(0, 255))
def test_a_flipped_byte_in_a_real_message_gives_a_message_or_message_error(message, position, byte):
    packed = bytearray(msgpack.packb(encode_message(message), use_bin_type=True))
    packed[position % len(packed)] = byte
    try:
        obj = msgpack.unpackb(bytes(packed), raw=False)
    except Exception:
        return
    check_contract(obj)
