"""What a relay signs: rows, flags, seals, seal paths, gap notices, and that nothing else passes."""

from __future__ import annotations

import math
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridchain.consensus.provenance import (
    GAP_DOMAIN, GATEWAY_TIME_FLAG, MAX_SEAL_READINGS, QUALITY_INVALID, QUALITY_QUESTIONABLE, ROW_SIZE, SEAL_DOMAIN,
    GapNotice, ProvenanceError, Reading, Seal, gap_message, make_flags, pack_rows, reading_leaf, row_leaves,
    seal_leaves, seal_message, seal_path, seal_readings, seal_root, sign_gap, unpack_rows, verify_gap, verify_seal,
    verify_seal_leaves, verify_sealed_reading,
)
from gridchain.consensus.tree import leaf_hash

KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
PUBLIC = KEY.public_key().public_bytes_raw()
OTHER = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
RELAY = "Relay 1"


def reading(seq: int, **changes) -> Reading:
    values = dict(seq=seq, timestamp_ms=1_795_700_700_000 + seq * 10_000, openings=3, flags=0, vab=115.1,
                  vbc=115.2, vca=115.0, ia=300.5, ib=301.0, ic=299.5, frequency=60.01, power_factor=0.93,
                  active_power=55.7, reactive_power=22.0)
    values.update(changes)
    return Reading(**values)


def run(first: int = 1, count: int = 5) -> tuple[Reading, ...]:
    return tuple(reading(first + i) for i in range(count))


def reason(call) -> str:
    with pytest.raises(ProvenanceError) as caught:
        call()
    return caught.value.reason


# --- rows and flags ------------------------------------------------------------------------

def test_row_is_108_big_endian_bytes_in_the_documented_order():
    r = reading(0x0102030405060708, timestamp_ms=-1, openings=9, flags=GATEWAY_TIME_FLAG | 0b0110)
    row = r.to_bytes()
    assert len(row) == ROW_SIZE == 108
    assert row[:8] == bytes.fromhex("0102030405060708")
    assert row[8:16] == b"\xff" * 8 and row[16:24] == struct.pack(">Q", 9)
    assert row[24:28] == bytes.fromhex("80000006")
    assert struct.unpack(">10d", row[28:]) == r.values()
    assert Reading.from_bytes(row) == r
    assert unpack_rows(pack_rows(run())) == run()


def test_flags_carry_quality_per_value_and_the_clock_source():
    flags = make_flags([0, QUALITY_QUESTIONABLE, 0, QUALITY_INVALID], gateway_time=True)
    r = reading(1, flags=flags)
    assert (r.quality("vab"), r.quality("vbc"), r.quality("ia"), r.quality("reactive_power")) == (0, 1, 2, 0)
    assert r.gateway_time and not reading(1).gateway_time
    with pytest.raises(ValueError):
        make_flags([3])


@pytest.mark.parametrize("flags", [1 << 20, 1 << 30, 0b11, 0b11 << 18])
def test_reserved_flag_bits_and_quality_code_11_are_refused(flags):
    row = reading(1, flags=flags).to_bytes()
    assert reason(lambda: Reading.from_bytes(row)) == "bad-reading-flags"
    assert reason(lambda: unpack_rows(row)) == "bad-reading-flags"


def test_rows_of_the_wrong_length_are_refused():
    assert reason(lambda: Reading.from_bytes(b"\x00" * 107)) == "bad-reading-row"
    assert reason(lambda: unpack_rows(b"\x00" * 109)) == "bad-reading-row"
    assert reason(lambda: row_leaves(b"\x00" * 200)) == "bad-reading-row"


def test_row_leaves_are_the_reading_leaves():
    readings = run(1, 7)
    assert row_leaves(pack_rows(readings)) == [reading_leaf(r) for r in readings]
    assert reading_leaf(readings[0]) == leaf_hash(readings[0].to_bytes())


# --- seals ---------------------------------------------------------------------------------

def test_a_seal_verifies_and_binds_relay_run_and_key():
    readings = run(10, 6)
    seal = seal_readings(KEY, RELAY, readings)
    assert (seal.first_seq, seal.count, seal.last_seq) == (10, 6, 15)
    verify_seal(PUBLIC, RELAY, readings, seal)
    verify_seal_leaves(PUBLIC, RELAY, 10, row_leaves(pack_rows(readings)), seal)
    assert seal_leaves(KEY, RELAY, 10, [reading_leaf(r) for r in readings]) == seal  # Ed25519 is deterministic
    other_public = OTHER.public_key().public_bytes_raw()
    assert reason(lambda: verify_seal(other_public, RELAY, readings, seal)) == "bad-relay-signature"
    assert reason(lambda: verify_seal(PUBLIC, "Relay 2", readings, seal)) == "bad-relay-signature"
    assert reason(lambda: verify_seal(PUBLIC, RELAY, readings[:-1], seal)) == "bad-seal"
    assert reason(lambda: verify_seal(PUBLIC, RELAY, readings, Seal(11, 6, seal.signature))) == "bad-seal"
    assert reason(lambda: verify_seal(b"\x00" * 31, RELAY, readings, seal)) == "bad-relay-signature"


def test_the_signed_message_is_the_documented_bytes():
    root = seal_root(run(1, 3))
    message = seal_message(RELAY, 1, 3, root)
    assert message == b"gridchain/relay-seal/v1\x00" + b"\x07Relay 1" + struct.pack(">QI", 1, 3) + root
    assert gap_message(RELAY, 9, -5) == b"gridchain/relay-gap/v1\x00" + b"\x07Relay 1" + struct.pack(">Qq", 9, -5)


def test_seal_runs_must_be_consecutive_and_bounded():
    assert reason(lambda: seal_readings(KEY, RELAY, ())) == "bad-seal"
    assert reason(lambda: seal_readings(KEY, RELAY, (reading(1), reading(3)))) == "bad-seal"
    assert reason(lambda: seal_readings(KEY, RELAY, (reading(2), reading(1)))) == "bad-seal"
    assert reason(lambda: seal_leaves(KEY, RELAY, 1, [b"\x00" * 32] * (MAX_SEAL_READINGS + 1))) == "bad-seal"
    assert reason(lambda: seal_readings(KEY, "", run())) == "bad-relay-id"
    assert reason(lambda: seal_readings(KEY, "x" * 256, run())) == "bad-relay-id"


def test_tampering_with_any_byte_of_rows_or_seal_fails():
    readings = run(100, 3)
    rows = pack_rows(readings)
    seal = seal_readings(KEY, RELAY, readings)
    signed = rows + struct.pack(">QI", seal.first_seq, seal.count) + seal.signature
    for index in range(len(signed)):
        for flip in (0x01, 0x80):
            spoiled = bytearray(signed)
            spoiled[index] ^= flip
            spoiled_rows = bytes(spoiled[:len(rows)])
            first, count = struct.unpack(">QI", spoiled[len(rows):len(rows) + 12])
            spoiled_seal = Seal(first, count, bytes(spoiled[len(rows) + 12:]))
            with pytest.raises(ProvenanceError):
                verify_seal(PUBLIC, RELAY, unpack_rows(spoiled_rows), spoiled_seal)


def test_tampered_values_still_fail_when_they_decode():
    readings = run(1, 4)
    seal = seal_readings(KEY, RELAY, readings)
    for changed in (reading(2, openings=1003), reading(2, timestamp_ms=readings[1].timestamp_ms + 110_000),
                    reading(2, vab=115.10000000000001), reading(2, flags=make_flags([1]))):
        spoiled = (readings[0], changed, *readings[2:])
        assert reason(lambda: verify_seal(PUBLIC, RELAY, spoiled, seal)) == "bad-relay-signature"


# --- gap notices and domain separation -----------------------------------------------------

def test_gap_notice_verifies_and_binds_its_fields():
    notice = sign_gap(KEY, RELAY, 5000, 1_795_700_700_000)
    verify_gap(PUBLIC, RELAY, notice)
    for spoiled in (GapNotice(5001, notice.boot_ms, notice.signature),
                    GapNotice(5000, notice.boot_ms + 1, notice.signature)):
        assert reason(lambda: verify_gap(PUBLIC, RELAY, spoiled)) == "bad-relay-signature"
    assert reason(lambda: verify_gap(PUBLIC, "Relay 2", notice)) == "bad-relay-signature"


def test_a_seal_signature_never_passes_as_a_gap_notice_or_back():
    assert SEAL_DOMAIN != GAP_DOMAIN and not SEAL_DOMAIN.startswith(GAP_DOMAIN)
    assert not GAP_DOMAIN.startswith(SEAL_DOMAIN)
    readings = run(7, 2)
    seal = seal_readings(KEY, RELAY, readings)
    # The same numbers in the other message, and a signature over a seal message's prefix.
    assert reason(lambda: verify_gap(PUBLIC, RELAY, GapNotice(7, 2, seal.signature))) == "bad-relay-signature"
    notice = sign_gap(KEY, RELAY, 7, 2)
    assert reason(lambda: verify_seal(PUBLIC, RELAY, readings, Seal(7, 2, notice.signature))) == "bad-relay-signature"
    # A signer that only ever signs one kind: a seal key's raw signature over a gap message fails.
    raw = KEY.sign(seal_message(RELAY, 7, 2, seal_root(readings)))
    assert reason(lambda: verify_gap(PUBLIC, RELAY, GapNotice(7, 2, raw))) == "bad-relay-signature"


# --- a single reading proven on its own ----------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 360])
def test_every_reading_is_provable_with_its_seal_path(count):
    readings = run(40, count)
    seal = seal_readings(KEY, RELAY, readings)
    for index in {0, count // 2, count - 1}:
        path = seal_path(readings, index)
        assert len(path) <= math.ceil(math.log2(count)) if count > 1 else path == []
        verify_sealed_reading(PUBLIC, RELAY, readings[index], seal, path)


def test_a_wrong_path_or_reading_fails():
    readings = run(1, 6)
    seal = seal_readings(KEY, RELAY, readings)
    path = seal_path(readings, 2)
    assert reason(lambda: verify_sealed_reading(PUBLIC, RELAY, readings[3], seal, path)) == "bad-relay-signature"
    assert reason(lambda: verify_sealed_reading(PUBLIC, RELAY, reading(3, vab=1.0), seal, path)) \
        == "bad-relay-signature"
    assert reason(lambda: verify_sealed_reading(PUBLIC, RELAY, reading(9), seal, path)) == "bad-seal"
    assert reason(lambda: verify_sealed_reading(PUBLIC, RELAY, readings[2], seal, path + [b"\x00" * 32])) \
        == "bad-seal-path"
