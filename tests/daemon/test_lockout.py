"""An attacker's idle or slow connections cannot lock out a legitimate client.

The real daemon on its real sockets: hundreds of connections that never
authenticate (TCP), never finish a request head (the admin socket) or sit
idle (the Postfix socket) are opened first, and the client that comes after
them is still answered.
"""

from __future__ import annotations

import hashlib
import re
import resource
import socket
import textwrap

import httpx
import pytest

from harness import Daemon

TOKEN = "sl_lockout-read-token"
HOLDS = """
[[suspension]]
domain = "blocked.example"
reason = "held for the lockout test"
"""


@pytest.fixture
def descriptors():
    """Make room for ``n`` connections in this process and in the daemon it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def room_for(n: int) -> None:
        need = 2 * n + 256  # both ends are here and in the daemon, which inherits the limit
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors this test needs")
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    yield room_for
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def held_open():
    """Sockets the test opens as the attacker, closed at the end."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def daemon_with(tmp_path, config: str) -> Daemon:
    """A Daemon with ``config`` put in place of the harness's (disabled) [postfix] section."""
    daemon = Daemon(tmp_path, files={"10-holds.toml": HOLDS})
    text = daemon.config.read_text()
    disabled = '[postfix]\nsocket = ""\n'
    assert disabled in text
    daemon.config.write_text(text.replace(disabled, textwrap.dedent(config)))
    return daemon


def metric(daemon: Daemon, name: str, listener: str) -> float:
    text = daemon.get("/metrics").text
    found = re.search(rf'^{name}\{{listener="{listener}"\}} (\S+)$', text, re.M)
    assert found, f"no {name} for {listener} in:\n{text}"
    return float(found.group(1))


def test_idle_unauthenticated_tcp_connections_do_not_lock_out_a_token_holder(
    tmp_path, descriptors, held_open
):
    descriptors(300)
    port = free_port()
    daemon = daemon_with(
        tmp_path,
        f"""
        [postfix]
        socket = ""
        [http]
        listen = "127.0.0.1:{port}"
        tokens_file = "tokens.toml"
        """,
    )
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    (tmp_path / "tokens.toml").write_text(f'[[token]]\nname = "grafana"\nsha256 = "{digest}"\nrole = "read"\n')
    try:
        daemon.start()
        # 300 connections that send nothing, more than the listener's 256
        held_open.extend(socket.create_connection(("127.0.0.1", port)) for _ in range(300))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(3):
                answer = client.get(
                    "/api/check/v1", params={"queue": "blocked.example"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["deliver"] is False
        assert metric(daemon, "sluice_connections_evicted_total", "http") >= 300 - 256
    finally:
        daemon.close()


def test_slowloris_on_the_admin_socket_does_not_lock_out_a_local_admin(tmp_path, descriptors, held_open):
    descriptors(300)
    daemon = Daemon(tmp_path, files={"10-holds.toml": HOLDS})
    try:
        daemon.start()
        for _ in range(300):  # heads begun and never finished
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(daemon.admin))
            sock.sendall(b"GET /api/status/v1 HTTP/1.1\r\nHost: sluice\r\nX-Slow: ")
            held_open.append(sock)
        for sock in held_open:
            try:
                sock.send(b"a")  # one more byte each, as slowloris trickles
            except OSError:
                pass  # the daemon has already closed it
        with daemon.client() as client:
            answer = client.get("/api/check/v1", params={"queue": "blocked.example"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["deliver"] is False
            created = client.post(
                "/api/admin/suspend/v1", json={"domain": "example.net", "reason": "incident", "duration": "1h"}
            )
            assert created.status_code == 200, created.text
        assert metric(daemon, "sluice_connections_evicted_total", "admin") >= 300 - 256
    finally:
        daemon.close()


POLICY_REQUEST = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=user@blocked.example\n\n"


def test_idle_postfix_connections_do_not_lock_out_smtpd(tmp_path, descriptors, held_open):
    descriptors(1100)
    daemon = daemon_with(tmp_path, '[postfix]\nsocket = "run/policy.sock"\n')
    path = str(tmp_path / "run" / "policy.sock")
    try:
        daemon.start()
        for _ in range(1100):  # more than the 1,024 the policy socket serves
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            held_open.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as smtpd:
            smtpd.connect(path)  # blocking: with a timeout, a full backlog is EAGAIN for unix sockets
            smtpd.settimeout(10)
            smtpd.sendall(POLICY_REQUEST)
            answer = b""
            while not answer.endswith(b"\n\n"):
                data = smtpd.recv(4096)
                assert data, f"closed after {answer!r}"
                answer += data
        assert answer == b"action=DEFER_IF_PERMIT 4.7.1 held for the lockout test\n\n"
        assert metric(daemon, "sluice_connections_evicted_total", "postfix") >= 1100 - 1024
    finally:
        daemon.close()


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def test_the_daemon_raises_its_open_files_limit_to_what_its_caps_need(tmp_path):
    """With the usual soft limit of 1,024 the Postfix socket alone could fill it and stop every accept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} leaves nothing to raise to")
    daemon = daemon_with(tmp_path, '[postfix]\nsocket = "run/policy.sock"\n')
    try:
        daemon.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
        assert _open_files_limit(daemon.proc.pid) == (hard, hard)
        assert "open_files_limit_low" not in daemon.log_lines()
    finally:
        daemon.close()


def test_an_open_files_limit_too_low_for_the_caps_is_logged(tmp_path):
    daemon = daemon_with(tmp_path, '[postfix]\nsocket = "run/policy.sock"\n')
    try:
        daemon.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)))
        assert daemon.get("/api/status/v1").status_code == 200
        line = next(line for line in daemon.log_lines().splitlines() if "open_files_limit_low" in line)
        assert '"limit":1024' in line and '"needed":1536' in line
    finally:
        daemon.close()
