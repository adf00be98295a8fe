"""Readings as plotting columns: a series per relay read once, then kept in step with published blocks."""

from __future__ import annotations

import json
import struct

import pytest

from gridchain.ledger.ledger import Ledger
from gridchain.web.readings import COLUMNS, ReadingsCache
from tests.support.blocks import NOW_MS, PARAMS
from tests.support.web import day_blocks


class CountingSource:
    def __init__(self, ledger):
        self.ledger = ledger
        self.pages = 0

    def readings_page(self, relay, since_ms, until_ms, after, limit):
        self.pages += 1
        return self.ledger.store.readings_page(relay, since_ms, until_ms, after, limit)


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger.open(tmp_path, PARAMS, NOW_MS)
    ledger.add_blocks(list(day_blocks(600, per_block=60)), NOW_MS)
    yield ledger
    ledger.close()


def tip_of(ledger):
    return ledger.tip.hash.hex(), ledger.tip.height


def decode_f64(body: bytes) -> tuple[dict, dict]:
    line, _, data = body.partition(b"\n")
    meta = json.loads(line)
    assert (len(line) + 1) % 8 == 0  # the columns start 8-byte aligned
    n = meta["count"]
    columns = {name: struct.unpack(f"<{n}d", data[i * 8 * n:(i + 1) * 8 * n]) for i, name in enumerate(meta["columns"])}
    return meta, columns


def test_json_and_f64_answers_carry_the_same_columns(ledger):
    cache = ReadingsCache(CountingSource(ledger), lambda: tip_of(ledger))
    rows, _ = ledger.store.readings_page("relay-1", None, None, None, 10_000)
    since, until = rows[100][2], rows[399][2]
    answer = json.loads(cache.get("relay-1", since, until, "json"))
    assert answer["count"] == 300 and not answer["truncated"]
    assert answer["columns"]["t"][0] == since and answer["columns"]["seq"][-1] == rows[399][1]
    assert answer["columns"]["vab"] == [row[5] for row in rows[100:400]]
    meta, columns = decode_f64(cache.get("relay-1", since, until, "f64"))
    assert meta["columns"] == list(COLUMNS) and meta["count"] == 300
    assert list(columns["vab"]) == answer["columns"]["vab"]
    assert list(columns["openings"]) == answer["columns"]["openings"]


def test_the_series_follows_published_blocks_without_reading_the_store(ledger):
    source = CountingSource(ledger)
    cache = ReadingsCache(source, lambda: tip_of(ledger))
    cache.get("relay-1", 0, None)
    pages = source.pages
    tip = ledger.tip
    block = next(day_blocks(60, start_ms=ledger.newest_reading_ms("relay-1") + 10_000, first_seq=601,
                            parent=(tip.height, tip.hash, tip.header.time_ms), seed=3))
    ledger.add_block(block, NOW_MS)
    cache.follow([(block, block.height)], tip_of(ledger))
    answer = json.loads(cache.get("relay-1", 0, None))
    assert source.pages == pages  # no new store read
    stored, _ = ledger.store.readings_page("relay-1", None, None, None, 10_000)
    assert answer["count"] == 660 and answer["columns"]["seq"] == [row[1] for row in stored]
    assert answer["columns"]["ia"] == [row[8] for row in stored]


def test_a_reorg_drops_the_rows_above_the_fork(ledger):
    cache = ReadingsCache(CountingSource(ledger), lambda: tip_of(ledger))
    cache.get("relay-1", 0, None)
    fork = ledger.chain.main_at(8)  # blocks 9 and 10 go; two others (with other values) come
    replacement = list(day_blocks(180, start_ms=ledger.chain.newest_reading_ms("relay-1", fork) + 10_000,
                                  first_seq=481, parent=(fork.height, fork.hash, fork.header.time_ms), seed=99))
    ledger.add_blocks(replacement, NOW_MS)
    assert ledger.tip.hash == replacement[-1].hash
    cache.follow([(b, b.height) for b in replacement], tip_of(ledger))
    answer = json.loads(cache.get("relay-1", 0, None))
    stored, _ = ledger.store.readings_page("relay-1", None, None, None, 10_000)
    assert answer["count"] == 660 == len(stored)
    assert answer["columns"]["vab"] == [row[5] for row in stored]


def test_a_missed_tip_change_reads_the_store_again(ledger):
    source = CountingSource(ledger)
    cache = ReadingsCache(source, lambda: tip_of(ledger))
    cache.get("relay-1", 0, None)
    loads = cache.loads
    tip = ledger.tip
    block = next(day_blocks(60, start_ms=ledger.newest_reading_ms("relay-1") + 10_000, first_seq=601,
                            parent=(tip.height, tip.hash, tip.header.time_ms)))
    ledger.add_block(block, NOW_MS)  # nobody calls follow
    assert json.loads(cache.get("relay-1", 0, None))["count"] == 660
    assert cache.loads == loads + 1


def test_an_unknown_relay_answers_empty(ledger):
    cache = ReadingsCache(CountingSource(ledger), lambda: tip_of(ledger))
    answer = json.loads(cache.get("relay-9", 0, None))
    assert answer["count"] == 0 and answer["columns"]["t"] == []
