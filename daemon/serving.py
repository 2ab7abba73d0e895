"""Serving connections: a cap on how many, and a drain for shutdown.

Shared by the HTTP server and the Postfix policy server, which share
nothing else. ``trio.serve_listeners`` accepts; its handler is a
``Service``, which counts the connections of one kind in its ``Drain`` and
hands any over its cap to ``refuse`` rather than to ``handle``.

Shutdown: the caller stops accepting, calls ``drain.start()``, and gives the
handlers' nursery a grace deadline. A connection waiting for its next
request is idle and rests in the drain (``rest``/``awake``, or ``idle()``);
``start`` cancels every resting one at once. A connection reading or
answering a request is left to finish within the grace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

Handle = Callable[[trio.abc.Stream], Awaitable[None]]


class Drain:
    """Counts connections, and closes idle ones at once when shutdown begins."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle: set[trio.CancelScope] = set()

    @contextmanager
    def connection(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    @contextmanager
    def idle(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that shutdown cancels: the whole of a connection that may be cut."""
        with trio.CancelScope() as scope:
            if self.rest(scope):
                scope.cancel()
            try:
                yield scope
            finally:
                self.awake(scope)

    def rest(self, scope: trio.CancelScope) -> bool:
        """``scope`` is idle until ``awake``: shutdown cancels it. True if shutdown has begun."""
        if self.draining:
            return True
        self._idle.add(scope)
        return False

    def awake(self, scope: trio.CancelScope) -> None:
        """``scope`` is busy again: shutdown lets it finish."""
        self._idle.discard(scope)

    def start(self) -> None:
        """Shutdown begins: idle connections are cancelled now, and any that rest later at once."""
        self.draining = True
        for scope in list(self._idle):
            scope.cancel()


@dataclass(frozen=True)
class Service:
    """One kind of connection, as ``trio.serve_listeners``' handler: counted, capped, drained."""

    handle: Handle
    refuse: Handle  # answers a connection over the cap, briefly; the stream is closed after
    max_connections: int
    drain: Drain = field(default_factory=Drain)

    async def __call__(self, stream: trio.abc.Stream) -> None:
        if self.drain.active >= self.max_connections:
            await self.refuse(stream)
            return
        with self.drain.connection():
            await self.handle(stream)
