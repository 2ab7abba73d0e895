"""structlog to stdout: JSON lines under systemd or when not a TTY, console on a TTY.

How this works
--------------
structlog's fast configuration renders every line (a level-filtering
bound logger, cached on first use; compact JSON from msgspec, or console
rendering on a TTY) and hands it to ``OUTPUT``. The one processor of our
own is ``Timestamp``: structlog's ISO time stamp, made at a fraction of the
cost (a tenth of a check request's time went to ``TimeStamper``). Outside the
event loop (at start, in worker threads, after the loop ends) a line is
written at once. In a ``trio.run`` given ``OUTPUT`` as an instrument, the
loop's own lines are gathered and written together just before the loop
waits for I/O, once per pass: a busy daemon logs a line per request, and one
write for the requests of a pass costs a fraction of one write each. A line
waits at most for the other tasks of its pass; whatever is pending is
written when the run ends, however it ends.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
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
        self._lines: list[str] = []
        self._loop_thread: int | None = None

    def msg(self, message: str) -> None:
        with self._lock:
            self._lines.append(message)
            if threading.get_ident() != self._loop_thread:
                self._write_pending()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

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
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # nowhere to log to (a closed stdout): the daemon goes on


OUTPUT = LineOutput()


class Timestamp:
    """Adds ``timestamp``: UTC, ISO 8601 with microseconds (``2026-11-23T14:22:06.710990Z``).

    What ``structlog.processors.TimeStamper(fmt="iso", utc=True)`` writes, with
    the date and time of day formatted once a second rather than once a line.
    """

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        # (a second, its date and time of day): one attribute, as threads share it
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, logger: object, name: str, event_dict: dict) -> dict:
        now = self._clock()
        second = int(now)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = (second, prefix)
        event_dict["timestamp"] = f"{prefix}{int((now - second) * 1_000_000):06d}Z"
        return event_dict


def want_json(fmt: str, stream=sys.stdout) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    return bool(os.environ.get("JOURNAL_STREAM")) or not stream.isatty()


def configure(fmt: str = "auto", level: str = "info") -> None:
    json_lines = want_json(fmt)
    threshold = logging.getLevelNamesMapping()[level.upper()]
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
            Timestamp(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: OUTPUT,
        cache_logger_on_first_use=True,
    )
