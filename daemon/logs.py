"""structlog to stdout: JSON lines under systemd or when not a TTY, console on a TTY.

How this works
--------------
structlog's fast configuration renders every line (a level-filtering
bound logger, cached on first use; compact JSON from msgspec, or console
rendering on a TTY) and hands it to ``OUTPUT``. A JSON line's time stamp is
a ``datetime`` that msgspec writes as ``TimeStamper(fmt="iso", utc=True)``
does; ``add_request_id`` names the request being answered on every line
logged while it is (``REQUEST_ID``, one context variable the HTTP server
sets per request: structlog's ``bind_contextvars`` and ``merge_contextvars``
cost a check request 8% of its instructions for the same).

The one line every answered HTTP request logs is the daemon's hottest, and
structlog's processor chain was a sixth of a check request's CPU. As JSON at
level info, ``request_line`` makes it a ``RequestLine`` (the keys, in order,
of structlog's line for it) that waits with the pass's other lines; when
they are written, msgspec encodes them all in one call (the rendered ones
as they are). That costs about a tenth of structlog's chain. Configured otherwise (console, a higher level) or under
structlog's testing helpers, it goes through structlog like any other line.

Outside the event loop (at start, in worker threads, after the loop ends) a
line is written at once. In a ``trio.run`` given ``OUTPUT`` as an
instrument, the loop's own lines are gathered and written together just
before the loop waits for I/O, once per pass: a busy daemon logs a line per
request, and one write for the requests of a pass costs a fraction of one
write each. A line waits at most for the other tasks of its pass; whatever
is pending is written when the run ends, however it ends.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
from datetime import datetime, timezone
from typing import TextIO

import msgspec
import structlog
import trio


_encoder = msgspec.json.Encoder(enc_hook=str)


def _encode(value: object, **_: object) -> str:
    # compact, as most JSON loggers write: no spaces after ":" and ","
    return _encoder.encode(value).decode()


class LineOutput(trio.abc.Instrument):
    """structlog's logger: takes rendered lines and writes them to a text stream.

    As a trio instrument it writes the event loop's lines just before the
    loop waits for I/O: once per pass, with no task of its own to schedule.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream  # None: whatever sys.stdout is when a line is written
        self._lock = threading.Lock()
        # rendered lines as msgspec.Raw, and request lines not yet encoded
        self._lines: list[msgspec.Raw | RequestLine] = []
        self._loop_thread: int | None = None
        # set by ``configure``: whether request lines are logged at all (the level), and
        # for JSON lines the processor chain and its renderer
        self.request_lines = True
        self.json_chain: tuple[list, object] | None = None

    def msg(self, message: str) -> None:
        self.add(msgspec.Raw(message))

    def add(self, line: msgspec.Raw | RequestLine) -> None:
        """Write ``line`` (a rendered line, or a request's line to encode) with its pass."""
        with self._lock:
            self._lines.append(line)
            if threading.get_ident() != self._loop_thread:
                self._write_pending()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def writes_request_lines(self) -> bool:
        """Whether ``request_line`` renders its line itself: JSON at level info is
        configured, and structlog's testing helpers (which swap the processors of
        the configured chain in place) are not in use."""
        chain = self.json_chain
        return chain is not None and chain[0][-1] is chain[1]

    def before_run(self) -> None:
        with self._lock:
            self._loop_thread = threading.get_ident()

    def before_io_wait(self, timeout: float) -> None:
        if self._lines:
            with self._lock:
                self._write_pending()

    def after_run(self) -> None:
        with self._lock:
            self._loop_thread = None
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._lines:
            return
        text = _encoder.encode_lines(self._lines).decode()  # each line, then a newline
        self._lines.clear()
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # nowhere to log to (a closed stdout): the daemon goes on


OUTPUT = LineOutput()

# The id of the HTTP request the current task is answering, if any.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def add_request_id(logger: object, name: str, event_dict: dict) -> dict:
    """Adds ``request_id`` (unless the line gives one) while a request is answered."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def add_timestamp(logger: object, name: str, event_dict: dict) -> dict:
    """Adds ``timestamp``, now in UTC, which msgspec writes in ISO 8601 (``...T14:22:06.710990Z``)."""
    event_dict["timestamp"] = datetime.now(timezone.utc)
    return event_dict


class RequestLine(msgspec.Struct):
    """An answered HTTP request's JSON line: the keys, in order, of structlog's line for it."""

    method: str
    path: str
    status: int
    duration_ms: float
    peer: str
    request_id: str
    event: str
    level: str
    timestamp: datetime


def request_line(method: str, path: str, status: int, duration_ms: float, peer: str, request_id: str) -> None:
    """Log an answered request: method, path (never the query), status, duration, peer and id."""
    if not OUTPUT.request_lines:
        return
    if OUTPUT.writes_request_lines():
        line = RequestLine(
            method, path, status, duration_ms, peer, request_id, "request", "info", datetime.now(timezone.utc)
        )
        OUTPUT.add(line)
    else:
        structlog.get_logger("sluice.http").info(
            "request", method=method, path=path, status=status, duration_ms=duration_ms, peer=peer,
            request_id=request_id,
        )


def want_json(fmt: str, stream=sys.stdout) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    return bool(os.environ.get("JOURNAL_STREAM")) or not stream.isatty()


def configure(fmt: str = "auto", level: str = "info") -> None:
    json_lines = want_json(fmt)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    if json_lines:
        # msgspec renders a line several times faster than the json module;
        # values it does not know are written as their str()
        timestamp, renderer = add_timestamp, structlog.processors.JSONRenderer(serializer=_encode)
    else:
        timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    processors = [
        add_request_id,
        structlog.processors.add_log_level,
        timestamp,
        structlog.processors.format_exc_info,
        renderer,
    ]
    OUTPUT.request_lines = threshold <= logging.INFO
    OUTPUT.json_chain = (processors, renderer) if json_lines else None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: OUTPUT,
        cache_logger_on_first_use=True,
    )
