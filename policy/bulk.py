"""Building large immutable values without the cyclic collector in the way.

Parsing a 100,000-entry file or indexing 100,000 suspensions makes hundreds
of thousands of objects that all live on; the collector would scan them
again and again for nothing. Nothing built here forms reference cycles.
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
        if enabled:
            gc.enable()
