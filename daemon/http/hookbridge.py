"""HookBridge v1's endpoint routes, for the official SDK pointed at sluice.

Bodies are ``{"data": ..., "meta": {"request_id"}}``; errors use the same
envelope as sluice's own, which is HookBridge's. Pause and resume are the
native endpoint mutations (409 ALREADY_PAUSED / NOT_PAUSED).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sluice.policy.errors import NotFound
from sluice.policy.fields import check_endpoint_id
from sluice.policy.snapshot import EndpointView
from sluice.policy.times import rfc3339

from ..current import Current
from ..mutations import Mutations
from .routes import Router
from .message import Request, Response

FileTime = Callable[[str], float]


def endpoint_json(view: EndpointView, file_time: FileTime) -> dict[str, Any]:
    e = view.endpoint
    created = file_time(e.source)
    updated = view.pause.created_at if view.pause is not None and view.pause.created_at else created
    return {
        "id": e.id,
        "url": e.url,
        "description": e.description,
        "paused": view.paused,
        "created_at": rfc3339(created, "seconds"),
        "updated_at": rfc3339(updated, "seconds"),
    }


def add_hookbridge_routes(
    router: Router, *, current: Current, mutations: Mutations, file_time: FileTime
) -> None:
    def envelope(request: Request, data: Any, **meta: Any) -> Response:
        return Response.json({"data": data, "meta": {"request_id": request.request_id, **meta}})

    def endpoint(ident: str) -> EndpointView:
        check_endpoint_id(ident)
        found = current.snapshot.endpoints.get(ident)
        if found is None:
            raise NotFound(f"endpoint {ident} not found", code="ENDPOINT_NOT_FOUND")
        return found

    async def pause(request: Request) -> Response:
        ident = request.params["id"]
        await mutations.pause("endpoint", ident, str(request.peer))
        return envelope(request, {"id": ident, "paused": True})

    async def resume(request: Request) -> Response:
        ident = request.params["id"]
        await mutations.resume("endpoint", ident, str(request.peer))
        return envelope(request, {"id": ident, "paused": False, "messages_requeued": 0})

    async def get(request: Request) -> Response:
        return envelope(request, endpoint_json(endpoint(request.params["id"]), file_time))

    async def list_endpoints(request: Request) -> Response:
        views = current.snapshot.endpoints.values()
        return envelope(request, [endpoint_json(v, file_time) for v in views], next_cursor=None)

    router.add("POST", "/v1/endpoints/{id}/pause", pause, change=True)
    router.add("POST", "/v1/endpoints/{id}/resume", resume, change=True)
    router.add("GET", "/v1/endpoints/{id}", get)
    router.add("GET", "/v1/endpoints", list_endpoints)
