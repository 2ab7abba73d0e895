"""Who is on the other end of a connection: unix peer credentials or a TCP address."""

from __future__ import annotations

import functools
import os
import pwd
import socket
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    address: str | None = None
    token: str | None = None  # the name of the token presented, never the token
    role: str | None = None  # TCP: "admin" or "read"; unix peers are judged by credentials

    @property
    def user(self) -> str | None:
        return None if self.uid is None else user_name(self.uid)

    def __str__(self) -> str:
        if self.uid is not None:
            return f"uid={self.uid}({self.user}) pid={self.pid}"
        if self.token is not None:
            return f"token={self.token} address={self.address}"
        if self.role is not None:
            return f"trusted={self.address}"
        return f"address={self.address}"


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """The name of ``uid`` (its number if it has none); asked for every request, so cached."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def unix_peer(sock: socket.socket) -> Peer:
    """The credentials of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(uid=uid, gid=gid, pid=pid)


def may_change(peer: Peer, admin_gid: int | None) -> bool:
    """Whether a peer may make changes.

    On TCP, an admin token or a trusted host; on the unix socket, root, the
    daemon's own user, or a member of the admin group.
    """
    if peer.role is not None:
        return peer.role == "admin"
    if peer.uid is None:
        return False
    if peer.uid in (0, os.geteuid()):
        return True
    if admin_gid is None:
        return False
    if peer.gid == admin_gid:
        return True
    try:
        name = pwd.getpwuid(peer.uid).pw_name
        return admin_gid in os.getgrouplist(name, peer.gid if peer.gid is not None else -1)
    except KeyError:
        return False
