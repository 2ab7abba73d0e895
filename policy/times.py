"""The one way sluice writes a moment: RFC 3339 in UTC with a ``Z``.

Each surface keeps the precision its clients expect (events and the admin API
milliseconds or microseconds, HookBridge whole seconds); the format is one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

Precision = Literal["seconds", "milliseconds", "microseconds", "auto"]


def rfc3339(value: datetime | float, timespec: Precision = "milliseconds") -> str:
    """``value`` (an aware datetime, or seconds since the epoch) as RFC 3339 UTC.

    ``"auto"`` writes microseconds only when there are some, as
    ``datetime.isoformat`` does.
    """
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, timezone.utc)
    text = value.astimezone(timezone.utc).isoformat(timespec=timespec)
    return text.replace("+00:00", "Z")
