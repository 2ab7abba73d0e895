"""The HTTP side of accepting: who a new connection is, TLS, and refusing one too many.

``unix_service`` and ``tcp_service`` make the ``Service`` that
``trio.serve_listeners`` hands each accepted stream of the admin socket and
of the TCP listener: the peer is found (unix credentials, or the TCP
address, which a token may later name), TLS is set up where configured, and
the connection is served by ``serve_connection`` in its slot. A connection
for which no slot can be made (``serving.Slots``) is answered 503 and closed.
"""

from __future__ import annotations

import ssl

import structlog
import trio

from ..serving import Drain, Service, Slot, Slots
from .connection import Dispatch, Limits, linger, raw_response, serve_connection
from .message import error_body, new_request_id
from .peer import Peer, unix_peer

log = structlog.get_logger("sluice.http")


def unix_service(dispatch: Dispatch, limits: Limits, slots: Slots) -> Service:
    """The admin socket's connections: the peer known by its credentials."""
    drain = Drain()

    async def handle(stream: trio.SocketStream, slot: Slot) -> None:
        try:
            peer = unix_peer(stream.socket)
        except OSError:
            peer = Peer()
        await serve_connection(stream, dispatch, peer, limits, drain, slot)

    return Service(handle, refuse, slots, drain)


def tcp_service(dispatch: Dispatch, limits: Limits, slots: Slots, tls: ssl.SSLContext | None) -> Service:
    """The TCP listener's connections: the peer known by its address, TLS if ``tls``."""
    drain = Drain()

    async def handle(stream: trio.SocketStream, slot: Slot) -> None:
        address = slot.peer
        if address is None:
            return  # gone before it could be served
        served: trio.abc.Stream = stream
        if tls is not None:
            # the handshake is part of the first request's time
            served = await _handshake(stream, tls, slot.opened + limits.first_request_timeout, address)
            if served is None:
                return
        await serve_connection(served, dispatch, Peer(address=address), limits, drain, slot)

    return Service(handle, refuse, slots, drain)


async def _handshake(
    stream: trio.abc.Stream, tls: ssl.SSLContext, deadline: float, address: str
) -> trio.SSLStream | None:
    """``stream`` under TLS, or None (the stream closed) if the handshake fails or is not done by ``deadline``."""
    secure = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
    with trio.move_on_at(deadline):
        try:
            await secure.do_handshake()
        except trio.BrokenResourceError:
            log.info("tls_handshake_failed", peer=address)
        else:
            return secure
    await trio.aclose_forcefully(secure)
    return None


async def refuse(stream: trio.abc.Stream) -> None:
    """No slot for this connection: 503 with the error envelope, then close."""
    request_id = new_request_id()
    body = error_body("TOO_MANY_CONNECTIONS", "connection limit reached; try again", request_id)
    with trio.move_on_after(1):
        try:
            await stream.send_all(raw_response(503, body, request_id))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await linger(stream)
    await trio.aclose_forcefully(stream)
