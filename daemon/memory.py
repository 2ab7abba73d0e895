"""Giving memory back to the system after a burst of connections ends.

glibc's malloc keeps the chunks a program frees in its heap for reuse: after
hundreds of connections close (a Postfix request may hold 64 KiB while it is
read), the daemon's resident size stays where the burst took it. ``trim``
watches how many connections the services have closed and, once a burst of
them has ended, asks malloc to return its free memory (``malloc_trim(0)``),
in a worker thread. Where the C library has no ``malloc_trim`` (musl), it
does nothing.

And freeing a large value without holding the event loop: ``release``
drops the references to an old policy's parts a few at a time between
passes of the loop (one deallocation cascade through 100,000 entries held
it for 50-100 ms), then trims the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable, Sequence

import trio

from .serving import Slots

BURST = 50  # connections closed since the last trim that make one worth it
PERIOD = 2.0  # seconds between looks


def _libc(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_TRIM = _libc("malloc_trim")
_MALLOPT = _libc("mallopt")
M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MAPPED_FROM = 128 * 1024  # bytes from which a block gets a mapping of its own


def map_large_blocks() -> None:
    """Give every block of ``MAPPED_FROM`` bytes or more a mapping of its own,
    returned to the system as soon as it is freed.

    glibc's default raises that threshold to the largest block freed so far
    (up to 32 MiB): after a reload had freed the old policy's tables and the
    file's bytes, the next ones came from the heap, and a heap cut in holes
    kept tens of megabytes that trimming could not give back.
    """
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, MAPPED_FROM)


class Trimmer:
    def __init__(self, slots: Sequence[Slots], burst: int = BURST) -> None:
        self.slots = slots
        self.burst = burst
        self.trims = 0  # for metrics
        self._seen = self._closed()
        self._trim = _TRIM

    def _closed(self) -> int:
        return sum(s.closed for s in self.slots)

    def due(self) -> bool:
        """Whether a burst of connections has closed since the last trim."""
        return self._trim is not None and self._closed() - self._seen >= self.burst

    async def run(self, period: float = PERIOD) -> None:
        while True:
            await trio.sleep(period)
            if self.due():
                self._seen = self._closed()
                await trio.to_thread.run_sync(self._trim, 0)
                self.trims += 1


SLICE = 500  # references dropped between two looks at the clock
SLICE_TIME = 0.002  # seconds of freeing before the event loop runs again


async def release(values: list, containers: list) -> None:
    """Drop the references in ``containers`` one at a time, in order, then those
    in ``values`` a slice at a time from the end; then trim the heap.

    Whoever built the lists (see ``Snapshot.parts``) dropped every other
    reference to what they hold, and put in ``values`` what the containers
    hold: each container then frees only its own table, and each slice what
    only it held. After ``SLICE_TIME`` of that the event loop runs its other
    tasks before the next.
    """
    if not (values or containers):
        return
    clock = time.perf_counter
    deadline = clock() + SLICE_TIME
    containers.reverse()
    while containers or values:
        if containers:
            containers.pop()
        else:
            del values[-SLICE:]
        if clock() >= deadline:
            await trio.sleep(0)
            deadline = clock() + SLICE_TIME
    # The interpreter keeps freed small objects for reuse (free lists); a
    # full collection empties them, so that the arenas they alone kept can go.
    gc.collect()
    if _TRIM is not None:
        await trio.to_thread.run_sync(_TRIM, 0)
