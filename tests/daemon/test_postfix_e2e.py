"""The real sluiced on its policy sockets, and a real Postfix smtpd asking it at RCPT time."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import stat
import tempfile
from pathlib import Path

import pytest
import throwaway_postfix

from harness import Daemon, policy_request, unavailable

HOLDS = """
[[suspension]]
domain = "blocked.example"
reason = "sluice test: blocked.example is on hold"
"""

REQUEST = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=\n"
    "recipient=user@{domain}\n\n"
)


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def policy_daemon(tmp_path: Path, socket_path: Path | str, listen: str = "") -> Daemon:
    """A Daemon whose config enables the Postfix socket (the harness disables it)."""
    daemon = Daemon(tmp_path, files={"10-holds.toml": HOLDS})
    text = daemon.config.read_text()
    disabled = '[postfix]\nsocket = ""\n'
    assert disabled in text
    daemon.config.write_text(
        text.replace(disabled, f'[postfix]\nsocket = "{socket_path}"\nlisten = "{listen}"\n')
    )
    return daemon


def ask(address, domain: str) -> bytes:
    """One policy request over a fresh connection; the answer without its empty line."""
    return policy_request(address, REQUEST.format(domain=domain)).rstrip(b"\n")


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()


def test_daemon_answers_on_its_policy_socket_and_loopback_tcp(tmp_path, daemons):
    port = free_port()
    daemon = policy_daemon(tmp_path, "run/policy.sock", f"127.0.0.1:{port}")
    daemons.append(daemon)
    daemon.start()
    path = tmp_path / "run" / "policy.sock"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666  # Postfix's smtpd must connect
    held = b"action=DEFER_IF_PERMIT 4.7.1 sluice test: blocked.example is on hold"
    for address in (str(path), ("127.0.0.1", port)):
        assert ask(address, "blocked.example") == held
        assert ask(address, "example.com") == b"action=DUNNO"
    metrics = daemon.get("/metrics").text
    # each of the two sockets answered one hold and one delivery
    assert 'sluice_decisions_total{outcome="hold",source="postfix"} 2.0' in metrics
    assert 'sluice_decisions_total{outcome="deliver",source="postfix"} 2.0' in metrics
    assert daemon.stop() == 0
    assert not path.exists()  # the daemon removes the socket it bound


def test_non_loopback_policy_listener_is_refused_at_start(tmp_path, daemons):
    daemon = policy_daemon(tmp_path, "run/policy.sock", "0.0.0.0:10040")
    daemons.append(daemon)
    daemon.start(wait=False)
    assert daemon.stop(signum=None) == 78
    log = daemon.log_lines()
    assert "postfix.listen: '0.0.0.0:10040' is not a loopback address" in log
    assert not (tmp_path / "run" / "admin.sock").exists()


# -- a real Postfix ---------------------------------------------------------


def require_postfix() -> None:
    """Skip without Postfix here; under CI (env CI set) its absence is a failure."""
    if problems := throwaway_postfix.missing():
        unavailable("real Postfix test cannot run: " + "; ".join(problems))


@pytest.fixture
def reachable_dir():
    """A directory Postfix's smtpd, running as user postfix, can reach.

    tmp_path lies under /tmp/pytest-of-root/, which is mode 0700: a socket
    there, even mode 0666, is out of reach of any other user because the
    directories above it cannot be searched. So the policy socket and the
    throw-away Postfix instance live in a fresh directory in /tmp made 0755.
    """
    path = Path(tempfile.mkdtemp(prefix="sluice-postfix-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def postfix(reachable_dir):
    """A throw-away Postfix whose smtpd asks the policy socket in ``reachable_dir``."""
    require_postfix()
    instance = throwaway_postfix.Instance(
        reachable_dir / "postfix", f"unix:{reachable_dir / 'policy.sock'}", f"127.0.0.1:{free_port()}"
    )
    try:
        yield instance
    finally:
        instance.stop()


def rcpt(port: int, recipient: str) -> tuple[int, str]:
    """The SMTP server's answer to RCPT TO:<recipient>, in a transaction of its own."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("probe.localdomain")
        code, message = smtp.mail("sender@sender.example")
        assert code == 250, message
        code, message = smtp.rcpt(recipient)
        return code, message.decode(errors="replace")


def test_real_postfix_defers_recipients_at_suspended_domains(tmp_path, daemons, reachable_dir, postfix):
    daemon = policy_daemon(tmp_path, reachable_dir / "policy.sock")
    daemons.append(daemon)
    daemon.start()
    postfix.start()
    port = int(postfix.listen.rsplit(":", 1)[1])

    # a file suspension: 4xx at RCPT, with its reason in the reply
    code, message = rcpt(port, "someone@blocked.example")
    assert code == 450, message
    assert message.startswith("4.7.1 ") and "sluice test: blocked.example is on hold" in message
    assert rcpt(port, "someone@open.example")[0] == 250

    # a runtime suspension takes effect at once, and so does its cancellation
    with daemon.client() as http:
        created = http.post(
            "/api/admin/suspend/v1",
            json={"domain": "open.example", "reason": "incident 42: held by the on-call", "duration": "1h"},
        )
        assert created.status_code == 200, created.text
        code, message = rcpt(port, "someone@open.example")
        assert code == 450 and "incident 42: held by the on-call" in message, message

        cancelled = http.request("DELETE", "/api/admin/suspend/v1", json={"id": created.json()["id"]})
        assert cancelled.status_code == 200, cancelled.text
    assert rcpt(port, "someone@open.example")[0] == 250
    assert rcpt(port, "someone@other.example")[0] == 250
    assert rcpt(port, "someone@blocked.example")[0] == 450

    log = postfix.log()
    assert "problem talking to server" not in log
    assert "Recipient address rejected: sluice test: blocked.example is on hold" in log
