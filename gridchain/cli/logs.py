"""structlog configuration: one event per line, JSON off a terminal, readable lines on one.

Every process configures logging once, in ``gridchain.cli.main``; library modules only call
``structlog.get_logger()`` and log events with stable names and key/value fields.

Each event carries ``event``, ``level`` and ``timestamp`` (ISO-8601 UTC with microseconds),
plus whatever context was bound (``structlog.contextvars``) and the call's own fields. The
standard ``logging`` module (which asyncio uses for its own complaints) is routed to the same
stream in the same format, at WARNING and above.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

import structlog

FORMATS = ("auto", "json", "console")
LEVELS = ("debug", "info", "warning", "error", "critical")
# asyncio and other libraries log through the standard module; below WARNING it is noise.
STDLIB_LEVEL = logging.WARNING


def _json_dumps(obj: object, **kwargs: object) -> str:
    # orjson is not a dependency; compact json.dumps is fast enough for a few events a second.
    return json.dumps(obj, default=str, separators=(",", ":"), ensure_ascii=False)


def _lead_fields(logger: object, method: str, event_dict: dict) -> dict:
    """Put timestamp, level and event first so a raw JSON line reads left to right."""
    head = {key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict}
    head.update(event_dict)
    return head


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def wants_json(fmt: str, stream: TextIO) -> bool:
    """Whether ``fmt`` ("auto", "json" or "console") means JSON lines on ``stream``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt == "json" or (fmt == "auto" and not _is_tty(stream))


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
                      *, cache: bool = True) -> None:
    """Send structlog events (and stdlib warnings) to ``stream`` (stdout by default).

    ``cache`` keeps each logger's processor chain after its first use, which is what a
    long-running process wants; tests that reconfigure logging pass False.
    """
    stream = sys.stdout if stream is None else stream
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    as_json = wants_json(fmt, stream)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    renderer = _renderer(as_json, stream)
    # JSON needs the traceback as a string field; ConsoleRenderer formats exc_info itself.
    tail = [structlog.processors.format_exc_info, _lead_fields, renderer] if as_json else [renderer]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        context_class=dict,
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(stream, shared, tail)


def _renderer(as_json: bool, stream: TextIO):
    if as_json:
        return structlog.processors.JSONRenderer(serializer=_json_dumps)
    return structlog.dev.ConsoleRenderer(colors=_is_tty(stream))


def _route_stdlib(stream: TextIO, shared: list, tail: list) -> None:
    """Replace the root logger's handlers with one that renders like structlog."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(STDLIB_LEVEL)
