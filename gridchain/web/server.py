"""The dashboard over HTTP: the page, its static files, a JSON API, server-sent events, /metrics.

The node's operator listener routes a connection here when its first bytes are an HTTP
request line (``looks_like_http``) rather than a frame's 4-byte length, and awaits
``serve_http(reader, writer, dashboard, first)``. One request per connection, read-only
(GET and HEAD); everything it shows comes through the view and the status callable the
node hands ``Dashboard``, as the operator API's does, so this package never imports the node.

Routes: ``/`` the page, ``/static/<file>``, ``/api/status``, ``/api/relays``,
``/api/readings?relay=ID&since=MS&until=MS`` (or ``&span=MS``: that long up to the relay's
newest reading; without ``relay``, the first relay ``/api/relays`` lists), ``/api/blocks?limit=N``,
``/events`` (``block`` and ``alert`` events), ``/metrics`` (Prometheus text format).
Shipped files carry an ETag (a reload costs 304s); text answers are gzipped when the client
accepts it and the body is worth it (gridchain.web.http.compressible).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

import structlog

from gridchain.consensus.block import Block
from gridchain.web import events as sse
from gridchain.web.alerts import AlertBook, AlertCleared, AlertRaised
from gridchain.web.events import EventHub
from gridchain.web.http import (
    MAX_BODY_BYTES, METHODS, READ_METHODS, STATIC_GZIP_LEVEL, BadRequest, HttpError, MethodNotAllowed, NotFound,
    Request, RequestDecoder, accepts_gzip, compressible, entity_tag, error_response, gzipped, not_modified, response,
    response_head,
)
from gridchain.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gridchain.web.metrics import Metrics
from gridchain.web.readings import FORMATS, MAX_SPAN_MS, ReadingsCache, empty_answer

log = structlog.get_logger()

HEAD_TIMEOUT_S = 10.0  # a browser sends its whole request at once; a slow drip is dropped
WRITE_TIMEOUT_S = 10.0  # a client that does not read its answer for this long is dropped
MAX_CONNECTIONS = 64  # HTTP connections at once (event streams included)
READ_CHUNK = 16 * 1024
DEFAULT_BLOCKS, MAX_BLOCKS = 20, 200  # /api/blocks rows: a screenful by default
RELAY_SCAN_BLOCKS = 32  # main-chain newest blocks read once to learn the relays on the chain (published blocks add more)
STATIC_PACKAGE = "gridchain.web"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".md": "text/markdown; charset=utf-8",
                  ".LICENSE": "text/plain; charset=utf-8", ".svg": "image/svg+xml"}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
# The first four bytes of every request line the server may see: a frame's 4-byte length
# is at most 4 MiB (gridchain.wire.frames), so its first byte is 0x00, never a letter.
_REQUEST_PREFIXES = frozenset((method + " ")[:4].encode() for method in METHODS)


def looks_like_http(first: bytes) -> bool:
    """Whether a connection's first bytes begin an HTTP request line (4 bytes decide it)."""
    if not first or not 0x41 <= first[0] <= 0x5A:
        return False
    head = first[:4]
    return any(prefix.startswith(head) for prefix in _REQUEST_PREFIXES)


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dashboard: Dashboard,
                     first: bytes = b"", authorize: Callable[[Request], bool] | None = None) -> None:
    """Answer one HTTP connection; ``first`` holds bytes the listener already read from it.

    ``authorize`` (this connection's access rule: it knows where the connection came from)
    replaces the dashboard's own; it answers False or raises HttpError to refuse a request."""
    await dashboard.serve(reader, writer, first, authorize)


class DashboardView(Protocol):
    """What the dashboard reads of the node's chain (a part of gridchain.api.server.NodeView)."""

    @property
    def height(self) -> int: ...
    def main_block(self, height: int) -> Block: ...
    def readings_page(self, relay: str | None, since_ms: int | None, until_ms: int | None,
                      after: tuple[int, str, int] | None, limit: int
                      ) -> tuple[list[tuple], tuple[int, str, int] | None]: ...
    def newest_reading_ms(self, relay_id: str) -> int | None: ...


class Dashboard:
    """One node's web dashboard: routes, the readings cache, the event streams."""

    def __init__(self, view: DashboardView, status: Callable[[], dict], *, metrics: Metrics | None = None,
                 alerts: AlertBook | None = None, name: str = "",
                 authorize: Callable[[Request], bool] | None = None) -> None:
        self.view = view
        self.status = status
        self.metrics = metrics
        self.alerts = alerts
        self.authorize = authorize  # None: whoever reached the operator listener may read
        self.hub = EventHub()
        self.readings = ReadingsCache(view, tip=self._tip_key)
        self.log = log.bind(node=name)
        self._static = _load_static()
        self._relays: set[str] = set()
        self._relays_scanned = False
        self._blocks_cache: tuple[object, int, bytes] | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- what the node tells it ------------------------------------------------------------------
    def publish_blocks(self, joined: Iterable[tuple[Block, int]]) -> None:
        """A ``block`` event for each (block, height) that joined the main chain, in order."""
        joined = list(joined)
        if not joined:
            return
        last_block, last_height = joined[-1]
        self.readings.follow(joined, (last_block.hash.hex(), last_height))
        for block, height in joined:
            self._relays.add(block.capture.relay_id)
            self.hub.publish("block", block_row(block, height))

    def publish_alerts(self, edges: Iterable[AlertRaised | AlertCleared]) -> None:
        """An ``alert`` event per edge (``state``: raised or cleared)."""
        for edge in edges:
            state = "raised" if isinstance(edge, AlertRaised) else "cleared"
            self.hub.publish("alert", {**edge.alert.as_dict(), "state": state})

    async def close(self) -> None:
        """End every event stream and open connection (at shutdown)."""
        self.hub.close()
        for writer in list(self._writers):
            writer.transport.abort()

    # --- one connection ------------------------------------------------------------------------
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b"",
                    authorize: Callable[[Request], bool] | None = None) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            writer.write(error_response(HttpError("busy", "too many connections", 503)))
            writer.transport.abort()
            return
        self._writers.add(writer)
        request = None
        try:
            request = await self._read_request(reader, first)
            await self._answer(request, reader, writer, authorize or self.authorize)
        except HttpError as exc:
            self.log.info("web.refused", reason=exc.reason, status=exc.status, path=request.path if request else None)
            await self._write(writer, error_response(exc, head_only=request is not None and request.method == "HEAD"))
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()  # after drain: the answer goes out, then FIN (an abort could lose it to a reset)

    async def _read_request(self, reader: asyncio.StreamReader, first: bytes) -> Request:
        decoder = RequestDecoder()
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                request = decoder.feed(first) if first else None
                while request is None:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        raise BadRequest("incomplete-request", "the connection closed before a whole request head")
                    request = decoder.feed(data)
                # A small body is read and dropped, so the client sees the answer rather than a reset.
                left = min(decoder.body_needed, MAX_BODY_BYTES)
                while left > 0:
                    data = await reader.read(min(left, READ_CHUNK))
                    if not data:
                        break
                    left -= len(data)
        except TimeoutError:
            raise HttpError("request-timeout", f"no whole request within {HEAD_TIMEOUT_S} s", 408) from None
        return request

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    async def _answer(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      authorize: Callable[[Request], bool] | None = None) -> None:
        if request.method not in READ_METHODS:
            raise MethodNotAllowed("method-not-allowed", f"{request.method} is not served: the dashboard is read-only")
        if authorize is not None and not authorize(request):
            raise HttpError("forbidden", "not allowed to read this node", 403)
        head_only = request.method == "HEAD"
        path = request.path
        if path == "/events":
            if head_only:
                await self._write(writer, response_head(200, "text/event-stream", None))
                return
            await self._stream(reader, writer)
            return
        started = time.perf_counter()
        status, body, content_type, extra = self._route(request)
        if status == 200 and not any(name == "Content-Encoding" for name, _ in extra) and compressible(
                content_type, len(body)):
            extra += (("Vary", "Accept-Encoding"),)
            if accepts_gzip(request):
                body, extra = gzipped(body), extra + (("Content-Encoding", "gzip"),)
        await self._write(writer, response(status, body, content_type, extra, head_only))
        self.log.debug("web.request", path=path, status=status, bytes=len(body),
                       ms=round((time.perf_counter() - started) * 1000, 3))

    def _route(self, request: Request) -> tuple[int, bytes, str, tuple[tuple[str, str], ...]]:
        path = request.path
        if path in ("/", "/index.html"):
            path = "/static/index.html"
        if path.startswith("/static/"):
            found = self._static.get(path.removeprefix("/static/"))
            if found is None:
                raise NotFound("not-found", f"no file {path}")
            # no-cache: the names stay the same from one release to the next, so a browser asks
            # each time; with the ETag, what it already holds costs a 304 and no body.
            extra = (("Cache-Control", "no-cache"), ("ETag", found.etag))
            if found.gzipped is not None:
                extra += (("Vary", "Accept-Encoding"),)
            if found.content_type.startswith("text/html"):
                extra += (("Content-Security-Policy", _CSP),)
            if not_modified(request, found.etag):
                return 304, b"", found.content_type, extra
            if found.gzipped is not None and accepts_gzip(request):
                return 200, found.gzipped, found.content_type, extra + (("Content-Encoding", "gzip"),)
            return 200, found.body, found.content_type, extra
        if path == "/metrics":
            if self.metrics is None:
                raise NotFound("not-found", "this node exports no metrics")
            return 200, self.metrics.exposition(), METRICS_CONTENT_TYPE, ()
        api = {"/api/status": self._api_status, "/api/readings": self._api_readings,
               "/api/blocks": self._api_blocks, "/api/relays": self._api_relays}.get(path)
        if api is None:
            raise NotFound("not-found", f"no page {path}")
        content_type = "application/octet-stream" if request.query.get("format") == "f64" else "application/json"
        return 200, api(request.query), content_type, (("Cache-Control", "no-store"),)

    # --- the API ------------------------------------------------------------------------------
    def _api_status(self, query: dict[str, str]) -> bytes:
        status = dict(self.status())
        status["alerts"] = [a.as_dict() for a in self.alerts.active()] if self.alerts is not None else []
        return _json(status)

    def _api_readings(self, query: dict[str, str]) -> bytes:
        fmt = query.get("format", "json")
        if fmt not in FORMATS:
            raise BadRequest("bad-query", f"format must be one of {', '.join(FORMATS)}")
        # Without relay=, the first relay /api/relays lists: the page asks before it knows the list.
        relay = query.get("relay") or next(iter(self._relay_ids()), None)
        if relay is None:
            return empty_answer(fmt)  # a node with no relay yet
        since, until, span = (_int_arg(query, name) for name in ("since", "until", "span"))
        if span is not None:
            if not 0 < span <= MAX_SPAN_MS:
                raise BadRequest("bad-query", f"span must be 1..{MAX_SPAN_MS} ms")
            newest = self.view.newest_reading_ms(relay)
            if newest is None:
                return self.readings.get(relay, 0, 0, fmt)  # no readings yet: an empty answer
            until = newest if until is None else until
            since = until - span
        return self.readings.get(relay, since, until, fmt)

    def _api_blocks(self, query: dict[str, str]) -> bytes:
        limit = _int_arg(query, "limit")
        limit = DEFAULT_BLOCKS if limit is None else max(1, min(limit, MAX_BLOCKS))
        tip = self._tip_key()
        if self._blocks_cache is not None and self._blocks_cache[:2] == (tip, limit):
            return self._blocks_cache[2]
        height = self.view.height
        rows = [block_row(self.view.main_block(h), h) for h in range(height, max(-1, height - limit), -1)]
        status = self.status()
        body = _json({"height": height, "finalized_height": _finalized(status), "blocks": rows})
        self._blocks_cache = (tip, limit, body)
        return body

    def _relay_ids(self, polled: Iterable[str] | None = None) -> list[str]:
        """The relays on the chain and those this node polls, sorted: /api/relays' rows."""
        if not self._relays_scanned:
            height = self.view.height
            for h in range(height, max(0, height - RELAY_SCAN_BLOCKS), -1):
                self._relays.add(self.view.main_block(h).capture.relay_id)
            self._relays_scanned = True
        if polled is None:
            polled = (r.get("relay_id") for r in self.status().get("relays", ()))
        return sorted(self._relays | {relay_id for relay_id in polled if relay_id})

    def _api_relays(self, query: dict[str, str]) -> bytes:
        polled = {r.get("relay_id"): r for r in self.status().get("relays", ()) if r.get("relay_id")}
        rows = []
        for relay_id in self._relay_ids(polled):
            watch = polled.get(relay_id, {})
            rows.append({"relay_id": relay_id, "newest_ms": self.view.newest_reading_ms(relay_id),
                         "state": watch.get("state"), "address": watch.get("address")})
        return _json({"relays": rows})

    def _tip_key(self) -> object:
        status = self.status()
        return status.get("tip"), status.get("height")

    # --- events -------------------------------------------------------------------------------
    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue = self.hub.subscribe()
        if queue is None:
            raise HttpError("busy", "too many open event streams", 503)
        closed = asyncio.create_task(reader.read(1))  # EOF (or anything) from the browser ends the stream
        try:
            head = response_head(200, "text/event-stream", None, (("Cache-Control", "no-store"),))
            hello = sse.sse_bytes("hello", {"height": self.view.height})
            await self._write(writer, head + f"retry: {sse.RETRY_MS}\n\n".encode() + hello)
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, closed}, timeout=sse.HEARTBEAT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    return
                if getter not in done:
                    getter.cancel()
                    await self._write(writer, b": keepalive\n\n")
                    continue
                event = getter.result()
                if event is None:
                    return
                await self._write(writer, event)
        finally:
            closed.cancel()
            self.hub.unsubscribe(queue)


def block_row(block: Block, height: int) -> dict[str, object]:
    """What the page shows of a block (and a ``block`` event carries)."""
    capture = block.capture
    return {"height": height, "hash": block.hash.hex(), "miner_name": block.miner_name,
            "miner_key": block.header.miner_key.hex(), "relay_id": capture.relay_id, "readings": len(capture.readings),
            "newest_ms": capture.newest_ms, "time_ms": block.header.time_ms,
            "openings": capture.readings[-1].openings if capture.readings else None}


def _finalized(status: dict) -> int | None:
    finality = status.get("finality") if isinstance(status.get("finality"), dict) else {}
    return status.get("finalized_height", finality.get("finalized_height"))


def _int_arg(query: dict[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise BadRequest("bad-query", f"{name}={text!r} is not an integer") from None


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=sse._plain).encode()


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One shipped file: its bytes, type, validator, and gzipped form (None where gzip gains nothing)."""

    body: bytes
    content_type: str
    etag: str
    gzipped: bytes | None


def static_file(body: bytes, content_type: str) -> StaticFile:
    packed = gzipped(body, STATIC_GZIP_LEVEL) if compressible(content_type, len(body)) else None
    return StaticFile(body, content_type, entity_tag(body), packed if packed and len(packed) < len(body) else None)


def _load_static() -> dict[str, StaticFile]:
    """Every file shipped in gridchain/web/static, by name (nothing else can be asked for)."""
    files = {}
    for entry in (resources.files(STATIC_PACKAGE) / "static").iterdir():
        if entry.is_file():
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            files[entry.name] = static_file(entry.read_bytes(), _CONTENT_TYPES.get(suffix, "application/octet-stream"))
    return files
