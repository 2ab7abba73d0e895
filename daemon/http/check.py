"""The delivery side over HTTP: decisions and the events stream.

``GET /api/check/v1?queue=`` (or ``schedule=``, ``endpoint=``, ``flow_control=``) answers one
decision; ``POST /api/check/v1`` answers up to 10,000 queue names in order,
an invalid name getting its own error item rather than failing the batch.
``GET /api/events/v1`` streams one JSON object per line for every change.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import msgspec

from sluice.policy.errors import InvalidQueueName, NotFound, ValidationError
from sluice.policy.fields import check_endpoint_id, check_flow_control_key
from sluice.policy.times import rfc3339

from ..current import Current
from ..events import Broadcaster, follow
from ..metrics import Metrics
from .routes import Router
from .message import HttpError, Request, Response

MAX_BATCH = 10_000
_KINDS = frozenset(("queue", "schedule", "endpoint", "flow_control"))
_encoder = msgspec.json.Encoder()


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    queues: list[str]


class BatchError(msgspec.Struct):
    code: str
    message: str


class BatchErrorItem(msgspec.Struct):
    queue: str
    error: BatchError


_batch_decoder = msgspec.json.Decoder(BatchRequest)


def add_check_routes(
    router: Router,
    *,
    current: Current,
    events: Broadcaster,
    metrics: Metrics,
    clock: Callable[[], float] = time.time,
    heartbeat: float = 15.0,
) -> None:
    async def check(request: Request) -> Response:
        given = _KINDS.intersection(request.query)
        if len(given) != 1:
            raise ValidationError("give exactly one of ?queue=, ?schedule=, ?endpoint= or ?flow_control=")
        (kind,) = given
        value = request.arg(kind)
        snapshot = current.snapshot
        if kind == "queue":
            decision = snapshot.decide(value, clock())
            metrics.decided("http", decision.deliver)
        elif kind == "flow_control":
            decision = snapshot.decide_flow_control(check_flow_control_key(value))
        elif kind == "schedule":
            decision = snapshot.decide_schedule(value)
            if decision is None:
                raise NotFound(f"schedule {value!r} not found", code="SCHEDULE_NOT_FOUND")
        else:
            check_endpoint_id(value)
            decision = snapshot.decide_endpoint(value)
            if decision is None:
                raise NotFound(f"endpoint {value!r} not found", code="ENDPOINT_NOT_FOUND")
        return Response(body=_encoder.encode(decision) + b"\n")

    async def batch(request: Request) -> Response:
        request.json()  # content type and JSON well-formedness, with their own errors
        try:
            body = _batch_decoder.decode(request.body)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"expected {{\"queues\": [names...]}}: {exc}") from None
        if len(body.queues) > MAX_BATCH:
            raise HttpError(
                413, "BATCH_TOO_LARGE", f"{len(body.queues)} names; at most {MAX_BATCH} a batch"
            )
        snapshot = current.snapshot
        now = clock()
        results: list[object] = []
        held = 0
        for name in body.queues:
            try:
                decision = snapshot.decide(name, now)
            except InvalidQueueName as exc:
                results.append(BatchErrorItem(name, BatchError(exc.code, exc.message)))
                continue
            held += not decision.deliver
            results.append(decision)
        decided = len(results) - sum(isinstance(r, BatchErrorItem) for r in results)
        metrics.decided("batch", False, held)
        metrics.decided("batch", True, decided - held)
        return Response(
            body=_encoder.encode({"results": results, "generation": snapshot.generation}) + b"\n"
        )

    async def stream_events(request: Request) -> Response:
        sub = events.subscribe()

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield _encoder.encode(
                    {"event": "hello", "generation": current.snapshot.generation, "at": rfc3339(clock())}
                ) + b"\n"
                async with aclosing(follow(sub, heartbeat)) as messages:
                    async for message in messages:
                        if message is None:
                            # a blank line keeps proxies and dead-peer detection honest
                            yield b"\n"
                            continue
                        yield _encoder.encode(message) + b"\n"
                if sub.closed:
                    yield _encoder.encode(
                        {"event": "shutdown", "generation": current.snapshot.generation, "at": rfc3339(clock())}
                    ) + b"\n"
                if sub.overflowed:
                    yield _encoder.encode(
                        {
                            "event": "overflow",
                            "generation": current.snapshot.generation,
                            "at": rfc3339(clock()),
                            "message": "consumer fell behind; reconnect and re-read the state",
                        }
                    ) + b"\n"
            finally:
                events.unsubscribe(sub)

        return Response(content_type="application/x-ndjson", stream=lines())

    router.add("GET", "/api/check/v1", check)
    router.add("POST", "/api/check/v1", batch)
    router.add("GET", "/api/events/v1", stream_events)
