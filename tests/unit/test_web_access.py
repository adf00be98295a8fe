"""Who may read the dashboard: the operator API's rule for the read role, over HTTP.

From the node's own host no token is needed (a wrong one is refused); from another host
only over TLS, and with a token as ``Authorization: Bearer`` or ``?token=``; the page's own
static files load over TLS without one, so a page opened with ``?token=`` can start.
"""

from __future__ import annotations

import pytest

from gridchain.api.access import Tokens
from gridchain.node.observability import Observability, bearer_token
from gridchain.web.http import HttpError, RequestDecoder

TOKENS = Tokens(read="a" * 64, admin="b" * 64)


def request(target: str, *headers: str):
    head = f"GET {target} HTTP/1.1\r\nHost: node\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    return RequestDecoder().feed(head.encode())


def allowed(target: str, *headers: str, local: bool, tls: bool) -> str:
    door = Observability.__new__(Observability)  # the rule reads only the tokens
    door.tokens = TOKENS
    try:
        return "ok" if door.authorize(request(target, *headers), local=local, tls=tls) else "no"
    except HttpError as exc:
        assert exc.status == 403
        return exc.reason


@pytest.mark.parametrize(("target", "headers", "local", "tls", "answer"), [
    ("/api/status", (), True, False, "ok"),  # loopback, no token: read, as the API
    ("/metrics", (), True, False, "ok"),
    ("/api/status?token=" + "c" * 64, (), True, False, "bad-token"),  # a wrong token is never ignored
    ("/api/status", (), False, False, "tls-required"),
    ("/api/status?token=" + "a" * 64, (), False, False, "tls-required"),  # never a token in clear
    ("/api/status", (), False, True, "token-required"),
    ("/", (), False, True, "token-required"),
    ("/metrics", ("Authorization: Bearer " + "a" * 64,), False, True, "ok"),
    ("/metrics", ("Authorization: Bearer " + "b" * 64,), False, True, "ok"),  # admin may read too
    ("/metrics", ("Authorization: Bearer " + "d" * 64,), False, True, "bad-token"),
    ("/?token=" + "a" * 64, (), False, True, "ok"),
    ("/events?token=" + "a" * 64, (), False, True, "ok"),
    ("/static/app.js", (), False, True, "ok"),  # the page's code, nothing of the node's
    ("/static/app.js", (), False, False, "tls-required"),
])
def test_the_dashboard_takes_the_api_access_rule(target, headers, local, tls, answer):
    assert allowed(target, *headers, local=local, tls=tls) == answer


def test_a_bearer_header_wins_over_the_query():
    assert bearer_token(request("/?token=q", "Authorization: Bearer h")) == "h"
    assert bearer_token(request("/?token=q")) == "q"
    assert bearer_token(request("/", "Authorization: Basic xyz")) is None
    assert bearer_token(request("/?token=")) is None
