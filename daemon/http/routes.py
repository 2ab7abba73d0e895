"""The route table: (method, path pattern) -> handler, and dispatch.

Patterns are literal paths with ``{name}`` segments (``{name*}``: the rest
of the path). A path that matches a
pattern under another method is 405 with ``Allow``; no match at all is 404.
Routes marked ``change=True`` need a peer allowed to change state (403
otherwise); the check is one function given to the router.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import structlog

from .peer import Peer
from .message import NO_PARAMS, Handler, HttpError, Request, Response, map_error

log = structlog.get_logger("sluice.http")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    handler: Handler
    change: bool
    regex: re.Pattern[str]
    style: str  # error envelope: "sluice" (also HookBridge's) or "qstash"


Authenticate = Callable[[Request], Peer]


def _compile(pattern: str) -> re.Pattern[str]:
    """``{name}`` matches one segment; ``{name*}`` the rest of the path, slashes
    included (QStash's ``/v2/schedules/{destination}`` takes a whole URL)."""
    parts = re.split(r"(\{[a-z_]+\*?\})", pattern)
    regex = "".join(
        (f"(?P<{p[1:-2]}>.+)" if p.endswith("*}") else f"(?P<{p[1:-1]}>[^/]+)")
        if p.startswith("{")
        else re.escape(p)
        for p in parts
    )
    return re.compile(regex + r"\Z")


class Router:
    def __init__(
        self,
        may_change: Callable[[Peer], bool],
        on_response: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.routes: list[Route] = []
        self._exact: dict[tuple[str, str], Route] = {}  # routes without parameters, by (method, path)
        self.may_change = may_change
        self.on_response = on_response  # (route pattern or "unmatched", method, status)

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        change: bool = False,
        style: str = "sluice",
    ) -> None:
        route = Route(method, pattern, handler, change, _compile(pattern), style)
        self.routes.append(route)
        if "{" not in pattern:
            self._exact.setdefault((method, pattern), route)

    def match(self, method: str, path: str) -> tuple[Route, Mapping[str, str]]:
        exact = self._exact.get((method, path))
        if exact is not None:
            return exact, NO_PARAMS
        allowed = []
        for route in self.routes:
            m = route.regex.match(path)
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
            allowed.append(route.method)
        if allowed:
            methods = sorted(set(allowed) | ({"HEAD"} if "GET" in allowed else set()))
            error = HttpError(
                405,
                "METHOD_NOT_ALLOWED",
                f"{method} is not allowed on {path}; allowed: {', '.join(methods)}",
            )
            error.headers = [("Allow", ", ".join(methods))]
            raise error
        raise HttpError(404, "NOT_FOUND", f"no such route: {path}")

    def _style_of(self, path: str) -> str:
        """The error style for ``path`` when no route answered (401, 404, 405):
        QStash's for anything under /v2 (its clients parse nothing else), else
        that of the routes at ``path``, else sluice's."""
        if path == "/v2" or path.startswith("/v2/"):
            return "qstash"
        for route in self.routes:
            if route.regex.match(path):
                return route.style
        return "sluice"

    async def dispatch(
        self, request: Request, authenticate: Authenticate | None = None
    ) -> Response:
        """Route ``request``; ``authenticate`` (TCP) turns it into a Peer or raises 401."""
        route = None
        try:
            if authenticate is not None:
                # before routing: without a token, even the route table stays private
                request.peer = authenticate(request)
            route, params = self.match(request.method, request.path)
            if route.change and not self.may_change(request.peer):
                raise HttpError(
                    403, "FORBIDDEN", f"{request.peer} may read but not change state"
                )
            request.params = params
            response = await route.handler(request)
        except Exception as exc:  # noqa: BLE001 - mapped in one place, re-raised if unknown
            style = route.style if route is not None else self._style_of(request.path)
            try:
                response = map_error(exc, request.request_id, style)
            except Exception:
                log.exception("handler_failed", path=request.path, request_id=request.request_id)
                response = map_error(
                    HttpError(500, "INTERNAL", "internal error; see the daemon's log"),
                    request.request_id,
                    style,
                )
        if self.on_response is not None:
            self.on_response(
                route.pattern if route else "unmatched", request.method, response.status
            )
        return response
