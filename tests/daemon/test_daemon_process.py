"""The real sluiced: hot reload, broken edits, signals, systemd notify, socket activation."""

import json
import os
import signal
import socket
import time

import pytest

from harness import TIMEOUT, Daemon

GMAIL = """
[[suspension]]
domain = "gmail.com"
reason = "rate limited"
"""


def reload_after(daemon, action):
    """Run ``action`` and wait for the daemon's reload to finish; returns the READY message."""
    before = daemon.generation()
    action()
    while True:
        message = daemon.notify.wait_for("READY=1")
        status = daemon.status()
        if status["generation"] != before or not status["last_reload"]["ok"]:
            return message


def holds(daemon, queue):
    listed = daemon.get("/api/admin/suspend/v1").json()
    return {s["domain"] for s in listed} if queue is None else listed


def test_edits_take_effect_without_restart(daemon):
    daemon.write("10-a.toml", GMAIL)
    daemon.start()
    assert daemon.generation() == 1
    assert holds(daemon, None) == {"gmail.com"}

    # a rename-style save, as editors do: write a temporary file, rename it over
    def rename_save():
        tmp = daemon.policy / ".10-a.toml.swp"
        tmp.write_text(GMAIL.replace("gmail.com", "yahoo.com"))
        os.rename(tmp, daemon.policy / "10-a.toml")

    reload_after(daemon, rename_save)
    assert holds(daemon, None) == {"yahoo.com"}
    assert daemon.generation() == 2

    # an in-place write
    def in_place():
        with open(daemon.policy / "10-a.toml", "r+") as f:
            text = f.read().replace("yahoo.com", "aol.com")
            f.seek(0)
            f.write(text)
            f.truncate()

    reload_after(daemon, in_place)
    assert holds(daemon, None) == {"aol.com"}

    # a new file
    reload_after(daemon, lambda: daemon.write("20-b.toml", GMAIL))
    assert holds(daemon, None) == {"aol.com", "gmail.com"}
    assert daemon.status()["files"] == ["10-a.toml", "20-b.toml"]

    # a deleted file
    reload_after(daemon, lambda: (daemon.policy / "10-a.toml").unlink())
    assert holds(daemon, None) == {"gmail.com"}
    assert daemon.generation() == 5
    assert '"event":"reload_applied"' in daemon.log_lines()


def test_broken_edit_keeps_the_old_policy_and_reports_it(daemon):
    daemon.write("10-a.toml", GMAIL)
    daemon.start()
    message = reload_after(
        daemon, lambda: daemon.write("10-a.toml", '[[suspension]]\ndomian = "x.com"\nreason = "r"\n')
    )
    status = daemon.status()
    assert status["generation"] == 1
    assert holds(daemon, None) == {"gmail.com"}
    last = status["last_reload"]
    assert last["ok"] is False
    assert last["errors"][0].startswith("10-a.toml:2: suspension[0].domian: unknown field")
    assert "STATUS=" in message and "last reload FAILED: 10-a.toml:2" in message
    assert '"event":"reload_failed"' in daemon.log_lines()

    reload_after(daemon, lambda: daemon.write("10-a.toml", GMAIL.replace("gmail", "yahoo")))
    status = daemon.status()
    assert status["last_reload"]["ok"] is True
    assert status["generation"] == 2
    assert holds(daemon, None) == {"yahoo.com"}


def test_deleting_and_recreating_the_policy_directory(daemon):
    daemon.write("10-a.toml", GMAIL)
    daemon.start()

    def remove_dir():
        (daemon.policy / "10-a.toml").unlink()
        daemon.policy.rmdir()

    reload_after(daemon, remove_dir)
    assert daemon.status()["last_reload"]["ok"] is False  # gone: the old policy stays
    assert holds(daemon, None) == {"gmail.com"}

    def recreate():
        daemon.policy.mkdir()
        daemon.write("10-a.toml", GMAIL.replace("gmail", "yahoo"))

    reload_after(daemon, recreate)
    while daemon.status()["files"] != ["10-a.toml"] or not daemon.status()["last_reload"]["ok"]:
        daemon.notify.wait_for("READY=1")
    assert holds(daemon, None) == {"yahoo.com"}


def test_sighup_and_api_reload(daemon):
    daemon.write("10-a.toml", GMAIL)
    daemon.start()
    daemon.send(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1")
    daemon.notify.wait_for("READY=1")
    assert '"trigger":"SIGHUP"' in daemon.log_lines()
    assert daemon.generation() == 1  # nothing changed: the generation stays
    response = daemon.post("/api/admin/reload/v1")
    assert response.status_code == 200
    assert response.json()["ok"] is True
    assert '"trigger":"api by uid=' in daemon.log_lines()


def test_api_reload_of_a_broken_policy_is_refused_with_the_errors(daemon):
    daemon.start()
    (daemon.policy / "bad.toml").write_text("[[queue]\n")
    response = daemon.post("/api/admin/reload/v1")
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "INVALID_POLICY"
    assert "bad.toml:1: TOML syntax error" in body["error"]["message"]


def test_sigterm_exits_0_and_removes_the_socket(daemon):
    daemon.start()
    assert daemon.admin.is_socket()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.admin.exists()
    assert "STOPPING=1" in daemon.notify.wait_for("STOPPING=1").split("\n")


def test_sigint_exits_0(daemon):
    daemon.start()
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.admin.exists()


def test_notify_sequence(tmp_path):
    d = Daemon(tmp_path)
    try:
        d.start(env={"WATCHDOG_USEC": "200000"}, wait=False)
        ready = d.notify.wait_for("READY=1")
        assert "STATUS=generation 1:" in ready
        # READY=1 came after the socket accepts: a request right now is served
        assert d.generation() == 1
        d.notify.wait_for("WATCHDOG=1")
        d.notify.wait_for("WATCHDOG=1")  # and again: from the loop, at half the interval
        d.write("10-a.toml", GMAIL)  # the watcher reloads: generation 2
        reloading = d.notify.wait_for("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
        after = d.notify.wait_for("READY=1")
        assert "STATUS=generation 2: 1 suspensions" in after
        d.send(signal.SIGHUP)
        d.notify.wait_for("RELOADING=1")
        assert "STATUS=generation 2:" in d.notify.wait_for("READY=1")
        d.send(signal.SIGTERM)
        d.notify.wait_for("STOPPING=1")
        assert d.stop(None) == 0
    finally:
        d.close()


def test_a_notify_socket_nobody_reads_does_not_stop_the_daemon(tmp_path):
    """Notifications the receiver does not take (its queue holds 10 datagrams)
    are dropped: the daemon goes on serving through reloads. It used to block
    its event loop in sd_notify after the fifth reload."""
    d = Daemon(tmp_path)
    try:
        d.start()
        with d.client() as client:
            for _ in range(30):  # RELOADING=1 and READY=1 each, never read
                assert client.post("/api/admin/reload/v1").status_code == 200
        assert d.generation() == 1
    finally:
        d.close()


def test_socket_activation_serves_passed_sockets(tmp_path):
    d = Daemon(tmp_path)
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        fd = listener.fileno()

        def pass_fd():
            os.dup2(fd, 3)
            os.environ["LISTEN_PID"] = str(os.getpid())

        d.start(
            env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "admin"},
            preexec_fn=pass_fd,
            pass_fds=sorted({fd, 3}),
        )
        d.admin = path  # talk to the socket we passed, not the configured one
        assert d.generation() == 1
        assert not (tmp_path / "run" / "admin.sock").exists()  # nothing bound itself
        assert d.stop() == 0
        assert path.exists()  # systemd's socket: not ours to remove
    finally:
        listener.close()
        d.close()


def test_invalid_policy_at_start_exits_78_with_the_errors_on_stderr(daemon):
    daemon.write("10-a.toml", '[[suspension]]\ndomain = "x.com"\n')
    daemon.start(wait=False)
    assert daemon.stop(None) == 78
    assert "10-a.toml:1: suspension[0].reason: is required" in daemon.log_lines()


def test_a_file_that_is_not_a_socket_is_never_replaced(daemon):
    daemon.admin.parent.mkdir(parents=True)
    daemon.admin.write_text("precious")
    daemon.start(wait=False)
    assert daemon.stop(None) == 78
    assert "exists and is not a socket" in daemon.log_lines()
    assert daemon.admin.read_text() == "precious"


def test_a_stale_socket_is_replaced(daemon):
    daemon.admin.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(daemon.admin))
    stale.close()  # the file stays, nobody listens
    daemon.start()
    assert daemon.generation() == 1


@pytest.mark.parametrize("mode", ["0600", "0660"])
def test_socket_mode(tmp_path, mode):
    d = Daemon(tmp_path, config_extra="")
    d.config.write_text(d.config.read_text().replace('socket = "run/admin.sock"', f'socket = "run/admin.sock"\nmode = "{mode}"'))
    try:
        d.start()
        assert oct(d.admin.stat().st_mode & 0o777) == oct(int(mode, 8))
    finally:
        d.close()


def test_status_reports_the_version_from_pyproject(daemon):
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    daemon.start()
    assert daemon.status()["version"] == pyproject["project"]["version"]


@pytest.mark.parametrize("layout", ["beside", "elsewhere"])
def test_a_symlinked_policy_directory_is_followed_when_flipped(daemon, layout):
    """The deploy pattern: policy.d is a symlink to a release, flipped with ``ln -sfn``."""
    import shutil
    import subprocess

    base = daemon.dir / ("releases" if layout == "beside" else "srv/releases")
    v1, v2 = base / "v1", base / "v2"
    v1.mkdir(parents=True)
    v2.mkdir()
    (v1 / "10-a.toml").write_text(GMAIL)
    (v2 / "10-a.toml").write_text(GMAIL.replace("gmail", "yahoo"))
    shutil.rmtree(daemon.policy)
    daemon.policy.symlink_to(v1)
    daemon.start()
    assert holds(daemon, None) == {"gmail.com"}

    reload_after(daemon, lambda: subprocess.run(["ln", "-sfn", str(v2), str(daemon.policy)], check=True))
    while holds(daemon, None) != {"yahoo.com"}:
        daemon.notify.wait_for("READY=1")

    # edits in the new release are followed, and the old one is no longer read
    reload_after(daemon, lambda: (v2 / "20-b.toml").write_text(GMAIL.replace("gmail", "aol")))
    while holds(daemon, None) != {"yahoo.com", "aol.com"}:
        daemon.notify.wait_for("READY=1")
    (v1 / "30-c.toml").write_text(GMAIL.replace("gmail", "hotmail"))
    reload_after(daemon, lambda: (v2 / "40-d.toml").write_text(GMAIL.replace("gmail", "gmx")))
    while "gmx.com" not in holds(daemon, None):
        daemon.notify.wait_for("READY=1")
    assert "hotmail.com" not in holds(daemon, None)


DEEP = "x = " + "[" * 5000 + "]" * 5000 + "\n"  # RecursionError in the TOML parser


def test_a_file_nested_too_deep_is_a_failed_reload_not_a_crash(daemon):
    """Reported in the API's answer, status, STATUS=, the log and the events stream; READY=1 follows."""
    daemon.write("10-a.toml", GMAIL)
    daemon.start()
    with daemon.client() as c, c.stream("GET", "/api/events/v1", timeout=TIMEOUT) as stream:
        lines = (json.loads(line) for line in stream.iter_lines() if line.strip())
        assert next(lines)["event"] == "hello"
        (daemon.policy / "20-deep.toml").write_text(DEEP)
        response = daemon.post("/api/admin/reload/v1")
        assert response.status_code == 422
        assert "20-deep.toml: nested too deeply to read" in response.json()["error"]["message"]
        failed = next(e for e in lines if e["event"] == "reload_failed")
        assert any("20-deep.toml: nested too deeply to read" in error for error in failed["errors"])
    status = daemon.status()
    assert status["last_reload"]["ok"] is False and holds(daemon, None) == {"gmail.com"}
    ready = daemon.notify.wait_for("READY=1")
    assert "STATUS=" in ready and "last reload FAILED: 20-deep.toml: nested too deeply" in ready
    assert '"event":"reload_failed"' in daemon.log_lines()


def test_a_file_nested_too_deep_at_start_exits_78_without_a_traceback(daemon):
    (daemon.policy / "20-deep.toml").write_text(DEEP)
    daemon.start(wait=False)
    assert daemon.stop(None) == 78
    log = daemon.log_lines()
    assert "20-deep.toml: nested too deeply to read" in log and "Traceback" not in log


def test_a_runtime_file_broken_while_running_is_shown_in_status_until_fixed(daemon):
    daemon.start()
    ident = daemon.post("/api/admin/suspend/v1", json={"domain": "x.example", "reason": "r"}).json()["id"]
    path = daemon.dir / "state" / "runtime" / f"suspension-{ident}.toml"
    good = path.read_text()
    path.write_text("garbage = [")

    def status_line(wanted):
        while True:
            message = daemon.notify.next()
            for line in message.split("\n"):
                if line.startswith("STATUS=") and wanted(line):
                    return line

    line = status_line(lambda l: "runtime file(s) invalid" in l)
    assert f"suspension-{ident}.toml" in line and "TOML syntax error" in line
    problems = daemon.status()["runtime_problems"]
    assert len(problems) == 1 and f"suspension-{ident}.toml" in problems[0]
    assert not daemon.get("/api/check/v1", params={"queue": "x.example"}).json()["deliver"]  # hold kept
    path.write_text(good)
    status_line(lambda l: "invalid" not in l)
    assert daemon.status()["runtime_problems"] == []


def test_a_million_key_file_dropped_in_fails_its_reload_while_the_daemon_serves(daemon):
    """Locating a million keys' lines is linear: the reload fails with the error,
    checks are answered meanwhile, the next valid edit applies, SIGTERM stops it."""
    daemon.write("10-a.toml", GMAIL)
    daemon.start()
    big = daemon.policy / "20-big.toml"
    tmp = daemon.policy / ".20-big.toml.tmp"
    tmp.write_text("[[suspension]]\ndomain = \"big.example\"\nreason = \"r\"\n"
                   + "".join(f"k{i} = {i}\n" for i in range(1_000_000)))
    os.replace(tmp, big)
    answered, give_up = 0, time.monotonic() + 120
    while time.monotonic() < give_up:
        assert daemon.get("/api/check/v1", params={"queue": "gmail.com"}).json()["deliver"] is False
        answered += 1
        last = daemon.status()["last_reload"]
        if not last["ok"]:
            break
    assert answered >= 1 and not last["ok"]
    assert any("20-big.toml" in e and "unknown field" in e for e in last["errors"])
    daemon.notify.wait_for("READY=1", timeout=60)
    big.unlink()
    daemon.write("30-c.toml", GMAIL.replace("gmail.com", "yahoo.com"))
    while holds(daemon, None) != {"gmail.com", "yahoo.com"}:
        daemon.notify.wait_for("READY=1", timeout=60)
    assert daemon.stop() == 0
