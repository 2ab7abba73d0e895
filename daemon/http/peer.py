"""Who is on the other end of a connection: unix peer credentials or a TCP address.

A unix peer is judged by what its process held when it connected, from the
kernel: its uid and gid (SO_PEERCRED) and its supplementary groups
(SO_PEERGROUPS), never by what /etc/group says its user may hold. A process
that dropped the admin group (``setpriv --clear-groups``, a service's
``SupplementaryGroups=``) has dropped it.
"""

from __future__ import annotations

import functools
import os
import platform
import pwd
import socket
import struct
import sys
from dataclasses import dataclass

from ..serving import credentials

# Linux 4.13 and later; Python's socket module does not name it. Its number
# is 59 on every Linux architecture but parisc and sparc.
SO_PEERGROUPS: int | None = getattr(socket, "SO_PEERGROUPS", None)
if SO_PEERGROUPS is None and sys.platform == "linux" and not platform.machine().startswith(("parisc", "sparc")):
    SO_PEERGROUPS = 59
# The most socket.getsockopt reads: 256 groups. A peer with more is read from /proc.
_GROUPS_BUFFER = 1024


@dataclass(frozen=True)
class Peer:
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    groups: frozenset[int] = frozenset()  # unix: supplementary groups; empty if unknown
    address: str | None = None
    token: str | None = None  # the name of the token presented, never the token
    role: str | None = None  # TCP: "admin" or "read"; unix peers are judged by credentials

    @property
    def known(self) -> bool:
        """Known by its credentials (unix), or by a token or a trusted address (TCP)."""
        return self.uid is not None or self.role is not None

    @property
    def user(self) -> str | None:
        return None if self.uid is None else user_name(self.uid)

    def __str__(self) -> str:
        return self.label

    @functools.cached_property
    def label(self) -> str:
        """How log lines name the peer: made once, as every request's line names it."""
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
    """The credentials of the process at the other end of a unix socket; raises OSError."""
    pid, uid, gid = credentials(sock)
    return Peer(uid=uid, gid=gid, pid=pid, groups=peer_groups(sock, pid))


def peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    """The supplementary groups of the process at the other end of ``sock``; empty if unknown.

    SO_PEERGROUPS gives them as they were at connect(). Without it (an older
    kernel, over 256 groups) they are read from ``/proc/<pid>/status``: as
    they are now, and only where the daemon may see the peer's /proc entry
    (not under systemd's ``ProtectProc=invisible``).
    """
    if SO_PEERGROUPS is not None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_BUFFER)
        except OSError:
            pass
        else:
            return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
    return _proc_groups(pid)


def _proc_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Groups:"):
                    return frozenset(int(gid) for gid in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def may_change(peer: Peer, admin_gid: int | None) -> bool:
    """Whether a peer may make changes.

    On TCP, an admin token or a trusted host; on the unix socket, root, the
    daemon's own user, or a process holding the admin group (as its group or
    among its supplementary groups).
    """
    if peer.role is not None:
        return peer.role == "admin"
    if peer.uid is None:
        return False
    if peer.uid in (0, os.geteuid()):
        return True
    return admin_gid is not None and (peer.gid == admin_gid or admin_gid in peer.groups)
