"""Requests, responses and the error envelope: what a route sees and returns.

Handlers get a ``Request`` and return a ``Response``. A PolicyError or an
HttpError raised by a handler becomes the error envelope
``{"error": {"code", "message"}, "meta": {"request_id"}}`` through
``map_error``, the one place that makes that translation. Every request has
an id (``new_request_id``), sent back as ``X-Request-Id``.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs

import msgspec

from sluice.policy.errors import PolicyError

from .peer import Peer

_json = msgspec.json.Encoder()


class HttpError(Exception):
    """An error the HTTP layer answers with its own status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: list[tuple[str, str]] = []


NO_PARAMS: Mapping[str, str] = MappingProxyType({})


def parse_query(query: str) -> dict[str, list[str]]:
    """``urllib.parse.parse_qs(query)``; one plain ``name=value`` is read without it."""
    if "&" in query or "%" in query or "+" in query:
        return parse_qs(query)
    name, equals, value = query.partition("=")
    return {name: [value]} if equals and value else {}


def split_target(target: str) -> tuple[str, str]:
    """A request target's path and query string, without any fragment."""
    path, _, query = target.partition("?")
    if "#" in query or "#" in path:
        path = path.partition("#")[0]
        query = query.partition("#")[0]
    return path, query


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
        return self.decode_json(json.loads, (ValueError, UnicodeDecodeError))

    def decode_json(self, decode: Callable[[bytes], Any], broken: type[Exception] | tuple[type[Exception], ...]) -> Any:
        """``decode(body)`` for a body that must be JSON, its errors answered as ``json`` answers
        them: 415 for another content type, 400 INVALID_JSON when ``decode`` raises ``broken``
        or the body is nested too deeply. A body that is not empty is assumed."""
        ctype = self.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        # curl -d labels a JSON body as a form; that body is still taken if it is JSON.
        lenient = ctype == "application/x-www-form-urlencoded"
        if ctype and ctype != "application/json" and not ctype.endswith("+json") and not lenient:
            raise HttpError(
                415, "UNSUPPORTED_MEDIA_TYPE", f"expected application/json, got {ctype!r}"
            )
        try:
            return decode(self.body)
        except broken as exc:
            if lenient:
                raise HttpError(
                    415, "UNSUPPORTED_MEDIA_TYPE", "expected a JSON body (application/json)"
                ) from None
            raise HttpError(400, "INVALID_JSON", f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise HttpError(
                400, "INVALID_JSON", "body is nested too deeply (arrays or objects inside each other)"
            ) from None


Upgrade = Callable[[Any, bytes], Awaitable[None]]


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"  # a constant of the route's, never request data
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    # takes the connection over once this (a 101) is chosen: (stream, bytes read past the request)
    upgrade: Upgrade | None = None

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status=status, body=_json.encode(value) + b"\n")


Handler = Callable[[Request], Awaitable[Response]]

_REQUEST_ID_PREFIX = f"req_{secrets.token_hex(4)}"
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """``req_`` + this process's random prefix + a counter: unique, and no system call."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):08x}"


def error_body(code: str, message: str, request_id: str) -> bytes:
    return (
        _json.encode({"error": {"code": code, "message": message}, "meta": {"request_id": request_id}})
        + b"\n"
    )


def error_response(status: int, code: str, message: str, request_id: str) -> Response:
    return Response(status=status, body=error_body(code, message, request_id))


def map_error(exc: Exception, request_id: str, style: str = "sluice") -> Response:
    """The one place that turns an exception into an error response.

    ``style`` picks the envelope: sluice's own (which HookBridge shares), or
    QStash's ``{"error": "<message>"}``. Anything but an HttpError or a
    PolicyError is re-raised.
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
