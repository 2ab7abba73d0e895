"""HookBridge v1's endpoint routes, for the official SDK pointed at sluice.

Bodies are ``{"data": ..., "meta": {"request_id"}}``; errors use the same
envelope as sluice's own, which is HookBridge's. Pause and resume are the
native endpoint mutations (409 ALREADY_PAUSED / NOT_PAUSED). Endpoints
created through ``POST /v1/endpoints`` are runtime objects; one a policy
file declares cannot be updated or deleted (409 DEFINED_IN_FILE). sluice
never calls an endpoint's URL, so the signing secret a creation answers
with signs nothing; it is not kept.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sluice.policy.errors import NotFound, ValidationError
from sluice.policy.fields import ENDPOINT_API_KEYS, check_endpoint_id, endpoint_from
from sluice.policy.model import RUNTIME
from sluice.policy.snapshot import EndpointView
from sluice.policy.times import rfc3339

from ..current import Current
from ..mutations import Mutations
from .routes import Router
from .message import Request, Response

FileTime = Callable[[str], float]


def endpoint_json(view: EndpointView, file_time: FileTime) -> dict[str, Any]:
    e = view.endpoint
    if e.source == RUNTIME:
        created: datetime | float = e.created_at or file_time(e.source)
        updated: datetime | float = e.updated_at or created
    else:
        created = file_time(e.source)
        updated = view.pause.created_at if view.pause is not None and view.pause.created_at else created
    body = {
        "id": e.id,
        "url": e.url,
        "description": e.description,
        "paused": view.paused,
        "created_at": rfc3339(created, "seconds"),
        "updated_at": rfc3339(updated, "seconds"),
    }
    for field in ("rate_limit_rps", "burst", "headers"):
        if getattr(e, field) is not None:
            body[field] = getattr(e, field)
    return body


def endpoint_request(request: Request, *, create: bool) -> dict[str, Any]:
    """The fields of HookBridge's create or update body, checked as the runtime state stores them."""
    body = request.json()
    if not isinstance(body, dict):
        raise ValidationError("body must be a JSON object")
    unknown = sorted(set(body) - set(ENDPOINT_API_KEYS))
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; allowed: {', '.join(ENDPOINT_API_KEYS)}")
    if create and "url" not in body:
        raise ValidationError("url is required", field="url")
    if not create and not body:
        raise ValidationError(f"give at least one of {', '.join(ENDPOINT_API_KEYS)}")
    return {k: v for k, v in body.items() if v is not None}


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

    async def create(request: Request) -> Response:
        fields = endpoint_request(request, create=True)
        made = endpoint_from({"id": f"ep_{secrets.token_hex(16)}", **fields}, mode="runtime")
        stored = await mutations.create_endpoint(made, str(request.peer))
        data = {
            "id": stored.id,
            "url": stored.url,
            "description": stored.description,
            "signing_secret": f"whsec_{secrets.token_hex(24)}",
            "created_at": rfc3339(stored.created_at, "seconds"),
        }
        response = envelope(request, data)
        response.status = 201
        return response

    async def update(request: Request) -> Response:
        ident = request.params["id"]
        before = endpoint(ident).endpoint
        fields = endpoint_request(request, create=False)
        kept = {k: getattr(before, k) for k in ("id", *ENDPOINT_API_KEYS) if getattr(before, k) is not None}
        checked = endpoint_from({**kept, **fields}, mode="runtime")  # as it will be stored
        changes = {k: getattr(checked, k) for k in fields}
        await mutations.update_endpoint(ident, changes, str(request.peer))
        return envelope(request, endpoint_json(endpoint(ident), file_time))

    async def delete(request: Request) -> Response:
        ident = request.params["id"]
        check_endpoint_id(ident)
        await mutations.delete_made("endpoint", ident, str(request.peer))
        return envelope(request, {"id": ident, "deleted": True})

    router.add("POST", "/v1/endpoints", create, change=True)
    router.add("PATCH", "/v1/endpoints/{id}", update, change=True)
    router.add("DELETE", "/v1/endpoints/{id}", delete, change=True)
    router.add("POST", "/v1/endpoints/{id}/pause", pause, change=True)
    router.add("POST", "/v1/endpoints/{id}/resume", resume, change=True)
    router.add("GET", "/v1/endpoints/{id}", get)
    router.add("GET", "/v1/endpoints", list_endpoints)
