"""The ledger: chain and store in step, a rebuild equal to the original, damage named by block
and reason on open, and an audit that finds every kind of damage."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import threading

import pytest

from gridchain.ledger.audit import AuditReport, audit_store
from gridchain.consensus import rules
from gridchain.consensus.block import Block
from gridchain.consensus.rules import RuleViolation
from gridchain.ledger.ledger import Ledger, LedgerDamaged
from gridchain.ledger.store import DB_FILE, StoreError

from tests.support.blocks import BOB, NOW_MS, PARAMS, Relay, make_block, new_chain


def add_line(ledger: Ledger, count: int, relay: Relay, parent=None, **kw) -> list[Block]:
    blocks = []
    for _ in range(count):
        block = make_block(parent or ledger.tip, relay.next(), **kw)
        parent = ledger.add_block(block, NOW_MS).result.entry
        blocks.append(block)
    return blocks


def snapshot(ledger: Ledger) -> dict:
    chain = ledger.chain
    return {
        "tip": chain.tip.hash, "height": chain.height, "size": len(chain),
        "main": [chain.main_at(h).hash for h in range(chain.height + 1)],
        "newest": {r: (chain.last_seq(r), chain.newest_reading_ms(r), chain.relay_key(r)) for r in ("relay-1", "relay-2")},
        "work": chain.tip.work,
    }


@pytest.fixture
def ledger(tmp_path):
    led = Ledger.open(tmp_path, PARAMS, NOW_MS)
    yield led
    led.close()


@pytest.fixture(scope="module")
def forked_template(tmp_path_factory):
    """A closed store: 12 main blocks of relay-1, a 2-block side branch of relay-2 at height 8,
    and a reorg at height 4 that relay-2's branch won (main: 4 of relay-1, then 9 of relay-2)."""
    path = tmp_path_factory.mktemp("forked")
    led = Ledger.open(path, PARAMS, NOW_MS)
    add_line(led, 12, Relay("relay-1"))
    add_line(led, 2, Relay("relay-2"), parent=led.chain.main_at(8), miner_name="bob", signer=BOB)
    add_line(led, 9, Relay("relay-2"), parent=led.chain.main_at(4), miner_name="bob", signer=BOB)
    state = snapshot(led)
    led.close()
    return path, state


@pytest.fixture
def forked(forked_template, tmp_path):
    """A fresh copy of the forked store for each test to damage as it likes."""
    template, state = forked_template
    shutil.copyfile(template / DB_FILE, tmp_path / DB_FILE)
    return tmp_path, state


def db_of(path) -> sqlite3.Connection:
    return sqlite3.connect(path / DB_FILE, isolation_level=None)


def test_block_is_durable_when_add_block_returns(ledger):
    block = make_block(ledger.tip, Relay().next())
    ledger.add_block(block, NOW_MS)
    other = sqlite3.connect(ledger.store.path)  # another reader sees it committed
    assert other.execute("SELECT value FROM meta WHERE key = 'tip'").fetchone()[0] == block.hash
    assert other.execute("SELECT count(*) FROM readings").fetchone()[0] == 6
    other.close()
    assert ledger.get_block(block.hash) == block
    assert ledger.get_block(ledger.chain.main_at(1).hash) == block
    assert ledger.newest_reading_ms("relay-1") == block.capture.newest_ms


def test_duplicate_is_reported_and_not_stored_twice(ledger):
    block = make_block(ledger.tip, Relay().next())
    ledger.add_block(block, NOW_MS)
    assert ledger.add_block(block, NOW_MS).result.status == "duplicate"
    assert ledger.store.count_blocks() == 2


def test_invalid_block_is_refused_and_not_stored(ledger):
    block = make_block(ledger.tip, Relay().next())
    bad = dataclasses.replace(block, signature=bytes(64))
    with pytest.raises(RuleViolation):
        ledger.add_block(bad, NOW_MS)
    assert ledger.store.count_blocks() == 1 and ledger.height == 0


def test_reopen_rebuilds_the_same_chain(forked):
    path, state = forked
    assert state["height"] == 13 and state["size"] == 24
    ledger = Ledger.open(path, PARAMS, NOW_MS)
    assert snapshot(ledger) == state
    ledger.close()


def test_reorg_returns_the_readings_it_displaced(ledger):
    old = add_line(ledger, 3, Relay("relay-1"))
    fork = ledger.chain.main_at(1)
    relay2 = Relay("relay-2")
    first = ledger.add_block(make_block(fork, relay2.next(), "bob", BOB), NOW_MS)
    assert first.result.status == "side" and first.displaced == []
    parent = first.result.entry
    second = ledger.add_block(make_block(parent, relay2.next(), "bob", BOB), NOW_MS)
    assert second.result.status == "side"
    third = ledger.add_block(make_block(second.result.entry, relay2.next(), "bob", BOB), NOW_MS)
    assert third.result.status == "reorg"
    [capture] = third.displaced
    assert capture.relay_id == "relay-1"
    assert capture.readings == old[1].capture.readings + old[2].capture.readings
    assert capture.seals == old[1].capture.seals + old[2].capture.seals, "whole seals, as checked on arrival"
    assert capture.relay_key == old[1].capture.relay_key
    rows, _ = ledger.store.readings_page(relay="relay-1")
    assert [r[1] for r in rows] == [r.seq for r in old[0].capture.readings]
    assert ledger.last_seq("relay-1") == 6


def _fail_writes(ledger: Ledger) -> None:
    ledger.store.db.execute("CREATE TRIGGER fail BEFORE INSERT ON blocks BEGIN SELECT RAISE(ABORT, 'disk'); END")


def test_failed_commit_leaves_the_chain_as_it_was(ledger):
    relay = Relay("relay-1")
    add_line(ledger, 3, relay)
    before = snapshot(ledger)
    _fail_writes(ledger)
    extension = make_block(ledger.tip, relay.next())
    side = make_block(ledger.chain.main_at(1), Relay("relay-2").next(), "bob", BOB)
    for block in (extension, side):
        with pytest.raises(StoreError):
            ledger.add_block(block, NOW_MS)
        assert snapshot(ledger) == before
        assert block.hash not in ledger.chain
    ledger.store.db.execute("DROP TRIGGER fail")
    assert ledger.add_block(extension, NOW_MS).result.status == "extended"
    assert ledger.add_block(side, NOW_MS).result.status == "side"


def test_failed_reorg_commit_restores_the_old_main_chain(ledger):
    add_line(ledger, 3, Relay("relay-1"))
    relay2 = Relay("relay-2")
    branch = add_line(ledger, 2, relay2, parent=ledger.chain.main_at(1), miner_name="bob", signer=BOB)
    before = snapshot(ledger)
    tip_before = ledger.tip
    winner = make_block(ledger.chain.get(branch[-1].hash), relay2.next(), "bob", BOB)
    _fail_writes(ledger)
    with pytest.raises(StoreError):
        ledger.add_block(winner, NOW_MS)
    assert snapshot(ledger) == before and ledger.tip is tip_before
    ledger.store.db.execute("DROP TRIGGER fail")
    assert ledger.add_block(winner, NOW_MS).result.status == "reorg"
    ledger.close()
    reopened = Ledger.open(ledger.store.path.parent, PARAMS, NOW_MS)
    assert reopened.tip.hash == winner.hash
    reopened.close()


def _chain_of(ledger: Ledger, count: int, relay: Relay) -> list[Block]:
    """``count`` valid blocks on the tip, built in a scratch chain without touching the ledger."""
    chain = new_chain()
    for height in range(1, ledger.height + 1):
        chain.add(ledger.get_block(ledger.chain.main_at(height).hash), NOW_MS)
    blocks, parent = [], chain.tip
    for _ in range(count):
        block = make_block(parent, relay.next())
        parent = chain.add(block, NOW_MS).entry
        blocks.append(block)
    return blocks


def test_add_blocks_commits_a_run_at_once(ledger, monkeypatch):
    relay = Relay("relay-1")
    add_line(ledger, 2, relay)
    blocks = _chain_of(ledger, 20, relay)
    commits = []
    real_commit = ledger.store.commit_steps
    monkeypatch.setattr(ledger.store, "commit_steps",
                        lambda *args, **kwargs: commits.append(args) or real_commit(*args, **kwargs))
    batch = ledger.add_blocks(blocks, NOW_MS)
    assert len(commits) == 1 and len(commits[0][0]) == 20, "one transaction for the whole run"
    assert batch.rejected is None and batch.error is None
    assert [u.result.status for u in batch.updates] == ["extended"] * 20
    assert ledger.height == 22 and ledger.store.tip_hash() == blocks[-1].hash
    assert ledger.add_blocks(blocks[:3], NOW_MS).updates[0].result.status == "duplicate"


def test_add_blocks_stores_the_wire_bytes_it_is_given_without_encoding_again(ledger, monkeypatch):
    relay = Relay("relay-1")
    blocks = _chain_of(ledger, 5, relay)
    raws = [block.encode() for block in blocks]

    def no_encoding(self):
        raise AssertionError("a block that came with its bytes was encoded again")

    monkeypatch.setattr(Block, "encode", no_encoding)
    batch = ledger.add_blocks(blocks, NOW_MS, raws)
    assert batch.error is None and ledger.height == 5
    monkeypatch.undo()
    assert [ledger.get_raw(b.hash) for b in blocks] == raws
    with pytest.raises(ValueError):
        ledger.add_blocks(blocks, NOW_MS, raws[:2])


def test_add_blocks_keeps_the_valid_prefix_and_names_the_bad_block(ledger):
    relay = Relay("relay-1")
    blocks = _chain_of(ledger, 6, relay)
    bad = dataclasses.replace(blocks[3], signature=bytes(64))
    batch = ledger.add_blocks(blocks[:3] + [bad] + blocks[4:], NOW_MS)
    assert len(batch.updates) == 3 and batch.rejected is bad and batch.error.reason == "bad-signature"
    assert ledger.height == 3 and ledger.store.tip_hash() == blocks[2].hash


LONG_RUN = 40  # past MIN_THREADED_BATCH and over a CHECK_CHUNK boundary


@pytest.fixture(params=[1, 2], ids=["inline", "threaded"])
def either_ledger(tmp_path, request):
    led = Ledger.open(tmp_path, PARAMS, NOW_MS, check_threads=request.param)
    yield led
    led.close()


@pytest.fixture
def threaded_ledger(tmp_path):
    led = Ledger.open(tmp_path, PARAMS, NOW_MS, check_threads=2)
    yield led
    led.close()


def test_a_long_run_names_the_same_first_bad_block_either_way(either_ledger):
    ledger = either_ledger
    blocks = _chain_of(ledger, LONG_RUN, Relay("relay-1"))
    # Both its root and its signature are wrong: the root is checked first, so it names the fault.
    bad = dataclasses.replace(blocks[35], miner_name="mallory", signature=bytes(64))
    also_bad = dataclasses.replace(blocks[38], signature=bytes(64))
    batch = ledger.add_blocks(blocks[:35] + [bad] + blocks[36:38] + [also_bad] + blocks[39:], NOW_MS)
    assert len(batch.updates) == 35 and batch.rejected is bad and batch.error.reason == "bad-root"
    assert ledger.height == 35 and ledger.store.tip_hash() == blocks[34].hash


def test_a_long_run_is_checked_in_threads_and_not_again_inline(threaded_ledger, monkeypatch):
    ledger = threaded_ledger
    blocks = _chain_of(ledger, LONG_RUN, Relay("relay-1"))
    threads, inline = [], []
    real = rules.check_block
    monkeypatch.setattr(rules, "check_block",
                        lambda *args: threads.append(threading.current_thread()) or real(*args))
    monkeypatch.setattr("gridchain.consensus.chain.check_block", lambda *args: inline.append(args) or real(*args))
    batch = ledger.add_blocks(blocks, NOW_MS)
    assert batch.error is None and ledger.height == LONG_RUN
    assert len(threads) == LONG_RUN and threading.main_thread() not in threads
    assert inline == []


def test_a_known_block_with_a_bad_signature_is_a_duplicate_in_a_long_run(threaded_ledger):
    ledger = threaded_ledger
    blocks = _chain_of(ledger, LONG_RUN, Relay("relay-1"))
    ledger.add_blocks(blocks[:20], NOW_MS)
    resent = blocks[:5] + [dataclasses.replace(blocks[5], signature=bytes(64))] + blocks[6:]
    batch = ledger.add_blocks(resent, NOW_MS)  # the hash does not cover the signature: same block
    assert batch.error is None
    assert [u.result.status for u in batch.updates] == ["duplicate"] * 20 + ["extended"] * 20


def test_failed_batch_commit_undoes_the_whole_run(ledger):
    relay = Relay("relay-1")
    add_line(ledger, 2, relay)
    before = snapshot(ledger)
    blocks = _chain_of(ledger, 5, relay)
    _fail_writes(ledger)
    with pytest.raises(StoreError):
        ledger.add_blocks(blocks, NOW_MS)
    assert snapshot(ledger) == before
    assert all(b.hash not in ledger.chain for b in blocks)


def test_pooled_orphans_connect_when_their_parent_arrives(ledger):
    relay = Relay("relay-1")
    parent, child, grandchild = _chain_of(ledger, 3, relay)
    for orphan in (grandchild, child):
        with pytest.raises(RuleViolation) as caught:
            ledger.add_block_with_orphans(orphan, NOW_MS)
        assert caught.value.reason == "unknown-parent"
        ledger.orphans.add(orphan, len(orphan.encode()))
    updates = ledger.add_block_with_orphans(parent, NOW_MS)
    assert [u.result.entry.hash for u in updates] == [parent.hash, child.hash, grandchild.hash]
    assert ledger.height == 3 and len(ledger.orphans) == 0


def test_orphans_go_through_a_batch_too(ledger):
    parent, child = _chain_of(ledger, 2, Relay("relay-1"))
    ledger.orphans.add(child, len(child.encode()))
    batch = ledger.add_blocks([parent], NOW_MS)
    assert [u.result.entry.hash for u in batch.updates] == [parent.hash, child.hash]


def test_a_runs_parentless_block_links_through_an_orphan_the_run_connects(ledger):
    # The pool holds the child; a run brings its parent and then its grandchild, without
    # the child (a sender that knew we held it). The grandchild is refused mid-run, yet
    # the child the run connects is its parent: it must link too, not wait for ever.
    parent, child, grandchild = _chain_of(ledger, 3, Relay("relay-1"))
    ledger.orphans.add(child, len(child.encode()))
    batch = ledger.add_blocks([parent, grandchild], NOW_MS)
    assert batch.error is not None and batch.error.reason == "unknown-parent"
    assert ledger.height == 3 and ledger.tip.hash == grandchild.hash
    assert len(ledger.orphans) == 0


# --- damage found on open --------------------------------------------------------------------

def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def _main_hash(db, height: int) -> bytes:
    return db.execute("SELECT hash FROM main WHERE height = ?", (height,)).fetchone()[0]


def _damage_raw_payload(db, height):
    h = _main_hash(db, height)
    raw = db.execute("SELECT raw FROM blocks WHERE hash = ?", (h,)).fetchone()[0]
    db.execute("UPDATE blocks SET raw = ? WHERE hash = ?", (_flip(raw, len(raw) - 3), h))
    return h, "bad-root"


def _damage_raw_header(db, height):
    h = _main_hash(db, height)
    raw = db.execute("SELECT raw FROM blocks WHERE hash = ?", (h,)).fetchone()[0]
    db.execute("UPDATE blocks SET raw = ? WHERE hash = ?", (_flip(raw, 40), h))
    return h, "does not hash to its key"


def _damage_signature(db, height):
    h = _main_hash(db, height)
    block = Block.decode(db.execute("SELECT raw FROM blocks WHERE hash = ?", (h,)).fetchone()[0])
    forged = dataclasses.replace(block, signature=_flip(block.signature, 5))
    db.execute("UPDATE blocks SET raw = ? WHERE hash = ?", (forged.encode(), h))
    return h, "bad-signature"


def _damage_header_column(db, height):
    h = _main_hash(db, height)
    header = db.execute("SELECT header FROM blocks WHERE hash = ?", (h,)).fetchone()[0]
    db.execute("UPDATE blocks SET header = ? WHERE hash = ?", (_flip(header, 60), h))
    return h, "header"


def _delete_block_row(db, height):
    h = _main_hash(db, height)
    db.execute("DELETE FROM blocks WHERE hash = ?", (h,))
    child = _main_hash(db, height + 1)
    return child, "parent"


def _delete_reading_row(db, height):
    h = _main_hash(db, height)
    db.execute("DELETE FROM readings WHERE block_hash = ? AND timestamp_ms = "
               "(SELECT min(timestamp_ms) FROM readings WHERE block_hash = ?)", (h, h))
    return h, "readings"


def _alter_reading_value(db, height):
    h = _main_hash(db, height)
    db.execute("UPDATE readings SET ia = ia + 1 WHERE block_hash = ?", (h,))
    return h, "readings"


def _truncate_raw(db, height):
    h = _main_hash(db, height)
    db.execute("UPDATE blocks SET raw = substr(raw, 1, 50) WHERE hash = ?", (h,))
    return h, "does not decode"


def _corrupt_index_newest(db, height):
    h = _main_hash(db, height)
    db.execute("UPDATE blocks SET newest_ms = newest_ms + 1 WHERE hash = ?", (h,))
    return h, "columns"


DAMAGE = [_damage_raw_payload, _damage_raw_header, _damage_signature, _damage_header_column,
          _delete_block_row, _delete_reading_row, _alter_reading_value, _truncate_raw, _corrupt_index_newest]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damage_in_recent_blocks_stops_the_open(forked, damage):
    path, state = forked
    db = db_of(path)
    block_hash, reason = damage(db, state["height"] - 2)
    db.close()
    with pytest.raises(LedgerDamaged) as caught:
        Ledger.open(path, PARAMS, NOW_MS)
    message = str(caught.value)
    assert block_hash.hex() in message and reason in message, message
    assert "\n" not in message


def test_a_stored_tip_that_is_not_the_best_tip_stops_the_open(forked):
    path, state = forked
    db = db_of(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'tip'", (state["main"][5],))
    db.close()
    with pytest.raises(LedgerDamaged) as caught:
        Ledger.open(path, PARAMS, NOW_MS)
    assert caught.value.height == 5 and "tip" in caught.value.reason


def test_a_deleted_tip_row_stops_the_open(forked):
    path, state = forked
    db = db_of(path)
    db.execute("DELETE FROM blocks WHERE hash = ?", (state["tip"],))
    db.close()
    with pytest.raises(LedgerDamaged) as caught:
        Ledger.open(path, PARAMS, NOW_MS)
    assert state["tip"].hex() in str(caught.value)


# --- the full audit --------------------------------------------------------------------------

def test_audit_of_a_good_store_is_clean(forked):
    path, state = forked
    seen = []
    report = audit_store(path / DB_FILE, PARAMS, progress=lambda done, total: seen.append((done, total)))
    assert report.ok and report.problems == [] and report.checked == state["size"]
    assert seen[-1] == (state["size"], state["size"])


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_audit_finds_old_damage_that_open_does_not_recheck(forked, damage):
    path, state = forked
    db = db_of(path)
    block_hash, reason = damage(db, 3)  # far below the tip; and on the branch that lost at 4
    db.close()
    report = audit_store(path / DB_FILE, PARAMS)
    assert not report.ok
    assert any(p[1] == block_hash.hex() and reason in p[2] for p in report.problems), report.problems


def test_audit_finds_damage_on_a_side_branch(forked):
    path, state = forked
    db = db_of(path)
    side = db.execute("SELECT hash, raw FROM blocks WHERE height = 9 AND hash NOT IN (SELECT hash FROM main)"
                      ).fetchall()
    assert side
    for block_hash, raw in side:
        db.execute("UPDATE blocks SET raw = ? WHERE hash = ?", (_flip(raw, len(raw) - 3), block_hash))
    db.close()
    report = audit_store(path / DB_FILE, PARAMS)
    assert {p[1] for p in report.problems} == {h.hex() for h, _ in side}


def test_audit_finds_main_table_and_stray_readings_damage(forked):
    path, state = forked
    db = db_of(path)
    db.execute("UPDATE main SET hash = ? WHERE height = 7", (b"\x01" * 32,))
    db.execute("INSERT INTO main VALUES (99, ?)", (b"\x02" * 32,))
    db.execute("UPDATE readings SET block_height = 50 WHERE block_height = 2")
    db.execute("UPDATE meta SET value = ? WHERE key = 'tip'", (state["main"][3],))
    db.close()
    reasons = [p[2] for p in audit_store(path / DB_FILE, PARAMS).problems]
    assert any("main table does not list" in r for r in reasons)
    assert any("above the best tip" in r for r in reasons)
    assert any("not on the main chain" in r for r in reasons)
    assert any("stored tip" in r for r in reasons)


def test_audit_reports_descendants_of_a_missing_block_once(forked):
    path, state = forked
    db = db_of(path)
    db.execute("DELETE FROM blocks WHERE hash = ?", (state["main"][6],))
    db.close()
    report = audit_store(path / DB_FILE, PARAMS)
    parents = [p for p in report.problems if p[2] == "parent missing"]
    assert [p[1] for p in parents] == [state["main"][7].hex()]
    assert report.omitted == state["height"] - 7


def test_audit_of_another_networks_store(forked):
    path, _ = forked
    other = dataclasses.replace(PARAMS, name="elsewhere")
    report = audit_store(path / DB_FILE, other)
    assert not report.ok and "network" in report.problems[0][2]


def test_audit_runs_beside_an_open_ledger(forked):
    path, state = forked
    ledger = Ledger.open(path, PARAMS, NOW_MS)
    add_line(ledger, 2, Relay("relay-3"))
    assert audit_store(ledger.store.path, PARAMS).ok
    ledger.close()


def test_audit_of_a_file_that_is_not_a_store(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"garbage" * 1000)
    report = audit_store(tmp_path / DB_FILE, PARAMS)
    assert not report.ok and "database" in report.problems[0][2]
    with pytest.raises(StoreError):
        audit_store(tmp_path / "missing.sqlite3", PARAMS)


def test_a_missing_genesis_row_is_damage(forked):
    path, state = forked
    db = db_of(path)
    db.execute("DELETE FROM blocks WHERE height = 0")
    db.close()
    with pytest.raises(LedgerDamaged) as caught:
        Ledger.open(path, PARAMS, NOW_MS)
    assert caught.value.height == 0 and "genesis" in caught.value.reason
    assert any("genesis" in p[2] for p in audit_store(path / DB_FILE, PARAMS).problems)


# --- provenance in the store -------------------------------------------------------------------

def _forged_on_tip(ledger: Ledger) -> Block:
    """A block the miner mined and signed properly, over readings the relay never signed."""
    from tests.support.blocks import OTHER_RELAY_KEY, RELAY_KEY, capture

    seq = ledger.last_seq("relay-1") + 1
    forged = dataclasses.replace(capture(start_seq=seq, signer=OTHER_RELAY_KEY), relay_key=RELAY_KEY.public_key)
    return make_block(ledger.tip, forged)


def test_a_stored_block_with_a_forged_relay_signature_is_damage(tmp_path):
    from gridchain.ledger.store import MainChange

    ledger = Ledger.open(tmp_path, PARAMS, NOW_MS)
    add_line(ledger, 3, Relay("relay-1"))
    forged = _forged_on_tip(ledger)
    with pytest.raises(RuleViolation) as caught:
        ledger.add_block(forged, NOW_MS)
    assert caught.value.reason == "bad-relay-signature"
    # Written past the rules, as an edited database would hold it.
    ledger.store.commit([forged], [MainChange(forged.height - 1, (forged,), forged.hash)])
    ledger.close()
    report = audit_store(tmp_path / DB_FILE, PARAMS)
    assert [(p[1], p[2].split(":")[0]) for p in report.problems][:1] == [(forged.hash.hex(), "bad-relay-signature")]
    with pytest.raises(LedgerDamaged) as damaged:
        Ledger.open(tmp_path, PARAMS, NOW_MS)
    assert "bad-relay-signature" in damaged.value.reason


def test_audit_lists_the_gaps_the_relays_signed(ledger):
    from tests.support.blocks import capture, gap_notice

    add_line(ledger, 2, Relay("relay-1"))
    restarted = make_block(ledger.tip, capture(start_seq=1_000, start_ms=2_000_000_000_000,
                                               gap=gap_notice("relay-1", 1_000, 1_999_999_000_000)))
    ledger.add_block(restarted, NOW_MS)
    add_line(ledger, 1, Relay("relay-1", start_seq=1_006))
    report = audit_store(ledger.store.path, PARAMS)
    assert report.ok
    [gap] = report.gaps
    assert (gap.relay_id, gap.first_seq, gap.last_seq, gap.resume_ms) == ("relay-1", 13, 999, 2_000_000_000_000)
    assert ledger.gaps() == report.gaps


def test_a_fill_survives_reopen_and_audit_and_only_the_rest_is_a_gap(tmp_path):
    """Seq 1..12, the relay's notice at 1_000, a fork from seq 6 that jumps to it and wins,
    then a fill of 7..12: the reopened chain knows the gap that is left (the next fill is
    judged the same), the full audit replays the fill, and both list 13..999 alone."""
    from tests.support.blocks import capture, gap_notice

    notice = gap_notice("relay-1", 1_000)
    ledger = Ledger.open(tmp_path, PARAMS, NOW_MS)
    first, second = add_line(ledger, 2, Relay("relay-1"))
    ledger.add_block(make_block(ledger.tip, capture(start_seq=1_000, gap=notice)), NOW_MS)
    parent, displaced = ledger.chain.get(first.hash), []
    for start in (1_000, 1_006, 1_012):
        block = make_block(parent, capture(start_seq=start, gap=notice if start == 1_000 else None), "bob", BOB)
        update = ledger.add_block(block, NOW_MS)
        parent, displaced = update.result.entry, displaced + update.displaced
    assert [(c.first_seq, c.last_seq) for c in displaced] == [(7, 12)]
    ledger.add_block(make_block(ledger.tip, displaced[0]), NOW_MS)
    state, gaps = snapshot(ledger), ledger.gaps()
    assert [(g.first_seq, g.last_seq) for g in gaps] == [(13, 999)]
    ledger.close()
    reopened = Ledger.open(tmp_path, PARAMS, NOW_MS)
    try:
        assert snapshot(reopened) == state and reopened.gaps() == gaps
        assert reopened.chain.open_gaps("relay-1") == ((13, 999),)
        with pytest.raises(RuleViolation) as caught:  # the same readings again are held now
            reopened.add_block(make_block(reopened.tip, displaced[0], "bob", BOB), NOW_MS)
        assert caught.value.reason == "duplicate-reading"
        report = audit_store(reopened.store.path, PARAMS)
        assert report.ok, report.problems
        assert report.gaps == gaps
    finally:
        reopened.close()


def test_an_index_reading_count_that_moves_the_gaps_is_damage(tmp_path):
    """The index's count gives the rebuilt chain each block's first seq; an edited count
    that would open another gap range is named on open, not trusted."""
    from tests.support.blocks import capture, gap_notice

    ledger = Ledger.open(tmp_path, PARAMS, NOW_MS)
    add_line(ledger, 2, Relay("relay-1"))
    jump = make_block(ledger.tip, capture(start_seq=1_000, gap=gap_notice("relay-1", 1_000)))
    ledger.add_block(jump, NOW_MS)
    ledger.close()
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("UPDATE blocks SET n_readings = 3 WHERE hash = ?", (jump.hash,))
    db.commit()
    db.close()
    with pytest.raises(LedgerDamaged) as caught:
        Ledger.open(tmp_path, PARAMS, NOW_MS)
    assert caught.value.height == jump.height and "open gaps" in caught.value.reason
