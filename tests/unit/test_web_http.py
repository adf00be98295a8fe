"""The dashboard's HTTP request decoder: limits and named errors on plain bytes, and the server's answers on a socket."""

from __future__ import annotations

import asyncio

import pytest

from gridchain.web import http
from gridchain.web.http import (
    BadRequest, HeadersTooLarge, NotImplementedHere, PayloadTooLarge, RequestDecoder, UriTooLong, VersionNotSupported,
)
from gridchain.web.server import looks_like_http
from gridchain.wire.frames import encode_frame


def decode(data: bytes):
    return RequestDecoder().feed(data)


def test_a_request_in_pieces_is_decoded_once_whole():
    decoder = RequestDecoder()
    raw = b"GET /api/readings?relay=relay-1&since=5&since=7 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    for i in range(len(raw) - 1):
        assert decoder.feed(raw[i:i + 1]) is None
    request = decoder.feed(raw[-1:])
    assert request.method == "GET" and request.path == "/api/readings"
    assert request.query == {"relay": "relay-1", "since": "7"}  # the last value of a repeated name
    assert request.header("HOST") == "x" and request.version == "HTTP/1.1"


def test_percent_encoding_is_decoded_in_the_path():
    assert decode(b"GET /static/app%2Ejs HTTP/1.0\r\n\r\n").path == "/static/app.js"


@pytest.mark.parametrize("line, error, reason", [
    (b"GET /\r\n\r\n", BadRequest, "bad-request-line"),
    (b"GET  / HTTP/1.1\r\n\r\n", BadRequest, "bad-request-line"),
    (b"G(T / HTTP/1.1\r\n\r\n", BadRequest, "bad-method"),
    (b"GET / HTTP/2.0\r\n\r\n", VersionNotSupported, "bad-version"),
    (b"GET / SPDY/3\r\n\r\n", BadRequest, "bad-version"),
    (b"GET http://evil/ HTTP/1.1\r\n\r\n", BadRequest, "bad-target"),
    (b"GET /\x01 HTTP/1.1\r\n\r\n", BadRequest, "bad-target"),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", BadRequest, "bad-header"),
    (b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", BadRequest, "bad-header"),
    (b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n", BadRequest, "bad-header"),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BadRequest, "bad-content-length"),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", BadRequest, "bad-content-length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", NotImplementedHere, "chunked-body"),
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", PayloadTooLarge, "body-too-large"),
])
def test_malformed_requests_raise_named_errors(line, error, reason):
    with pytest.raises(error) as caught:
        decode(line)
    assert caught.value.reason == reason
    assert caught.value.status == error.status


def test_an_endless_request_line_is_refused_before_its_end_arrives():
    decoder = RequestDecoder()
    decoder.feed(b"GET /" + b"a" * (http.MAX_REQUEST_LINE - 10))
    with pytest.raises(UriTooLong) as caught:
        decoder.feed(b"a" * 20)
    assert caught.value.status == 414


def test_oversized_headers_are_refused_without_a_blank_line():
    decoder = RequestDecoder()
    decoder.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HeadersTooLarge) as caught:
        for _ in range(http.MAX_HEAD_BYTES // 100 + 2):
            decoder.feed(b"X-Filler: " + b"f" * 88 + b"\r\n")
    assert caught.value.status == 431 and caught.value.reason == "head-too-large"


def test_too_many_header_fields():
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(http.MAX_HEADERS + 1)) + b"\r\n"
    with pytest.raises(HeadersTooLarge) as caught:
        decode(head)
    assert caught.value.reason == "too-many-headers"


def test_body_bytes_after_the_head_count_against_the_declared_length():
    decoder = RequestDecoder()
    decoder.feed(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert decoder.body_needed == 7


def test_http_and_frames_are_told_apart_by_four_bytes():
    assert looks_like_http(b"GET ") and looks_like_http(b"HEAD") and looks_like_http(b"POST")
    assert looks_like_http(b"GE")  # a prefix of a request line
    frame = encode_frame({"type": "status_request"})
    assert not looks_like_http(frame[:4])
    assert not looks_like_http(b"") and not looks_like_http(b"get ") and not looks_like_http(b"GEX ")


# --- on a socket -------------------------------------------------------------------------------
class _NoView:
    height = 0

    def main_block(self, height):
        raise LookupError(height)

    def readings_page(self, *args):
        return [], None

    def newest_reading_ms(self, relay_id):
        return None


async def _exchange(raw: bytes) -> bytes:
    from gridchain.web.server import Dashboard, serve_http
    dashboard = Dashboard(_NoView(), lambda: {"height": 0, "tip": "00"})
    server = await asyncio.start_server(lambda r, w: serve_http(r, w, dashboard), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        return answer
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("raw, status", [
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
    (b"GET /static/../server.py HTTP/1.1\r\n\r\n", 404),
    (b"POST /api/status HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
    (b"GET / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", 413),
    (b"GET /api/readings?format=csv HTTP/1.1\r\n\r\n", 400),
    (b"GET /api/readings?relay=r&since=soon HTTP/1.1\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n\r\n", 404),  # no Metrics given to this dashboard
])
async def test_the_server_answers_refusals_with_their_status(raw, status):
    answer = await _exchange(raw)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert b"Connection: close" in answer
    if status == 405:
        assert b"Allow: GET, HEAD" in answer


async def test_the_page_and_its_files_are_served_with_their_types():
    page = await _exchange(b"GET / HTTP/1.1\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 ") and b"text/html" in page and b"Content-Security-Policy" in page
    assert b"uPlot.iife.min.js" in page
    script = await _exchange(b"GET /static/uPlot.iife.min.js HTTP/1.1\r\n\r\n")
    assert b"text/javascript" in script.split(b"\r\n\r\n")[0] and b"uPlot" in script
    head = await _exchange(b"HEAD /static/app.css HTTP/1.1\r\n\r\n")
    head_part, _, body = head.partition(b"\r\n\r\n")
    assert b"Content-Length: " in head_part and body == b""
