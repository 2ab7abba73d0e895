"""Who a TCP request is: a trusted host, or the holder of a token from the tokens file.

Unix-socket peers are known by their credentials; TCP peers are not, so
every TCP request is authenticated here before it is routed further. The
token arrives as ``Authorization: Bearer <token>`` or, for QStash clients,
``?qstash_token=``; it is hashed and compared in constant time, and never
stored or logged: only the token's name is, as ``created_by``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path

from sluice.policy.errors import FileProblem, PolicyLoadError
from sluice.policy.tokens import Tokens, parse_tokens

from .peer import Peer
from .message import HttpError, Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> list[Network]:
    """CIDRs (or single addresses) for ``trusted_hosts``; raises ValueError naming a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"trusted_hosts: {value!r} is not an address or CIDR") from None
    return networks


class TcpAuth:
    def __init__(self, trusted: list[Network], tokens: Callable[[], Tokens]) -> None:
        self.trusted = trusted
        self.tokens = tokens

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted)

    def __call__(self, request: Request) -> Peer:
        address = request.peer.address or ""
        presented = None
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            presented = value.strip()
        elif request.arg("qstash_token"):
            presented = request.arg("qstash_token")
        if presented is not None:
            token = self.tokens().find(presented)
            if token is None:
                raise HttpError(401, "UNAUTHORIZED", "unknown token")
            return Peer(address=address, token=token.name, role=token.role)
        if self.is_trusted(address):
            return Peer(address=address, role="admin")
        raise HttpError(
            401, "UNAUTHORIZED", "a token is required: Authorization: Bearer <token>"
        )


class TokenFile:
    """The tokens file, reloaded with the policy and refused like a broken policy file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.current = Tokens()

    def read(self) -> Tokens:
        """Parse the file (blocking); raises PolicyLoadError with every problem."""
        if self.path is None:
            return Tokens()
        name = str(self.path)
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise PolicyLoadError([FileProblem(name, None, "", f"cannot read tokens file: {exc.strerror}")]) from None
        tokens, problems = parse_tokens(text, name)
        if problems:
            raise PolicyLoadError(problems)
        return tokens
