"""QStash v2's queue and schedule routes, for the official SDKs pointed at sluice.

Shapes only: every change goes through ``Mutations``, exactly as the native
routes do. Times are milliseconds since the epoch; ``lag`` is 0 because
sluice stores no messages. Errors are QStash's ``{"error": "<message>"}``
(the route style "qstash" tells the router).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sluice.policy.errors import NotFound, ValidationError
from sluice.policy.fields import check_qstash_name
from sluice.policy.snapshot import QueueView, ScheduleView

from ..current import Current
from ..mutations import Mutations
from .routes import Router
from .message import Request, Response

FileTime = Callable[[str], float]


def _ms(value: datetime | float | None) -> int:
    if value is None:
        return 0
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value * 1000)


def queue_json(view: QueueView, file_time: FileTime) -> dict[str, Any]:
    runtime = view.runtime
    created = runtime.created_at if runtime is not None and runtime.created_at else None
    updated = runtime.updated_at if runtime is not None and runtime.updated_at else None
    file_ms = _ms(file_time(view.file.source)) if view.file is not None else 0
    return {
        "name": view.name,
        "parallelism": view.parallelism or 1,
        "lag": 0,
        "paused": view.paused,
        "createdAt": _ms(created) or file_ms,
        "updatedAt": _ms(updated) or _ms(created) or file_ms,
    }


def schedule_json(view: ScheduleView, now: datetime, file_time: FileTime) -> dict[str, Any]:
    s = view.schedule
    nxt = None if view.paused else view.next_fire(now)
    body: dict[str, Any] = {
        "scheduleId": s.id,
        "cron": s.cron or "",
        "destination": s.destination or "",
        "method": s.method,
        "retries": s.retries,
        "createdAt": _ms(file_time(s.source)),
        "isPaused": view.paused,
    }
    if nxt is not None:
        body["nextScheduleTime"] = _ms(nxt)
    return body


def add_qstash_routes(
    router: Router,
    *,
    current: Current,
    mutations: Mutations,
    file_time: FileTime,
    clock: Callable[[], float] = time.time,
) -> None:
    def actor(request: Request) -> str:
        return str(request.peer)

    def view(name: str) -> QueueView:
        found = current.snapshot.queues.get(check_qstash_name(name))
        if found is None:
            raise NotFound(f"queue {name} not found")
        return found

    async def pause(request: Request) -> Response:
        await mutations.pause("queue", request.params["name"], actor(request), qstash=True)
        return Response()

    async def resume(request: Request) -> Response:
        await mutations.resume("queue", request.params["name"], actor(request), qstash=True)
        return Response()

    async def get(request: Request) -> Response:
        return Response.json(queue_json(view(request.params["name"]), file_time))

    async def list_queues(request: Request) -> Response:
        views = sorted(current.snapshot.queues.values(), key=lambda v: v.name)
        return Response.json([queue_json(v, file_time) for v in views])

    async def upsert(request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object")
        unknown = set(body) - {"queueName", "parallelism", "paused"}
        if unknown:
            raise ValidationError(f"unknown field {sorted(unknown)[0]!r}; allowed: queueName, parallelism, paused")
        name = body.get("queueName")
        if not isinstance(name, str):
            raise ValidationError("queueName is required")
        paused = body.get("paused", False)
        if not isinstance(paused, bool):
            raise ValidationError("paused must be true or false")
        await mutations.upsert_queue(
            name, parallelism=body.get("parallelism"), paused=paused, actor=actor(request)
        )
        return Response()

    async def delete(request: Request) -> Response:
        await mutations.delete_queue(request.params["name"], actor(request))
        return Response()

    router.add("POST", "/v2/queues/{name}/pause", pause, change=True, style="qstash")
    router.add("POST", "/v2/queues/{name}/resume", resume, change=True, style="qstash")
    router.add("GET", "/v2/queues/{name}", get, style="qstash")
    router.add("DELETE", "/v2/queues/{name}", delete, change=True, style="qstash")
    router.add("GET", "/v2/queues", list_queues, style="qstash")
    router.add("POST", "/v2/queues", upsert, change=True, style="qstash")

    def now() -> datetime:
        return datetime.fromtimestamp(clock(), timezone.utc)

    def schedule(ident: str) -> ScheduleView:
        found = current.snapshot.schedules.get(ident)
        if found is None:
            raise NotFound(f"schedule {ident} not found", code="SCHEDULE_NOT_FOUND")
        return found

    async def pause_schedule(request: Request) -> Response:
        await mutations.pause("schedule", request.params["id"], actor(request))
        return Response()

    async def resume_schedule(request: Request) -> Response:
        await mutations.resume("schedule", request.params["id"], actor(request))
        return Response()

    async def get_schedule(request: Request) -> Response:
        return Response.json(schedule_json(schedule(request.params["id"]), now(), file_time))

    async def list_schedules(request: Request) -> Response:
        at = now()
        return Response.json(
            [schedule_json(v, at, file_time) for v in current.snapshot.schedules.values()]
        )

    # The DESIGN names POST; the official SDKs send PATCH. Both are served.
    for method in ("POST", "PATCH"):
        router.add(method, "/v2/schedules/{id}/pause", pause_schedule, change=True, style="qstash")
        router.add(method, "/v2/schedules/{id}/resume", resume_schedule, change=True, style="qstash")
    router.add("GET", "/v2/schedules/{id}", get_schedule, style="qstash")
    router.add("GET", "/v2/schedules", list_schedules, style="qstash")
