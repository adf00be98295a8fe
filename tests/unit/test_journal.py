"""The relay's row buffer, its journal format, and where a booting relay resumes its sequence."""

from __future__ import annotations

import pytest

from gridchain.consensus.provenance import GapNotice, Reading
from gridchain.consensus.tree import leaf_hash
from gridchain.relay.buffer import RowBuffer
from gridchain.relay.journal import (
    CLOCK_SEQ_PER_MS, MAGIC, ROW_RECORD, JournalContents, RelayState, gap_record, parse_journal, plan_boot,
    row_record,
)

NOW_MS = 1_795_700_700_000


def row(seq: int) -> bytes:
    return Reading(seq, seq * 1000, 0, 0, *([1.0] * 10)).to_bytes()


def filled(seqs, capacity: int = 100) -> RowBuffer:
    buffer = RowBuffer(capacity)
    for seq in seqs:
        buffer.append(seq, row(seq), leaf_hash(row(seq)))
    return buffer


# --- buffer --------------------------------------------------------------------------------

def test_buffer_serves_by_sequence_within_one_run():
    buffer = filled(range(1, 11))
    part = buffer.read(3, 4)
    assert (part.first_seq, part.count, part.last_seq) == (4, 4, 7)
    assert [r.seq for r in part.readings()] == [4, 5, 6, 7]
    assert part.rows == b"".join(row(s) for s in range(4, 8))
    assert part.leaves == tuple(leaf_hash(row(s)) for s in range(4, 8))
    assert buffer.read(10, 5) is None and buffer.read(0, 0) is None
    assert buffer.read(0, 100).count == 10


def test_buffer_answers_never_span_a_gap():
    buffer = filled([*range(1, 6), *range(50, 55)])
    assert (buffer.oldest_seq, buffer.newest_seq, len(buffer)) == (1, 54, 10)
    assert [r.seq for r in buffer.read(2, 100).readings()] == [3, 4, 5]
    assert [r.seq for r in buffer.read(5, 100).readings()] == list(range(50, 55))
    assert [r.seq for r in buffer.read(20, 2).readings()] == [50, 51]
    with pytest.raises(ValueError):
        buffer.append(54, row(54), b"")


def test_buffer_drops_the_oldest_past_capacity():
    buffer = filled(range(1, 1001), capacity=10)
    assert (buffer.oldest_seq, buffer.newest_seq, len(buffer)) == (991, 1000, 10)
    assert buffer.read(0, 3).first_seq == 991  # behind the buffer: the oldest still held
    assert buffer.oldest().seq == 991 and buffer.newest().seq == 1000
    assert [seq for seq, _ in buffer.rows_from()] == list(range(991, 1001))
    gapped = filled([*range(1, 8), *range(100, 108)], capacity=10)
    assert (gapped.oldest_seq, gapped.read(0, 100).count) == (6, 2)
    assert gapped.read(7, 100).first_seq == 100


# --- journal format ------------------------------------------------------------------------

def journal(*records: bytes) -> bytes:
    return MAGIC + b"".join(records)


NOTICE = GapNotice(500, NOW_MS, b"\x01" * 64)


def test_journal_round_trip_with_a_gap_record():
    data = journal(*(row_record(row(s)) for s in (1, 2, 3)), gap_record(NOTICE), row_record(row(500)))
    contents = parse_journal(data)
    assert contents.damage is None and contents.good_bytes == len(data)
    assert [seq for seq, _ in contents.rows] == [1, 2, 3, 500] and contents.gap == NOTICE


@pytest.mark.parametrize("spoil, kept", [
    (lambda d: d[:-5], 2),                                        # torn last record
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), 2),                    # checksum of the last record
    (lambda d: d[:len(MAGIC) + 10] + b"\xff" + d[len(MAGIC) + 11:], 0),  # a bit inside the first row
    (lambda d: d + b"X" * 40, 3),                                  # garbage appended
    (lambda d: b"NOTAJRNL" + d[8:], 0),                            # wrong magic
])
def test_a_damaged_journal_keeps_its_good_records_and_names_the_damage(spoil, kept):
    data = journal(*(row_record(row(s)) for s in (1, 2, 3)))
    contents = parse_journal(spoil(data))
    assert contents.damage is not None and len(contents.rows) == kept
    assert contents.good_bytes in (0, len(MAGIC) + kept * ROW_RECORD)


def test_a_seq_jump_without_a_gap_record_is_damage():
    contents = parse_journal(journal(row_record(row(1)), row_record(row(3))))
    assert "seq 3 where 2 was due" in contents.damage and len(contents.rows) == 1
    assert parse_journal(journal(row_record(row(1)), gap_record(NOTICE), row_record(row(501)))).damage


# --- boot plan -----------------------------------------------------------------------------

def state(next_seq=11, reserved=9000, clean=True, relay_id="r") -> RelayState:
    return RelayState(relay_id, next_seq, reserved, clean)


def contents(seqs=range(1, 11), damage=None, exists=True) -> JournalContents:
    return JournalContents(exists=exists, rows=[(s, row(s)) for s in seqs], damage=damage)


def test_state_round_trip_and_damage():
    assert RelayState.decode(state().encode()) == state()
    for bad in (b"{}", b"not json", b'{"version": 1, "relay_id": "r", "next_seq": 5, "reserved_seq": 4, "clean": true}'):
        with pytest.raises(ValueError):
            RelayState.decode(bad)


@pytest.mark.parametrize("args, expected", [
    # A new relay: seq 1, nothing to notice.
    ((None, False, JournalContents(), True), (1, False, "fresh")),
    # Clean restart and a crash with an intact journal: right after the last row, no gap.
    ((state(), False, contents(), False), (11, False, "continued")),
    ((state(next_seq=1, clean=False), False, contents(), False), (11, False, "continued")),
    ((state(next_seq=1, clean=True), False, contents([], exists=True), False), (1, False, "continued")),
    # Lost or damaged: beyond the reserved mark, with a gap notice.
    ((state(), False, contents(damage="checksum"), False), (9000, True, "journal-damaged")),
    ((state(), False, contents([], exists=False), False), (9000, True, "journal-missing")),
    ((state(next_seq=20), False, contents(), False), (9000, True, "inconsistent")),
    ((state(reserved=10), False, contents(), False), (12, True, "inconsistent")),
    # The state gone too: the clock, which runs far ahead of any sequence.
    ((None, False, contents(), False), (NOW_MS * CLOCK_SEQ_PER_MS, True, "state-missing")),
    ((None, True, contents(), True), (NOW_MS * CLOCK_SEQ_PER_MS, True, "state-damaged")),
    ((None, False, JournalContents(), False), (NOW_MS * CLOCK_SEQ_PER_MS, True, "state-missing")),
])
def test_boot_plan(args, expected):
    plan = plan_boot(*args, now_ms=NOW_MS)
    assert (plan.next_seq, plan.gap, plan.why) == expected
    last = args[2].last_seq
    assert last is None or plan.next_seq > last, "never a seq used before"


def test_a_gap_record_with_no_row_after_it_yet_names_the_next_seq():
    contents_ = parse_journal(journal(row_record(row(1)), gap_record(NOTICE)))
    assert (contents_.last_seq, contents_.next_seq, contents_.gap) == (1, 500, NOTICE)
    plan = plan_boot(state(next_seq=500), False, contents_, False, NOW_MS)
    assert (plan.next_seq, plan.gap, plan.why) == (500, False, "continued")
