"""HTTP/1.1 requests without I/O: a bounded decoder for the request head, and response bytes.

Feed the decoder bytes as they arrive; it returns a ``Request`` once the head (request line
and headers) is complete, and raises a named ``HttpError`` as soon as the bytes cannot make
an acceptable request, before buffering past the limits below. The dashboard only reads,
so a request may carry a body of at most ``MAX_BODY_BYTES`` (it is read and ignored) and
never a chunked one. Every response closes the connection: keep-alive buys nothing for a
page that loads a handful of files once and then holds one event stream. Text bodies are
gzipped for clients that accept it (``accepts_gzip``, ``compressible``), and shipped files
carry an ETag so a reload costs a 304 (``entity_tag``, ``not_modified``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from gridchain.consensus.errors import GridchainError

# A request line longer than this is no URL the dashboard makes (its longest is ~120 bytes).
MAX_REQUEST_LINE = 4096
# The whole head, request line included: browsers send 0.5-2 KiB; 16 KiB leaves room for cookies.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64  # browsers send about 15
# The dashboard takes no uploads: a small body (a stray form post) is read and dropped.
MAX_BODY_BYTES = 16 * 1024
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"})
READ_METHODS = frozenset({"GET", "HEAD"})
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class HttpError(GridchainError):
    """A request the server refuses: ``status`` is the HTTP status to answer with."""

    status = 400

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(reason, detail)
        if status is not None:
            self.status = status


class BadRequest(HttpError):
    status = 400


class NotFound(HttpError):
    status = 404


class MethodNotAllowed(HttpError):
    status = 405


class PayloadTooLarge(HttpError):
    status = 413


class UriTooLong(HttpError):
    status = 414


class HeadersTooLarge(HttpError):
    status = 431


class NotImplementedHere(HttpError):
    status = 501


class VersionNotSupported(HttpError):
    status = 505


@dataclass(frozen=True, slots=True)
class Request:
    """One request head: ``path`` is percent-decoded, ``query`` maps each name to its last value."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    version: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return default

    @property
    def content_length(self) -> int:
        return int(self.header("content-length", "0"))


class RequestDecoder:
    """Bytes in, one ``Request`` out; ``body_needed`` bytes of body follow the head."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.request: Request | None = None
        self.body_needed = 0

    def feed(self, data: bytes) -> Request | None:
        """Add bytes; the Request once its head is whole (then leftover bytes are body)."""
        if self.request is not None:
            return self.request
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        line_end = self._buffer.find(b"\r\n")
        if (line_end < 0 and len(self._buffer) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
            raise UriTooLong("request-line-too-long", f"request line over {MAX_REQUEST_LINE} bytes")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HeadersTooLarge("head-too-large", f"request head over {MAX_HEAD_BYTES} bytes")
            return None
        if end + 4 > MAX_HEAD_BYTES:
            raise HeadersTooLarge("head-too-large", f"request head over {MAX_HEAD_BYTES} bytes")
        request = parse_head(bytes(self._buffer[:end]))
        self.body_needed = _body_length(request)
        self.body_needed = max(0, self.body_needed - (len(self._buffer) - end - 4))
        self.request = request
        self._buffer.clear()
        return request


def parse_head(head: bytes) -> Request:
    """The request line and headers (without the blank line that ends them)."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise BadRequest("bad-request-line", "the request line is not METHOD TARGET VERSION")
    raw_method, raw_target, raw_version = parts
    if not set(raw_method) <= _TOKEN:
        raise BadRequest("bad-method", "the method is not a token")
    method = raw_method.decode("ascii")
    if raw_version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if raw_version.startswith(b"HTTP/"):
            raise VersionNotSupported("bad-version", "only HTTP/1.0 and HTTP/1.1 are spoken")
        raise BadRequest("bad-version", "the request line does not end in an HTTP version")
    if any(b < 0x21 or b > 0x7E for b in raw_target):
        raise BadRequest("bad-target", "the target has a control or non-ASCII byte")
    target = raw_target.decode("ascii")
    if not target.startswith("/"):
        raise BadRequest("bad-target", "only origin-form targets (starting with /) are served")
    split = urlsplit(target)
    headers = _parse_headers(rest)
    return Request(method, target, unquote(split.path), dict(parse_qsl(split.query)),
                   raw_version.decode("ascii"), headers)


def _parse_headers(block: bytes) -> tuple[tuple[str, str], ...]:
    if not block:
        return ()
    lines = block.split(b"\r\n")
    if len(lines) > MAX_HEADERS:
        raise HeadersTooLarge("too-many-headers", f"over {MAX_HEADERS} header fields")
    headers = []
    for raw in lines:
        name, colon, value = raw.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN:
            # Also refuses obsolete line folding (a line starting with a space): RFC 9112 5.2.
            raise BadRequest("bad-header", "a header line is not NAME: VALUE")
        value = value.strip(b" \t")
        if any(b < 0x20 and b != 0x09 or b == 0x7F for b in value):
            raise BadRequest("bad-header", "a header value has a control byte")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return tuple(headers)


def _body_length(request: Request) -> int:
    if request.header("transfer-encoding") is not None:
        raise NotImplementedHere("chunked-body", "request bodies in Transfer-Encoding are not accepted")
    lengths = {value for key, value in request.headers if key == "content-length"}
    if not lengths:
        return 0
    if len(lengths) > 1 or not next(iter(lengths)).isdigit():
        raise BadRequest("bad-content-length", "Content-Length is not one decimal number")
    length = int(next(iter(lengths)))
    if length > MAX_BODY_BYTES:
        raise PayloadTooLarge("body-too-large", f"a {length}-byte body; at most {MAX_BODY_BYTES} are read")
    return length


# --- content coding and validators -------------------------------------------------------------
# Bodies worth compressing: under 1 KiB the gzip framing eats the gain; over 256 KiB deflate
# would hold the node's event loop for more than ~5 ms (it runs at ~50 MB/s at level 1).
GZIP_MIN_BYTES = 1024
GZIP_MAX_BYTES = 256 * 1024
GZIP_LEVEL = 1  # for answers made per request: most of level 9's gain on JSON, at a quarter of the time
STATIC_GZIP_LEVEL = 9  # for the shipped files, compressed once at start
TEXT_TYPES = ("text/", "application/json")  # what compresses; the f64 readings (float noise) barely does


def accepts_gzip(request: Request) -> bool:
    """Whether the client's Accept-Encoding allows gzip (``gzip;q=0`` refuses it, ``*`` stands for it)."""
    header = request.header("accept-encoding")
    if not header:
        return False
    qualities = {}
    for item in header.split(","):
        coding, *params = item.split(";")
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                quality = _quality(value.strip())
        qualities[coding.strip().lower()] = quality
    return qualities.get("gzip", qualities.get("x-gzip", qualities.get("*", 0.0))) > 0


def _quality(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # a malformed weight: not what the client asked for


def compressible(content_type: str, size: int) -> bool:
    return content_type.startswith(TEXT_TYPES) and GZIP_MIN_BYTES <= size <= GZIP_MAX_BYTES


def gzipped(body: bytes, level: int = GZIP_LEVEL) -> bytes:
    """``body`` as a gzip member with no timestamp (the same bytes for the same body)."""
    return gzip.compress(body, level, mtime=0)


def entity_tag(body: bytes) -> str:
    """A weak validator for a file's bytes, as the ETag header carries it: weak because the
    file's gzipped and plain forms share it (RFC 9110 8.8.1), which If-None-Match allows."""
    return 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def not_modified(request: Request, etag: str) -> bool:
    """Whether the client's If-None-Match already holds ``etag`` (weak comparison, RFC 9110 13.1.2)."""
    header = request.header("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


# --- responses ---------------------------------------------------------------------------------
def response_head(status: int, content_type: str | None, length: int | None,
                  extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The status line and headers of a response that ends by closing the connection."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += ["Connection: close", "X-Content-Type-Options: nosniff", "Referrer-Policy: no-referrer"]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(status: int, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = (),
             head_only: bool = False) -> bytes:
    if status == 304:  # no body, and no length or type of one (RFC 9110 15.4.5)
        return response_head(304, None, None, extra)
    head = response_head(status, content_type, len(body), extra)
    return head if head_only else head + body


def error_response(error: HttpError, head_only: bool = False) -> bytes:
    """A JSON error body naming the reason, as the operator API's Error does."""
    body = json.dumps({"error": error.reason, "detail": error.detail}).encode()
    extra = (("Allow", "GET, HEAD"),) if error.status == 405 else ()
    return response(error.status, body, "application/json", extra, head_only)
