"""The accept side of HTTP: TLS handshakes that fail."""

from __future__ import annotations

import ssl

import trio
import trio.testing
import trustme

from sluice.daemon.http.listener import _handshake


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_a_failed_tls_handshake_closes_the_connection_at_once():
    """Not left open (in CLOSE-WAIT once the client gives up) until the garbage collector finds it."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to the TLS port
    assert await _handshake(server, server_context(), trio.current_time() + 5, "127.0.0.1") is None
    with trio.fail_after(1):
        while await client.receive_some(65536):  # a TLS alert at most, then the end
            pass
