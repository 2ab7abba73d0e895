"""Building large immutable values without the cyclic collector in the way.

Parsing a 100,000-entry file or indexing 100,000 suspensions makes hundreds
of thousands of objects that all live on; the collector would scan them
again and again for nothing. Nothing built here forms reference cycles.

While paused, every object made waits in the collector's youngest
generation; collecting that generation once the collector is back would
walk all of them at once, holding the interpreter (a 150 ms stall of the
event loop after a 100,000-entry reload). So on the way out what was made
is moved out of the collector's sight (``gc.freeze``) first: it is freed
by reference counting as usual when dropped, and never scanned.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
