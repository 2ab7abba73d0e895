"""sluice's own admin routes: suspensions, queues, schedules, endpoints, status, reload.

Handlers read the snapshot in force, call ``policy`` or ``Mutations``, and
return data; errors are raised and mapped to the envelope by the server.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from sluice.daemon import __version__
from sluice.policy.duration import format_duration
from sluice.policy.errors import ValidationError
from sluice.policy.model import Suspension
from sluice.policy.queue_name import normalise
from sluice.policy.snapshot import EndpointView, QueueView, ScheduleView

from ..current import Current, ReloadResult
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import Metrics
from ..mutations import Mutations
from .routes import Router
from .message import HttpError, Request, Response

Reload = Callable[[str], Awaitable[ReloadResult]]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def suspension_json(s: Suspension, now: float) -> dict[str, Any]:
    """A suspension as listed: KumoMTA's fields first, then sluice's."""
    return {
        "id": s.id,
        "campaign": s.campaign,
        "tenant": s.tenant,
        "domain": s.domain,
        "reason": s.reason,
        "duration": None if s.expires is None else format_duration(s.expires.timestamp() - now),
        "queue_names": list(s.queue_names),
        "everything": s.everything,
        "expires": _iso(s.expires),
        "created_at": _iso(s.created_at),
        "created_by": s.created_by,
        "source": s.source,
    }


def queue_json(view: QueueView) -> dict[str, Any]:
    """A queue; one that sluice holds nothing about is listed as running, source null."""
    holder = view.holder
    entry = holder or view.runtime or view.file
    return {
        "name": view.name,
        "paused": view.paused,
        "reason": holder.reason if holder else None,
        "parallelism": view.parallelism,
        "source": (holder or entry).source if entry else None,
        "created_at": _iso(entry.created_at) if entry else None,
        "created_by": entry.created_by if entry else None,
        "updated_at": _iso(entry.updated_at) if entry else None,
    }


def schedule_json(view: ScheduleView, now: datetime) -> dict[str, Any]:
    s = view.schedule
    pause = view.pause
    nxt = view.next_fire(now)
    return {
        "id": s.id,
        "cron": s.cron,
        "description": s.description,
        "destination": s.destination,
        "method": s.method,
        "retries": s.retries,
        "paused": view.paused,
        "reason": s.reason if s.paused else (pause.reason if pause else None),
        "source": s.source,
        "paused_by": view.holder_source,
        "next_fire": None if view.paused else _iso(nxt),
    }


def endpoint_json(view: EndpointView) -> dict[str, Any]:
    e = view.endpoint
    pause = view.pause
    return {
        "id": e.id,
        "url": e.url,
        "name": e.name,
        "description": e.description,
        "paused": view.paused,
        "reason": e.reason if e.paused else (pause.reason if pause else None),
        "source": e.source,
        "paused_by": view.holder_source,
    }


def _reason(request: Request) -> str | None:
    body = request.json(optional=True)
    if body is None:
        return None
    if not isinstance(body, dict):
        raise ValidationError("body must be a JSON object")
    unknown = set(body) - {"reason"}
    if unknown:
        raise ValidationError(f"unknown field {sorted(unknown)[0]!r}; allowed: reason", field=sorted(unknown)[0])
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or not reason.strip()):
        raise ValidationError("reason must be a non-empty string", field="reason")
    return reason


def add_admin_routes(
    router: Router,
    *,
    current: Current,
    mutations: Mutations,
    reload: Reload,
    metrics: Metrics,
    clock: Callable[[], float] = time.time,
) -> None:
    def actor(request: Request) -> str:
        return str(request.peer)

    # -- suspensions ---------------------------------------------------------

    async def suspend(request: Request) -> Response:
        stored, _created = await mutations.suspend(request.json(), actor(request))
        return Response.json({"id": stored.id})

    async def list_suspensions(request: Request) -> Response:
        now = clock()
        return Response.json(
            [suspension_json(s, now) for s in current.snapshot.active_suspensions(now)]
        )

    async def cancel(request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object with an id")
        unknown = set(body) - {"id"}
        if unknown:
            raise ValidationError(f"unknown field {sorted(unknown)[0]!r}; allowed: id")
        if "id" not in body:
            raise ValidationError("id is required", field="id")
        await mutations.cancel_suspension(body["id"], actor(request))
        return Response.json({"id": body["id"], "cancelled": True})

    router.add("POST", "/api/admin/suspend/v1", suspend, change=True)
    router.add("GET", "/api/admin/suspend/v1", list_suspensions)
    router.add("DELETE", "/api/admin/suspend/v1", cancel, change=True)

    # -- queues --------------------------------------------------------------

    async def pause_queue(request: Request) -> Response:
        body = request.json(optional=True)
        await mutations.pause_queue(request.params["name"], body, actor(request))
        return Response.json(queue_json(_queue_view(request.params["name"])))

    async def resume_queue(request: Request) -> Response:
        request.no_body()
        await mutations.resume_queue(request.params["name"], actor(request))
        name = normalise(request.params["name"])
        return Response.json(queue_json(current.snapshot.queues.get(name) or QueueView(name=name)))

    def _queue_view(name: str, missing_ok: bool = False) -> QueueView | None:
        view = current.snapshot.queues.get(normalise(name))
        if view is None and not missing_ok:
            raise HttpError(404, "QUEUE_NOT_FOUND", f"queue {name!r} not found")
        return view

    async def list_queues(request: Request) -> Response:
        views = sorted(current.snapshot.queues.values(), key=lambda v: v.name)
        return Response.json([queue_json(v) for v in views if v.paused])

    router.add("POST", "/api/admin/queues/{name}/pause", pause_queue, change=True)
    router.add("POST", "/api/admin/queues/{name}/resume", resume_queue, change=True)
    router.add("GET", "/api/admin/queues", list_queues)

    # -- schedules -----------------------------------------------------------

    async def pause_schedule(request: Request) -> Response:
        ident = request.params["id"]
        await mutations.pause_schedule(ident, _reason(request), actor(request))
        return Response.json(schedule_json(current.snapshot.schedules[ident], _now()))

    async def resume_schedule(request: Request) -> Response:
        request.no_body()
        ident = request.params["id"]
        await mutations.resume_schedule(ident, actor(request))
        return Response.json(schedule_json(current.snapshot.schedules[ident], _now()))

    async def list_schedules(request: Request) -> Response:
        now = _now()
        return Response.json(
            [schedule_json(v, now) for v in current.snapshot.schedules.values()]
        )

    def _now() -> datetime:
        return datetime.fromtimestamp(clock(), timezone.utc)

    router.add("POST", "/api/admin/schedules/{id}/pause", pause_schedule, change=True)
    router.add("POST", "/api/admin/schedules/{id}/resume", resume_schedule, change=True)
    router.add("GET", "/api/admin/schedules", list_schedules)

    # -- endpoints (HookBridge semantics and envelope) --------------------------

    async def pause_endpoint(request: Request) -> Response:
        ident = request.params["id"]
        await mutations.pause_endpoint(ident, _reason(request), actor(request))
        return Response.json(
            {"data": {"id": ident, "paused": True}, "meta": {"request_id": request.request_id}}
        )

    async def resume_endpoint(request: Request) -> Response:
        request.no_body()
        ident = request.params["id"]
        await mutations.resume_endpoint(ident, actor(request))
        return Response.json(
            {"data": {"id": ident, "paused": False}, "meta": {"request_id": request.request_id}}
        )

    async def list_endpoints(request: Request) -> Response:
        return Response.json(
            {
                "data": [endpoint_json(v) for v in current.snapshot.endpoints.values()],
                "meta": {"request_id": request.request_id},
            }
        )

    router.add("POST", "/api/admin/endpoints/{id}/pause", pause_endpoint, change=True)
    router.add("POST", "/api/admin/endpoints/{id}/resume", resume_endpoint, change=True)
    router.add("GET", "/api/admin/endpoints", list_endpoints)

    # -- status and reload ---------------------------------------------------

    async def status(request: Request) -> Response:
        now = clock()
        snapshot = current.snapshot
        return Response.json(
            {
                "version": __version__,
                "uptime": round(time.time() - current.started, 3),
                "generation": snapshot.generation,
                "files": list(snapshot.policy.files),
                "last_reload": current.last_reload.as_json() if current.last_reload else None,
                "counts": snapshot.counts(now),
                "degraded": current.degraded,
            }
        )

    async def reload_now(request: Request) -> Response:
        request.no_body()
        result = await reload(f"api by {actor(request)}")
        if not result.ok:
            raise HttpError(
                422,
                "INVALID_POLICY",
                "reload refused, previous policy still in force: " + "; ".join(result.errors),
            )
        return Response.json(result.as_json())

    async def prometheus(request: Request) -> Response:
        return Response(body=metrics.render(), content_type=METRICS_CONTENT_TYPE)

    router.add("GET", "/api/status/v1", status)
    router.add("POST", "/api/admin/reload/v1", reload_now, change=True)
    router.add("GET", "/metrics", prometheus)

