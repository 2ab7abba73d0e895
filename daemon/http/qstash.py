"""QStash v2's queue and schedule routes, for the official SDKs pointed at sluice.

Shapes only: every change goes through ``Mutations``, exactly as the native
routes do. Times are milliseconds since the epoch; ``lag`` is 0 because
sluice stores no messages. Errors are QStash's ``{"error": "<message>"}``
(the route style "qstash" tells the router).
"""

from __future__ import annotations

import base64
import math
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sluice.policy.duration import parse_duration
from sluice.policy.errors import NotFound, ValidationError
from sluice.policy.fields import check_flow_control_key, check_qstash_name, schedule_from
from sluice.policy.model import RUNTIME
from sluice.policy.snapshot import FlowControlView, QueueView, ScheduleView

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
    """A schedule as QStash answers it, with what was given when it was made."""
    s = view.schedule
    nxt = None if view.paused else view.next_fire(now)
    created = s.created_at if s.source == RUNTIME else file_time(s.source)
    body: dict[str, Any] = {
        "scheduleId": s.id,
        "cron": s.cron or "",
        "destination": s.destination or "",
        "method": s.method,
        "retries": s.retries,
        "createdAt": _ms(created),
        "isPaused": view.paused,
    }
    if nxt is not None:
        body["nextScheduleTime"] = _ms(nxt)
    for field, name in _SCHEDULE_ANSWERS:
        value = getattr(s, field)
        if value is not None:
            body[name] = value
    for field, name in _HEADER_ANSWERS:
        headers = getattr(s, field)
        if headers:
            body[name] = {k: [v] for k, v in headers.items()}
    if s.flow_control_key is not None:
        body["flowControlKey"] = s.flow_control_key
        body["period"] = s.period or 1  # QStash's default period, a second
    return body


# Schedule fields answered under QStash's names, when set.
_SCHEDULE_ANSWERS = (
    ("queue", "queueName"),
    ("label", "label"),
    ("delay", "delay"),
    ("timeout", "timeout"),
    ("retry_delay", "retryDelayExpression"),
    ("callback", "callback"),
    ("failure_callback", "failureCallback"),
    ("parallelism", "parallelism"),
    ("rate", "rate"),
    ("body", "body"),
    ("body_base64", "bodyBase64"),
)
_HEADER_ANSWERS = (
    ("headers", "header"),
    ("callback_headers", "callbackHeader"),
    ("failure_callback_headers", "failureCallbackHeader"),
)

# What a schedule's creation reads from its request headers: header -> field.
_SCHEDULE_HEADERS = {
    "upstash-cron": "cron",
    "upstash-schedule-id": "id",
    "upstash-method": "method",
    "upstash-retry-delay": "retry_delay",
    "upstash-callback": "callback",
    "upstash-failure-callback": "failure_callback",
    "upstash-queue-name": "queue",
    "upstash-label": "label",
    "upstash-redact-fields": "redact",
    "upstash-flow-control-key": "flow_control_key",
}
_SCHEDULE_SECONDS = {"upstash-delay": "delay", "upstash-timeout": "timeout"}
# Header prefixes of forwarded headers, longest first: prefix -> field.
_FORWARDED = (
    ("upstash-failure-callback-", "failure_callback_headers"),
    ("upstash-callback-", "callback_headers"),
    ("upstash-forward-", "headers"),
)


def _seconds(value: str, header: str) -> int:
    """A QStash duration (``10s``, ``2m``, ``1h``, ``3d5h12m``, or seconds) in whole seconds."""
    text = value.strip()
    if re.fullmatch(r"0+[smhd]?", text):
        return 0  # no delay: a duration sluice's grammar keeps positive
    return math.ceil(parse_duration(text, header))


def _integer(value: str, header: str) -> int:
    if not value.strip().isdigit():
        raise ValidationError(f"{header} must be a whole number, got {value!r}", field=header)
    return int(value)


def flow_control_value(value: str, header: str = "Upstash-Flow-Control-Value") -> dict[str, int]:
    """``parallelism=N, rate=N, period=1m`` as the SDKs write it."""
    settings: dict[str, int] = {}
    for item in value.split(","):
        name, equals, text = item.strip().partition("=")
        if not equals or name not in ("parallelism", "rate", "period"):
            raise ValidationError(
                f"{header}: expected parallelism=N, rate=N or period=D, got {item.strip()!r}", field=header
            )
        settings[name] = _seconds(text, header) if name == "period" else _integer(text, header)
    return settings


def schedule_request(request: Request, destination: str) -> dict[str, Any]:
    """A schedule's fields from QStash's create request: its ``Upstash-*`` headers and body.

    Headers sluice does not keep (the SDKs' telemetry, ``Upstash-Redact-Fields``
    aside) are ignored, as any HTTP server ignores headers it does not use.
    """
    fields: dict[str, Any] = {"destination": destination}
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        value = raw_value.decode("latin-1")
        if lower in _SCHEDULE_HEADERS:
            fields[_SCHEDULE_HEADERS[lower]] = value
        elif lower in _SCHEDULE_SECONDS:
            fields[_SCHEDULE_SECONDS[lower]] = _seconds(value, name)
        elif lower == "upstash-retries":
            fields["retries"] = _integer(value, name)
        elif lower == "upstash-flow-control-value":
            fields.update(flow_control_value(value, name))
        elif lower == "content-type":
            fields.setdefault("headers", {})["Content-Type"] = value
        else:
            for prefix, field in _FORWARDED:
                if lower.startswith(prefix) and len(lower) > len(prefix):
                    fields.setdefault(field, {})[name[len(prefix):]] = value
                    break
    if "cron" not in fields:
        raise ValidationError("Upstash-Cron header is required", field="cron")
    fields.setdefault("id", f"scd_{uuid.uuid4().hex}")
    if request.body:
        try:
            fields["body"] = request.body.decode("utf-8")
        except UnicodeDecodeError:
            fields["body_base64"] = base64.b64encode(request.body).decode("ascii")
    return fields


def flow_control_json(key: str, view: FlowControlView | None) -> dict[str, Any]:
    """A flow-control key as QStash answers it. sluice keeps no messages, so
    nothing waits and nothing is counted: the counts are 0, the maxima the pins."""
    pinned_parallelism = view is not None and view.parallelism is not None
    pinned_rate = view is not None and view.rate is not None
    return {
        "flowControlKey": key,
        "waitListSize": 0,
        "parallelismMax": view.parallelism if pinned_parallelism else 0,
        "parallelismCount": 0,
        "rateMax": view.rate if pinned_rate else 0,
        "rateCount": 0,
        "ratePeriod": view.period if view is not None and view.period else 0,
        "ratePeriodStart": 0,
        "isPaused": view is not None and view.paused,
        "isPinnedParallelism": pinned_parallelism,
        "isPinnedRate": pinned_rate,
    }


def actor(request: Request) -> str:
    """Who made a QStash change: the peer, as the admin API's log lines name it."""
    return str(request.peer)


def add_qstash_routes(
    router: Router,
    *,
    current: Current,
    mutations: Mutations,
    file_time: FileTime,
    clock: Callable[[], float] = time.time,
) -> None:
    """QStash's queue, schedule and flow-control routes under /v2."""
    add_queue_routes(router, current=current, mutations=mutations, file_time=file_time)
    add_schedule_routes(router, current=current, mutations=mutations, file_time=file_time, clock=clock)
    add_flow_control_routes(router, current=current, mutations=mutations, actor=actor)


def add_queue_routes(router: Router, *, current: Current, mutations: Mutations, file_time: FileTime) -> None:
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


def add_schedule_routes(
    router: Router, *, current: Current, mutations: Mutations, file_time: FileTime, clock: Callable[[], float]
) -> None:
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

    async def create_schedule(request: Request) -> Response:
        fields = schedule_request(request, request.params["destination"])
        made = await mutations.put_schedule(schedule_from(fields, mode="runtime"), actor(request))
        return Response.json({"scheduleId": made.id})

    async def delete_schedule(request: Request) -> Response:
        await mutations.delete_made("schedule", request.params["id"], actor(request))
        return Response()

    # The DESIGN names POST; the official SDKs send PATCH. Both are served.
    for method in ("POST", "PATCH"):
        router.add(method, "/v2/schedules/{id}/pause", pause_schedule, change=True, style="qstash")
        router.add(method, "/v2/schedules/{id}/resume", resume_schedule, change=True, style="qstash")
    router.add("GET", "/v2/schedules/{id}", get_schedule, style="qstash")
    router.add("DELETE", "/v2/schedules/{id}", delete_schedule, change=True, style="qstash")
    router.add("GET", "/v2/schedules", list_schedules, style="qstash")
    # after the pause routes: a destination is a whole URL, slashes and all
    router.add("POST", "/v2/schedules/{destination*}", create_schedule, change=True, style="qstash")


def add_flow_control_routes(
    router: Router, *, current: Current, mutations: Mutations, actor: Callable[[Request], str]
) -> None:
    """QStash's flow-control keys: pause, resume, pin, unpin; ``check?flow_control=`` answers them."""

    def key_of(request: Request) -> str:
        return check_flow_control_key(request.params["key"])

    async def get(request: Request) -> Response:
        key = key_of(request)
        return Response.json(flow_control_json(key, current.snapshot.flow_controls.get(key)))

    async def list_keys(request: Request) -> Response:
        views = current.snapshot.flow_controls
        return Response.json([flow_control_json(k, views[k]) for k in sorted(views)])

    async def pause(request: Request) -> Response:
        await mutations.pause("flow_control", key_of(request), actor(request))
        return Response()

    async def resume(request: Request) -> Response:
        await mutations.resume("flow_control", key_of(request), actor(request))
        return Response()

    async def pin(request: Request) -> Response:
        pins = {}
        for name in ("parallelism", "rate", "period"):
            value = request.arg(name)
            if value is not None:
                pins[name] = _seconds(value, name) if name == "period" else _integer(value, name)
        await mutations.pin(key_of(request), actor(request), **pins)
        return Response()

    async def unpin(request: Request) -> Response:
        which = {}
        for name in ("parallelism", "rate"):
            value = (request.arg(name) or "false").lower()
            if value not in ("true", "false"):
                raise ValidationError(f"{name} must be true or false, got {value!r}", field=name)
            which[name] = value == "true"
        await mutations.unpin(key_of(request), actor(request), **which)
        return Response()

    async def reset_rate(request: Request) -> Response:
        key_of(request)  # sluice counts no deliveries: there is no rate state to reset
        return Response()

    async def global_parallelism(request: Request) -> Response:
        # sluice holds no global limit and counts no active requests
        return Response.json({"parallelismMax": 0, "parallelismCount": 0})

    router.add("GET", "/v2/flowControl", list_keys, style="qstash")
    router.add("GET", "/v2/flowControl/{key}", get, style="qstash")
    router.add("POST", "/v2/flowControl/{key}/pause", pause, change=True, style="qstash")
    router.add("POST", "/v2/flowControl/{key}/resume", resume, change=True, style="qstash")
    router.add("POST", "/v2/flowControl/{key}/pin", pin, change=True, style="qstash")
    router.add("POST", "/v2/flowControl/{key}/unpin", unpin, change=True, style="qstash")
    router.add("POST", "/v2/flowControl/{key}/resetRate", reset_rate, change=True, style="qstash")
    router.add("GET", "/v2/globalParallelism", global_parallelism, style="qstash")
