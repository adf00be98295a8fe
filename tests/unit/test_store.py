"""The SQLite store: round trips, side branches, reorgs of the readings table, batches, paging,
refusing another network's file, and failed commits that leave nothing behind."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from types import SimpleNamespace

import pytest

from gridchain.consensus.genesis import make_genesis
from gridchain.ledger.store import DB_FILE, MainChange, Store, StoreError, _net_change

from tests.support.blocks import (
    BOB, GENESIS, PARAMS, RELAY_KEY, Relay, capture, gap_notice, grow, make_block, new_chain, sealed,
)


def extend(block) -> MainChange:
    return MainChange(block.height - 1, (block,), block.hash)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
    yield s
    s.close()


@pytest.fixture
def line():
    """Six blocks of relay-1 on genesis, and the chain that made them."""
    chain = new_chain()
    blocks, _ = grow(chain, chain.tip, 6, Relay("relay-1"))
    return chain, blocks


def commit_line(store: Store, blocks) -> None:
    for block in blocks:
        store.commit([block], [extend(block)])


def dump(db: sqlite3.Connection) -> dict[str, list]:
    return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("blocks", "main", "readings", "meta")}


def test_new_store_holds_genesis(store):
    assert store.count_blocks() == 1
    assert store.get_block(GENESIS.hash) == GENESIS
    assert store.main_hash_at(0) == GENESIS.hash
    assert store.tip_hash() == GENESIS.hash
    assert store.meta()["network"] == PARAMS.name
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_round_trip(store, line):
    _, blocks = line
    commit_line(store, blocks)
    for block in blocks:
        assert store.get_block(block.hash) == block
        assert store.get_raw(block.hash) == block.encode()
        assert store.main_hash_at(block.height) == block.hash
    assert store.get_block(b"\x00" * 32) is None
    assert store.main_hash_at(99) is None
    assert store.tip_hash() == blocks[-1].hash
    index = list(store.iter_index())
    assert [row[0] for row in index] == [GENESIS.hash] + [b.hash for b in blocks]
    hash_, header, relay_id, last_seq, newest_ms, relay_key, first_seq = index[1]
    assert header == blocks[0].header.to_bytes()
    assert (relay_id, last_seq, newest_ms, relay_key, first_seq) == ("relay-1", 6, blocks[0].capture.newest_ms,
                                                                     RELAY_KEY.public_key, 1)
    assert index[2][-1] == 7 and index[0][-1] is None  # genesis holds no reading
    assert store.count_blocks() == 7
    count = store.db.execute("SELECT count(*) FROM readings").fetchone()[0]
    assert count == sum(len(b.capture.readings) for b in blocks)


def test_state_survives_reopen(tmp_path, line):
    _, blocks = line
    store = Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
    commit_line(store, blocks[:3])
    before = dump(store.db)
    store.close()
    store = Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
    assert dump(store.db) == before
    store.commit([blocks[3]], [extend(blocks[3])])  # arrival order carries on after a restart
    assert [row[0] for row in store.iter_index()][-1] == blocks[3].hash
    store.close()


def test_side_branch_is_kept_but_not_main(store, line):
    chain, blocks = line
    commit_line(store, blocks)
    side = make_block(chain.main_at(4), Relay("relay-2").next(), "bob", BOB)
    store.commit([side], [])
    assert store.get_block(side.hash) == side
    assert store.main_hash_at(5) == blocks[4].hash
    assert store.reading_location("relay-2", side.capture.readings[0].timestamp_ms) is None


def test_main_readings_follow_a_reorg(store, line):
    chain, blocks = line
    commit_line(store, blocks)
    relay2 = Relay("relay-2")
    fork = chain.main_at(4)
    branch = []
    parent = fork
    for _ in range(3):  # heights 5, 6, 7: longer than the old main (6)
        block = make_block(parent, relay2.next(), "bob", BOB)
        parent = chain.add(block, 10**15).entry
        branch.append(block)
    store.commit(branch[:2], [])  # arrived as side blocks first
    store.commit(branch[2:], [MainChange(4, tuple(branch), branch[-1].hash)])
    assert [store.main_hash_at(h) for h in range(8)] == [GENESIS.hash] + [b.hash for b in blocks[:4]] + \
        [b.hash for b in branch]
    left = blocks[4].capture.readings[0]
    assert store.reading_location("relay-1", left.timestamp_ms) is None, "left the main chain"
    kept = blocks[3].capture.readings[0]
    assert store.reading_location("relay-1", kept.timestamp_ms) == (blocks[3].hash, 4)
    joined = branch[0].capture.readings[0]
    assert store.reading_location("relay-2", joined.timestamp_ms) == (branch[0].hash, 5)
    assert store.get_block(blocks[5].hash) == blocks[5], "the old branch is still stored"
    assert store.tip_hash() == branch[-1].hash


def test_batch_commit_equals_one_by_one(tmp_path, line):
    chain, blocks = line
    one = Store.open(tmp_path / "one.sqlite3", PARAMS.name, GENESIS)
    many = Store.open(tmp_path / "many.sqlite3", PARAMS.name, GENESIS)
    side = make_block(chain.main_at(2), Relay("relay-2").next(), "bob", BOB)
    steps = [(b, extend(b)) for b in blocks[:3]] + [(side, None)] + [(b, extend(b)) for b in blocks[3:]]
    for block, change in steps:
        one.commit([block], [change] if change else [])
    many.commit([b for b, _ in steps], [c for _, c in steps if c])
    assert dump(one.db) == dump(many.db)
    one.close()
    many.close()


def test_net_change_folds_reorgs_inside_a_batch():
    def blk(name, height):
        return SimpleNamespace(hash=name.encode(), height=height)

    a4, a5, b5, b6, c3 = blk("a4", 4), blk("a5", 5), blk("b5", 5), blk("b6", 6), blk("c3", 3)
    extend_then_reorg = [MainChange(3, (a4, a5), b"a5"), MainChange(4, (b5, b6), b"b6")]
    assert _net_change(extend_then_reorg) == (3, [a4, b5, b6], b"b6")
    assert _net_change([*extend_then_reorg, MainChange(2, (c3,), b"c3")]) == (2, [c3], b"c3")
    assert _net_change([]) == (0, [], None)


def test_readings_pages_cover_everything_once_in_order(store, line):
    chain, blocks = line
    commit_line(store, blocks)
    everything, _ = store.readings_page(limit=1000)
    assert len(everything) == 36
    keys = [(r[2], r[0], r[1]) for r in everything]
    assert keys == sorted(keys)
    assert everything[0][:5] == ("relay-1", 1, blocks[0].capture.readings[0].timestamp_ms, 0, 0)
    assert everything[0][-2:] == (1, blocks[0].hash), "each row ends with its block height and hash"
    pages, after = [], None
    while True:
        rows, after = store.readings_page(after=after, limit=5)
        pages.extend(rows)
        if after is None:
            break
    assert pages == everything
    first, last = everything[3][2], everything[10][2]
    ranged, _ = store.readings_page(relay="relay-1", since_ms=first, until_ms=last)
    assert [r[1] for r in ranged] == [r[1] for r in everything[3:11]], "since and until are inclusive"
    assert store.readings_page(relay="nobody") == ([], None)


def test_readings_of_one_relay_by_seq(store, line):
    _, blocks = line
    commit_line(store, blocks)
    rows, after = store.relay_readings("relay-1", after_seq=10, limit=5)
    assert [r[1] for r in rows] == [11, 12, 13, 14, 15] and after == 15
    rows, after = store.relay_readings("relay-1", after_seq=after, until_seq=20)
    assert [r[1] for r in rows] == [16, 17, 18, 19, 20] and after is None
    assert store.reading_location("relay-1", seq=7) == (blocks[1].hash, 2)
    assert store.reading_location("relay-1", blocks[1].capture.readings[0].timestamp_ms) == (blocks[1].hash, 2)
    assert store.reading_location("relay-1", seq=99) is None


def test_repeated_timestamps_page_without_loss(store):
    """The relay's clock may repeat a time; seq keeps every row apart."""
    chain = new_chain()
    readings = [dataclasses.replace(r, timestamp_ms=5_000) for r in capture(count=9).readings]
    block = make_block(chain.tip, sealed("relay-1", readings))
    store.commit([block], [extend(block)])
    pages, after = [], None
    while True:
        rows, after = store.readings_page(after=after, limit=4)
        pages.extend(rows)
        if after is None:
            break
    assert [r[1] for r in pages] == list(range(1, 10))


def test_gaps_the_relay_signed_are_listed(store, line):
    chain, blocks = line
    commit_line(store, blocks)
    notice = gap_notice("relay-1", 100, boot_ms=123)
    restarted = make_block(chain.tip, capture(start_seq=100, start_ms=9_000_000, gap=notice))
    chain.add(restarted, 10**15)
    store.commit([restarted], [extend(restarted)])
    [gap] = store.gaps()
    assert (gap.relay_id, gap.first_seq, gap.last_seq, gap.boot_ms) == ("relay-1", 37, 99, 123)
    assert (gap.after_ms, gap.resume_ms) == (blocks[-1].capture.newest_ms, 9_000_000)
    assert (gap.height, gap.block_hash) == (7, restarted.hash)
    assert gap.as_dict()["missing"] == 63


def test_gaps_list_only_what_fills_left_open(store, line):
    """The notice's hole 37..99, then fills of 37..40 and 60..62: what is left is listed,
    each hole with its seq range and the times of the readings on either side."""
    chain, blocks = line
    commit_line(store, blocks)
    notice = gap_notice("relay-1", 100, boot_ms=123)
    restarted = make_block(chain.tip, capture(start_seq=100, start_ms=9_000_000, gap=notice))
    parent = chain.add(restarted, 10**15).entry
    store.commit([restarted], [extend(restarted)])
    fills = []
    for first, count in ((60, 3), (37, 4)):  # splits the hole, then shrinks its lower part away
        fill = make_block(parent, capture(start_seq=first, count=count, start_ms=first * 1_000))
        parent = chain.add(fill, 10**15).entry
        store.commit([fill], [extend(fill)])
        fills.append(fill)
    assert chain.open_gaps("relay-1") == ((41, 59), (63, 99))
    gaps = store.gaps()
    assert [(g.first_seq, g.last_seq, g.after_ms, g.resume_ms) for g in gaps] == [
        (41, 59, fills[1].capture.newest_ms, 60_000), (63, 99, fills[0].capture.newest_ms, 9_000_000)]
    assert all((g.height, g.block_hash, g.boot_ms) == (7, restarted.hash, 123) for g in gaps)
    # Filled up completely, the notice leaves nothing to list.
    for first, count in ((41, 19), (63, 37)):
        fill = make_block(parent, capture(start_seq=first, count=count, start_ms=first * 1_000))
        parent = chain.add(fill, 10**15).entry
        store.commit([fill], [extend(fill)])
    assert chain.open_gaps("relay-1") == () and store.gaps() == []


def test_gaps_below_a_relays_first_notice_count_from_the_lowest_filled_in_reading(store):
    """A branch that starts the relay at its notice (seq 500) and later fills in 1..6: the
    hole 7..499 is a loss; nothing below the first reading ever was."""
    chain = new_chain()
    first = make_block(chain.tip, capture(start_seq=500, start_ms=5_000_000, gap=gap_notice("relay-1", 500)))
    entry = chain.add(first, 10**15).entry
    store.commit([first], [extend(first)])
    assert store.gaps() == []
    fill = make_block(entry, capture(start_seq=1))
    chain.add(fill, 10**15)
    store.commit([fill], [extend(fill)])
    assert [(g.first_seq, g.last_seq, g.resume_ms) for g in store.gaps()] == [(7, 499, 5_000_000)]


def test_readings_view_is_readable_by_people(store, line):
    _, blocks = line
    commit_line(store, blocks[:1])
    row = store.db.execute("SELECT time, block_hash FROM readings_view ORDER BY timestamp_ms LIMIT 1").fetchone()
    assert row == ("2021-09-28T07:01:18.000Z", blocks[0].hash.hex())


def test_store_of_another_network_or_genesis_is_refused(tmp_path):
    Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS).close()
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path / DB_FILE, "other-net", make_genesis("other-net", PARAMS.bits))
    assert caught.value.reason == "wrong-network"
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path / DB_FILE, PARAMS.name, make_genesis(PARAMS.name, PARAMS.bits + 1))
    assert caught.value.reason == "wrong-genesis"
    Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS).close()  # the refusals left it intact


def test_a_second_writer_is_refused(store):
    with pytest.raises(StoreError) as caught:
        Store.open(store.path, PARAMS.name, GENESIS)
    assert caught.value.reason == "in-use"


def test_a_file_that_is_not_a_database_is_corrupt(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
    assert caught.value.reason == "corrupt"


def test_failed_commit_changes_nothing_and_store_recovers(store, line):
    _, blocks = line
    commit_line(store, blocks[:3])
    before = dump(store.db)
    store.db.execute("CREATE TRIGGER fail BEFORE INSERT ON main BEGIN SELECT RAISE(ABORT, 'injected'); END")
    with pytest.raises(StoreError) as caught:
        store.commit(blocks[3:], [extend(b) for b in blocks[3:]])
    assert caught.value.reason == "constraint"
    assert dump(store.db) == before
    store.db.execute("DROP TRIGGER fail")
    store.commit(blocks[3:], [extend(b) for b in blocks[3:]])
    assert store.tip_hash() == blocks[-1].hash
    seqs = [row[0] for row in store.db.execute("SELECT seq FROM blocks ORDER BY seq")]
    assert seqs == list(range(7)), "the failed attempt used up no arrival numbers"


def test_disk_full_is_named_and_recoverable(store, line):
    _, blocks = line
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: a full disk
    before = dump(store.db)
    with pytest.raises(StoreError) as caught:
        store.commit(blocks, [extend(b) for b in blocks])
    assert caught.value.reason == "disk-full"
    assert dump(store.db) == before
    store.db.execute("PRAGMA max_page_count = 1000000")  # space freed
    store.commit(blocks, [extend(b) for b in blocks])
    assert store.tip_hash() == blocks[-1].hash


def test_read_only_database_is_named_and_recoverable(store, line):
    _, blocks = line
    store.db.execute("PRAGMA query_only = 1")  # SQLite refuses writes exactly as for a read-only file
    with pytest.raises(StoreError) as caught:
        store.commit(blocks[:1], [extend(blocks[0])])
    assert caught.value.reason == "read-only"
    store.db.execute("PRAGMA query_only = 0")
    store.commit(blocks[:1], [extend(blocks[0])])
    assert store.tip_hash() == blocks[0].hash


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes any file whatever its mode")
def test_read_only_file_is_named_and_recoverable(tmp_path, line):
    _, blocks = line
    Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS).close()
    os.chmod(tmp_path / DB_FILE, 0o444)
    try:
        with pytest.raises(StoreError) as caught:
            store = Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
            store.commit(blocks[:1], [extend(blocks[0])])
        assert caught.value.reason == "read-only"
    finally:
        os.chmod(tmp_path / DB_FILE, 0o644)
    store = Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
    store.commit(blocks[:1], [extend(blocks[0])])
    store.close()


def test_close_twice_is_harmless(tmp_path):
    store = Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
    store.close()
    store.close()
    Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS).close()  # the lock went with the first


def test_another_programs_database_is_not_taken_over(tmp_path):
    other = sqlite3.connect(tmp_path / DB_FILE)
    other.execute("CREATE TABLE blocks (x)")
    other.commit()
    other.close()
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path / DB_FILE, PARAMS.name, GENESIS)
    assert caught.value.reason == "not-a-store"
