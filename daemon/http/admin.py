"""sluice's own admin routes: suspensions, queues, schedules, endpoints, status, reload.

Handlers read the snapshot in force, call ``policy`` or ``Mutations``, and
return data; errors are raised and mapped to the envelope by the server.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from sluice.daemon import __version__
from sluice.policy import changes
from sluice.policy.duration import format_duration
from sluice.policy.errors import ValidationError
from sluice.policy.fields import queue_from
from sluice.policy.model import Suspension
from sluice.policy.snapshot import EndpointView, FlowControlView, QueueView, ScheduleView
from sluice.policy.times import rfc3339

from ..current import Current, ReloadResult
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import Metrics
from ..mutations import Mutations
from .routes import Router
from .message import HttpError, Request, Response

Reload = Callable[[str], Awaitable[ReloadResult]]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value, "auto")


# What ``duration`` says of a hold without an end: KumoMTA's list entry needs a
# duration humantime parses, and kumod itself has no endless suspensions.
# ``expires: null`` beside it is sluice's own word.
ENDLESS = "100years"


def suspension_json(s: Suspension, now: float) -> dict[str, Any]:
    """A suspension as listed: KumoMTA's fields first, then sluice's."""
    return {
        "id": s.id,
        "campaign": s.campaign,
        "tenant": s.tenant,
        "domain": s.domain,
        "reason": s.reason,
        "duration": ENDLESS if s.expires is None else format_duration(s.expires.timestamp() - now),
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


def flow_control_json(view: FlowControlView) -> dict[str, Any]:
    """A flow-control key: its pause and its pins."""
    holder = view.holder
    entry = holder or view.runtime or view.file
    return {
        "key": view.key,
        "paused": view.paused,
        "reason": holder.reason if holder else None,
        "parallelism": view.parallelism,
        "rate": view.rate,
        "period": view.period,
        "source": entry.source if entry else None,
        "updated_at": _iso(entry.updated_at) if entry else None,
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
    sections: Mapping[str, Callable[[float], dict[str, Any]]] | None = None,
) -> None:
    """``sections``: more of status, by name, each made at the moment asked."""
    _add_suspension_routes(router, current, mutations, clock)
    _add_pause_routes(router, current, mutations, clock)
    _add_status_routes(router, current, reload, metrics, clock, sections or {})


def actor(request: Request) -> str:
    return str(request.peer)


def _add_suspension_routes(
    router: Router, current: Current, mutations: Mutations, clock: Callable[[], float]
) -> None:
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


# What can be paused through the admin API: kind, route prefix, path parameter.
PAUSABLE = (
    ("queue", "/api/admin/queues/{name}", "name"),
    ("schedule", "/api/admin/schedules/{id}", "id"),
    ("endpoint", "/api/admin/endpoints/{id}", "id"),
    ("flow_control", "/api/admin/flow-controls/{key}", "key"),
)


def _pause_request(kind: str, request: Request) -> dict[str, Any]:
    """A pause's fields from its body: reason (and parallelism, for a queue)."""
    if kind != "queue":
        return {"reason": _reason(request)}
    wanted = queue_from(request.json(optional=True) or {}, mode="api", name=request.params["name"])
    return {"reason": wanted.reason, "parallelism": wanted.parallelism}


def _add_pause_routes(
    router: Router, current: Current, mutations: Mutations, clock: Callable[[], float]
) -> None:
    def answer(kind: str, ident: str, request: Request) -> Response:
        """The object as it stands after the change, in its list's shape."""
        snapshot = current.snapshot
        if kind == "queue":
            name = changes.queue_key(snapshot, ident)
            return Response.json(queue_json(snapshot.queues.get(name) or QueueView(name=name)))
        if kind == "schedule":
            return Response.json(schedule_json(snapshot.schedules[ident], _now()))
        if kind == "flow_control":
            view = snapshot.flow_controls.get(ident) or FlowControlView(key=ident)
            return Response.json(flow_control_json(view))
        data = {"id": ident, "paused": snapshot.endpoints[ident].paused}
        return Response.json({"data": data, "meta": {"request_id": request.request_id}})

    def routes(kind: str, param: str) -> tuple[Callable, Callable]:
        async def pause(request: Request) -> Response:
            ident = request.params[param]
            await mutations.pause(kind, ident, actor(request), **_pause_request(kind, request))
            return answer(kind, ident, request)

        async def resume(request: Request) -> Response:
            request.no_body()
            ident = request.params[param]
            await mutations.resume(kind, ident, actor(request))
            return answer(kind, ident, request)

        return pause, resume

    for kind, prefix, param in PAUSABLE:
        pause, resume = routes(kind, param)
        router.add("POST", prefix + "/pause", pause, change=True)
        router.add("POST", prefix + "/resume", resume, change=True)

    async def list_queues(request: Request) -> Response:
        views = sorted(current.snapshot.queues.values(), key=lambda v: v.name)
        return Response.json([queue_json(v) for v in views if v.paused])

    async def list_schedules(request: Request) -> Response:
        now = _now()
        return Response.json(
            [schedule_json(v, now) for v in current.snapshot.schedules.values()]
        )

    async def list_endpoints(request: Request) -> Response:
        return Response.json(
            {
                "data": [endpoint_json(v) for v in current.snapshot.endpoints.values()],
                "meta": {"request_id": request.request_id},
            }
        )

    def _now() -> datetime:
        return datetime.fromtimestamp(clock(), timezone.utc)

    async def list_flow_controls(request: Request) -> Response:
        views = current.snapshot.flow_controls
        return Response.json([flow_control_json(views[k]) for k in sorted(views)])

    router.add("GET", "/api/admin/queues", list_queues)
    router.add("GET", "/api/admin/flow-controls", list_flow_controls)
    router.add("GET", "/api/admin/schedules", list_schedules)
    router.add("GET", "/api/admin/endpoints", list_endpoints)


def _add_status_routes(
    router: Router,
    current: Current,
    reload: Reload,
    metrics: Metrics,
    clock: Callable[[], float],
    sections: Mapping[str, Callable[[float], dict[str, Any]]],
) -> None:
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
                "degraded_reason": current.degraded_reason or None,
                "runtime_problems": sorted(current.runtime_problems.values()),
                **{name: section(now) for name, section in sections.items()},
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

