"""Fuzzing the whole way a peer's bytes travel: frames, messages, blocks, then the rules.

What a node does with a peer's bytes is a pipeline: ``FrameDecoder.feed`` -> ``decode_message``
-> (for a block) ``check_block`` and ``check_context``. Each stage must answer any input with
a value or its own named error -- FrameError, MessageError, BlockDecodeError, RuleViolation,
each with one of its stable reasons -- and never any other exception, since anything else
would escape the connection's error handling. The inputs are random bytes and values, and
real streams and blocks with bytes flipped, cut, inserted or fields replaced, so the fuzzer
reaches the deep stages as well as the shallow ones.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridchain.consensus import rules
from gridchain.consensus.block import Block, BlockDecodeError, Capture, Header, Reading
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.pow import MAX_BITS
from gridchain.consensus.rules import RuleViolation
from gridchain.node.port import (
    ALL_MESSAGES, BlockMessage, Blocks, GetBlocks, Hello, MessageError, Ping, Tip, decode_message, encode_message,
)
from gridchain.wire.frames import BAD_MSGPACK, EMPTY_FRAME, FRAME_TOO_LARGE, FrameDecoder, FrameError, encode_frame

from gridchain.consensus.params import RelayInfo
from gridchain.consensus.provenance import GapNotice, Seal

from tests.support.blocks import (
    ALICE, BITS, GENESIS, NOW_MS, OTHER_RELAY_KEY, PARAMS, RELAY_KEY, Relay, capture as signed_capture, gap_notice,
    make_block, new_chain,
)

FRAME_REASONS = {EMPTY_FRAME, FRAME_TOO_LARGE, BAD_MSGPACK}
MESSAGE_REASONS = {"bad-shape", "unknown-type", "bad-field", "too-many", "bad-block"}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_blocks() -> list[Block]:
    chain, relay, blocks = new_chain(), Relay(), []
    parent = chain.tip
    for _ in range(3):
        block = make_block(parent, relay.next())
        parent = chain.add(block, NOW_MS).entry
        blocks.append(block)
    return blocks


BLOCKS = _valid_blocks()
# A realistic stream from a peer: hello, a tip, a block, a sync answer, a request, a ping.
STREAM_MESSAGES = [
    Hello(version=1, network="test", genesis=GENESIS.hash, node_key=ALICE.public_key, listen_port=5004,
          height=3, tip=BLOCKS[-1].hash, work=1 << 20, agent="gridchain/0.1.0", name="alice"),
    Tip(height=3, tip=BLOCKS[-1].hash, work=1 << 20),
    BlockMessage(block=BLOCKS[0]),
    Blocks(blocks=tuple(BLOCKS), more=False),
    GetBlocks(locator=(BLOCKS[1].hash, GENESIS.hash), limit=500),
    Ping(nonce=7),
]
STREAM = b"".join(encode_frame(encode_message(message)) for message in STREAM_MESSAGES)


def through_rules(block: Block, params: NetworkParams, now_ms: int, parent_height: int, median_ms: int,
                  last_seq: int | None, relay_key: bytes | None) -> None:
    """Both groups of rules, as a node runs them; only RuleViolation (a named one) may escape."""
    try:
        rules.check_block(block, params, now_ms)
        rules.check_context(block, parent_height, median_ms, last_seq, relay_key)
    except RuleViolation as exc:
        assert exc.reason in rules.REASONS
        str(exc)


def through_pipeline(chunks: list[bytes], max_frame: int = 1 << 22) -> list[object]:
    """What a peer connection does with ``chunks``: frames, then messages, then block rules."""
    decoder = FrameDecoder(max_frame)
    messages: list[object] = []
    try:
        for chunk in chunks:
            for raw in decoder.feed(chunk):
                try:
                    message = decode_message(raw)
                except MessageError as exc:
                    assert exc.reason in MESSAGE_REASONS
                    str(exc)
                    continue
                assert isinstance(message, ALL_MESSAGES)
                messages.append(message)
    except FrameError as exc:
        assert exc.reason in FRAME_REASONS
        str(exc)
        # Poisoned: the stream is out of step, so every later feed refuses the same way.
        try:
            decoder.feed(b"\x00\x00\x00\x01\xc0")
        except FrameError as again:
            assert again is exc
        else:
            raise AssertionError("a decoder fed past a FrameError")
    for message in messages:
        blocks = message.blocks if isinstance(message, Blocks) else (
            (message.block,) if isinstance(message, BlockMessage) else ())
        for block in blocks:
            through_rules(block, PARAMS, NOW_MS, block.height - 1, 0, None, None)
    return messages


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# --- frames -----------------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8),
       max_frame=st.integers(1, 700))
def test_any_bytes_in_any_chunks_under_any_cap(data, cuts, max_frame):
    through_pipeline(split(data, cuts), max_frame)


@FUZZ
@given(prefix=st.integers(0, 2**32 - 1), tail=st.binary(max_size=64), max_frame=st.integers(1, 2**32 - 1))
def test_any_length_prefix_is_judged_before_the_body_is_kept(prefix, tail, max_frame):
    decoder = FrameDecoder(max_frame)
    try:
        decoder.feed(prefix.to_bytes(4, "big"))
    except FrameError as exc:  # refused on the prefix alone: not one body byte is kept
        assert exc.reason == (EMPTY_FRAME if prefix == 0 else FRAME_TOO_LARGE)
        assert prefix == 0 or prefix > max_frame
        assert decoder.buffered == 0
        return
    assert 1 <= prefix <= max_frame, "an announced length over the cap was taken"
    try:
        decoder.feed(tail)
    except FrameError as exc:
        assert exc.reason in FRAME_REASONS
        return
    assert decoder.buffered <= 4 + len(tail)


# --- a real stream, damaged --------------------------------------------------------------------

@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(STREAM) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, len(STREAM)), max_size=6))
def test_a_real_stream_with_bytes_flipped(flips, cuts):
    damaged = bytearray(STREAM)
    for position, byte in flips:
        damaged[position] = byte
    through_pipeline(split(bytes(damaged), cuts))


@FUZZ
@given(start=st.integers(0, len(STREAM)), length=st.integers(0, 64), insert=st.binary(max_size=16),
       cuts=st.lists(st.integers(0, len(STREAM)), max_size=4))
def test_a_real_stream_with_bytes_cut_out_or_put_in(start, length, insert, cuts):
    damaged = STREAM[:start] + insert + STREAM[start + length:]
    through_pipeline(split(damaged, cuts))


def test_the_undamaged_stream_decodes_whole_in_any_chunking():
    for size in (1, 3, 64, len(STREAM)):
        chunks = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
        assert through_pipeline(chunks) == STREAM_MESSAGES


# --- values in message fields ------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
           | st.binary(max_size=40) | st.sampled_from([bytes(32), bytes(64), bytes(128), BLOCKS[0].to_fields()]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)


@FUZZ
@given(index=st.integers(0, len(STREAM_MESSAGES) - 1), data=st.data())
def test_a_real_message_with_a_field_replaced_travels_to_a_named_answer(index, data):
    kind, body = encode_message(STREAM_MESSAGES[index])
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(values)
    through_pipeline([encode_frame([kind, body])])


# --- blocks: decoding, then every rule ----------------------------------------------------------

@FUZZ
@given(index=st.integers(0, len(BLOCKS) - 1), flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255)),
       min_size=1, max_size=4), now_ms=st.integers(0, 2**63 - 1), easy=st.booleans())
def test_a_damaged_block_decodes_to_a_named_error_or_meets_the_rules(index, flips, now_ms, easy):
    raw = bytearray(BLOCKS[index].encode())
    for position, byte in flips:
        raw[position % len(raw)] = byte
    try:
        block = Block.decode(bytes(raw))
    except BlockDecodeError as exc:
        assert exc.reason and str(exc)
        return
    # At difficulty 0 (or the block's own bits) a damaged block gets past proof of work
    # and on to the payload and signature checks.
    bits = block.header.bits if easy and block.header.bits <= MAX_BITS else (0 if easy else BITS)
    through_rules(block, NetworkParams("test", bits), now_ms, block.height - 1, 0, None, None)


headers = st.builds(Header, version=st.integers(0, 2**32 - 1), height=st.integers(0, 2**64 - 1),
                    prev_hash=st.binary(min_size=32, max_size=32), payload_root=st.binary(min_size=32, max_size=32),
                    time_ms=st.integers(0, 2**64 - 1), bits=st.integers(0, 2**32 - 1),
                    miner_key=st.binary(min_size=32, max_size=32) | st.just(ALICE.public_key),
                    nonce=st.integers(0, 2**64 - 1))
u64 = st.integers(0, 2**64 - 1)
keys = st.sampled_from([RELAY_KEY.public_key, OTHER_RELAY_KEY.public_key, b"\xff" * 32]) | st.binary(min_size=32,
                                                                                                       max_size=32)


@st.composite
def noise_captures(draw) -> Capture:
    """Any rows (flags of any bits, any floats) under seals of any shape and gap notices."""
    readings = tuple(Reading(draw(u64), draw(st.integers(-2**63, 2**63 - 1)), draw(u64), draw(st.integers(0, 2**32 - 1)),
                             *draw(st.lists(st.floats(), min_size=10, max_size=10)))
                     for _ in range(draw(st.integers(0, 5))))
    seals = tuple(draw(st.lists(st.builds(Seal, u64, st.integers(0, 6), st.binary(min_size=64, max_size=64)),
                                max_size=3)))
    gap = draw(st.none() | st.builds(GapNotice, u64, st.integers(-2**63, 2**63 - 1), st.binary(min_size=64, max_size=64)))
    return Capture(draw(st.text(max_size=12)), draw(st.text(max_size=12)), draw(keys), readings, seals, gap)


@st.composite
def signed_captures(draw) -> Capture:
    """Really signed readings of relay-1 from any seq, maybe after a gap notice: deep rules."""
    start = draw(st.integers(1, 2**63))
    gap = draw(st.none() | st.just(gap_notice("relay-1", start)))
    return signed_capture(count=draw(st.integers(1, 4)), start_seq=start, gap=gap,
                          signer=draw(st.sampled_from([RELAY_KEY, OTHER_RELAY_KEY])))


captures = noise_captures() | signed_captures()
NAMED_RELAYS = {"relay-1": RelayInfo(RELAY_KEY.public_key, "North")}


@FUZZ
@given(header=headers, signature=st.binary(min_size=64, max_size=64), capture=captures,
       miner_name=st.text(max_size=12), now_ms=st.integers(0, 2**63 - 1), parent_height=st.integers(0, 2**64),
       median_ms=st.integers(0, 2**64), last_seq=st.none() | u64, relay_key=st.none() | keys,
       members=st.none() | st.just(frozenset({ALICE.public_key})), relays=st.none() | st.just(NAMED_RELAYS),
       bits=st.sampled_from([0, BITS]))
def test_any_block_that_can_travel_meets_the_rules_or_a_named_violation(
        header, signature, capture, miner_name, now_ms, parent_height, median_ms, last_seq, relay_key, members,
        relays, bits):
    try:  # only what survives the wire reaches the rules
        block = Block.decode(Block(header, signature, capture, miner_name).encode())
    except BlockDecodeError:
        return
    params = NetworkParams("test", bits, members=members, relays=relays)
    through_rules(block, params, now_ms, parent_height, median_ms, last_seq, relay_key)


@FUZZ
@given(capture=signed_captures(), last_seq=st.none() | st.integers(0, 2**63), relay_key=st.none() | keys,
       relays=st.none() | st.just(NAMED_RELAYS))
def test_real_signed_blocks_reach_every_rule_with_a_named_answer(capture, last_seq, relay_key, relays):
    block = Block.decode(make_block(new_chain().tip, capture).encode())
    through_rules(block, NetworkParams("test", BITS, relays=relays), NOW_MS, 0, 0, last_seq, relay_key)
