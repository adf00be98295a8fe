"""Logging configuration: JSON lines off a terminal, console lines on one, stdlib routed too."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import structlog

from gridchain.cli.logs import configure_logging, wants_json

ISO_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_event_level_and_microsecond_timestamp():
    out = io.StringIO()
    configure_logging("json", "info", out, cache=False)
    structlog.get_logger().info("block.accepted", height=7, hash="0123456789ab", ms=1.25, raw=b"\x01")
    (event,) = lines(out)
    assert event["event"] == "block.accepted" and event["level"] == "info"
    assert ISO_MICROS.match(event["timestamp"]), event["timestamp"]
    assert (event["height"], event["hash"], event["ms"]) == (7, "0123456789ab", 1.25)
    assert event["raw"] == "b'\\x01'"  # anything JSON cannot hold is written as text, never a crash
    assert list(event)[:3] == ["timestamp", "level", "event"]


def test_auto_is_json_off_a_terminal_and_console_on_one():
    assert wants_json("auto", io.StringIO()) and not wants_json("auto", FakeTTY())
    assert wants_json("json", FakeTTY()) and not wants_json("console", io.StringIO())
    tty = FakeTTY()
    configure_logging("auto", "info", tty, cache=False)
    structlog.get_logger().info("node.started", port=5004)
    text = tty.getvalue()
    assert "\x1b[" in text  # colours on a terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "node.started" in plain and "port=5004" in plain and not plain.startswith("{")
    console = io.StringIO()
    configure_logging("console", "info", console, cache=False)
    structlog.get_logger().info("node.started", port=5004)
    assert "\x1b[" not in console.getvalue() and "port=5004" in console.getvalue()


def test_level_filters_and_context_is_merged():
    out = io.StringIO()
    configure_logging("json", "warning", out, cache=False)
    log = structlog.get_logger()
    structlog.contextvars.bind_contextvars(node="node-5004")
    log.info("capture.duplicate")
    log.warning("peer.banned", peer="127.0.0.1:5005", reason="bad-pow")
    (event,) = lines(out)
    assert event["event"] == "peer.banned" and event["node"] == "node-5004" and event["reason"] == "bad-pow"


def test_exceptions_are_one_line_of_json():
    out = io.StringIO()
    configure_logging("json", "info", out, cache=False)
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        structlog.get_logger().exception("capture.error")
    (event,) = lines(out)
    assert event["level"] == "error" and "RuntimeError: disk on fire" in event["exception"]


def test_stdlib_logging_goes_to_the_same_stream_at_warning():
    out = io.StringIO()
    configure_logging("json", "debug", out, cache=False)
    logging.getLogger("asyncio").info("not shown")
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Task>", 0.2)
    (event,) = lines(out)
    assert event["event"] == "Executing <Task> took 0.200 seconds"
    assert event["logger"] == "asyncio" and event["level"] == "warning" and ISO_MICROS.match(event["timestamp"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        configure_logging("xml", "info", io.StringIO())
    with pytest.raises(ValueError):
        configure_logging("json", "loud", io.StringIO())
