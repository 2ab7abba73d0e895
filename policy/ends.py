"""When a layer's suspensions end: how many are in force at a time, in O(log n).

How this works
--------------
``Ends`` counts the suspensions of one layer (the files', the runtime's) that
never end, and keeps the others' ends sorted, so how many are still in force
at ``now`` is a bisection. A snapshot is never changed, so a change makes a
new ``Ends`` and the old one stays valid for whoever still holds the old
snapshot.

Copying a sorted list of 100,000 ends for each runtime change would make
every change O(n). Instead the big sorted list is shared between versions and
never changed; each version carries the small sorted lists of the ends added
and removed since, which a change copies. Once those hold more than about
the square root of the big list's length they are folded into a new big list:
a change costs O(sqrt n) on average and a count three bisections.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from .model import Suspension


class Ends:
    """How many suspensions never end, and the ends of the others (immutable)."""

    __slots__ = ("endless", "base", "added", "removed")

    def __init__(
        self,
        endless: int,
        base: list[float],
        added: list[float] | None = None,
        removed: list[float] | None = None,
    ) -> None:
        self.endless = endless
        self.base = base  # sorted; shared between versions, never changed
        self.added = added or []  # sorted: ends put since ``base`` was made
        self.removed = removed or []  # sorted: ends of ``base`` dropped since

    @classmethod
    def of(cls, suspensions: Iterable[Suspension]) -> Ends:
        endless = 0
        ends = []
        for s in suspensions:
            if s.expires is None:
                endless += 1
            else:
                ends.append(s.expires.timestamp())
        ends.sort()
        return cls(endless, ends)

    @property
    def total(self) -> int:
        """How many suspensions, ended or not."""
        return self.endless + len(self.base) + len(self.added) - len(self.removed)

    def in_force(self, now: float) -> int:
        """How many have not ended at ``now`` (those ending at ``now`` have)."""
        ended = (
            bisect.bisect_right(self.base, now)
            + bisect.bisect_right(self.added, now)
            - bisect.bisect_right(self.removed, now)
        )
        return self.total - ended

    def sorted_ends(self) -> list[float]:
        """Every end, sorted: the two sorted lists merged (one sort of two
        runs, in C), then the removed ones cut out by position."""
        merged = sorted(self.base + self.added)
        if not self.removed:
            return merged
        out: list[float] = []
        start, previous, repeat = 0, None, 0
        for end in self.removed:
            repeat = repeat + 1 if end == previous else 0
            previous = end
            cut = bisect.bisect_left(merged, end) + repeat
            out += merged[start:cut]
            start = cut + 1
        out += merged[start:]
        return out

    def evolve(self, put: Iterable[Suspension], drop: Iterable[Suspension], *, fold_at: int | None = None) -> Ends:
        """These ends with ``drop``'s taken out and ``put``'s put in.

        ``drop`` must be suspensions counted here. ``fold_at`` (for tests) is
        how many pending changes are folded into a new big list; by default
        about the square root of its length.
        """
        endless = self.endless
        added, removed = list(self.added), list(self.removed)
        for s in drop:
            if s.expires is None:
                endless -= 1
                continue
            end = s.expires.timestamp()
            at = bisect.bisect_left(added, end)
            if at < len(added) and added[at] == end:
                del added[at]
            else:
                bisect.insort(removed, end)
        for s in put:
            if s.expires is None:
                endless += 1
            else:
                bisect.insort(added, s.expires.timestamp())
        after = Ends(endless, self.base, added, removed)
        if fold_at is None:
            fold_at = max(64, math.isqrt(len(self.base)))
        if len(added) + len(removed) > fold_at:
            after = Ends(endless, after.sorted_ends())
        return after
