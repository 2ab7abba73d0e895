"""humantime::parse_duration's grammar, for reading answers as KumoMTA's clients do.

kumo-api-types reads a suspension's ``duration`` with its duration_serde
module: a string goes to ``humantime::parse_duration``, a number is seconds.
This is that parser's grammar (humantime 2.x): one or more ``<digits><unit>``
items, spaces between them allowed, every number needing a unit.
"""

from __future__ import annotations

import re

UNITS = {
    **dict.fromkeys(("nanos", "nsec", "ns"), 1e-9),
    **dict.fromkeys(("usec", "us"), 1e-6),
    **dict.fromkeys(("millis", "msec", "ms"), 1e-3),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1),
    **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), 60),
    **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), 3600),
    **dict.fromkeys(("days", "day", "d"), 86400),
    **dict.fromkeys(("weeks", "week", "w"), 604800),
    **dict.fromkeys(("months", "month", "M"), 2_630_016),
    **dict.fromkeys(("years", "year", "y"), 31_557_600),
}
ITEM = re.compile(r"\s*(\d+)([A-Za-z]+)")


def parse_duration(text: str) -> float:
    """Seconds, or ValueError where humantime would refuse the text."""
    if not text.strip():
        raise ValueError("value was empty")
    total, at = 0.0, 0
    while at < len(text.rstrip()):
        m = ITEM.match(text, at)
        if m is None:
            raise ValueError(f"expected number and unit at {at} in {text!r}")
        if m.group(2) not in UNITS:
            raise ValueError(f"unknown time unit {m.group(2)!r} in {text!r}")
        total += int(m.group(1)) * UNITS[m.group(2)]
        at = m.end()
    return total
