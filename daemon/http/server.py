"""A thin trio adapter around h11: connections, limits, the error envelope.

How this works
--------------
Each connection runs ``serve_connection``: h11 parses, this module moves
bytes and enforces the limits a hostile client would test:
    headers over ``max_header`` bytes      431 (h11's max_incomplete_event_size)
    a body over ``max_body`` bytes         413 (Content-Length, or counted)
    a request not complete in time         408
    a keep-alive connection idle too long  closed quietly
    a connection over the cap              503 and closed, by ``serve_listener``
Handlers get a ``Request`` and return a ``Response``; a PolicyError or an
HttpError raised by a handler becomes the error envelope
``{"error": {"code", "message"}, "meta": {"request_id"}}``, here and only
here. Every response carries ``X-Request-Id``, and every request is logged
once with method, path, status, duration and peer.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
from http import HTTPStatus
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs

import h11
import msgspec
import structlog
import trio

from sluice.policy.errors import PolicyError

from ..logs import info_writer
from .peer import Peer

log = structlog.get_logger("sluice.http")

STREAM_SEND_TIMEOUT = 10.0
LINGER = 2.0
LINGER_BYTES = 4 * 1024 * 1024
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Limits:
    max_header: int = 16 * 1024
    max_body: int = 64 * 1024
    # Batch checks carry up to 10,000 names, more than 64 KiB of them.
    large_bodies: tuple[tuple[str, int], ...] = (("/api/check/v1", 2 * 1024 * 1024),)

    request_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 256

    def body_limit(self, target: bytes) -> int:
        """The body limit of the route ``target`` (a request target) goes to."""
        path = _split_target(target.decode("latin-1"))[0]
        for large, limit in self.large_bodies:
            if path == large:
                return limit
        return self.max_body


def parse_query(query: str) -> dict[str, list[str]]:
    """``urllib.parse.parse_qs(query)``; one plain ``name=value`` is read without it."""
    if "&" in query or "%" in query or "+" in query:
        return parse_qs(query)
    name, equals, value = query.partition("=")
    return {name: [value]} if equals and value else {}


def _split_target(target: str) -> tuple[str, str]:
    """A request target's path and query string, without any fragment."""
    path, _, query = target.partition("?")
    if "#" in query or "#" in path:
        path = path.partition("#")[0]
        query = query.partition("#")[0]
    return path, query


class HttpError(Exception):
    """An error the HTTP layer answers with its own status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: list[tuple[str, str]] = []


NO_PARAMS: Mapping[str, str] = MappingProxyType({})


def header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers by lower-case name (the last of a repeated one)."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    peer: Peer
    request_id: str
    params: Mapping[str, str]  # the route's {name} segments, set by the router
    _headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The headers by lower-case name, made when first asked for: most routes never do."""
        if self._headers is None:
            self._headers = header_dict(self.raw_headers)
        return self._headers

    def no_body(self) -> None:
        """For routes that take no body: refuse one (other than ``{}``) rather than ignore it."""
        if self.body.strip() and self.json() != {}:
            raise HttpError(400, "INVALID_REQUEST", "this route takes no body")

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self, *, optional: bool = False) -> Any:
        """The body as JSON; 415 if it says it is something else, 400 if it is broken."""
        if not self.body.strip():
            if optional:
                return None
            raise HttpError(400, "INVALID_REQUEST", "a JSON body is required")
        ctype = self.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        # curl -d labels a JSON body as a form; that body is still taken if it is JSON.
        lenient = ctype == "application/x-www-form-urlencoded"
        if ctype and ctype != "application/json" and not ctype.endswith("+json") and not lenient:
            raise HttpError(
                415, "UNSUPPORTED_MEDIA_TYPE", f"expected application/json, got {ctype!r}"
            )
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            if lenient:
                raise HttpError(
                    415, "UNSUPPORTED_MEDIA_TYPE", "expected a JSON body (application/json)"
                ) from None
            raise HttpError(400, "INVALID_JSON", f"body is not valid JSON: {exc}") from None


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"  # a constant of the route's, never request data
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status=status, body=_json.encode(value) + b"\n")


Handler = Callable[[Request], Awaitable[Response]]


class Drain:
    """Counts connections, and closes idle ones at once when shutdown begins.

    A connection waiting for its next request is idle; one reading or
    answering a request is not, and is left to finish.
    """

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle: set[trio.CancelScope] = set()
        self._empty = trio.Event()

    @contextmanager
    def connection(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.draining and self.active == 0:
                self._empty.set()

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
        self.draining = True
        for scope in list(self._idle):
            scope.cancel()
        if self.active == 0:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()


def _request_ids() -> Iterator[str]:
    """``req_`` + this process's random prefix + a counter: unique, and no system call.

    Made a thousand at a time: formatting one number in passing, between the
    other work of a request, costs several times what it does in a batch.
    """
    prefix = f"req_{secrets.token_hex(4)}"
    for start in itertools.count(1, 1024):
        yield from [f"{prefix}{n:08x}" for n in range(start, start + 1024)]


new_request_id = _request_ids().__next__  # the event loop's thread only (a generator)


def error_body(code: str, message: str, request_id: str) -> bytes:
    return (
        _json.encode({"error": {"code": code, "message": message}, "meta": {"request_id": request_id}})
        + b"\n"
    )


def error_response(status: int, code: str, message: str, request_id: str) -> Response:
    return Response(status=status, body=error_body(code, message, request_id))


async def _send(conn: h11.Connection, stream: trio.abc.Stream, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_SIZES = [b"%d" % n for n in range(1024)]  # Content-Length values, formatted once
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


def _head(conn: h11.Connection, response: Response, request_id: str) -> bytes:
    """The status line and headers of ``response``, from h11."""
    headers = [(b"X-Request-Id", request_id.encode("ascii"))]
    if response.content_type and (response.body or response.stream is not None):
        headers.append((b"Content-Type", response.content_type.encode("latin-1")))
    headers.extend(response.headers)
    if response.stream is None:
        size = len(response.body)
        headers.append((b"Content-Length", _SIZES[size] if size < len(_SIZES) else b"%d" % size))
    # h11 checks every header name and value against injection, at more cost
    # than the rest of a small response. The headers made here (our request
    # id, the route's content type, digits) need none, and skip it (h11's
    # flag for headers it parsed itself); a route's own headers are checked.
    return conn.send(
        h11.Response(
            status_code=response.status,
            headers=headers,
            reason=_REASONS.get(response.status, b""),
            _parsed=not response.headers,
        )
    )


def _whole(conn: h11.Connection, response: Response, request_id: str, head_only: bool) -> bytes:
    """A response without a stream, head, body and end: sent in one system call."""
    data = _head(conn, response, request_id)
    if response.body and not head_only:
        data += conn.send(h11.Data(data=response.body))
    return data + (conn.send(h11.EndOfMessage()) or b"")


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


_PROTOCOL_CODES = {431: "HEADERS_TOO_LARGE", 400: "BAD_REQUEST", 505: "HTTP_VERSION_NOT_SUPPORTED"}


async def serve_connection(
    stream: trio.abc.Stream,
    dispatch: Callable[[Request], Awaitable[Response]],
    peer: Peer,
    limits: Limits = Limits(),
    drain: Drain | None = None,
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the client is done or misbehaves.

    One cancel scope covers the connection's whole life (a scope per request
    costs more than a small request). Its deadline is the idle timeout, moved
    at most once a second, or the request timeout while a request that
    arrived in pieces is still coming in; while idle it is registered with
    ``drain`` so that shutdown closes it at once. A request that has arrived
    whole is answered under the idle deadline, never the request timeout.
    """
    drain = drain if drain is not None else Drain()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header)
    state = _Exchange()
    scope = trio.CancelScope(deadline=trio.current_time() + limits.idle_timeout)
    try:
        with scope:
            await _serve_requests(conn, stream, dispatch, peer, limits, drain, scope, state)
        if scope.cancelled_caught and state.reading and not drain.draining:
            state.failure = (
                408,
                "REQUEST_TIMEOUT",
                f"request not complete within {limits.request_timeout:g} s",
            )
        if state.failure is not None:
            status, code, message = state.failure
            await _fail(conn, stream, status, code, message, state.request_id, peer, state.head)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return
    finally:
        drain.awake(scope)
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await stream.aclose()


class _Exchange:
    """Where a connection is in its current request, for what happens after it ends."""

    __slots__ = ("request_id", "reading", "head", "failure")

    def __init__(self) -> None:
        self.request_id = ""
        self.reading = False  # part of a request has arrived, not all of it
        self.head: h11.Request | None = None
        self.failure: tuple[int, str, str] | None = None  # to answer, then close


async def _serve_requests(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    dispatch: Callable[[Request], Awaitable[Response]],
    peer: Peer,
    limits: Limits,
    drain: Drain,
    scope: trio.CancelScope,
    state: _Exchange,
) -> None:
    """The request loop of ``serve_connection``; returns when the connection should close."""
    receive_some = stream.receive_some
    send_all = stream.send_all
    peer_text = str(peer)  # for the log lines; a TCP request's token may name another
    request_line = info_writer(log, "request")
    max_header = limits.max_header
    idle_timeout = limits.idle_timeout
    now = trio.lowlevel.current_clock().current_time  # trio.current_time, a call shorter
    finished = now()
    while True:
        state.request_id = request_id = new_request_id()
        state.head = head = None
        body = bytearray()  # grows in place: a body in many pieces is not copied again each time
        headers: dict[str, str] | None = None  # read when a body shows (or is announced)
        max_body = 0
        timed = False
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if not state.reading:
                        # idle: wait for a new request (shutdown closes us here)
                        if finished + idle_timeout - scope.deadline > 1.0:
                            scope.deadline = finished + idle_timeout
                        if drain.rest(scope):
                            return
                        data = await receive_some(65536)
                        drain.awake(scope)
                        state.reading = True
                        conn.receive_data(data)
                        continue
                    if head is not None and headers is None:
                        # a body comes: is it too big?
                        headers, max_body = _body_limit(head.target, raw, limits)
                    # more of this request to come: it has request_timeout
                    # from its first byte (parsed just now, with no wait between)
                    if not timed:
                        timed = True
                        scope.deadline = now() + limits.request_timeout
                    conn.receive_data(await receive_some(65536))
                    continue
                if event.__class__ is h11.Request:
                    state.head = head = event
                    # h11 caps only what is still incomplete; a head that
                    # arrived whole is measured here
                    size = len(event.target)
                    raw = event.headers.raw_items()
                    for name, value in raw:
                        size += len(name) + len(value) + 4
                    if size > max_header:
                        raise HttpError(
                            431, "HEADERS_TOO_LARGE", f"request headers over {max_header} bytes"
                        )
                elif event.__class__ is h11.Data:
                    if headers is None:
                        headers, max_body = _body_limit(head.target, raw, limits)
                    body += event.data
                    if len(body) > max_body:
                        raise HttpError(413, "BODY_TOO_LARGE", f"body over {max_body} bytes")
                elif event.__class__ is h11.EndOfMessage:
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            message = str(exc) or "malformed request"
            if status == 431:
                message = f"request headers over {limits.max_header} bytes"
            state.failure = (status, _PROTOCOL_CODES.get(status, "BAD_REQUEST"), message)
            return
        except HttpError as exc:
            state.failure = (exc.status, exc.code, exc.message)
            return
        started = now()
        state.reading = False
        if timed:  # it came in pieces under the request timeout; it is answered under the idle one
            scope.deadline = started + idle_timeout

        assert head is not None
        target = head.target.decode("latin-1")
        path, query = _split_target(target)
        method = _METHODS.get(head.method) or head.method.decode("ascii")
        request = Request(
            method=method,
            target=target,
            path=path,
            query=parse_query(query),
            raw_headers=raw,
            body=bytes(body),
            peer=peer,
            request_id=request_id,
            params=NO_PARAMS,
            _headers=headers,
        )
        response = await dispatch(request)
        head_only = method == "HEAD"
        if response.stream is not None:
            if not head_only:
                # a long-lived stream ends when its source ends (events.close()
                # at shutdown), or when the shutdown grace runs out
                scope.deadline = math.inf
                await _respond(conn, stream, response, request_id)
                return
            await response.stream.aclose()  # HEAD: headers only, nothing subscribed
        await send_all(_whole(conn, response, request_id, head_only))
        finished = now()
        request_line(
            method=method,
            path=path,
            status=response.status,
            duration_ms=int((finished - started) * 1_000_000) / 1000,
            peer=peer_text if request.peer is peer else str(request.peer),
            request_id=request_id,
        )
        if drain.draining:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return  # one side said Connection: close, or an HTTP/1.0 peer


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


async def _fail(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    code: str,
    message: str,
    request_id: str,
    peer: Peer,
    head: h11.Request | None = None,
) -> None:
    """Answer a broken request with the error envelope, then the connection closes."""
    log.info(
        "request",
        method=head.method.decode("ascii", "replace") if head else None,
        # the path only: a query may carry a token (?qstash_token=)
        path=_split_target(head.target.decode("latin-1"))[0] if head else None,
        status=status,
        error=code,
        peer=str(peer),
        request_id=request_id,
    )
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    response = error_response(status, code, message, request_id)
    response.headers.append(("Connection", "close"))
    try:
        await _respond(conn, stream, response, request_id)
    except h11.LocalProtocolError:
        # h11 refuses to answer some garbage at all; write the bytes ourselves.
        raw = (
            f"HTTP/1.1 {status} {_REASONS.get(status, b'').decode()}\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: {request_id}\r\nConnection: close\r\n"
            f"Content-Length: {len(response.body)}\r\n\r\n"
        ).encode() + response.body
        await stream.send_all(raw)
    await _linger(stream)


async def _linger(stream: trio.abc.Stream) -> None:
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
                data = await stream.receive_some(65536)
                if not data:
                    break
                discarded += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def map_error(exc: Exception, request_id: str, style: str = "sluice") -> Response:
    """The one place that turns an exception into an error response.

    ``style`` picks the envelope: sluice's own (which HookBridge shares), or
    QStash's ``{"error": "<message>"}``.
    """
    headers: list[tuple[str, str]] = []
    if isinstance(exc, HttpError):
        status, code, message, headers = exc.status, exc.code, exc.message, exc.headers
    elif isinstance(exc, PolicyError):
        status, code, message = exc.status_hint, exc.code, exc.message
    else:
        raise exc
    if style == "qstash":
        response = Response(status=status, body=_json.encode({"error": message}) + b"\n")
    else:
        response = error_response(status, code, message, request_id)
    response.headers.extend(headers)
    return response


async def serve_listener(
    listener: trio.abc.Listener,
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
    limits: Limits,
    drain: Drain,
    handlers: trio.Nursery,
    *,
    refuse: Callable[[trio.abc.Stream], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections until cancelled, each handled in ``handlers``.

    Over ``limits.max_connections`` a connection is answered by ``refuse``
    (HTTP's 503 by default) and closed. Cancelling this task stops accepting
    without touching connections.
    """
    refuse = refuse if refuse is not None else _refuse

    async def run(stream: trio.abc.Stream) -> None:
        with drain.connection():
            await handle(stream)

    async with listener:
        task_status.started()
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept_failed", error=str(exc))
                    await trio.sleep(0.1)
                    continue
                raise
            if drain.active >= limits.max_connections:
                handlers.start_soon(refuse, stream)
                continue
            handlers.start_soon(run, stream)


async def _refuse(stream: trio.abc.Stream) -> None:
    request_id = new_request_id()
    body = error_body("TOO_MANY_CONNECTIONS", "connection limit reached; try again", request_id)
    raw = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {request_id}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with trio.move_on_after(1):
        try:
            await stream.send_all(raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await _linger(stream)
    await trio.aclose_forcefully(stream)
