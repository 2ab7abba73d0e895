"""The Postfix SMTP access policy delegation server (DESIGN.md section 5).

How this works
--------------
Postfix's smtpd writes a request, ``name=value`` lines ended by an empty
line, reads one ``action=...`` line and an empty line back, and keeps the
connection for its next request. ``RequestReader`` is that protocol without
any I/O, as h11's ``Connection`` is for HTTP: bytes in, complete requests
out, or the reason a request is malformed. The connections of a service are
served by one thread of their own (``PolicyLoop``), which waits on all of
them with epoll: for each connection with bytes (``Connection``) it reads
what has arrived, answers every complete request in it with one write
(pipelined requests are answered in order), and waits for more. The event
loop accepts, caps and evicts connections as for HTTP (``serving.py``) and
hands each admitted one to the policy thread (``serve_postfix_connection``);
it stops one through its socket, by shutting down its reading side. smtpd
keeps one request in flight per connection and a connection mostly waits,
so one thread the kernel wakes for whichever connections are ready costs a
request less than a pass of the event loop and less than a thread per
connection does (those threads contend for the interpreter: three context
switches a request against one), and Postfix, on the same CPUs, keeps the
rest (docs/performance.md).

The question asked of the policy: the recipient's domain (after its last
``@``) is the queue's domain, the configured attribute (``sasl_username`` by
default; an empty value means no tenant) is its tenant, and the campaign is
unset. The first hold's reason answers ``DEFER_IF_PERMIT 4.7.1 <reason>`` (or
``HOLD <reason>``); no hold, no recipient (a request from another protocol
state) or a recipient domain that is no valid queue domain answers ``DUNNO``:
a broken address is for Postfix to judge, not a hold. A SASL login with a
realm (``acme@example.com``) names the tenant ``acme`` unless ``[postfix]
strip_realm = false``. A tenant value that no queue name can carry (``:``,
whitespace) is logged once per connection and dropped, so the rules without
a tenant, a domain suspension above all, still apply. The
reason goes into an SMTP reply, so it is sent as one line of printable ASCII
(accents dropped, other characters ``?``) of at most ``MAX_REASON``
characters.

Invariants:
- every complete request read is answered, in order, before the connection
  closes;
- a malformed request (no ``request=smtpd_access_policy``, a line without
  ``=``, a line over ``MAX_LINE`` bytes, over ``MAX_ATTRIBUTES`` lines, a
  request over ``MAX_REQUEST`` bytes in all) is
  answered with a temporary failure and the connection is then closed, since
  nothing after it can be trusted to start a request;
- the buffer never holds more than one partial request, and a partial
  request is bounded by the limits above even before its empty line comes;
- a partial request must be completed within ``REQUEST_TIMEOUT``; between
  requests a connection may idle ``IDLE_TIMEOUT``, longer than Postfix's own
  ``smtpd_policy_service_max_idle`` (300 s), so Postfix is the side that
  closes an idle connection and never writes into one being closed. A client
  that stops reading its answers is dropped when the idle timeout runs out;
- at shutdown a connection is closed at once unless requests have arrived on
  it, which are answered first. (The whole connection runs in one cancel
  scope registered with the drain; cancelled, it shuts down the socket's
  reading side, so the policy thread reads what has arrived, answers it and
  ends the connection, and after ``CLOSING_SEND_TIMEOUT`` a write still
  waiting is cut off.)
  Eviction stops a connection the same way.
- the connection's ``serving.Slot`` is waiting whenever it waits for bytes,
  since its last answer, or for its client to read answers written (since
  the write stopped): smtpd keeps a connection open between mails, so
  when the socket is full the one idle longest gives way (Postfix asks again
  on a new connection), and ``max_connections_per_peer`` keeps one local
  user from filling the socket that every user may connect to.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import math
import os
import select
import socket
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import NamedTuple

import outcome
import structlog
import trio

from sluice.policy.errors import InvalidQueueName
from sluice.policy.postfix_log import login_tenant
from sluice.policy.queue_name import QueueName, parse
from sluice.policy.snapshot import Hold, Snapshot

from .config import PostfixConfig
from .current import Current
from .metrics import DecisionCounts
from .serving import Drain, Service, Slot, Slots
from .tcp import bind_tcp, parse_listen

log = structlog.get_logger("sluice.postfix")

MAX_LINE = 8192
MAX_ATTRIBUTES = 100
# A whole request: Postfix's are a kilobyte or two; this bounds what one
# connection can make the daemon hold, whatever its lines look like.
MAX_REQUEST = 65536
IDLE_TIMEOUT = 330.0
REQUEST_TIMEOUT = 10.0
CLOSING_SEND_TIMEOUT = 1.0
RECEIVE_SIZE = 65536
# An SMTP reply line is at most 512 octets (RFC 5321 4.5.3.1.5), and Postfix
# does not wrap: it puts "450 4.7.1 <recipient>: Recipient address rejected: "
# (up to 298 octets with the CRLF) around the text.
MAX_REASON = 200
MAX_REMEMBERED = 65_536  # DUNNO answers remembered, for all connections

DUNNO = b"action=DUNNO\n\n"
INTERNAL_ERROR = b"action=DEFER_IF_PERMIT 4.3.0 sluice: internal error\n\n"
_REQUEST_KIND = b"smtpd_access_policy"
EMPTY_REQUEST = "empty request: no request= attribute"


class MalformedRequest(Exception):
    """A request that breaks the protocol; ``what`` says how."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class PolicyRequest(NamedTuple):
    """What the decision needs from one request, as sent: the recipient's domain and the tenant."""

    domain: bytes = b""  # after the recipient's last "@"; empty without a recipient or an "@"
    tenant: bytes = b""


class RequestReader:
    """Bytes in, complete policy requests out. No I/O.

    ``feed`` returns the requests completed by the new bytes and, if one is
    malformed, the MalformedRequest that stops the connection (requests
    before it are still returned, to be answered first). After an error the
    reader must not be fed again.
    """

    def __init__(self, tenant_attribute: str = "sasl_username") -> None:
        self._buffer = bytearray()
        self._searched = 0  # the buffer holds no request end before this offset
        self._pending_cr = False
        self._tenant = b"\n" + tenant_attribute.encode() + b"=" if tenant_attribute else None

    @property
    def pending(self) -> bool:
        """Whether part of a request is buffered, waiting for the rest."""
        return bool(self._buffer) or self._pending_cr

    def feed(self, data: bytes) -> tuple[list[PolicyRequest], MalformedRequest | None]:
        if type(data) is not bytes:
            data = bytes(data)  # a bytearray or memoryview: requests must be hashable values
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if b"\r" in data:
            # Postfix ends lines with LF alone; a person typing into nc or
            # telnet may send CRLF, which is taken as LF.
            if data.endswith(b"\r"):
                data = data[:-1]
                self._pending_cr = True
            data = data.replace(b"\r\n", b"\n")
        buffer = self._buffer
        if buffer:
            buffer += data
            if buffer.find(b"\n\n", max(0, self._searched - 1)) < 0:
                self._searched = len(buffer)
                try:
                    self._check_partial()
                except MalformedRequest as exc:
                    buffer.clear()
                    return [], exc
                return [], None
            data = bytes(buffer)
            buffer.clear()
        # The usual case: ``data`` holds whole requests, the last one ending it.
        *blocks, rest = data.split(b"\n\n")
        requests: list[PolicyRequest] = []
        try:
            for block in blocks:
                requests.append(self._request(block))
            if rest:
                if rest.startswith(b"\n"):
                    raise MalformedRequest(EMPTY_REQUEST)
                buffer += rest
                self._searched = len(buffer)
                self._check_partial()
        except MalformedRequest as exc:
            buffer.clear()
            return requests, exc
        return requests, None

    def _check_partial(self) -> None:
        """Hold a partial request to the limits before its end arrives."""
        buffer = self._buffer
        if len(buffer) > MAX_REQUEST:
            raise MalformedRequest(f"a request over {MAX_REQUEST} bytes")
        last = buffer.rfind(b"\n")
        if len(buffer) - last - 1 > MAX_LINE:
            raise MalformedRequest(f"a line over {MAX_LINE} bytes")
        if buffer.count(b"\n") > MAX_ATTRIBUTES:
            raise MalformedRequest(f"over {MAX_ATTRIBUTES} attributes")

    def _request(self, block: bytes) -> PolicyRequest:
        # A request is a few dozen lines, of which three matter: those are
        # looked up, and the rest is checked whole, never line by line.
        # Between two line ends, each attribute is found as "\nname=" and
        # ends at the next "\n".
        text = b"\n" + block + b"\n"
        # The line ends and "=" signs alone, in order: a line without "="
        # shows as two adjacent line ends.
        marks = text.translate(None, _ALL_BUT_LINE_ENDS_AND_EQUALS)
        if len(block) > MAX_REQUEST:
            raise MalformedRequest(f"a request over {MAX_REQUEST} bytes")
        if marks.count(b"\n") - 1 > MAX_ATTRIBUTES:
            raise MalformedRequest(f"over {MAX_ATTRIBUTES} attributes")
        if len(block) > MAX_LINE and max(map(len, block.split(b"\n"))) > MAX_LINE:
            raise MalformedRequest(f"a line over {MAX_LINE} bytes")
        if b"\n\n" in marks or b"\n=" in text:
            raise _not_an_attribute(block)
        kind = _last_value(text, b"\nrequest=")
        if kind != _REQUEST_KIND:
            if kind is None:
                raise MalformedRequest("no request= attribute")
            shown = kind[:40].decode("utf-8", "replace")
            raise MalformedRequest(f"request={shown} is not smtpd_access_policy")
        recipient = _last_value(text, b"\nrecipient=") or b""
        tenant = _last_value(text, self._tenant) if self._tenant else None
        return PolicyRequest(recipient.rpartition(b"@")[2], tenant or b"")


_ALL_BUT_LINE_ENDS_AND_EQUALS = bytes(c for c in range(256) if c not in b"\n=")


def _last_value(text: bytes, start: bytes) -> bytes | None:
    """The value of the last line of ``text`` beginning ``start`` ("\\nname="), None if none does.

    The last, as a dict of the lines would keep; ``text`` ends with a line end.
    """
    at = text.rfind(start)
    if at < 0:
        return None
    at += len(start)
    return text[at : text.index(b"\n", at)]


def _not_an_attribute(block: bytes) -> MalformedRequest:
    """The error naming the first line of ``block`` that is not ``name=value``."""
    if not block or block.startswith(b"\n"):
        return MalformedRequest(EMPTY_REQUEST)
    for line in block.split(b"\n"):
        name, eq, _ = line.partition(b"=")
        if not eq or not name:
            shown = line[:40].decode("utf-8", "replace")
            return MalformedRequest(f"not a name=value line: {shown!r}")
    raise AssertionError("every line is name=value")


def queue_for(request: PolicyRequest, strip_realm: bool = True) -> tuple[QueueName | None, str | None]:
    """The queue a request asks about (``tenant@domain`` or ``domain``), and a tenant value
    that could not be used (None if there was none).

    The queue is None when there is no recipient domain or it is no valid
    queue domain. With ``strip_realm`` a SASL login ``user@realm`` names
    the tenant ``user``; a value that still cannot be a tenant (a ``:``,
    whitespace, not UTF-8) is reported and the domain alone is asked.
    """
    if not request.domain:
        return None, None
    try:
        domain = request.domain.decode()
    except UnicodeDecodeError:
        return None, None
    tenant, unusable = _tenant(request.tenant, strip_realm)
    if tenant:
        try:
            return parse(f"{tenant}@{domain}"), None
        except InvalidQueueName:
            unusable = request.tenant.decode("utf-8", "replace")  # or the domain is bad: asked below
    try:
        return parse(domain), unusable
    except InvalidQueueName:
        return None, unusable


def _tenant(value: bytes, strip_realm: bool) -> tuple[str, str | None]:
    """The tenant a login names, or "" and the value when it cannot be one."""
    if not value:
        return "", None
    try:
        login = value.decode()
    except UnicodeDecodeError:
        return "", value.decode("utf-8", "replace")
    return login_tenant(login, strip_realm)


def reason_text(hold: Hold) -> str:
    """The text Postfix puts in its reply: one safe, short line."""
    reason = hold.reason
    if not reason:
        if hold.kind == "queue_pause":
            reason = f"queue {hold.queue} is paused"
        else:
            reason = "delivery suspended"
    if not (reason.isascii() and reason.isprintable()):
        reason = _ascii(reason)
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    return reason


def _ascii(text: str) -> str:
    """``text`` as printable ASCII: accents dropped, anything else a ``?``.

    The reply goes to SMTP clients that may not speak SMTPUTF8 (Postfix
    turns each non-ASCII byte into a space). The core refuses control
    characters in reasons; a newline here would end the answer early, so
    this makes sure of it.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(
        c if " " <= c <= "~" else "?"
        for c in decomposed
        if not unicodedata.combining(c)
    )


class Remembered:
    """The requests answered ``DUNNO`` under the snapshot in force, shared by a service's connections.

    Within one snapshot a queue's holds can only end (they expire), never
    begin, so "deliver" stays true until another snapshot is swapped in.
    Shared, a recipient domain one smtpd asked about is answered from memory
    for every other smtpd too. At most ``MAX_REMEMBERED``: then it starts over.
    """

    def __init__(self) -> None:
        # The snapshot and its requests, replaced together in one assignment:
        # the policy threads share them, and a request answered under one
        # snapshot must never be remembered under the next.
        self.under: tuple[Snapshot | None, set[PolicyRequest]] = (None, set())

    def requests(self, snapshot: Snapshot) -> set[PolicyRequest]:
        """The requests answered ``DUNNO`` under ``snapshot``: to look up, and to add to."""
        under, requests = self.under
        if under is not snapshot or len(requests) >= MAX_REMEMBERED:
            requests = set()
            self.under = (snapshot, requests)
        return requests


class Answerer:
    """Turns requests into answers under one configuration, for one connection.

    Delivery answers come from ``remembered`` when they can; held answers
    are worked out every time (through the snapshot's own memory of its
    decisions), since their holds may expire. Every decision, remembered or
    not, is counted in ``counts``; a request that names no queue asks for
    none.
    """

    def __init__(
        self,
        config: PostfixConfig,
        remembered: Remembered | None = None,
        counts: DecisionCounts | None = None,
    ) -> None:
        self._prefix = "action=HOLD " if config.on_hold == "hold" else "action=DEFER_IF_PERMIT 4.7.1 "
        self._remembered = remembered if remembered is not None else Remembered()
        self._counts = counts if counts is not None else DecisionCounts()
        self._strip_realm = config.strip_realm
        self._attribute = config.tenant_attribute
        self._warned = False

    def answer(self, snapshot: Snapshot, request: PolicyRequest, now: float) -> bytes:
        """The ``action=...`` answer, with its ending empty line."""
        remembered = self._remembered.requests(snapshot)
        if request in remembered:
            self._counts.count(deliver=True)
            return DUNNO
        queue, unusable = queue_for(request, self._strip_realm)
        if unusable is not None and not self._warned:
            self._warned = True  # once per connection: the next ones carry the same login
            log.warning("postfix_tenant_unusable", value=unusable[:100],
                        attribute=self._attribute, strip_realm=self._strip_realm)
        if queue is None:
            if request.domain:
                log.debug("postfix_no_queue", domain=request.domain.decode("utf-8", "replace"))
            return DUNNO
        decision = snapshot.decide(queue.name, now)
        if not decision.deliver:
            self._counts.count(deliver=False)
            return (self._prefix + reason_text(decision.holds[0]) + "\n\n").encode()
        self._counts.count(deliver=True)
        if unusable is None:  # else each connection that sends it is to say so, once
            remembered.add(request)
        return DUNNO


def malformed_answer(what: str) -> bytes:
    """The temporary failure that answers a malformed request; ``what`` may quote the client."""
    return f"action=DEFER_IF_PERMIT 4.3.5 sluice: malformed policy request: {_ascii(what)}\n\n".encode()


async def serve_postfix_connection(
    stream: trio.SocketStream,
    current: Current,
    config: PostfixConfig,
    clock: Callable[[], float] = time.time,
    drain: Drain | None = None,
    remembered: Remembered | None = None,
    counts: DecisionCounts | None = None,
    slot: Slot | None = None,
    loop: PolicyLoop | None = None,
) -> None:
    """Answer policy requests on ``stream`` until the client closes or misbehaves.

    The service's ``loop`` (its one thread) serves the connection
    (``Connection``); without one, the connection gets a loop of its own.
    Never raises for anything the client does; the socket is closed on
    return. ``remembered`` is shared by the service's connections;
    ``counts`` counts each decision made; ``slot`` is the connection's place
    in its service. Shutdown (``drain``) and eviction (the slot's scope)
    stop the connection through its socket.
    """
    drain = drain if drain is not None else Drain()
    slot = slot if slot is not None else Slot()
    loop = loop if loop is not None else PolicyLoop()
    # The loop owns the socket from here on: trio never waits on it.
    sock = socket.socket(fileno=stream.socket.detach())
    finished = trio.Event()
    token = trio.lowlevel.current_trio_token()
    try:
        conn = Connection(
            sock, current, config, clock, remembered, counts, slot,
            finished=lambda: token.run_sync_soon(finished.set),
        )
        try:
            loop.add(conn)
        except (OSError, RuntimeError):  # no descriptor or thread to be had: this one is closed
            log.exception("postfix_connection_not_served")
            return
        with drain.idle():  # shutdown cancels it at once
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_when_cancelled, conn, finished)
                # not left on cancel: the loop is done with the socket once this is set
                with trio.CancelScope(shield=True):
                    await finished.wait()
                nursery.cancel_scope.cancel()
    finally:
        sock.close()


async def _stop_when_cancelled(conn: Connection, finished: trio.Event) -> None:
    """Once the connection is cancelled (shutdown, eviction): stop it through its socket."""
    try:
        await trio.sleep_forever()
    finally:
        if not finished.is_set():
            # Nothing more is read: what has arrived is answered, then the
            # connection ends. One still writing to a client that does not
            # read is cut off.
            conn.shutdown(socket.SHUT_RD)
            with trio.move_on_after(CLOSING_SEND_TIMEOUT) as grace:
                grace.shield = True
                await finished.wait()
            conn.shutdown(socket.SHUT_RDWR)


class PolicyLoop:
    """One thread that serves every connection of a policy service, waiting on them with epoll.

    smtpd sends one request at a time and waits for its answer, so a policy
    connection mostly waits. One thread woken by the kernel for whichever
    connections have bytes costs a request less CPU than a thread per
    connection (whose threads, each woken for its own request, contend for
    the interpreter) and a fraction of a pass of the event loop
    (docs/performance.md). Time limits are deadlines kept here, the
    earliest first.

    The thread starts with the first connection added and ends when it has
    none left; ``add`` may be called from the event loop at any time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._incoming: list[Connection] = []
        self._wake: int | None = None  # an eventfd while the thread runs

    def add(self, conn: Connection) -> None:
        """Serve ``conn`` from now on; ``conn.finished`` is called when it is done.

        Raises OSError or RuntimeError, and takes nothing, if the thread is
        not running and cannot be started.
        """
        with self._lock:
            if self._wake is None:
                wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                try:
                    trio.lowlevel.start_thread_soon(
                        functools.partial(self._run, wake), self._ended, name="sluice policy connections"
                    )
                except BaseException:
                    os.close(wake)
                    raise
                self._wake = wake
            else:
                os.eventfd_write(self._wake, 1)
            self._incoming.append(conn)

    def _ended(self, result: outcome.Outcome) -> None:
        if isinstance(result, outcome.Error):  # a bug: its connections were ended with it
            log.error("postfix_loop_failed", exc_info=result.error)

    def _run(self, wake: int) -> None:
        conns: dict[int, Connection] = {}
        deadlines: list[tuple[float, int, Connection]] = []
        poll = None
        try:
            poll = select.epoll()
            poll.register(wake, select.EPOLLIN)
            while True:
                with self._lock:
                    incoming, self._incoming = self._incoming, []
                    if not incoming and not conns:
                        # in the same hold of the lock as the decision, so
                        # that a connection added after it starts a new thread
                        self._wake = None
                        os.close(wake)
                        return
                for conn in incoming:
                    conns[conn.fd] = conn
                    try:
                        poll.register(conn.fd, select.EPOLLIN)
                    except OSError:  # not a socket the loop can wait on: ends at once
                        log.exception("postfix_connection_not_served")
                        del conns[conn.fd]
                        conn.finish()
                        continue
                    conn.start(time.monotonic())
                    _queue_deadline(deadlines, conn)
                wait = max(deadlines[0][0] - time.monotonic(), 0) if deadlines else -1
                for fd, _mask in poll.poll(wait):
                    if fd == wake:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(wake)
                        continue
                    conn = conns[fd]
                    conn.ready()
                    self._settle(poll, conns, deadlines, conn)
                now = time.monotonic()
                while deadlines and deadlines[0][0] <= now:
                    at, _, conn = heapq.heappop(deadlines)
                    if conn.done:
                        continue
                    if conn.queued == at:
                        conn.queued = math.inf  # its earliest entry: requeued below if still waiting
                    if conn.deadline <= now:
                        conn.expired()
                        self._settle(poll, conns, deadlines, conn)
                    elif conn.deadline < conn.queued:
                        _queue_deadline(deadlines, conn)
        finally:
            leftover: list[Connection] = []
            with self._lock:
                if self._wake == wake:  # ended by a bug, not for want of connections
                    leftover, self._incoming = self._incoming, []
                    self._wake = None
                    os.close(wake)
            if poll is not None:
                poll.close()
            # after a bug: every connection ends, and trio closes its socket
            for conn in (*conns.values(), *leftover):
                conn.finish()

    @staticmethod
    def _settle(poll, conns: dict[int, Connection], deadlines: list, conn: Connection) -> None:
        """After ``conn`` has run: what it waits for now, by when; or gone."""
        if conn.done:
            del conns[conn.fd]
            poll.unregister(conn.fd)
            conn.finish()
            if len(deadlines) > 2 * len(conns) + 64:  # the ended connections' entries go
                deadlines[:] = [entry for entry in deadlines if not entry[2].done]
                heapq.heapify(deadlines)
            return
        if conn.events != conn.registered:
            poll.modify(conn.fd, conn.events)
            conn.registered = conn.events
        if conn.deadline < conn.queued:
            _queue_deadline(deadlines, conn)


_order = itertools.count()


def _queue_deadline(deadlines: list, conn: Connection) -> None:
    conn.queued = conn.deadline
    heapq.heappush(deadlines, (conn.deadline, next(_order), conn))


class Connection:
    """One policy connection as its service's ``PolicyLoop`` serves it: non-blocking reads and writes.

    It reads whatever has arrived, answers every complete request in it with
    one write (pipelined requests are answered in order), and waits for
    more. While an answer cannot be written whole (a client that does not
    read), nothing more is read. ``deadline`` is when its current wait runs
    out (``expired``): the idle timeout between requests and for a write,
    the request timeout from a partial request's first byte, a moment for
    the last words before closing.

    It touches its socket, its slot's ``waiting`` and ``since``, the shared
    ``Remembered`` and ``DecisionCounts`` (each safe to share between
    threads), and the snapshot in force, which is immutable.
    """

    def __init__(
        self,
        sock: socket.socket,
        current: Current,
        config: PostfixConfig,
        clock: Callable[[], float],
        remembered: Remembered | None,
        counts: DecisionCounts | None,
        slot: Slot,
        finished: Callable[[], object] | None = None,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.current = current
        self.clock = clock
        self.reader = RequestReader(config.tenant_attribute)
        self.answerer = Answerer(config, remembered, counts)
        self.slot = slot
        self.trio_clock = trio.lowlevel.current_clock()  # the slots' clock, read from the loop's thread
        self.finished = finished
        # what the loop waits for on the socket, and what it has registered
        self.events = self.registered = select.EPOLLIN
        self.deadline = math.inf
        self.queued = math.inf  # its earliest entry in the loop's deadlines
        self.unsent = b""  # answers the socket has not taken yet
        self.closing = False  # after the last words are sent, done
        self.request_deadline: float | None = None  # a partial request's
        self.done = False

    def shutdown(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:
            pass  # closed already, or the peer is gone

    def start(self, now: float) -> None:
        self._wait(now)

    def finish(self) -> None:
        """The loop is done with the socket: tell the connection's task (once)."""
        self.done = True
        if self.finished is not None:
            finished, self.finished = self.finished, None
            finished()

    def ready(self) -> None:
        """The socket is readable or writable (or broken): do what can be done now."""
        self._guarded(self._send if self.unsent or self.closing else self._read)

    def expired(self) -> None:
        """The current wait ran out."""
        self._guarded(self._expired)

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except OSError:  # reset, broken pipe: the client is gone
            self.done = True
        except Exception:
            # A bug must cost one connection a temporary failure, never the others.
            log.exception("postfix_internal_error")
            with contextlib.suppress(OSError):
                self.sock.send(INTERNAL_ERROR)
            self.done = True

    def _expired(self) -> None:
        if self.unsent or self.closing:
            self.done = True  # a client that stops reading its answers is dropped
        elif self.reader.pending:
            what = f"request not complete within {REQUEST_TIMEOUT:g} s"
            log.info("postfix_malformed_request", what=what)
            self._last_words(malformed_answer(what))
        else:
            self.done = True  # idle: closed quietly

    def _read(self) -> None:
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return
        self.slot.waiting = False
        if not data:
            self.done = True
            return
        requests, error = self.reader.feed(data)
        out = b""
        if requests:
            snapshot = self.current.snapshot
            at = self.clock()
            out = b"".join([self.answerer.answer(snapshot, r, at) for r in requests])
        if error is not None:
            log.info("postfix_malformed_request", what=error.what)
            self._last_words(out + malformed_answer(error.what))
            return
        now = time.monotonic()
        if self.reader.pending:
            if self.request_deadline is None or requests:
                # a partial request: it has REQUEST_TIMEOUT from its first byte to be whole
                self.request_deadline = now + REQUEST_TIMEOUT
        else:
            self.request_deadline = None
        if out:
            self._send(out, now)
        else:
            self._wait(now)

    def _last_words(self, data: bytes) -> None:
        self.closing = True
        self._send(data)

    def _send(self, data: bytes = b"", now: float | None = None) -> None:
        blocked = bool(self.unsent)
        data = self.unsent + data if blocked else data
        try:
            sent = self.sock.send(data) if data else 0
        except BlockingIOError:  # the socket's buffer is full
            sent = 0
        now = now if now is not None else time.monotonic()
        if sent < len(data):
            if sent or not blocked:  # progress: a write's time limit starts again
                self.deadline = now + (CLOSING_SEND_TIMEOUT if self.closing else IDLE_TIMEOUT)
            if not blocked:
                # the client's turn, to read its answers: a connection that
                # does not may give way, as an idle one does
                self.slot.since = self.trio_clock.current_time()
                self.slot.waiting = True
            self.unsent = data[sent:]
            self.events = select.EPOLLOUT
        elif self.closing:
            self.done = True
        else:
            self.unsent = b""
            self.events = select.EPOLLIN
            self._wait(now)
            if blocked:
                # what came while the answers waited (the rest of a partial
                # request, say) is read before its deadline is judged
                self._read()

    def _wait(self, now: float) -> None:
        """Wait for the client's bytes: the request's deadline if one is partial, else idle."""
        if self.request_deadline is None:
            self.slot.since = self.trio_clock.current_time()  # idle from now
            self.deadline = now + IDLE_TIMEOUT
        else:
            self.deadline = self.request_deadline
        self.slot.waiting = True


async def refuse_postfix(stream: trio.abc.Stream) -> None:
    """Over the connection cap: a temporary failure Postfix understands, then close."""
    with trio.move_on_after(1):
        try:
            await stream.send_all(TOO_MANY)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


TOO_MANY = b"action=DEFER_IF_PERMIT 4.3.2 sluice: too many policy connections; try again\n\n"


def postfix_service(
    current: Current,
    config: PostfixConfig,
    clock: Callable[[], float],
    counts: DecisionCounts | None = None,
) -> Service:
    """The policy sockets' connections, as ``trio.serve_listeners``' handler.

    They have their own slots (``[postfix] max_connections``, apart from the
    admin API's), and a connection never proves itself: the protocol knows
    no client, so the per-peer cap counts all of a peer's connections. They
    share one memory of the requests answered ``DUNNO``.
    """
    drain = Drain()
    remembered = Remembered()
    slots = Slots("postfix", config.max_connections, config.max_connections_per_peer)
    loop = PolicyLoop()  # one thread for all its connections

    async def handle(stream: trio.abc.Stream, slot: Slot) -> None:
        await serve_postfix_connection(
            stream, current, config, clock, drain, remembered, counts, slot, loop
        )

    return Service(handle, refuse_postfix, slots, drain)


def bind_loopback(listen: str) -> socket.socket:
    """Bind and listen on ``listen`` ("127.0.0.1:10040", "[::1]:10040").

    Raises ValueError, with a message for the operator, for anything but a
    loopback address with a port, or when the address cannot be bound. The
    policy protocol has no authentication, so it never leaves the host.
    """
    address, port = parse_listen(listen)
    if not address.is_loopback:
        raise ValueError(
            f"{listen!r} is not a loopback address: the policy protocol has no "
            "authentication, so it listens on 127.0.0.1 or [::1] only"
        )
    return bind_tcp(address, port)
