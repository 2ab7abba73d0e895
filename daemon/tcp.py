"""TCP listening addresses: parse ``ADDRESS:PORT``, bind, and TLS for the HTTP listener."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_listen(listen: str) -> tuple[IPAddress, int]:
    """``"127.0.0.1:8025"`` or ``"[::1]:8025"`` -> (address, port); ValueError naming the fault."""
    host, colon, port_text = listen.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{listen!r} is not ADDRESS:PORT, such as 127.0.0.1:8025")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host), int(port_text)
    except ValueError:
        raise ValueError(f"{listen!r}: {host!r} is not an IP address") from None


def bind_tcp(address: IPAddress, port: int) -> socket.socket:
    """A listening TCP socket; ValueError if the address cannot be bound."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((str(address), port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    return sock


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or newer); ValueError naming a bad file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context
