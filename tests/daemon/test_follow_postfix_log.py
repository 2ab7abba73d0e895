"""``sluicectl follow-postfix-log`` against the real sluiced: a mail log followed, its outcomes held.

The follower runs as operators run it, a process of its own; what it does
is waited for on its own log lines (JSON on stdout: ``follow_started``,
``follow_posted``, ``follow_retrying`` ...) and on the daemon's events
stream, never by sleeping. Lines carry times made from now, in the RFC 3339
form rsyslog writes and in syslog's traditional form.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness import ROOT, TIMEOUT, Daemon
from test_fleet import Events

RULES = """
[[automation]]
domain = "gmail.example"
regex = "4\\\\.7\\\\.28"
action = "SuspendTenant"
duration = "3 hours"
"""

_ids = iter(range(0x10000, 0x100000))


def stamp(traditional: bool = False) -> str:
    if traditional:
        return time.strftime("%b %d %H:%M:%S")
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def message(tenant: str | None, recipient: str = "someone@gmail.example", traditional: bool = False) -> list[str]:
    """One message's lines as Postfix logs them: submitted (with its SASL login), deferred by
    the remote with Gmail's 421 4.7.28, and the queue manager's note."""
    qid = f"4{next(_ids):X}A"
    when = stamp(traditional)
    login = f", sasl_method=PLAIN, sasl_username={tenant}" if tenant else ""
    return [
        f"{when} mx postfix/smtpd[101]: {qid}: client=localhost[127.0.0.1]{login}",
        f"{when} mx postfix/cleanup[102]: {qid}: message-id=<{qid}@mx.example>",
        f"{when} mx postfix/qmgr[103]: {qid}: from=<news@sender.example>, size=327, nrcpt=1 (queue active)",
        *deferral(qid, recipient, when),
    ]


def deferral(qid: str, recipient: str = "someone@gmail.example", when: str | None = None) -> list[str]:
    return [
        f"{when or stamp()} mx postfix/smtp[104]: {qid}: to=<{recipient}>, relay=mx[192.0.2.1]:25, delay=0.1, "
        "delays=0.02/0.02/0.03/0.03, dsn=4.7.28, status=deferred (host mx[192.0.2.1] said: 421-4.7.28 "
        "[192.0.2.9] Our system has detected an unusual rate of 421 4.7.28 unsolicited mail. - gsmtp "
        "(in reply to RCPT TO command))"
    ]


def append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


class Follower:
    """``sluicectl follow-postfix-log`` as a process; ``until`` waits for one of its log lines."""

    def __init__(self, socket: Path, log: Path, state: Path, *options: str) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.daemon.ctl", "--socket", str(socket), "follow-postfix-log",
             str(log), "--state", str(state), "--poll", "0.05", *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"event": "text", "text": line})
        self.lines.put(None)

    def until(self, event: str, timeout: float = TIMEOUT, **fields) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {event} {fields} in {timeout}s; seen {self.seen}") from None
            if line is None:
                raise AssertionError(f"the follower ended before {event}; seen {self.seen}")
            self.seen.append(line)
            if line["event"] == event and all(line.get(k) == v for k, v in fields.items()):
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def d(tmp_path):
    daemon = Daemon(tmp_path, files={"50-auto.toml": RULES})
    daemon.start()
    yield daemon
    daemon.close()


@pytest.fixture
def followers():
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.close()


def follower(followers: list[Follower], d: Daemon, log: Path, *options: str) -> Follower:
    f = Follower(d.admin, log, d.dir / "follow.json", *options)
    followers.append(f)
    return f


def decision(d: Daemon, queue_name: str) -> dict:
    response = d.get("/api/check/v1", params={"queue": queue_name})
    assert response.status_code == 200, response.text
    return response.json()


def received(d: Daemon) -> int:
    """How many records the daemon's automation has been posted."""
    metrics = d.get("/metrics").text
    match = re.search(r'^sluice_automation_records_total\{kind="received"\} ([0-9.]+)$', metrics, re.M)
    return int(float(match.group(1))) if match else 0


def held_tenants(d: Daemon) -> set[str]:
    return {s["tenant"] for s in d.get("/api/admin/suspend/v1").json()}


def test_a_deferral_in_the_log_holds_that_tenant_at_that_domain(d, tmp_path, followers):
    log = tmp_path / "mail.log"
    append(log, message("old"))  # before the follower starts, with no state: not read (tail -F)
    events = Events(d)
    f = follower(followers, d, log)
    f.until("follow_started", resumed=False)
    append(log, message("acme", traditional=True))
    added = events.until("suspension_added", tenant="acme")
    assert added["domain"] == "gmail.example" and added["by"] == "automation 50-auto.toml:1"
    posted = f.until("follow_posted")
    assert posted["records"] == 1 and posted["matched"] == 1 and posted["holds"] == 1
    (hold,) = decision(d, "acme@gmail.example")["holds"]
    assert 'response: "421 4.7.28 [192.0.2.9] Our system has detected an unusual rate of unsolicited mail. - gsmtp"' in hold["reason"]
    assert decision(d, "beta@gmail.example")["deliver"] is True
    assert held_tenants(d) == {"acme"}

    # a message with no SASL login is posted for its domain alone: this tenant rule holds nothing
    append(log, message(None))
    assert f.until("follow_posted")["holds"] == 0
    assert f.stop() == 0
    events.close()
    assert received(d) == 2


def test_rotation_finishes_the_old_file_then_reads_the_new_one_from_its_start(d, tmp_path, followers):
    log = tmp_path / "mail.log"
    log.touch()
    events = Events(d)
    f = follower(followers, d, log)
    f.until("follow_started")
    first = message("t-first")
    append(log, first[:-1])  # submitted; its deferral comes after the rotation, in the new file
    qid = first[0].split(": ")[1]
    append(log, message("t1"))
    events.until("suspension_added", tenant="t1")
    log.rename(tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", message("t2"))  # written by Postfix before it reopened its log
    append(log, deferral(qid) + message("t3"))  # the new file
    for tenant in ("t2", "t-first", "t3"):
        events.until("suspension_added", tenant=tenant)
    f.until("follow_rotated")
    assert held_tenants(d) == {"t1", "t2", "t-first", "t3"}
    assert f.stop() == 0
    events.close()


def test_truncation_reads_the_file_again_from_its_start(d, tmp_path, followers):
    log = tmp_path / "mail.log"
    log.touch()
    events = Events(d)
    f = follower(followers, d, log)
    f.until("follow_started")
    append(log, message("long-before") * 3)
    events.until("suspension_added", tenant="long-before")
    log.write_text("")  # copytruncate
    append(log, message("after"))
    events.until("suspension_added", tenant="after")
    f.until("follow_truncated")
    assert f.stop() == 0
    events.close()


def test_a_restart_resumes_where_it_stopped_and_posts_nothing_twice(d, tmp_path, followers):
    log = tmp_path / "mail.log"
    log.touch()
    f = follower(followers, d, log)
    f.until("follow_started", offset=0, resumed=False)
    late = message("late")
    append(log, message("a") + message("b") + late[:-1])  # late's deferral comes after the restart
    posted = 0
    while posted < 2:
        posted += f.until("follow_posted")["records"]
    assert f.stop() == 0
    state = json.loads((d.dir / "follow.json").read_text())
    assert state["position"]["offset"] == log.stat().st_size
    assert state["position"]["inode"] == log.stat().st_ino
    assert list(state["tenants"].values()) == ["a", "b", "late"]

    append(log, late[-1:] + message("c"))  # while it is stopped
    f = follower(followers, d, log)
    started = f.until("follow_started", resumed=True)
    assert started["offset"] == state["position"]["offset"]
    posted = 0
    while posted < 2:
        posted += f.until("follow_posted")["records"]
    assert received(d) == 4  # a, b, then late and c: none twice
    assert held_tenants(d) == {"a", "b", "late", "c"}  # late's tenant was kept across the restart
    assert f.stop() == 0

    # rotated while stopped: the new file is read from its start
    log.rename(tmp_path / "mail.log.1")
    append(log, message("d"))
    f = follower(followers, d, log)
    assert f.until("follow_started", resumed=False)["offset"] == 0
    assert f.until("follow_posted")["records"] == 1
    assert received(d) == 5
    assert f.stop() == 0


def test_while_the_daemon_is_away_it_waits_and_loses_nothing(tmp_path, followers):
    d = Daemon(tmp_path, files={"50-auto.toml": RULES})
    try:
        log = tmp_path / "mail.log"
        log.touch()
        f = follower(followers, d, log)  # the daemon is not started yet
        f.until("follow_started")
        append(log, message("early"))
        assert "cannot reach sluiced" in f.until("follow_retrying")["error"]
        f.until("follow_retrying")  # and again: it keeps the batch and waits
        d.start()
        assert f.until("follow_posted")["records"] == 1
        assert held_tenants(d) == {"early"}

        d.stop()
        append(log, message("middle"))
        f.until("follow_retrying")
        d.start()
        assert f.until("follow_posted")["records"] == 1
        assert held_tenants(d) == {"early", "middle"}
        assert received(d) == 1  # this daemon process was posted only "middle": "early" went to the first
        assert f.stop() == 0
        state = json.loads((d.dir / "follow.json").read_text())
        assert state["position"]["offset"] == log.stat().st_size
    finally:
        d.close()


def test_standard_input_is_read_to_its_end(d, tmp_path):
    lines = message("piped") + ["not a syslog line"] + message("piped2")
    done = subprocess.run(
        [sys.executable, "-m", "sluice.daemon.ctl", "--socket", str(d.admin), "follow-postfix-log", "-"],
        input="".join(line + "\n" for line in lines), capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    logged = [json.loads(line) for line in done.stdout.splitlines()]
    assert sum(line["records"] for line in logged if line["event"] == "follow_posted") == 2
    (unreadable,) = [line for line in logged if line["event"] == "follow_unreadable_line"]
    assert unreadable["line"] == "not a syslog line"
    (stopped,) = [line for line in logged if line["event"] == "follow_stopped"]
    assert stopped | {"lines": 9, "outcomes": 2, "unreadable": 1, "posted": 2, "skipped": 0} == stopped
    assert held_tenants(d) == {"piped", "piped2"}


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A server on a unix socket that refuses the first batch as bad (400) and takes the rest."""

    bodies: list[bytes] = []

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.bodies.append(body)
        if len(self.bodies) == 1:
            status, answer = 400, {"error": {"code": "INVALID_REQUEST", "message": "[0].queue: no good"}}
        else:
            status, answer = 200, {"records": 1, "failures": 1, "matched": 0, "holds": []}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_batch_the_daemon_refuses_as_bad_is_logged_and_skipped(tmp_path, followers):
    path = tmp_path / "refusing.sock"
    server = socketserver.UnixStreamServer(str(path), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        log = tmp_path / "mail.log"
        log.touch()
        f = Follower(path, log, tmp_path / "follow.json", "--batch", "1")
        followers.append(f)
        f.until("follow_started")
        append(log, message("refused") + message("taken"))
        refused = f.until("follow_batch_refused")
        assert refused["status"] == 400 and refused["error"] == "[0].queue: no good"
        assert f.until("follow_posted")["records"] == 1
        assert [json.loads(b)[0]["queue"] for b in _Refusing.bodies] == [
            "refused@gmail.example", "taken@gmail.example"
        ]
        assert f.stop() == 0
        state = json.loads((tmp_path / "follow.json").read_text())
        assert state["position"]["offset"] == log.stat().st_size  # past both: nothing is retried
    finally:
        server.shutdown()
        server.server_close()
