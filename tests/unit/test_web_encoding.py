"""How the dashboard answers on the wire: gzip for clients that accept it, ETags and 304s for the
shipped files, and the readings of the node's first relay for a page that has not named one."""

from __future__ import annotations

import gzip
import json

import pytest

from gridchain.web.http import GZIP_MIN_BYTES, RequestDecoder, accepts_gzip, entity_tag, not_modified
from gridchain.web.readings import RelaySeries
from tests.support.web import DashboardSite, fill_day, http_get

GZIP = {"Accept-Encoding": "gzip, deflate, br"}


def request(*headers: str):
    return RequestDecoder().feed(("GET / HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode())


@pytest.mark.parametrize("header, accepted", [
    (None, False), ("gzip", True), ("gzip, deflate, br, zstd", True), ("br;q=1.0, gzip;q=0.8", True),
    ("gzip;q=0", False), ("gzip; q=0.000", False), ("identity", False), ("*", True), ("*;q=0", False),
    ("deflate, *;q=0.1", True), ("gzip;q=0, *", False), ("GZIP", True), ("gzip;q=nonsense", False),
])
def test_accept_encoding_is_read_with_its_weights(header, accepted):
    assert accepts_gzip(request(*([f"Accept-Encoding: {header}"] if header else []))) is accepted


def test_an_etag_matches_itself_weak_or_strong_and_in_a_list():
    tag = entity_tag(b"body")
    assert tag == entity_tag(b"body") != entity_tag(b"other") and tag.startswith('W/"')
    assert not_modified(request(f"If-None-Match: {tag}"), tag)
    assert not_modified(request(f'If-None-Match: "x", {tag.removeprefix("W/")}'), tag)
    assert not_modified(request("If-None-Match: *"), tag)
    assert not not_modified(request('If-None-Match: "x"'), tag) and not not_modified(request(), tag)


def test_a_series_from_rows_out_of_order_is_sorted_as_appends_would_leave_it():
    rows = [("r", seq, t, 0, 0, *([float(seq)] * 10), 1) for seq, t in ((1, 10), (3, 30), (2, 20), (4, 30))]
    series = RelaySeries("r", None, None, rows)
    assert list(series.columns["t"]) == [10, 20, 30, 30]
    assert list(series.columns["seq"]) == [1, 2, 3, 4]  # equal times keep their order
    assert list(series.heights) == [1, 1, 1, 1]


@pytest.fixture
async def site(tmp_path):
    site = DashboardSite(tmp_path)
    fill_day(site.ledger, 600)
    await site.start()
    yield site
    await site.stop()


async def test_shipped_files_are_gzipped_for_who_accepts_it_and_revalidated_by_etag(site):
    status, plain_headers, plain = await http_get(site.port, "/static/app.js")
    assert status == 200 and "content-encoding" not in plain_headers and b"gridchain" in plain
    status, headers, packed = await http_get(site.port, "/static/app.js", GZIP)
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed) == plain and len(packed) < len(plain) / 2
    assert int(headers["content-length"]) == len(packed)
    assert headers["etag"] == plain_headers["etag"] and headers["cache-control"] == "no-cache"

    status, again, body = await http_get(site.port, "/static/app.js", {**GZIP, "If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and again["etag"] == headers["etag"] and "content-length" not in again
    status, _, body = await http_get(site.port, "/static/app.js", {"If-None-Match": '"stale"'})
    assert status == 200 and body == plain
    status, headers, page = await http_get(site.port, "/", GZIP)  # the page keeps its policy when packed
    assert status == 200 and "default-src 'self'" in headers["content-security-policy"]
    assert b"app.js" in gzip.decompress(page)


async def test_json_answers_are_gzipped_but_not_the_binary_readings(site):
    status, headers, body = await http_get(site.port, "/api/blocks?limit=20", GZIP)
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(body))["blocks"]) == 11  # genesis and 600 readings at 60 a block
    status, headers, body = await http_get(site.port, "/api/blocks?limit=20")
    assert "content-encoding" not in headers and len(body) >= GZIP_MIN_BYTES and headers["vary"] == "Accept-Encoding"
    status, headers, body = await http_get(site.port, "/api/readings?relay=relay-1&format=f64", GZIP)
    assert status == 200 and "content-encoding" not in headers and headers["content-type"] == "application/octet-stream"
    status, headers, _ = await http_get(site.port, "/api/relays", GZIP)  # a few bytes: nothing to gain
    assert status == 200 and "content-encoding" not in headers


async def test_readings_without_a_relay_are_those_of_the_first_relay_listed(site):
    _, _, relays = await http_get(site.port, "/api/relays")
    assert [r["relay_id"] for r in json.loads(relays)["relays"]] == ["relay-1"]
    _, _, named = await http_get(site.port, "/api/readings?relay=relay-1&span=3600000")
    _, _, default = await http_get(site.port, "/api/readings?span=3600000")
    assert json.loads(default) == json.loads(named) and json.loads(default)["count"] == 361  # both ends inclusive
    status, _, line = await http_get(site.port, "/api/readings?span=3600000&format=f64")
    assert status == 200 and json.loads(line.partition(b"\n")[0])["relay"] == "relay-1"


async def test_a_node_with_no_relay_answers_no_readings_rather_than_an_error(tmp_path):
    site = DashboardSite(tmp_path)
    site.relays = []
    await site.start()
    try:
        status, _, body = await http_get(site.port, "/api/readings?span=86400000")
        answer = json.loads(body)
        assert status == 200 and answer["relay"] is None and answer["count"] == 0
        assert all(column == [] for column in answer["columns"].values())
    finally:
        await site.stop()
