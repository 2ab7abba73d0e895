"""systemd integration by the plain protocols: sd_notify, the watchdog, LISTEN_FDS.

sd_notify is one datagram per message to ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``). Without the variable every call
is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket
import time

SD_LISTEN_FDS_START = 3


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            # non-blocking: when the receiver's queue is full (10 datagrams by
            # default on Linux) the message is dropped, not the event loop stopped
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        """Send ``lines`` as one message; failures are ignored (systemd may be gone,
        or not reading now)."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if the watchdog is meant for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def listen_fds() -> dict[str, list[socket.socket]]:
    """Sockets passed by socket activation, by name (``LISTEN_FDNAMES``).

    Unnamed sockets are filed under ``"unknown"``. The variables are removed
    so that children do not inherit them.
    """
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    names = os.environ.get("LISTEN_FDNAMES", "")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not count or (pid and pid != str(os.getpid())):
        return {}
    found: dict[str, list[socket.socket]] = {}
    labels = names.split(":") if names else []
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise OSError(f"LISTEN_FDS: fd {fd} is not a usable socket ({exc.strerror})") from None
        label = labels[i] if i < len(labels) and labels[i] else "unknown"
        found.setdefault(label, []).append(sock)
    return found
