"""One HTTP/1.1 connection: a thin trio adapter around h11, and its limits.

How this works
--------------
``serve_connection`` runs a connection: h11 parses, this module moves bytes,
calls the route dispatcher with each whole ``Request`` and sends its
``Response``, and enforces the limits a hostile client would test:
    headers over ``max_header`` bytes      431 (h11's max_incomplete_event_size)
    a body over ``max_body`` bytes         413 (Content-Length, or counted)
    a request not complete in time         408
    no first request head in time          408 (closed quietly if nothing came)
    a keep-alive connection idle too long  closed quietly
A response with an ``upgrade`` (a websocket's 101) takes the connection
over: h11 hands it what it read past the request and is done with it.
The whole connection runs in one cancel scope (a scope per request costs
more than a small request); ``Deadlines`` owns its deadline, which follows
where the current request is: first, idle, reading, answering or
streaming. The connection keeps its ``serving.Slot`` up to date: waiting
while it reads a request, proven once a request from a known peer (its
credentials, a token, a trusted address) has been dispatched. A
broken request is answered with the error envelope and the connection
closes. Every answered request is logged once with method, path (never the
query), status, duration, peer and request id; the id is also set in
``logs.REQUEST_ID`` while the request is read and answered, so every line
logged meanwhile carries it.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import structlog
import trio

from ..logs import REQUEST_ID, request_line
from ..serving import Drain, Slot
from .message import (
    NO_PARAMS,
    HttpError,
    Request,
    Response,
    error_response,
    header_dict,
    new_request_id,
    parse_query,
    split_target,
)
from .peer import Peer

log = structlog.get_logger("sluice.http")

RECEIVE_SIZE = 65536
STREAM_SEND_TIMEOUT = 10.0
LINGER = 2.0
LINGER_BYTES = 4 * 1024 * 1024

Dispatch = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Limits:
    max_header: int = 16 * 1024
    max_body: int = 64 * 1024
    # Batch checks carry up to 10,000 names, more than 64 KiB of them; kumod's
    # log records are a kilobyte or more each, and a batching hook sends many.
    large_bodies: tuple[tuple[str, int], ...] = (
        ("/api/check/v1", 2 * 1024 * 1024),
        ("/publish_log_v1", 16 * 1024 * 1024),
    )

    request_timeout: float = 10.0
    idle_timeout: float = 60.0
    # from connecting (TLS handshake included) to the first request's whole head
    first_request_timeout: float = 5.0

    def body_limit(self, target: bytes) -> int:
        """The body limit of the route ``target`` (a request target) goes to."""
        path = split_target(target.decode("latin-1"))[0]
        for large, limit in self.large_bodies:
            if path == large:
                return limit
        return self.max_body


class Deadlines:
    """The deadline of a connection's one cancel scope, by where its request is.

    first      until the first request's head is whole: ``first_request_timeout``
               from connecting, however the bytes come (a client that trickles
               them cannot hold a slot for long); then as reading
    idle       waiting for a request's first byte: ``idle_timeout`` from the
               last answer, and shutdown may cancel the scope (moved at most
               once a second: a move costs trio a heap update)
    reading    part of a request has come: ``request_timeout`` from then
    answering  the request is whole: ``idle_timeout``, never the request timeout
    streaming  none: a stream ends with its source, or the shutdown grace
    """

    __slots__ = ("scope", "reading", "first", "answered", "_limits", "_drain", "_timed")

    def __init__(self, limits: Limits, drain: Drain, opened: float) -> None:
        self.scope = trio.CancelScope(deadline=opened + limits.first_request_timeout)
        self.reading = False  # part of a request has arrived, not all of it
        self.first = True  # the first request's head is not whole yet
        self.answered = opened  # when the last response was sent
        self._limits = limits
        self._drain = drain
        self._timed = False  # the request timeout is running

    async def receive(self, stream: trio.abc.Stream) -> bytes:
        """The connection's next bytes, waited for under the deadline of this phase."""
        scope = self.scope
        if self.reading:
            if not self._timed and not self.first:
                self._timed = True
                scope.deadline = trio.current_time() + self._limits.request_timeout
            return await stream.receive_some(RECEIVE_SIZE)
        if not self.first:
            idle_until = self.answered + self._limits.idle_timeout
            if idle_until - scope.deadline > 1.0:
                scope.deadline = idle_until
        if self._drain.rest(scope):
            scope.cancel()  # shutdown has begun: no new request
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        finally:
            self._drain.awake(scope)
        self.reading = True
        return data

    def head_read(self) -> None:
        """A request's head is whole: after the first, the request timeout runs for its body."""
        if self.first:
            self.first = False
            self._timed = True
            self.scope.deadline = trio.current_time() + self._limits.request_timeout

    def answering(self) -> None:
        self.reading = False
        if self._timed:
            self._timed = False
            self.scope.deadline = trio.current_time() + self._limits.idle_timeout

    def streaming(self) -> None:
        self.scope.deadline = math.inf


async def serve_connection(
    stream: trio.abc.Stream,
    dispatch: Dispatch,
    peer: Peer,
    limits: Limits = Limits(),
    drain: Drain | None = None,
    slot: Slot | None = None,
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the client is done or misbehaves.

    ``slot`` is the connection's place in its service (its ``opened`` time
    starts the first request's deadline). Never raises for anything the
    client does; the stream is closed on return.
    """
    drain = drain if drain is not None else Drain()
    slot = slot if slot is not None else Slot()
    await _Connection(stream, dispatch, peer, limits, drain, slot).serve()


_PROTOCOL_CODES = {431: "HEADERS_TOO_LARGE", 400: "BAD_REQUEST", 505: "HTTP_VERSION_NOT_SUPPORTED"}


class _Connection:
    """One connection's h11 state and the request it is on."""

    __slots__ = (
        "stream", "dispatch", "peer", "limits", "drain", "slot", "conn", "deadlines",
        "request_id", "head", "failure",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        dispatch: Dispatch,
        peer: Peer,
        limits: Limits,
        drain: Drain,
        slot: Slot,
    ) -> None:
        self.stream = stream
        self.dispatch = dispatch
        self.peer = peer
        self.limits = limits
        self.drain = drain
        self.slot = slot
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header)
        self.deadlines = Deadlines(limits, drain, slot.opened)
        self.request_id = ""
        self.head: h11.Request | None = None  # of the current request, once read
        self.failure: tuple[int, str, str] | None = None  # to answer, then close

    async def serve(self) -> None:
        deadlines = self.deadlines
        try:
            with deadlines.scope:
                await self._requests()
            if deadlines.scope.cancelled_caught and deadlines.reading and not self.drain.draining:
                self.failure = (408, "REQUEST_TIMEOUT", self._timeout_message())
            if self.failure is not None:
                await self._fail(*self.failure)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await self.stream.aclose()

    async def _requests(self) -> None:
        """Read and answer requests until the connection should close."""
        conn, slot = self.conn, self.slot
        while True:
            self.request_id = new_request_id()
            self.head = None
            # the lines logged while this request is read and answered name it
            bound = REQUEST_ID.set(self.request_id)
            try:
                try:
                    request = await self._read_request()
                except h11.RemoteProtocolError as exc:
                    self.failure = self._protocol_failure(exc)
                    return
                except HttpError as exc:
                    self.failure = (exc.status, exc.code, exc.message)
                    return
                if request is None:
                    return
                self.deadlines.answering()
                if slot.proven:
                    keep = await self._answer(request)
                else:
                    slot.waiting = False  # being answered: not to be evicted
                    keep = await self._answer(request)
                    if not slot.proven:
                        slot.wait()
            finally:
                REQUEST_ID.reset(bound)
            if not keep or self.drain.draining:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return  # one side said Connection: close, or an HTTP/1.0 peer

    def _timeout_message(self) -> str:
        if self.deadlines.first:
            return f"request head not complete within {self.limits.first_request_timeout:g} s of connecting"
        return f"request not complete within {self.limits.request_timeout:g} s"

    def _protocol_failure(self, exc: h11.RemoteProtocolError) -> tuple[int, str, str]:
        status = exc.error_status_hint
        message = str(exc) or "malformed request"
        if status == 431:
            message = f"request headers over {self.limits.max_header} bytes"
        return status, _PROTOCOL_CODES.get(status, "BAD_REQUEST"), message

    async def _read_request(self) -> Request | None:
        """The next whole request, or None if the connection ends first.

        Raises HttpError (431, 413) or h11.RemoteProtocolError for a request to refuse.
        """
        conn, limits = self.conn, self.limits
        head = None
        raw: list[tuple[bytes, bytes]] = []
        headers: dict[str, str] | None = None  # read when a body shows (or is announced)
        body = bytearray()  # grows in place: a body in many pieces is not copied again each time
        max_body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if head is not None and headers is None:  # a body comes: is it too big?
                    headers, max_body = _body_limit(head.target, raw, limits)
                conn.receive_data(await self.deadlines.receive(self.stream))
            elif type(event) is h11.Request:
                self.head = head = event
                self.deadlines.head_read()
                raw = event.headers.raw_items()
                _check_head_size(event, raw, limits.max_header)
            elif type(event) is h11.Data:
                if headers is None:
                    headers, max_body = _body_limit(head.target, raw, limits)
                body += event.data
                if len(body) > max_body:
                    raise HttpError(413, "BODY_TOO_LARGE", f"body over {max_body} bytes")
            elif type(event) is h11.EndOfMessage:
                target = head.target.decode("latin-1")
                path, query = split_target(target)
                return Request(
                    method=head.method.decode("ascii"),
                    target=target,
                    path=path,
                    query=parse_query(query),
                    raw_headers=raw,
                    body=bytes(body),
                    peer=self.peer,
                    request_id=self.request_id,
                    params=NO_PARAMS,
                    _headers=headers,
                )
            else:  # ConnectionClosed, or PAUSED by a client that sent a second request early
                return None

    async def _answer(self, request: Request) -> bool:
        """Dispatch ``request`` and send its response; False if the connection ends with it."""
        started = trio.current_time()
        response = await self.dispatch(request)
        if not self.slot.proven and request.peer.known:
            self.slot.prove()
        head_only = request.method == "HEAD"
        if response.upgrade is not None:
            # a websocket: h11 is done with this connection, and the deadline with it
            self.deadlines.streaming()
            self._log(request, response.status, started)
            await response.upgrade(self.stream, self.conn.trailing_data[0])
            return False
        if response.stream is not None:
            if not head_only:
                # a long-lived stream ends when its source ends (events.close()
                # at shutdown), or when the shutdown grace runs out
                self.deadlines.streaming()
                await _respond(self.conn, self.stream, response, request.request_id)
                return False
            await response.stream.aclose()  # HEAD: headers only, nothing subscribed
        await self.stream.send_all(_whole(self.conn, response, request.request_id, head_only))
        self.deadlines.answered = self._log(request, response.status, started)
        return True

    def _log(self, request: Request, status: int, started: float) -> float:
        """Log the answered ``request``; returns the time it was logged."""
        now = trio.current_time()
        request_line(
            request.method,
            request.path,
            status,
            round((now - started) * 1000, 3),
            request.peer.label,  # a TCP request's token may name another than the connection's
            request.request_id,
        )
        return now

    async def _fail(self, status: int, code: str, message: str) -> None:
        """Answer a broken request with the error envelope, then the connection closes."""
        head, request_id = self.head, self.request_id
        log.info(
            "request",
            method=head.method.decode("ascii", "replace") if head else None,
            # the path only: a query may carry a token (?qstash_token=)
            path=split_target(head.target.decode("latin-1"))[0] if head else None,
            status=status,
            error=code,
            peer=str(self.peer),
            request_id=request_id,
        )
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = error_response(status, code, message, request_id)
        response.headers.append(("Connection", "close"))
        try:
            await _respond(self.conn, self.stream, response, request_id)
        except h11.LocalProtocolError:
            # h11 refuses to answer some garbage at all; write the bytes ourselves.
            await self.stream.send_all(raw_response(status, response.body, request_id))
        await linger(self.stream)


def _check_head_size(head: h11.Request, raw: list[tuple[bytes, bytes]], max_header: int) -> None:
    """431 for a head over ``max_header``: h11 caps only what is still incomplete."""
    size = len(head.target) + sum(map(len, itertools.chain.from_iterable(raw))) + 4 * len(raw)
    if size > max_header:
        raise HttpError(431, "HEADERS_TOO_LARGE", f"request headers over {max_header} bytes")


def _body_limit(
    target: bytes, raw: list[tuple[bytes, bytes]], limits: Limits
) -> tuple[dict[str, str], int]:
    """For a request whose body has begun: its headers and body limit, or 413 if it announces more."""
    headers = header_dict(raw)
    max_body = limits.body_limit(target)
    length = headers.get("content-length")
    if length is not None and int(length) > max_body:
        raise HttpError(413, "BODY_TOO_LARGE", f"body over {max_body} bytes")
    return headers, max_body


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@functools.cache
def _content_type(value: str) -> tuple[bytes, bytes]:
    """The Content-Type header of ``value``: a route's constant, so there are few."""
    return b"Content-Type", value.encode("latin-1")


def _head(conn: h11.Connection, response: Response, request_id: str) -> bytes:
    """The status line and headers of ``response``, from h11."""
    headers = [(b"X-Request-Id", request_id.encode("ascii"))]
    if response.content_type and (response.body or response.stream is not None):
        headers.append(_content_type(response.content_type))
    headers.extend(response.headers)
    if response.stream is None:
        headers.append((b"Content-Length", b"%d" % len(response.body)))
    return conn.send(
        h11.Response(
            status_code=response.status,
            headers=headers,
            reason=_REASONS.get(response.status, b""),
        )
    )


def _whole(conn: h11.Connection, response: Response, request_id: str, head_only: bool) -> bytes:
    """A response without a stream, head, body and end: sent in one system call."""
    data = _head(conn, response, request_id)
    if response.body and not head_only:
        data += conn.send(h11.Data(data=response.body))
    return data + (conn.send(h11.EndOfMessage()) or b"")


async def _send(conn: h11.Connection, stream: trio.abc.Stream, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _respond(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    response: Response,
    request_id: str,
) -> None:
    """Send ``response``: whole in one write, or a stream chunk by chunk as it comes."""
    if response.stream is None:
        await stream.send_all(_whole(conn, response, request_id, False))
        return
    await stream.send_all(_head(conn, response, request_id))
    async for chunk in response.stream:
        with trio.move_on_after(STREAM_SEND_TIMEOUT) as stuck:
            await _send(conn, stream, h11.Data(data=chunk))
        if stuck.cancelled_caught:
            # a reader that stopped reading: drop it rather than hold on forever
            raise trio.BrokenResourceError("stream consumer stopped reading")
    await _send(conn, stream, h11.EndOfMessage())


def raw_response(status: int, body: bytes, request_id: str) -> bytes:
    """A whole JSON response that closes the connection, written without h11."""
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, b'').decode()}\r\n"
        "Content-Type: application/json\r\n"
        f"X-Request-Id: {request_id}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def linger(stream: trio.abc.Stream) -> None:
    """Half-close, then discard what the client still sends for a moment.

    Closing with unread data makes the kernel reset the connection, and the
    client may lose the error response it has not read yet.
    """
    try:
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        with trio.move_on_after(LINGER):
            discarded = 0
            while discarded < LINGER_BYTES:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                discarded += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
