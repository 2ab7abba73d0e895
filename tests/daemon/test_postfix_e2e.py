"""The real sluiced on its policy sockets, and a real Postfix smtpd asking it at RCPT time;
and a real Postfix's own log, followed by sluicectl follow-postfix-log, making the holds."""

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
from aiosmtpd.controller import Controller
from dovecot_auth import DovecotAuth

from harness import Daemon, policy_request, unavailable
from test_fleet import Events
from test_follow_postfix_log import Follower

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


# -- automation from Postfix's own log ----------------------------------------

RATE_LIMIT = """
[[automation]]
domain = "ratelimited.example"
regex = "4\\\\.7\\\\.28"
action = "SuspendTenant"
duration = "1 hour"
"""
GMAIL_421 = "421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited mail"


class RateLimiting:
    """An aiosmtpd handler that answers every RCPT as Gmail does when it rate-limits a sender."""

    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.recipients.append(address)
        return GMAIL_421


def rcpt_as(port: int, login: str, recipient: str) -> tuple[int, str]:
    """The answer to RCPT TO:<recipient> in a session logged in (SASL PLAIN) as ``login``."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.localdomain")
        smtp.login(login, "secret")
        code, message = smtp.mail("news@sender.example")
        assert code == 250, message
        code, message = smtp.rcpt(recipient)
        return code, message.decode(errors="replace")


def test_a_remotes_421_in_postfixs_log_defers_that_tenants_next_message_at_rcpt(tmp_path, daemons, reachable_dir):
    """Postfix relays acme's message to a server that answers 421 4.7.28; sluicectl
    follow-postfix-log reads the deferral in Postfix's log, the rule holds acme at that
    domain, and Postfix's smtpd, asking sluice's policy socket, defers acme's next
    message at RCPT while beta's is accepted."""
    require_postfix()
    daemon = policy_daemon(tmp_path, reachable_dir / "policy.sock")
    daemon.write("50-auto.toml", RATE_LIMIT)
    daemons.append(daemon)
    daemon.start()
    remote = RateLimiting()
    relay = Controller(remote, hostname="127.0.0.1", port=free_port())
    relay.start()
    follower = None
    instance = throwaway_postfix.Instance(
        reachable_dir / "postfix",
        f"unix:{reachable_dir / 'policy.sock'}",
        f"127.0.0.1:{free_port()}",
        settings={
            "default_transport": f"smtp:[127.0.0.1]:{relay.port}",
            "relay_transport": f"smtp:[127.0.0.1]:{relay.port}",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": str(reachable_dir / "auth.sock"),
        },
    )
    try:
        with DovecotAuth(reachable_dir / "auth.sock"):
            instance.start()
            port = int(instance.listen.rsplit(":", 1)[1])
            events = Events(daemon)
            follower = Follower(daemon.admin, instance.maillog, tmp_path / "follow.json")
            follower.until("follow_started")

            # acme's message is accepted, relayed, and deferred by the remote
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.login("acme", "secret")
                assert smtp.sendmail("news@sender.example", ["someone@ratelimited.example"], "Subject: hi\n\nhello\n") == {}
            added = events.until("suspension_added", tenant="acme", timeout=60)
            assert added["domain"] == "ratelimited.example" and added["by"] == "automation 50-auto.toml:1"
            assert remote.recipients == ["someone@ratelimited.example"]
            assert follower.until("follow_posted")["holds"] == 1

            # acme's next message for that domain is deferred at RCPT, by sluice's hold ...
            code, message = rcpt_as(port, "acme", "other@ratelimited.example")
            assert code == 450, message
            assert "automation rule: 4\\.7\\.28 tenant=acme domain=ratelimited.example" in message
            # ... while another tenant's is accepted, and acme's mail for other domains too
            assert rcpt_as(port, "beta", "other@ratelimited.example")[0] == 250
            assert rcpt_as(port, "acme", "someone@elsewhere.example")[0] == 250
            events.close()
        log = instance.log()
        assert "sasl_username=acme" in log and "status=deferred (host 127.0.0.1[127.0.0.1] said: 421 4.7.28" in log
        assert "problem talking to server" not in log
    finally:
        if follower is not None:
            follower.close()
        instance.stop()
        relay.stop()
