"""The subscription websocket in process, on a fake clock: what a misbehaving peer gets.

The peer is a wsproto client on an in-memory stream; the server is
serve_connection with the subscription routes, as the daemon wires them.
A lockstep stream is a peer whose reads the test controls: the server's
write waits until the peer reads.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from sluice.daemon.current import Current
from sluice.daemon.events import Broadcaster
from sluice.daemon.http.connection import serve_connection
from sluice.daemon.http.peer import Peer
from sluice.daemon.http.routes import Router
from sluice.daemon.http.subscribe import Subscribers, add_subscription_routes
from sluice.policy.files import PolicySet
from sluice.policy.model import Suspension
from sluice.policy.snapshot import Snapshot
from sluice.policy.subscription import Follower

HOLD = Suspension(
    id="00000000-0000-4000-8000-000000000001", tenant="acme", domain="gmail.com", reason="r",
    expires=datetime(2099, 1, 1, tzinfo=timezone.utc), source="10-a.toml:1",
)
HEARTBEAT = 15.0


class Peer_:
    """The client end: wsproto over a stream, reading events as they come."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list = []

    async def open(self, path: str = "/subscribe_event_v1", then: bytes = b"") -> None:
        await self.stream.send_all(self.ws.send(Request(host="sluice", target=path)) + then)
        event = await self.event()
        assert isinstance(event, AcceptConnection), event

    async def event(self):
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def frame(self) -> dict:
        event = await self.event()
        assert isinstance(event, TextMessage), event
        return json.loads(event.data)


@pytest.fixture
def server(nursery):
    """(start, events, subscribers): start(stream_pair) serves one connection with the routes."""
    events = Broadcaster(buffer=2)
    subscribers = Subscribers()
    current = Current(Snapshot.build(PolicySet(suspensions=(HOLD,))))
    router = Router(may_change=lambda peer: True)
    add_subscription_routes(router, current=current, events=events, subscribers=subscribers,
                            heartbeat=HEARTBEAT)
    done = trio.Event()

    async def serve(stream):
        try:
            await serve_connection(stream, router.dispatch, Peer(uid=0, pid=1))
        finally:
            done.set()

    def start(pair=trio.testing.memory_stream_pair) -> Peer_:
        ours, theirs = pair()
        nursery.start_soon(serve, theirs)
        return Peer_(ours)

    start.done = done
    return start, events, subscribers


async def test_frames_sent_with_the_upgrade_request_are_answered(server, autojump_clock):
    """What h11 read past the request is handed to wsproto: a ping sent at once gets its pong."""
    start, _, _ = server
    peer = start()
    early = Connection(ConnectionType.CLIENT).send(Ping(b"early"))  # a client's frame, masked
    await peer.open(then=early)
    assert (await peer.frame())["SchedQSuspension"]["rule_hash"] == HOLD.id
    assert await peer.event() == Pong(b"early")


async def test_a_peer_that_answers_no_ping_is_closed_with_1011(server, autojump_clock):
    start, _, subscribers = server
    peer = start()
    await peer.open()
    opened = trio.current_time()
    await peer.frame()
    pings = 0
    while isinstance(event := await peer.event(), Ping):
        pings += 1  # and never answered
    assert isinstance(event, CloseConnection) and event.code == 1011, event
    assert pings >= 3 and trio.current_time() - opened >= 45
    await peer.stream.send_all(peer.ws.send(event.response()))
    await start.done.wait()
    assert subscribers.open == 0


async def test_a_peer_that_answers_pings_stays(server, autojump_clock):
    start, _, _ = server
    peer = start()
    await peer.open()
    await peer.frame()
    for _ in range(10):
        ping = await peer.event()
        assert isinstance(ping, Ping)
        await peer.stream.send_all(peer.ws.send(ping.response()))
    assert not start.done.is_set()


async def test_a_peer_that_falls_behind_is_closed_with_try_again_later(server, autojump_clock):
    """Over the events buffer while the peer is not reading: 1013, and kumod's reconnect resends the set."""
    start, events, subscribers = server
    peer = start(trio.testing.lockstep_stream_pair)
    await peer.open()
    # the server is writing the current set, which the peer does not read yet
    await trio.sleep(1)
    for n in range(3):
        events.publish("suspension_added", n, id=f"id-{n}")
    assert (await peer.frame())["SchedQSuspension"]["rule_hash"] == HOLD.id
    event = await peer.event()
    assert isinstance(event, CloseConnection) and event.code == 1013, event
    await peer.stream.send_all(peer.ws.send(event.response()))
    await start.done.wait()
    assert len(events) == 0 and subscribers.open == 0


async def test_a_peer_that_never_reads_is_dropped(server, autojump_clock):
    """No unbounded buffer: a write that waits past the send timeout ends the connection."""
    start, events, subscribers = server
    peer = start(trio.testing.lockstep_stream_pair)
    await peer.open()
    began = trio.current_time()
    await start.done.wait()
    assert 10 <= trio.current_time() - began < 20
    assert len(events) == 0 and subscribers.open == 0


async def test_shutdown_sends_going_away(server, autojump_clock):
    start, events, _ = server
    peer = start()
    await peer.open()
    await peer.frame()
    events.close()
    event = await peer.event()
    assert isinstance(event, CloseConnection) and event.code == 1001, event
    await peer.stream.send_all(peer.ws.send(event.response()))
    await start.done.wait()


async def test_a_bad_handshake_is_refused_with_what_is_wrong(server, autojump_clock):
    start, _, _ = server
    peer = start()
    await peer.stream.send_all(
        b"GET /subscribe_event_v1 HTTP/1.1\r\nHost: sluice\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5a2V5\r\n\r\n"
    )
    data = await peer.stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13" in data
    assert b"BAD_WEBSOCKET_HANDSHAKE" in data


async def test_a_failure_of_sluices_own_closes_that_subscriber_with_1011_only(server, autojump_clock, monkeypatch):
    start, events, subscribers = server
    peer = start()
    await peer.open()
    await peer.frame()

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Follower, "follow", broken)
    events.publish("suspension_added", 2, id=HOLD.id)
    event = await peer.event()
    assert isinstance(event, CloseConnection) and event.code == 1011, event
    await start.done.wait()  # the connection ended; nothing was raised into the server
    assert subscribers.open == 0 and len(events) == 0
