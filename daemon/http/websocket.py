"""A server-side websocket on a trio stream: wsproto makes the frames, this module moves the bytes.

How this works
--------------
The upgrade request is read by h11 (connection.py) like any other and
routed. Its route checks it with ``handshake``: wsproto validates the
headers h11 parsed (``initiate_upgrade_connection``, wsproto's way in for
a server that speaks HTTP/1.1 itself) and refuses a bad one as ``HttpError``
(426 without ``Upgrade: websocket``, wsproto's 400 or 426 for the rest).
The route answers with a ``Response`` whose ``upgrade`` takes the connection
over: from there h11 is done with it, wsproto writes the 101 and every
frame, and is first fed what h11 had read past the request
(``h11.Connection.trailing_data``).

``WebSocket.run(produce)`` runs two tasks on the stream:
    reading    answers a ping with a pong and a close with a close, and
               notes when the peer was last heard from
    producing  the caller's coroutine, which sends text frames
A close from the peer, or its connection ending, cancels the producer.
Writes are serialised by a lock. A write not done in ``send_timeout`` (a
peer that stopped reading) drops the connection at once, as does a peer
not heard from in ``ping_timeout`` when ``ping`` is called. ``close`` sends
a close frame and waits, at most ``close_timeout``, for the peer's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Ping, TextMessage
from wsproto.utilities import RemoteProtocolError

from .message import HttpError, Request

RECEIVE_SIZE = 65536


def handshake(request: Request) -> WSConnection:
    """A wsproto server connection for the upgrade ``request``.

    Raises HttpError: 426 UPGRADE_REQUIRED for a request that asks no
    websocket (a plain GET, a HEAD), 400 or 426 BAD_WEBSOCKET_HANDSHAKE for
    one wsproto refuses, with the headers it says to send.
    """
    if request.method != "GET" or "websocket" not in request.headers.get("upgrade", "").lower():
        error = HttpError(
            426,
            "UPGRADE_REQUIRED",
            f"{request.path} is a websocket: connect with GET and Upgrade: websocket",
        )
        error.headers = [("Upgrade", "websocket")]
        raise error
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(request.raw_headers, request.target)
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        status = getattr(hint, "status_code", 400)
        error = HttpError(status, "BAD_WEBSOCKET_HANDSHAKE", f"websocket handshake: {exc}")
        error.headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in getattr(hint, "headers", ())
        ]
        raise error from None
    except UnicodeError:  # a Host header that is no host name
        raise HttpError(400, "BAD_WEBSOCKET_HANDSHAKE", "websocket handshake: the Host header is not a host name") from None
    return ws


class WebSocket:
    """One accepted websocket: text frames out, control frames answered."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        *,
        send_timeout: float = 10.0,
        ping_timeout: float = 45.0,
        close_timeout: float = 2.0,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.send_timeout = send_timeout
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.heard = trio.current_time()  # when the peer last sent anything
        self.peer_close: CloseConnection | None = None
        self._lock = trio.Lock()
        self._closed = trio.Event()  # the close handshake is over, or the peer went
        self._scope: trio.CancelScope | None = None

    async def accept(self, trailing: bytes, request_id: str) -> None:
        """Send the 101, then take in what the client sent after its request."""
        headers = [(b"X-Request-Id", request_id.encode("ascii"))]
        await self._write(self.ws.send(AcceptConnection(extra_headers=headers)))
        if trailing:
            self.ws.receive_data(trailing)

    async def run(self, produce: Callable[[WebSocket], Awaitable[None]]) -> None:
        """Run ``produce`` while answering the peer; returns when either is done.

        Never raises for anything the peer does.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._read)
                await produce(self)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went, or stopped reading

    async def send(self, text: str) -> None:
        """Send one text frame; trio.BrokenResourceError if the peer cannot take it in time."""
        await self._write(self.ws.send(TextMessage(data=text)))

    async def ping(self) -> bool:
        """Ping the peer; False (the connection closed) if it has not been heard from in ``ping_timeout``."""
        if trio.current_time() - self.heard > self.ping_timeout:
            await self.close(1011, "no answer to pings")
            return False
        await self._write(self.ws.send(Ping()))
        return True

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame and wait, briefly, for the peer's."""
        if self.ws.state is ConnectionState.OPEN:
            await self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
            with trio.move_on_after(self.close_timeout):
                await self._closed.wait()

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            with trio.move_on_after(self.send_timeout) as stuck:
                await self.stream.send_all(data)
        if stuck.cancelled_caught:
            raise trio.BrokenResourceError("the websocket peer stopped reading")

    async def _read(self) -> None:
        try:
            await self._answer()  # what came with the request
            while not self._closed.is_set():
                data = await self.stream.receive_some(RECEIVE_SIZE)
                self.heard = trio.current_time()
                self.ws.receive_data(data or None)  # None: the peer's connection ended
                await self._answer()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._closed.set()
        # the close handshake is over, or the peer went: nothing more to produce
        if self._scope is not None:
            self._scope.cancel()

    async def _answer(self) -> None:
        """Answer what the peer sent: a pong for a ping, a close for a close. Messages are ignored."""
        for event in self.ws.events():
            if isinstance(event, Ping):
                if self.ws.state is ConnectionState.OPEN:
                    await self._write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.peer_close = event
                if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    # the peer closed first (or broke the protocol): close back
                    await self._write(self.ws.send(event.response()))
                self._closed.set()
