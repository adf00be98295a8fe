"""Each consensus rule: a block that breaks exactly that rule fails with exactly its reason."""

from __future__ import annotations

import dataclasses
import math

import pytest

from gridchain.consensus import pow, rules
from gridchain.consensus.block import MAX_BLOCK_BYTES, MAX_READINGS_PER_BLOCK, MAX_TEXT_BYTES, Block, Capture
from gridchain.consensus.chain import Chain
from gridchain.consensus.finality import Checkpoint, FinalityState
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams, RelayInfo
from gridchain.consensus.provenance import MAX_SEALS_PER_BLOCK, Seal, seal_readings
from gridchain.consensus.rules import MAX_STORED_INT, RuleViolation

from tests.support.blocks import (
    ALICE, BITS, BOB, NOW_MS, OTHER_RELAY_KEY, PARAMS, RELAY_KEY, Relay, capture, finish, gap_notice, grow,
    header_for, make_block, new_chain, reading, sealed,
)


@pytest.fixture
def setup():
    """A chain of three blocks of relay-1 (seq 1..18) and the relay that made them."""
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


def accepts(chain: Chain, block: Block, now_ms: int = NOW_MS) -> None:
    assert chain.add(block, now_ms).status == "extended"


def resealed(cap: Capture, readings, signer=RELAY_KEY) -> Capture:
    """``cap`` with other readings, sealed properly: only what the test changes is wrong."""
    return sealed(cap.relay_id, readings, cap.substation, signer, cap.gap)


def test_valid_block_passes_both_groups(setup):
    chain, relay = setup
    parent = chain.tip
    block = make_block(parent, relay.next())
    rules.check_block(block, PARAMS, NOW_MS)
    rules.check_context(block, parent.height, chain.median_time_ms(parent),
                        chain.last_seq("relay-1", parent), chain.relay_key("relay-1", parent))
    accepts(chain, block)
    assert chain.last_seq("relay-1") == 24


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
    chain, _ = setup
    readings = [reading(19 + i) for i in range(MAX_READINGS_PER_BLOCK + 1)]
    rejects(chain, make_block(chain.tip, sealed("relay-1", readings, per_seal=5_000)), "too-large")


def test_too_many_seals(setup):
    chain, _ = setup
    readings = [reading(19 + i) for i in range(MAX_SEALS_PER_BLOCK + 1)]
    rejects(chain, make_block(chain.tip, sealed("relay-1", readings, per_seal=1)), "too-large")
    accepts(chain, make_block(chain.tip, sealed("relay-1", readings[:-1], per_seal=1)))


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

@pytest.mark.parametrize("version", [1, 3])
def test_bad_version(setup, version):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, relay.next(), version=version), "bad-version")


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
    cap = relay.next()
    rejects(chain, make_block(chain.tip, cap, time_ms=limit + 1), "time-too-new")
    accepts(chain, make_block(chain.tip, cap, time_ms=limit))


# --- readings -------------------------------------------------------------------------------

VALUE_FIELDS = ["vab", "vbc", "vca", "ia", "ib", "ic", "frequency", "power_factor", "active_power", "reactive_power"]


def with_reading(cap: Capture, index: int, **changes) -> Capture:
    readings = list(cap.readings)
    readings[index] = dataclasses.replace(readings[index], **changes)
    return resealed(cap, readings)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", VALUE_FIELDS)
def test_non_finite_value(setup, field, value):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, with_reading(relay.next(), 2, **{field: value})), "bad-reading")


@pytest.mark.parametrize("pf", [1.0000001, -1.5, 2.0])
def test_power_factor_out_of_range(setup, pf):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, with_reading(relay.next(), 0, power_factor=pf)), "bad-reading")


@pytest.mark.parametrize("pf", [-1.0, 0.0, 1.0])
def test_power_factor_bounds_accepted(setup, pf):
    chain, relay = setup
    accepts(chain, make_block(chain.tip, with_reading(relay.next(), 0, power_factor=pf)))


def test_seq_zero_is_not_a_reading():
    chain = new_chain()
    rejects(chain, make_block(chain.tip, capture(start_seq=0)), "bad-reading")


@pytest.mark.parametrize("field", ["seq", "openings"])
def test_numbers_past_what_the_store_holds(field):
    chain = new_chain()
    cap = capture(count=1, gap=gap_notice("relay-1", MAX_STORED_INT + 1))
    rejects(chain, make_block(chain.tip, with_reading(cap, 0, **{field: MAX_STORED_INT + 1})), "bad-reading")


def test_empty_readings(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, dataclasses.replace(relay.next(), readings=(), seals=())), "bad-reading")


@pytest.mark.parametrize("relay_id", ["", "r" * 256])
def test_relay_id_that_a_relay_cannot_sign(relay_id):
    chain = new_chain()
    rejects(chain, make_block(chain.tip, dataclasses.replace(capture(), relay_id=relay_id)), "bad-reading")


def test_non_numeric_value_in_memory():
    cap = capture()
    bad = (dataclasses.replace(cap.readings[0], ia="400"),) + cap.readings[1:]
    with pytest.raises(RuleViolation) as caught:
        rules.check_readings(dataclasses.replace(cap, readings=bad))
    assert caught.value.reason == "bad-reading"


def test_timestamps_and_openings_are_the_relays_word(setup):
    """Times out of order, far ahead of the block, and a counter that fell: all accepted."""
    chain, relay = setup
    cap = relay.next()
    block_time = chain.tip.time_ms + 1_000
    far = chain.tip.time_ms + 10 * PARAMS.max_future_ms
    times = [far, far, far - 50_000, 0, -5, far + 1]
    readings = [dataclasses.replace(r, timestamp_ms=t, openings=2 if i % 2 else 0)
                for i, (r, t) in enumerate(zip(cap.readings, times))]
    accepts(chain, make_block(chain.tip, resealed(cap, readings), time_ms=block_time))
    accepts(chain, make_block(chain.tip, relay.next()))  # and the relay goes on after it


# --- seals and the gap notice -----------------------------------------------------------------

def test_bad_seal_no_seals(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.tip, dataclasses.replace(relay.next(), seals=())), "bad-seal")


@pytest.mark.parametrize("seals", [
    lambda s: (dataclasses.replace(s, count=s.count - 1),),
    lambda s: (dataclasses.replace(s, first_seq=s.first_seq + 1),),
    lambda s: (s, s),
])
def test_bad_seal_does_not_partition_the_rows(setup, seals):
    chain, relay = setup
    cap = relay.next()
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, seals=seals(cap.seals[0]))), "bad-seal")


def test_bad_seal_rows_not_consecutive(setup):
    chain, relay = setup
    cap = relay.next()
    readings = list(cap.readings)
    readings[3] = dataclasses.replace(readings[3], seq=readings[3].seq + 10)
    unsigned = Seal(cap.readings[0].seq, len(readings), cap.seals[0].signature)
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, readings=tuple(readings), seals=(unsigned,))),
            "bad-seal")


def test_bad_gap_notice_elsewhere_than_the_first_reading(setup):
    chain, relay = setup
    cap = relay.next()
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, gap=gap_notice("relay-1", 100))), "bad-gap-notice")


# --- payload, miner, relay, signatures --------------------------------------------------------

def test_bad_root(setup):
    chain, relay = setup
    cap = relay.next()
    other = dataclasses.replace(cap, substation="South")
    rejects(chain, make_block(chain.tip, cap, payload_root=header_for(chain.tip, other).payload_root), "bad-root")


NAMED = NetworkParams("named", BITS, members=frozenset({ALICE.public_key, BOB.public_key}),
                      member_names={ALICE.public_key: "alice", BOB.public_key: "bob"},
                      relays={"relay-1": RelayInfo(RELAY_KEY.public_key, "North")})


def named_chain(params: NetworkParams = NAMED) -> Chain:
    return Chain(make_genesis(params), params)


def test_a_network_document_makes_its_own_genesis():
    assert make_genesis(NAMED).hash != make_genesis(PARAMS).hash
    other = dataclasses.replace(NAMED, network_hash=None, relays={"relay-1": RelayInfo(OTHER_RELAY_KEY.public_key,
                                                                                         "North")})
    assert make_genesis(other).hash != make_genesis(NAMED).hash
    assert make_genesis(NetworkParams("test", BITS)).hash == make_genesis("test", BITS).hash


def test_valid_block_of_a_named_network():
    chain = named_chain()
    accepts(chain, make_block(chain.tip, capture(), "bob", BOB))


def test_not_a_member():
    params = dataclasses.replace(NAMED, members=frozenset({BOB.public_key}))
    chain = Chain(make_genesis(params), params)
    accepts(chain, make_block(chain.tip, capture(), "bob", BOB))
    rejects(chain, make_block(chain.tip, capture(start_seq=7)), "not-a-member")


def test_unknown_relay():
    chain = named_chain()
    rejects(chain, make_block(chain.tip, capture("relay-9")), "unknown-relay")


def test_wrong_substation():
    chain = named_chain()
    rejects(chain, make_block(chain.tip, capture(substation="South")), "wrong-substation")


def test_relay_key_mismatch_with_the_network_document():
    """Readings properly signed, but by a key that is not the relay's in the document."""
    chain = named_chain()
    rejects(chain, make_block(chain.tip, capture(signer=OTHER_RELAY_KEY)), "relay-key-mismatch")


def test_relay_key_mismatch_on_an_open_branch(setup):
    """Open network: the first block of a relay on a branch pins its key for that branch."""
    chain, relay = setup
    rejects(chain, make_block(chain.tip, capture(start_seq=19, signer=OTHER_RELAY_KEY)), "relay-key-mismatch")
    # Another branch that never carried relay-1 may take the other key.
    fork = chain.genesis
    accepts_side = chain.add(make_block(fork, capture(signer=OTHER_RELAY_KEY), "bob", BOB), NOW_MS)
    assert accepts_side.status == "side"


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


def test_bad_relay_signature_readings_signed_by_another_key(setup):
    """A member forging readings: it signs them itself but names the relay's key."""
    chain, relay = setup
    forged = dataclasses.replace(capture(start_seq=19, signer=OTHER_RELAY_KEY), relay_key=RELAY_KEY.public_key)
    rejects(chain, make_block(chain.tip, forged), "bad-relay-signature")


def test_bad_relay_signature_altered_reading(setup):
    """A reading changed after the relay sealed it (the block's root is recomputed)."""
    chain, relay = setup
    cap = relay.next()
    altered = dataclasses.replace(cap.readings[2], ia=cap.readings[2].ia + 1)
    tampered = dataclasses.replace(cap, readings=cap.readings[:2] + (altered,) + cap.readings[3:])
    rejects(chain, make_block(chain.tip, tampered), "bad-relay-signature")


def test_bad_relay_signature_in_the_second_seal(setup):
    chain, relay = setup
    cap = sealed("relay-1", relay.next().readings, per_seal=3)
    second = dataclasses.replace(cap.seals[1], signature=cap.seals[0].signature)
    rejects(chain, make_block(chain.tip, dataclasses.replace(cap, seals=(cap.seals[0], second))),
            "bad-relay-signature")


def test_bad_relay_signature_gap_notice(setup):
    chain, _ = setup
    notice = gap_notice("relay-1", 50, signer=OTHER_RELAY_KEY)
    rejects(chain, make_block(chain.tip, capture(start_seq=50, gap=notice)), "bad-relay-signature")


def test_bad_relay_signature_key_not_a_curve_point(setup):
    chain, relay = setup
    rejects(chain, make_block(chain.genesis, dataclasses.replace(capture(), relay_key=b"\xff" * 32)),
            "bad-relay-signature")


def test_a_seal_binds_the_relay_id():
    chain = new_chain()
    cap = capture("relay-2")
    renamed = dataclasses.replace(cap, relay_id="relay-3")
    rejects(chain, make_block(chain.tip, renamed), "bad-relay-signature")


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
    cap = relay.next()
    rejects(chain, make_block(chain.tip, cap, time_ms=median), "time-too-old")
    accepts(chain, make_block(chain.tip, cap, time_ms=median + 1))


def test_median_uses_window():
    chain = new_chain()
    grow(chain, chain.tip, 12, Relay())
    times = sorted(chain.main_at(h).time_ms for h in range(2, 13))
    assert chain.median_time_ms(chain.tip) == times[5]


def test_median_on_a_short_chain_uses_what_there_is():
    chain = new_chain()
    grow(chain, chain.tip, 2, Relay())
    times = sorted(chain.main_at(h).time_ms for h in range(3))
    assert chain.median_time_ms(chain.tip) == times[1]
    assert chain.median_time_ms(chain.genesis) == chain.genesis.time_ms


def test_duplicate_reading_same_capture_as_parent(setup):
    """The prototype's Case 3: the relay returned what the previous block already holds."""
    chain, _ = setup
    rejects(chain, make_block(chain.tip, capture(start_seq=13), "bob", BOB), "duplicate-reading")


def test_duplicate_reading_overlap_by_one(setup):
    chain, _ = setup
    rejects(chain, make_block(chain.tip, capture(start_seq=18)), "duplicate-reading")
    accepts(chain, make_block(chain.tip, capture(start_seq=19)))


def test_sequence_gap_skipping_readings(setup):
    """A member leaving readings out: the block starts one past where it should."""
    chain, _ = setup
    rejects(chain, make_block(chain.tip, capture(start_seq=20)), "sequence-gap")


def test_sequence_gap_first_block_of_a_relay_starts_at_one():
    chain = new_chain()
    rejects(chain, make_block(chain.tip, capture(start_seq=2)), "sequence-gap")
    accepts(chain, make_block(chain.tip, capture(start_seq=1)))


def test_sequence_gap_inside_a_block(setup):
    chain, _ = setup
    first = seal_readings(RELAY_KEY, "relay-1", [reading(19), reading(20)])
    later = [reading(22), reading(23)]
    second = seal_readings(RELAY_KEY, "relay-1", later)
    cap = Capture("relay-1", "North", RELAY_KEY.public_key, (reading(19), reading(20), *later), (first, second))
    rejects(chain, make_block(chain.tip, cap), "sequence-gap")


def test_a_gap_the_relay_signed_is_accepted(setup):
    """A relay restart that lost its buffer: its signed notice covers the hole."""
    chain, _ = setup
    notice = gap_notice("relay-1", 5_000)
    accepts(chain, make_block(chain.tip, capture(start_seq=5_000, gap=notice)))
    assert chain.last_seq("relay-1") == 5_005
    accepts(chain, make_block(chain.tip, capture(start_seq=5_006)))


def test_a_gap_notice_does_not_let_readings_go_back(setup):
    chain, _ = setup
    rejects(chain, make_block(chain.tip, capture(start_seq=10, gap=gap_notice("relay-1", 10))), "duplicate-reading")


def test_a_needless_gap_notice_is_harmless(setup):
    chain, _ = setup
    accepts(chain, make_block(chain.tip, capture(start_seq=19, gap=gap_notice("relay-1", 19))))


# --- filling a gap the relay signed ------------------------------------------------------------

@pytest.fixture
def jumped(setup):
    """seq 1..18, then a relay restart: its notice resumes at 5_000 (5_000..5_005), leaving 19..4_999 open."""
    chain, _ = setup
    accepts(chain, make_block(chain.tip, capture(start_seq=5_000, gap=gap_notice("relay-1", 5_000))))
    assert chain.open_gaps("relay-1") == ((19, 4_999),)
    return chain


def test_a_fill_inside_an_open_gap_is_accepted(jumped):
    """Readings another branch held below the notice: a block may bring them back."""
    chain = jumped
    fill = make_block(chain.tip, capture(start_seq=19))
    rules.check_context(fill, chain.tip.height, chain.median_time_ms(chain.tip), 5_005,
                        RELAY_KEY.public_key, ((19, 4_999),))
    accepts(chain, fill)
    assert chain.last_seq("relay-1") == 5_005 and chain.open_gaps("relay-1") == ((25, 4_999),)
    assert chain.newest_reading_ms("relay-1") == chain.main_at(4).newest_ms  # the highest seq's time stays
    accepts(chain, make_block(chain.tip, capture(start_seq=5_006)))  # the sequence goes on where it was
    assert chain.open_gaps("relay-1") == ((25, 4_999),)


def test_a_fill_splits_its_gap_and_each_part_fills_on_its_own(jumped):
    chain = jumped
    accepts(chain, make_block(chain.tip, capture(start_seq=100)))
    assert chain.open_gaps("relay-1") == ((19, 99), (106, 4_999))
    accepts(chain, make_block(chain.tip, capture(start_seq=4_994)))  # the top of a range
    accepts(chain, make_block(chain.tip, sealed("relay-1", [reading(s) for s in range(19, 100)])))  # a whole range
    assert chain.open_gaps("relay-1") == ((106, 4_993),)
    assert chain.last_seq("relay-1") == 5_005


def test_a_fill_overlapping_readings_the_branch_holds_is_refused(jumped):
    chain = jumped
    accepts(chain, make_block(chain.tip, capture(start_seq=100)))  # 100..105 present now
    rejects(chain, make_block(chain.tip, capture(start_seq=97)), "bad-gap-fill")  # 97..102
    rejects(chain, make_block(chain.tip, capture(start_seq=15)), "bad-gap-fill")  # 15..18 held, 19..20 open
    rejects(chain, make_block(chain.tip, sealed("relay-1", [reading(s) for s in range(98, 108)])),
            "bad-gap-fill")  # spans two ranges across 100..105
    rejects(chain, make_block(chain.tip, capture(start_seq=4_998)), "bad-gap-fill")  # runs into 5_000, held
    rejects(chain, make_block(chain.tip, capture(start_seq=100)), "duplicate-reading")  # wholly held
    assert chain.open_gaps("relay-1") == ((19, 99), (106, 4_999))


def test_a_fill_outside_any_open_gap_is_a_duplicate(jumped):
    chain = jumped
    rejects(chain, make_block(chain.tip, capture(start_seq=7)), "duplicate-reading")
    rejects(chain, make_block(chain.tip, capture(start_seq=5_001)), "duplicate-reading")
    setup_chain = new_chain()  # no gap at all: going back is only ever a duplicate
    grow(setup_chain, setup_chain.tip, 2, Relay())
    rejects(setup_chain, make_block(setup_chain.tip, capture(start_seq=3)), "duplicate-reading")


def test_a_fill_carries_no_gap_notice(jumped):
    chain = jumped
    rejects(chain, make_block(chain.tip, capture(start_seq=19, gap=gap_notice("relay-1", 19))), "bad-gap-fill")


def test_a_relays_first_block_at_a_notice_leaves_its_earlier_readings_fillable():
    """A branch that forks off below a relay's first readings and starts it at the notice."""
    chain = new_chain()
    accepts(chain, make_block(chain.tip, capture(start_seq=5_000, gap=gap_notice("relay-1", 5_000))))
    assert chain.open_gaps("relay-1") == ((1, 4_999),)
    accepts(chain, make_block(chain.tip, capture(start_seq=1)))
    assert chain.open_gaps("relay-1") == ((7, 4_999),)


def test_open_gaps_are_bounded_and_the_oldest_close_first():
    gaps: rules.GapRanges = ()
    last = 0
    for n in range(rules.MAX_OPEN_GAPS + 2):
        first = last + 10
        gaps = rules.gaps_after(gaps, last, first, first)
        last = first
    assert len(gaps) == rules.MAX_OPEN_GAPS and gaps[0] == (21, 29) and gaps[-1] == (last - 9, last - 1)
    same = rules.gaps_after(gaps, last, last + 1, last + 5)
    assert same is gaps  # a continuation shares the tuple
    split = rules.gaps_after(gaps, last + 5, 24, 25)
    assert len(split) == rules.MAX_OPEN_GAPS and split[0] == (26, 29)  # the split's lower part closed


def test_other_relay_is_not_a_duplicate(setup):
    chain, _ = setup
    accepts(chain, make_block(chain.tip, capture("relay-2")))


def test_a_block_off_the_finalized_branch_conflicts(setup):
    """Finality's rule, checked by the chain: no block may replace a finalized one."""
    chain, _ = setup
    members = NetworkParams("test", BITS, members=frozenset({ALICE.public_key}))
    chain.finality = FinalityState(members, chain.genesis_hash, finalized=Checkpoint(2, chain.main_at(2).hash))
    rejects(chain, make_block(chain.main_at(1), capture("relay-2"), signer=BOB), "conflicts-finalized")


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


def test_every_reason_has_a_test_here():
    source = open(__file__).read()
    assert all(f'"{reason}"' in source for reason in rules.REASONS)
