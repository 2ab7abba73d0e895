"""The HTTP side of accepting: who a new connection is, TLS, and refusing one too many.

``unix_service`` and ``tcp_service`` make the ``Service`` that
``trio.serve_listeners`` hands each accepted stream of the admin socket and
of the TCP listener: the peer is found (unix credentials, or the TCP
address, which a token may later name), TLS is set up where configured, and
the connection is served by ``serve_connection``. A connection over the
cap is answered 503 and closed.
"""

from __future__ import annotations

import ssl

import structlog
import trio

from ..serving import Drain, Service
from .connection import Dispatch, Limits, linger, raw_response, serve_connection
from .message import error_body, new_request_id
from .peer import Peer, unix_peer

log = structlog.get_logger("sluice.http")


def unix_service(dispatch: Dispatch, limits: Limits) -> Service:
    """The admin socket's connections: the peer known by its credentials."""
    drain = Drain()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            peer = unix_peer(stream.socket)
        except OSError:
            peer = Peer()
        await serve_connection(stream, dispatch, peer, limits, drain)

    return Service(handle, refuse, limits.max_connections, drain)


def tcp_service(dispatch: Dispatch, limits: Limits, tls: ssl.SSLContext | None) -> Service:
    """The TCP listener's connections: the peer known by its address, TLS if ``tls``."""
    drain = Drain()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            address = stream.socket.getpeername()[0]
        except OSError:
            return
        served: trio.abc.Stream = stream
        if tls is not None:
            served = await _handshake(stream, tls, limits.request_timeout, address)
            if served is None:
                return
        await serve_connection(served, dispatch, Peer(address=address), limits, drain)

    return Service(handle, refuse, limits.max_connections, drain)


async def _handshake(
    stream: trio.SocketStream, tls: ssl.SSLContext, timeout: float, address: str
) -> trio.SSLStream | None:
    """``stream`` under TLS, or None (the stream closed) if the handshake fails or takes too long."""
    secure = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
    with trio.move_on_after(timeout):
        try:
            await secure.do_handshake()
        except trio.BrokenResourceError:
            log.info("tls_handshake_failed", peer=address)
            return None
        return secure
    await trio.aclose_forcefully(secure)
    return None


async def refuse(stream: trio.abc.Stream) -> None:
    """Over the connection cap: 503 with the error envelope, then close."""
    request_id = new_request_id()
    body = error_body("TOO_MANY_CONNECTIONS", "connection limit reached; try again", request_id)
    with trio.move_on_after(1):
        try:
            await stream.send_all(raw_response(503, body, request_id))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await linger(stream)
    await trio.aclose_forcefully(stream)
