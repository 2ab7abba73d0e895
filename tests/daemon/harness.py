"""The real sluiced process, started on a temporary directory, for integration tests.

Readiness is never waited for by sleeping: the test owns a datagram
NOTIFY_SOCKET, as systemd would, and waits for the daemon's READY=1 (and,
after an edit, for the READY=1 that ends the reload).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0


def unavailable(reason: str) -> None:
    """A real part a test needs is missing: skip here, fail under CI (env CI set)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it")
    pytest.skip(reason)


def write_atomic(path: Path, text: str) -> Path:
    """Replace ``path`` in one step, so a watcher never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def policy_request(address: str | Path | tuple[str, int], request: str) -> bytes:
    """One Postfix policy request over a fresh connection (a unix socket path, or
    (host, port)); the answer as received, up to its empty line."""
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(address if isinstance(address, tuple) else str(address))
        sock.sendall(request.encode())
        answer = b""
        while not answer.endswith(b"\n\n"):
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return answer


class Notifications:
    """A datagram socket that receives sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []

    def drain(self) -> None:
        """Drop the messages waiting (a stopped or killed process's)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(65536)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def next(self, timeout: float = TIMEOUT) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(65536).decode()
        self.seen.append(message)
        return message

    def wait_for(self, field: str, timeout: float = TIMEOUT) -> str:
        """The next message holding the line ``field`` (earlier ones are kept in seen)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {field!r} notification; seen: {self.seen}")
            message = self.next(remaining)
            if field in message.split("\n"):
                return message

    def close(self) -> None:
        self.sock.close()


class Daemon:
    def __init__(self, tmp_path: Path, config_extra: str = "", files: dict[str, str] | None = None) -> None:
        self.dir = tmp_path
        self.policy = tmp_path / "policy.d"
        self.policy.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.admin = tmp_path / "run" / "admin.sock"
        self.config = tmp_path / "sluiced.toml"
        self.log = tmp_path / "sluiced.log"
        self.config.write_text(
            textwrap.dedent(
                """
                policy_dir = "policy.d"
                state_dir = "state"
                [admin]
                socket = "run/admin.sock"
                [postfix]
                socket = ""
                [reload]
                debounce_ms = 20
                [log]
                format = "json"
                level = "debug"
                """
            )
            + config_extra
        )
        for name, text in (files or {}).items():
            self.write(name, text)
        self.proc: subprocess.Popen | None = None
        self.notify: Notifications | None = None

    def write(self, name: str, text: str) -> Path:
        """Write a policy file whole (temporary file + rename), as editors save."""
        return write_atomic(self.policy / name, textwrap.dedent(text).lstrip("\n"))

    def start(self, env: dict[str, str] | None = None, wait: bool = True, **popen) -> Daemon:
        if self.notify is None:
            self.notify = Notifications(self.dir / "notify.sock")
        # a READY=1 the previous process sent and nobody read must not pass for this one's
        self.notify.drain()
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
        environ["NOTIFY_SOCKET"] = str(self.notify.path)
        environ.update(env or {})
        self.logfile = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.daemon.main", "--config", str(self.config)],
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=ROOT,
            **popen,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                return self.notify.wait_for("READY=1", timeout=0.2)
            except (TimeoutError, socket.timeout):
                if self.proc.poll() is not None:
                    break
        raise AssertionError(f"sluiced did not become ready:\n{self.log.read_text()}")

    def client(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.admin)), base_url="http://sluice", timeout=TIMEOUT
        )

    def get(self, path: str, **kw) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kw)

    def post(self, path: str, json=None, **kw) -> httpx.Response:
        with self.client() as c:
            return c.post(path, json=json, **kw)

    def status(self) -> dict:
        response = self.get("/api/status/v1")
        assert response.status_code == 200, response.text
        return response.json()

    def generation(self) -> int:
        return self.status()["generation"]

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int | None = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        """Send ``signum`` (None: send nothing) and return the exit status."""
        if self.proc is None:
            return 0
        if signum is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self.logfile.close()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.notify is not None:
            self.notify.close()

    def log_lines(self) -> str:
        return self.log.read_text()
