"""Serving connections: how many, from whom, who gives way, and a drain for shutdown.

How this works
--------------
Shared by the HTTP server and the Postfix policy server, which share
nothing else. ``trio.serve_listeners`` accepts; its handler is a
``Service``. The service learns the peer (``peer_key``: the uid on a unix
socket, from SO_PEERCRED; the address on TCP), takes a ``Slot`` from its
``Slots`` and hands the connection and its slot to ``handle``, or, when no
slot can be had, to ``refuse``. The stream is closed when either returns.

Slots. A connection is *unproven* until it has completed a request from a
known client (on HTTP: a request with an accepted token or from a trusted
host, or any request on the admin socket, whose peers are known by their
credentials). A Postfix connection never is: its protocol knows no client.
Two caps hold:
    max_connections          connections of the service in all
    max_unproven_per_peer    unproven connections of one peer
A new connection that would pass a cap makes room: the connection in the
cap's scope (the peer's own unproven ones; all of the service's) that has
been *waiting* longest is closed at once, without an answer, and counted
as evicted. Waiting means unproven and waiting for its client to send a
whole request, since it connected or was last answered; a connection
reading a request head a byte at a time is waiting, one being answered is
not (a policy connection whose client does not read its answers is: it is
the client's turn). When nothing in the scope is waiting, the new
connection is refused.

So connections that never complete a request (idle, or slowloris) cannot
keep out a client that does: each newcomer pushes out the oldest of them,
and a proven connection is never pushed out. The per-peer cap keeps one
peer's connections from pushing out anyone else's.

Shutdown: the caller stops accepting, calls ``drain.start()``, and gives the
handlers' nursery a grace deadline. A connection waiting for its next
request is idle and rests in the drain (``rest``/``awake``, or ``idle()``);
``start`` cancels every resting one at once. A connection reading or
answering a request is left to finish within the grace.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
import trio

log = structlog.get_logger("sluice.serving")

Handle = Callable[[trio.abc.Stream], Awaitable[None]]


def credentials(sock) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket (SO_PEERCRED); raises OSError."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def peer_key(stream: trio.abc.Stream) -> Hashable:
    """Whom the per-peer cap counts a connection against: the peer's uid on a unix
    socket, its address on TCP; None when neither is known (the peer is gone)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None  # not a socket (an in-memory stream)
    try:
        if sock.family == socket.AF_UNIX:
            return credentials(sock)[1]
        return sock.getpeername()[0]
    except OSError:
        return None


class Slot:
    """One connection's place in its service's ``Slots``, as the connection updates it.

    ``waiting``: whether the connection waits for its client (set by the
    connection around its reads); ``since``: when the current wait began;
    ``opened``: when it was admitted. ``scope`` cancels the whole
    connection; ``Service`` runs it inside. A slot made without ``slots``
    belongs to no service (a connection served alone, in tests).
    """

    __slots__ = ("peer", "order", "opened", "since", "waiting", "proven", "scope", "_slots")

    def __init__(self, peer: Hashable = None, order: int = 0, slots: Slots | None = None) -> None:
        self.peer = peer
        self.order = order  # breaks ties of since: who came first
        self.opened = self.since = trio.current_time()
        self.waiting = True
        self.proven = False
        self.scope = trio.CancelScope()
        self._slots = slots

    def prove(self) -> None:
        """The connection completed a request from a known client: it never gives way again."""
        self.proven = True
        self.waiting = False
        if self._slots is not None:
            self._slots.proved(self)

    def wait(self) -> None:
        """The connection has answered and waits for its client's next request."""
        self.waiting = True
        self.since = trio.current_time()


class Slots:
    """The connections of one service: the two caps, and who gives way (see the module docstring)."""

    def __init__(self, name: str, max_connections: int, max_unproven_per_peer: int) -> None:
        self.name = name  # for logs and metrics: "admin", "http", "postfix"
        self.max_connections = max_connections
        self.max_unproven_per_peer = max_unproven_per_peer
        self.evicted = 0
        self.refused = 0
        self.closed = 0
        self._open: set[Slot] = set()
        self._unproven: dict[Hashable, set[Slot]] = {}  # by peer
        self._order = itertools.count()

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, peer: Hashable) -> Slot | None:
        """A slot for a new connection from ``peer``, room made if need be; None: refuse it."""
        mine = self._unproven.get(peer, ())
        if len(mine) >= self.max_unproven_per_peer and not self._make_room(mine):
            self.refused += 1
            return None
        if len(self._open) >= self.max_connections and not self._make_room(self._open):
            self.refused += 1
            return None
        slot = Slot(peer, next(self._order), self)
        self._open.add(slot)
        self._unproven.setdefault(peer, set()).add(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """The connection has ended (or was evicted): its slot is free."""
        self._open.discard(slot)
        self.closed += 1
        self.proved(slot)

    def proved(self, slot: Slot) -> None:
        mine = self._unproven.get(slot.peer)
        if mine is not None:
            mine.discard(slot)
            if not mine:
                del self._unproven[slot.peer]

    def _make_room(self, scope: Collection[Slot]) -> bool:
        """Evict the connection of ``scope`` waiting longest; False if none is waiting."""
        waiting = [slot for slot in scope if slot.waiting and not slot.proven]
        if not waiting:
            return False
        victim = min(waiting, key=lambda slot: (slot.since, slot.order))
        self.release(victim)
        victim.scope.cancel()
        self.evicted += 1
        log.debug("connection_evicted", listener=self.name, peer=str(victim.peer))
        return True


class Drain:
    """Closes idle connections at once when shutdown begins."""

    def __init__(self) -> None:
        self.draining = False
        self._idle: set[trio.CancelScope] = set()

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


ServeSlot = Callable[[trio.abc.Stream, Slot], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    """One kind of connection, as ``trio.serve_listeners``' handler: capped, drained, always closed."""

    handle: ServeSlot
    refuse: Handle  # answers a connection no slot can be made for, briefly
    slots: Slots
    drain: Drain = field(default_factory=Drain)

    async def __call__(self, stream: trio.abc.Stream) -> None:
        try:
            slot = self.slots.admit(peer_key(stream))
            if slot is None:
                await self.refuse(stream)
                return
            try:
                with slot.scope:  # cancelled if the slot is evicted
                    await self.handle(stream, slot)
            finally:
                self.slots.release(slot)
        finally:
            await trio.aclose_forcefully(stream)
