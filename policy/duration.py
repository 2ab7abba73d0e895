"""Durations in the humantime grammar that KumoMTA accepts.

A duration is one or more ``<integer><unit>`` terms, spaces optional between
and inside terms: ``5m``, ``1 hour``, ``2h 37min``, ``1d``, ``3 weeks``.
Units are case-sensitive (``M`` is a month, ``m`` a minute), with humantime's
lengths: a month is 30.44 days and a year 365.25 days. sluice also takes a
plain number of seconds, as a JSON number or as a string of digits.

``format_duration`` writes whole seconds back in humantime's own style
(``1h 4m 9s``, ``2days 3h``), so that ``parse_duration(format_duration(n)) == n``.
"""

from __future__ import annotations

import math
import re

from .errors import InvalidDuration

_MINUTE = 60
_HOUR = 3600
_DAY = 86400
_MONTH = 2_630_016  # 30.44 days, as humantime
_YEAR = 31_557_600  # 365.25 days, as humantime
MAX_DURATION = 1000 * _YEAR  # any longer ends past what a date can hold, or means a typo

UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("nanos", "nsec", "ns"), 1e-9),
    (("usec", "us", "µs"), 1e-6),
    (("millis", "msec", "ms"), 1e-3),
    (("seconds", "second", "secs", "sec", "s"), 1),
    (("minutes", "minute", "mins", "min", "m"), _MINUTE),
    (("hours", "hour", "hrs", "hr", "h"), _HOUR),
    (("days", "day", "d"), _DAY),
    (("weeks", "week", "wk", "wks", "w"), 7 * _DAY),
    (("months", "month", "M"), _MONTH),
    (("years", "year", "yr", "yrs", "y"), _YEAR),
):
    for _name in _names:
        UNITS[_name] = _seconds

_TERM = re.compile(r"\s*([0-9]+)\s*([A-Za-zµ]+)\s*")
_PLAIN = re.compile(r"\s*[0-9]+(\.[0-9]+)?\s*\Z")


def parse_duration(value: object, field: str = "duration") -> float:
    """Return the length of ``value`` in seconds, which is always positive.

    ``value`` is a humantime string, a string of digits, or a number of
    seconds. Raises InvalidDuration saying what is wrong.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidDuration(
            f"{field} must be a string such as '5m' or a number of seconds", field=field
        )
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise InvalidDuration(f"{field} must be finite", field=field)
    elif _PLAIN.match(value):
        seconds = float(value)
    else:
        seconds = 0.0
        pos = 0
        text = value
        if not text.strip():
            raise InvalidDuration(f"{field} is empty", field=field)
        while pos < len(text):
            term = _TERM.match(text, pos)
            if term is None:
                raise InvalidDuration(
                    f"{field} {value!r}: expected a number and a unit at {text[pos:].strip()!r} "
                    "(units: s, m, h, d, w, M, y and their long forms)",
                    field=field,
                )
            number, unit = term.groups()
            if unit not in UNITS:
                raise InvalidDuration(
                    f"{field} {value!r}: unknown unit {unit!r} "
                    "(units: s, m, h, d, w, M, y and their long forms)",
                    field=field,
                )
            seconds += int(number) * UNITS[unit]
            pos = term.end()
    if seconds <= 0:
        raise InvalidDuration(f"{field} must be greater than zero", field=field)
    if seconds > MAX_DURATION:
        raise InvalidDuration(f"{field} is over 1000 years", field=field)
    return seconds


def format_duration(seconds: float) -> str:
    """Format a length of time as humantime does, in whole seconds (rounded up)."""
    total = max(0, math.ceil(seconds))
    if total == 0:
        return "0s"
    parts = []
    for size, singular, plural in (
        (_YEAR, "year", "years"),
        (_MONTH, "month", "months"),
        (_DAY, "day", "days"),
        (_HOUR, "h", "h"),
        (_MINUTE, "m", "m"),
        (1, "s", "s"),
    ):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{singular if count == 1 else plural}")
    return " ".join(parts)
