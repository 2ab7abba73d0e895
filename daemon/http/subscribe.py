"""KumoMTA's TSA subscription, served: kumod follows sluice's holds as it follows its TSA daemon.

``GET /subscribe_event_v1`` is a websocket of ``SubscriptionItem`` text
frames, ``GET /subscribe_suspension_v1`` the older one of ``SuspensionEntry``
frames (``{"SchedQ": ...}``) that kumod falls back to, and
``GET /get_suspension_v1`` (TSA's own path ends ``/suspended.json``; both are
served) answers the same set as JSON. What is sent, and which holds are
left out, is the core's (``sluice.policy.subscription``). ``GET
/get_config_v1/shaping.toml`` is the shaping overlay a kumod configured
with ``subscribe`` loads beside its own shaping.toml, as it loads TSA's:
sluice's rules hold queues and set no shaping option, so it is the empty
overlay, in TSA's words (a 404 there would have kumod log an error at
every load).

A subscriber is subscribed to the events stream before its 101 is sent,
so nothing published after it connects is missed; then it is sent the
current set, then the frames each change of a suspension calls for. After
``heartbeat`` seconds without one it is pinged. A subscriber that falls
``Broadcaster``'s buffer behind (it stopped reading) is closed with 1013,
"try again later": kumod reconnects and is sent the whole set again. At
shutdown every subscriber is closed with 1001, "going away". A failure of
sluice's own while serving one is logged and closes it with 1011; the
daemon and the other subscribers go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import aclosing

import structlog
import trio

from sluice.policy.subscription import (
    EVENT_TAG,
    LEGACY_TAG,
    Follower,
    Suspensions,
    counts,
    current_set,
    frame,
    suspension_ids,
)

from ..current import Current
from ..events import Broadcaster, follow
from .message import Request, Response
from .routes import Router
from .websocket import WebSocket, handshake

log = structlog.get_logger("sluice.subscribe")

GOING_AWAY = 1001
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013


class Subscribers:
    """The websockets open now, for status."""

    def __init__(self) -> None:
        self.open = 0

    def status(self, current: Current, now: float) -> dict[str, int]:
        """Status's ``subscription``: subscribers, and the holds in force streamed and left out."""
        return {"subscribers": self.open, **counts(current.snapshot, now)}


def add_subscription_routes(
    router: Router,
    *,
    current: Current,
    events: Broadcaster,
    subscribers: Subscribers,
    clock: Callable[[], float] = time.time,
    heartbeat: float = 15.0,
) -> None:
    async def run(ws: WebSocket, tag: str, sub) -> None:
        follower = Follower()
        for item in follower.resync(current.snapshot, clock()):
            await ws.send(frame(item, tag))
        async with aclosing(follow(sub, heartbeat)) as changes:
            async for event in changes:
                if event is None:
                    if not await ws.ping():
                        return
                    continue
                ids = suspension_ids(event)
                if ids is None:
                    items = follower.resync(current.snapshot, clock())
                elif ids:
                    items = follower.follow(current.snapshot, ids, clock())
                else:
                    continue
                for item in items:
                    await ws.send(frame(item, tag))
        if sub.overflowed:
            await ws.close(TRY_AGAIN_LATER, "fell behind; reconnect to be sent the whole set")
        else:
            await ws.close(GOING_AWAY, "sluiced is shutting down")

    def subscribe(tag: str):
        async def route(request: Request) -> Response:
            ws = handshake(request)

            async def serve(stream: trio.abc.Stream, trailing: bytes) -> None:
                # subscribed before the 101: nothing published once the client knows it is in is missed
                sub = events.subscribe()
                subscribers.open += 1
                socket = WebSocket(stream, ws)
                try:
                    await socket.accept(trailing, request.request_id)
                    log.info("subscriber_joined", path=request.path, peer=str(request.peer))
                    await socket.run(lambda socket: run(socket, tag, sub))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                except Exception:  # noqa: BLE001 - a bug here must not end the daemon with it
                    log.exception("subscriber_failed", path=request.path, peer=str(request.peer))
                    with trio.move_on_after(1):
                        try:
                            await socket.close(INTERNAL_ERROR, "internal error; see the daemon's log")
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                finally:
                    subscribers.open -= 1
                    events.unsubscribe(sub)
                    log.info(
                        "subscriber_left",
                        path=request.path,
                        peer=str(request.peer),
                        overflowed=sub.overflowed,
                    )

            return Response(status=101, upgrade=serve)

        return route

    async def get_suspensions(request: Request) -> Response:
        return Response.json(Suspensions(ready_q=[], sched_q=current_set(current.snapshot, clock())))

    async def get_shaping(request: Request) -> Response:
        return Response(body=EMPTY_SHAPING, content_type="text/plain; charset=utf-8")

    router.add("GET", "/subscribe_event_v1", subscribe(EVENT_TAG))
    router.add("GET", "/subscribe_suspension_v1", subscribe(LEGACY_TAG))
    router.add("GET", "/get_suspension_v1", get_suspensions)
    router.add("GET", "/get_suspension_v1/suspended.json", get_suspensions)
    router.add("GET", "/get_config_v1/shaping.toml", get_shaping)


# TSA's export_config_override_toml for no entries: comments around an empty document
EMPTY_SHAPING = (
    b"# Generated by sluice: its automation holds queues and sets no shaping options\n"
    b"# Number of entries: 0\n"
)
