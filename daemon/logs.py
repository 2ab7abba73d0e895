"""structlog to stdout: JSON lines under systemd or when not a TTY, console on a TTY."""

from __future__ import annotations

import logging
import os
import sys

import msgspec
import structlog


_encoder = msgspec.json.Encoder(enc_hook=str)


def _encode(value: object, **_: object) -> str:
    # format(indent=0): the spacing of json.dumps, which people and greps expect
    return msgspec.json.format(_encoder.encode(value), indent=0).decode()


def want_json(fmt: str, stream=sys.stdout) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    return bool(os.environ.get("JOURNAL_STREAM")) or not stream.isatty()


def configure(fmt: str = "auto", level: str = "info") -> None:
    json_lines = want_json(fmt)
    renderer = (
        # msgspec renders a line several times faster than the json module;
        # values it does not know are written as their str()
        structlog.processors.JSONRenderer(serializer=_encode)
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
