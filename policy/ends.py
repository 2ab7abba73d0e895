"""When a layer's suspensions end: how many are in force at a time, in O(log n).

How this works
--------------
``Ends`` counts the suspensions of one layer (the files', the runtime's) that
never end, and keeps the others' ends sorted, so how many are still in force
at ``now`` is a bisection. A snapshot is never changed, so a change makes a
new ``Ends`` and the old one stays valid for whoever still holds the old
snapshot.

Copying one sorted list of 100,000 ends for each runtime change would make
every change O(n). Instead the sorted ends are cut into chunks of about the
square root of their number, each sorted, each chunk's ends at most the
next one's. Versions share their chunks: a change copies the list of
chunks and the one chunk it touches, so it costs O(sqrt n). When the
number of ends has moved far from what the chunks were cut for (about four
times more or fewer), they are cut again: once in about n changes, so
O(1) a change on average. A count is two bisections and a lookup.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable

from .model import Suspension

MIN_CHUNK = 64


class Ends:
    """How many suspensions never end, and the ends of the others (immutable)."""

    __slots__ = ("endless", "chunks", "_tops", "_before", "_chunk")

    def __init__(self, endless: int, chunks: list[list[float]], chunk: int) -> None:
        self.endless = endless
        self.chunks = chunks  # sorted, none empty; shared between versions, never changed
        self._chunk = chunk  # a chunk is split when it grows to twice this
        self._tops = [c[-1] for c in chunks]  # each chunk's last end
        self._before = list(itertools.accumulate((len(c) for c in chunks), initial=0))  # ends before chunk i

    @classmethod
    def of(cls, suspensions: Iterable[Suspension], *, chunk: int | None = None) -> Ends:
        """``chunk`` (for tests): the chunks' size; by default about the square root of their number."""
        endless = 0
        ends = []
        for s in suspensions:
            if s.expires is None:
                endless += 1
            else:
                ends.append(s.expires.timestamp())
        ends.sort()
        return cls._chunked(endless, ends, chunk or _size(len(ends)))

    @classmethod
    def _chunked(cls, endless: int, ends: list[float], size: int) -> Ends:
        return cls(endless, [ends[i : i + size] for i in range(0, len(ends), size)], size)

    @property
    def total(self) -> int:
        """How many suspensions, ended or not."""
        return self.endless + self._before[-1]

    def in_force(self, now: float) -> int:
        """How many have not ended at ``now`` (those ending at ``now`` have)."""
        i = bisect.bisect_right(self._tops, now)  # chunks before i have all ended
        ended = self._before[i]
        if i < len(self.chunks):
            ended += bisect.bisect_right(self.chunks[i], now)
        return self.total - ended

    def sorted_ends(self) -> list[float]:
        """Every end, sorted."""
        return [end for c in self.chunks for end in c]

    def evolve(self, put: Iterable[Suspension], drop: Iterable[Suspension]) -> Ends:
        """These ends with ``drop``'s taken out and ``put``'s put in (``drop``: suspensions counted here)."""
        endless = self.endless
        chunks = list(self.chunks)
        tops = list(self._tops)
        copied: set[int] = set()  # ids of the chunks this version owns already

        def own(i: int) -> list[float]:
            if id(chunks[i]) not in copied:
                chunks[i] = list(chunks[i])
                copied.add(id(chunks[i]))
            return chunks[i]

        for s in drop:
            if s.expires is None:
                endless -= 1
                continue
            end = s.expires.timestamp()
            i = bisect.bisect_left(tops, end)
            chunk = own(i)
            del chunk[bisect.bisect_left(chunk, end)]
            if chunk:
                tops[i] = chunk[-1]
            else:
                del chunks[i], tops[i]
        for s in put:
            if s.expires is None:
                endless += 1
                continue
            end = s.expires.timestamp()
            if not chunks:
                chunks.append([end])
                copied.add(id(chunks[0]))
                tops.append(end)
                continue
            i = min(bisect.bisect_left(tops, end), len(chunks) - 1)
            chunk = own(i)
            bisect.insort(chunk, end)
            tops[i] = chunk[-1]
            if len(chunk) >= 2 * self._chunk:
                half = len(chunk) // 2
                chunks[i : i + 1] = [chunk[:half], chunk[half:]]
                copied.update((id(chunks[i]), id(chunks[i + 1])))
                tops[i : i + 1] = [chunks[i][-1], chunks[i + 1][-1]]
        after = Ends(endless, chunks, self._chunk)
        size = _size(after.total - endless)
        if len(chunks) > 2 * size + 8 or self._chunk > 2 * size:
            # grown or shrunk far from the size the chunks were cut for
            return Ends._chunked(endless, after.sorted_ends(), size)
        return after


def _size(count: int) -> int:
    """The chunks' size for ``count`` ends: about its square root."""
    return max(MIN_CHUNK, math.isqrt(count))
