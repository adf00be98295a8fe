"""Each consensus rule: a block that breaks exactly that rule fails with exactly its reason."""

from __future__ import annotations

import dataclasses
import math

import pytest

from gridchain.consensus import pow, rules
from gridchain.consensus.block import MAX_BLOCK_BYTES, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, Block, Capture
from gridchain.consensus.chain import Chain
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation

from .helpers import (
    ALICE, BITS, BOB, GENESIS, NOW_MS, PARAMS, Relay, capture, finish, grow, header_for, make_block, new_chain,
    reading,
)


@pytest.fixture
def setup():
    """A chain of three blocks of relay-1 and the relay that made them (next capture is fresh)."""
    chain = new_chain()
    relay = Relay(openings=3)
    grow(chain, chain.tip, 3, relay)
    return chain, relay


def rejects(chain: Chain, block: Block, reason: str, now_ms: int = NOW_MS) -> RuleViolation:
    with pytest.raises(RuleViolation) as caught:
        chain.add(block, now_ms)
    assert caught.value.reason == reason, caught.value
    assert reason in rules.REASONS
    assert block.hash not in chain
    return caught.value


def test_valid_block_passes_both_groups(setup):
    chain, relay = setup
    parent = chain.tip
    block = make_block(parent, relay.next())
    rules.check_block(block, PARAMS, NOW_MS)
    rules.check_context(block, parent.height, chain.median_time_ms(parent),
                        chain.newest_reading_ms("relay-1", parent), chain.newest_openings("relay-1", parent))
    assert chain.add(block, NOW_MS).status == "extended"


# --- too-large ------------------------------------------------------------------------------

def test_encoded_size_limit():
    rules.check_encoded_size(MAX_BLOCK_BYTES)
    with pytest.raises(RuleViolation) as caught:
        rules.check_encoded_size(MAX_BLOCK_BYTES + 1)
    assert caught.value.reason == "too-large"


def test_too_large_encoded_size_through_add(setup):
    chain, relay = setup
    block = make_block(chain.tip, relay.next())
    with pytest.raises(RuleViolation) as caught:
        chain.add(block, NOW_MS, encoded_size=MAX_BLOCK_BYTES + 1)
    assert caught.value.reason == "too-large"
    assert chain.add(block, NOW_MS, encoded_size=len(block.encode())).status == "extended"


def test_too_many_readings(setup):
    chain, relay = setup
    relay.per_block = MAX_READINGS_PER_BLOCK + 1
    rejects(chain, make_block(chain.tip, relay.next()), "too-large")


@pytest.mark.parametrize("field", ["relay_id", "substation", "miner_name"])
def test_text_too_long(setup, field):
    chain, relay = setup
    cap = relay.next()
    long_text = "é" * (MAX_TEXT_BYTES // 2 + 1)  # under the limit in characters, over it in bytes
    miner_name = long_text if field == "miner_name" else "alice"
    if field != "miner_name":
        cap = dataclasses.replace(cap, **{field: long_text})
    rejects(chain, make_block(chain.tip, cap, miner_name), "too-large")


# --- header rules ---------------------------------------------------------------------------

def test_bad_version(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, relay.next(), version=2), "bad-version")


@pytest.mark.parametrize("bits", [BITS - 1, BITS + 1])
def test_bad_difficulty(setup, bits):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, relay.next(), bits=bits), "bad-difficulty")


def test_bad_pow(setup):
    chain, relay = setup
    cap = relay.next()
    header = header_for(chain.tip, cap)
    nonce = next(n for n in range(10_000) if not pow.meets_target(header.with_nonce(n).hash(), BITS))
    rejects(chain, finish(header.with_nonce(nonce), cap, mine=False), "bad-pow")


def test_time_too_new(setup):
    chain, relay = setup
    limit = NOW_MS + PARAMS.max_future_ms
    rejects(chain, make_block(chain.tip, relay.next(), time_ms=limit + 1), "time-too-new")
    assert chain.add(make_block(chain.tip, relay.next(), time_ms=limit), NOW_MS).status == "extended"


# --- readings -------------------------------------------------------------------------------

VALUE_FIELDS = ["vab", "vbc", "vca", "ia", "ib", "ic", "frequency", "power_factor", "active_power", "reactive_power"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", VALUE_FIELDS)
def test_non_finite_value(setup, field, value):
    chain, relay = setup
    cap = relay.next()
    bad = cap.readings[:2] + (dataclasses.replace(cap.readings[2], **{field: value}),) + cap.readings[3:]
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, readings=bad)), "bad-reading")


@pytest.mark.parametrize("pf", [1.0000001, -1.5, 2.0])
def test_power_factor_out_of_range(setup, pf):
    chain, relay = setup
    cap = relay.next()
    bad = (dataclasses.replace(cap.readings[0], power_factor=pf),) + cap.readings[1:]
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, readings=bad)), "bad-reading")


@pytest.mark.parametrize("pf", [-1.0, 0.0, 1.0])
def test_power_factor_bounds_accepted(setup, pf):
    chain, relay = setup
    cap = relay.next()
    good = (dataclasses.replace(cap.readings[0], power_factor=pf),) + cap.readings[1:]
    assert chain.add(make_block(chain.tip, dataclasses.replace(cap, readings=good)), NOW_MS).status == "extended"


@pytest.mark.parametrize("order", ["equal", "backwards"])
def test_timestamps_not_increasing(setup, order):
    chain, relay = setup
    cap = relay.next()
    r = list(cap.readings)
    if order == "equal":
        r[3] = dataclasses.replace(r[3], timestamp_ms=r[2].timestamp_ms)
    else:
        r[2], r[3] = r[3], r[2]
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, readings=tuple(r))), "bad-reading")


def test_negative_timestamp():
    chain = new_chain()
    cap = Capture("relay-1", "North", 0, (reading(-10), reading(0)))
    rejects(chain, make_block(chain.tip, cap), "bad-reading")


def test_empty_readings(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, dataclasses.replace(relay.next(), readings=())), "bad-reading")


def test_empty_relay_id(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, dataclasses.replace(relay.next(), relay_id="")), "bad-reading")


def test_reading_ahead_of_block_time(setup):
    """A reading from the far future would shut its relay out of the branch for good."""
    chain, relay = setup
    cap = relay.next()
    block_time = chain.tip.time_ms + 1_000
    ahead = block_time + PARAMS.max_future_ms
    far = (*cap.readings[:-1], dataclasses.replace(cap.readings[-1], timestamp_ms=ahead + 1))
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, readings=far), time_ms=block_time), "bad-reading")
    near = (*cap.readings[:-1], dataclasses.replace(cap.readings[-1], timestamp_ms=ahead))
    block = make_block(chain.tip, dataclasses.replace(cap, readings=near), time_ms=block_time)
    assert chain.add(block, NOW_MS).status == "extended"


def test_non_numeric_value_in_memory(setup):
    chain, _ = setup
    cap = capture(start_ms=10**13)
    bad = (dataclasses.replace(cap.readings[0], ia="400"),) + cap.readings[1:]
    with pytest.raises(RuleViolation) as caught:
        rules.check_readings(dataclasses.replace(cap, readings=bad))
    assert caught.value.reason == "bad-reading"


# --- payload, miner, signature --------------------------------------------------------------

def test_bad_root(setup):
    chain, relay = setup
    cap = relay.next()
    other = dataclasses.replace(cap, openings=cap.openings + 1)
    rejects(chain, make_block(chain.tip, cap, payload_root=header_for(chain.tip, other).payload_root), "bad-root")


def test_unknown_miner():
    members = NetworkParams("test", BITS, members=frozenset({BOB.public_key}))
    chain = Chain(GENESIS, members)
    assert chain.add(make_block(chain.tip, capture(), "bob", BOB), NOW_MS).status == "extended"
    rejects(chain, make_block(chain.tip, capture(start_ms=chain.newest_reading_ms("relay-1") + 1)), "unknown-miner")


def test_signature_by_another_key(setup):
    chain, relay = setup
    cap = relay.next()
    header = header_for(chain.tip, cap, signer=ALICE)
    rejects(chain, finish(header, cap, signer=BOB), "bad-signature")


def test_signature_tampered(setup):
    chain, relay = setup
    block = make_block(chain.tip, relay.next())
    bad = dataclasses.replace(block, signature=bytes([block.signature[0] ^ 1]) + block.signature[1:])
    rejects(chain, bad, "bad-signature")


def test_signature_over_other_hash(setup):
    chain, relay = setup
    block = make_block(chain.tip, relay.next())
    rejects(chain, dataclasses.replace(block, signature=ALICE.sign(block.header.prev_hash)), "bad-signature")


def test_miner_key_not_a_curve_point(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, relay.next(), miner_key=b"\xff" * 32), "bad-signature")


# --- contextual rules -----------------------------------------------------------------------

def test_unknown_parent(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, relay.next(), prev_hash=b"\x42" * 32), "unknown-parent")


@pytest.mark.parametrize("offset", [1, -1, -3])
def test_bad_height(setup, offset):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, relay.next(), height=chain.tip.height + 1 + offset), "bad-height")


def test_time_too_old(setup):
    chain, relay = setup
    median = chain.median_time_ms(chain.tip)
    old_readings = capture("relay-2", start_ms=median - 100_000)  # not ahead of the block's time
    rejects(chain, make_block(chain.tip, old_readings, time_ms=median), "time-too-old")
    assert chain.add(make_block(chain.tip, old_readings, time_ms=median + 1), NOW_MS).status == "extended"


def test_median_uses_window():
    chain = new_chain()
    relay = Relay()
    grow(chain, chain.tip, 12, relay)
    times = sorted(chain.main_at(h).time_ms for h in range(2, 13))
    assert chain.median_time_ms(chain.tip) == times[5]


def test_duplicate_reading_same_capture_as_parent(setup):
    """The prototype's Case 3: the relay returned what the previous block already holds."""
    chain, relay = setup
    relay.next_ms -= relay.per_block * 10_000  # replay the tip's capture
    rejects(chain, make_block(chain.tip, relay.next(), "bob", BOB), "duplicate-reading")


def test_duplicate_reading_overlap_by_one(setup):
    chain, relay = setup
    newest = chain.newest_reading_ms("relay-1")
    rejects(chain, make_block(chain.tip, capture(start_ms=newest, openings=3)), "duplicate-reading")
    block = make_block(chain.tip, capture(start_ms=newest + 1, openings=3))
    assert chain.add(block, NOW_MS).status == "extended"


def test_bad_openings(setup):
    chain, relay = setup
    relay.openings = 2
    rejects(chain, make_block(chain.tip, relay.next()), "bad-openings")
    relay.openings = 3
    assert chain.add(make_block(chain.tip, relay.next()), NOW_MS).status == "extended"


@pytest.mark.parametrize("openings", [-1, 2**63, True])
def test_openings_out_of_range_in_memory(openings):
    with pytest.raises(RuleViolation) as caught:
        rules.check_readings(capture(openings=openings))
    assert caught.value.reason == "bad-openings"


def test_other_relay_is_not_a_duplicate(setup):
    chain, _ = setup
    assert chain.add(make_block(chain.tip, capture("relay-2")), NOW_MS).status == "extended"


# --- order ----------------------------------------------------------------------------------

def test_cheap_rules_run_first(setup):
    """A block with bad proof of work and a bad signature is refused for the cheap reason."""
    chain, relay = setup
    cap = relay.next()
    header = header_for(chain.tip, cap)
    nonce = next(n for n in range(10_000) if not pow.meets_target(header.with_nonce(n).hash(), BITS))
    rejects(chain, finish(header.with_nonce(nonce), cap, signer=BOB, mine=False), "bad-pow")


def test_violation_carries_reason_and_detail():
    exc = RuleViolation("bad-pow", "hash abc")
    assert (exc.reason, exc.detail, str(exc)) == ("bad-pow", "hash abc", "bad-pow: hash abc")
