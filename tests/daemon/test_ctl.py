"""sluicectl against the real sluiced: every command, its output, its exit codes.

sluicectl runs as a subprocess, as operators run it; the daemon is started by
the harness and waited for through NOTIFY_SOCKET, never by sleeping.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness import ROOT, TIMEOUT, Daemon

ENDPOINT = "ep_550e8400e29b41d4a716446655440000"
POLICY = f"""
[[suspension]]
domain = "gmail.com"
reason = "421 4.7.28 rate limited"

[[queue]]
name = "file-paused.example"
paused = true
reason = "warming up new IPs"

[[schedule]]
id = "weekly-digest"
cron = "0 9 * * MON"

[[endpoint]]
id = "{ENDPOINT}"
url = "https://hooks.example.com/events"
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLUICE_", "NOTIFY_", "LISTEN_")) and k not in ("EDITOR", "VISUAL")
    }
    env.update(extra)
    return env


def command(*args: str, socket_path: Path | None) -> list[str]:
    prefix = ["--socket", str(socket_path)] if socket_path is not None else []
    return [sys.executable, "-m", "sluice.daemon.ctl", *prefix, *args]


def run(*args: str, socket_path: Path | None, env: dict[str, str] | None = None, **kw):
    return subprocess.run(
        command(*args, socket_path=socket_path),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or clean_env(),
        timeout=TIMEOUT,
        **kw,
    )


@pytest.fixture
def d(tmp_path):
    daemon = Daemon(tmp_path, files={"10-a.toml": POLICY})
    daemon.start()
    yield daemon
    daemon.close()


def ctl(d: Daemon, *args: str, **kw):
    return run(*args, socket_path=d.admin, **kw)


def suspensions(d: Daemon) -> dict[str, dict]:
    return {s["id"]: s for s in d.get("/api/admin/suspend/v1").json()}


def wait_until(d: Daemon, predicate) -> None:
    """Wait, reload by reload (each ends with READY=1), until ``predicate()`` holds."""
    while not predicate():
        d.notify.wait_for("READY=1")


# -- suspensions -------------------------------------------------------------------


def test_suspend_with_duration_prints_the_id_and_the_daemon_holds_it(d):
    out = ctl(d, "suspend", "--domain", "Yahoo.COM", "--reason", "421 too fast", "--duration", "1h")
    assert out.returncode == 0, out.stderr
    ident = out.stdout.split()[1].rstrip(":")
    assert out.stdout == f"suspension {ident}: domain=Yahoo.COM, for 1h\n"
    s = suspensions(d)[ident]
    assert (s["domain"], s["reason"], s["source"]) == ("yahoo.com", "421 too fast", "runtime")
    expires = datetime.fromisoformat(s["expires"].replace("Z", "+00:00"))
    assert 3500 < (expires - datetime.now(timezone.utc)).total_seconds() <= 3600


def test_suspend_with_expires(d):
    out = ctl(d, "suspend", "--tenant", "acme", "--reason", "r", "--expires", "2099-01-01T00:00:00Z")
    assert out.returncode == 0, out.stderr
    ident = out.stdout.split()[1].rstrip(":")
    assert "tenant=acme, until 2099-01-01T00:00:00Z" in out.stdout
    assert suspensions(d)[ident]["expires"] == "2099-01-01T00:00:00Z"


def test_suspend_with_queue_twice_sends_queue_names(d):
    out = ctl(
        d, "suspend", "--queue", "a.example", "--queue", "news:acme@b.example", "--reason", "hold",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    ident = json.loads(out.stdout)["id"]
    assert suspensions(d)[ident]["queue_names"] == ["a.example", "news:acme@b.example"]


def test_suspend_same_criteria_again_updates_and_keeps_the_id(d):
    first = ctl(d, "--json", "suspend", "--domain", "x.example", "--reason", "one")
    second = ctl(d, "--json", "suspend", "--domain", "x.example", "--reason", "two")
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert suspensions(d)[json.loads(first.stdout)["id"]]["reason"] == "two"


def test_suspend_refused_by_the_daemon_exits_1_with_its_message(d):
    out = ctl(d, "suspend", "--domain", "x.example", "--queue", "a.example", "--reason", "r")
    assert out.returncode == 1
    assert out.stderr.startswith("sluicectl: INVALID_REQUEST: ")
    assert "cannot be combined" in out.stderr
    assert out.stdout == ""


def test_suspend_list_table(d):
    ctl(d, "suspend", "--everything", "--reason", "all of it", "--duration", "10m")
    ctl(d, "suspend", "--queue", "a.example", "--queue", "b.example", "--reason", "q")
    ctl(d, "suspend", "--campaign", "news", "--tenant", "acme", "--reason", "c")
    out = ctl(d, "suspend-list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "MATCHES", "REMAINING", "SOURCE", "REASON"]
    # columns are aligned: every row starts its MATCHES where the header does
    at = lines[0].index("MATCHES")
    assert all(line[at - 2 : at] == "  " and line[at] != " " for line in lines[1:])
    rows = {line.split()[0]: line for line in lines[1:]}
    by_id = suspensions(d)
    assert len(rows) == len(by_id) == 4
    for ident, s in by_id.items():
        row = rows[ident]
        if s["source"] != "runtime":
            assert "domain=gmail.com" in row and "10-a.toml:1" in row
            assert row.split()[2] == "-"  # no expiry
            assert row.endswith("421 4.7.28 rate limited")
        elif s["everything"]:
            assert " everything " in row and row.split()[2] in ("10m", "9m")
            assert row.endswith("all of it")
        elif s["queue_names"]:
            assert " queues=a.example,b.example " in row
        else:
            assert " campaign=news tenant=acme " in row


def test_suspend_list_json_is_the_apis(d):
    ctl(d, "suspend", "--domain", "x.example", "--reason", "r")
    out = ctl(d, "suspend-list", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    api = d.get("/api/admin/suspend/v1").json()
    drop = lambda items: [{k: v for k, v in s.items() if k != "duration"} for s in items]  # noqa: E731
    assert drop(listed) == drop(api)
    assert out.stdout.count("\n") == 1  # the body as the daemon sent it


def test_suspend_cancel(d):
    ident = json.loads(ctl(d, "--json", "suspend", "--domain", "x.example", "--reason", "r").stdout)["id"]
    out = ctl(d, "suspend-cancel", ident)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"suspension {ident}: cancelled\n"
    assert ident not in suspensions(d)


def test_suspend_cancel_unknown_exits_1_with_suspension_not_found(d):
    out = ctl(d, "suspend-cancel", "no-such-id")
    assert out.returncode == 1
    assert out.stderr == "sluicectl: SUSPENSION_NOT_FOUND: no active suspension with id 'no-such-id'\n"
    assert out.stdout == ""
    # with --json the daemon's error envelope is printed for scripts as well
    out = ctl(d, "suspend-cancel", "no-such-id", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"]["code"] == "SUSPENSION_NOT_FOUND"


def test_suspend_cancel_of_a_file_suspension_is_refused(d):
    (file_id,) = suspensions(d)
    out = ctl(d, "suspend-cancel", file_id)
    assert out.returncode == 1
    assert out.stderr.startswith("sluicectl: DEFINED_IN_FILE: ")
    assert "10-a.toml line 1" in out.stderr


# -- queues, schedules, endpoints ---------------------------------------------------


def test_pause_list_resume_queue(d):
    out = ctl(d, "pause-queue", "news:acme@Example.COM", "--reason", "customer asked")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "queue news:acme@example.com: paused\n"
    listed = ctl(d, "list-queues")
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "SINCE", "PARALLELISM", "SOURCE", "REASON"]
    assert lines[1].split()[0] == "file-paused.example" and "10-a.toml:5" in lines[1]
    assert lines[2].split()[0] == "news:acme@example.com" and lines[2].endswith("customer asked")
    assert [q["name"] for q in json.loads(ctl(d, "list-queues", "--json").stdout)] == [
        "file-paused.example",
        "news:acme@example.com",
    ]
    out = ctl(d, "resume-queue", "news:acme@example.com")
    assert (out.returncode, out.stdout) == (0, "queue news:acme@example.com: resumed\n")
    assert [q["name"] for q in d.get("/api/admin/queues").json()] == ["file-paused.example"]


def test_resume_of_a_queue_a_file_pauses_is_refused(d):
    out = ctl(d, "resume-queue", "file-paused.example")
    assert out.returncode == 1
    assert out.stderr.startswith("sluicectl: DEFINED_IN_FILE: the pause of queue file-paused.example")


def test_pause_list_resume_schedule(d):
    out = ctl(d, "pause-schedule", "weekly-digest", "--reason", "maintenance")
    assert (out.returncode, out.stdout) == (0, "schedule weekly-digest: paused\n")
    lines = ctl(d, "list-schedules").stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "CRON", "NEXT", "PAUSED-BY", "SOURCE", "REASON"]
    assert lines[1].split()[:2] == ["weekly-digest", "paused"]
    assert "0 9 * * MON" in lines[1] and lines[1].endswith("maintenance")
    out = ctl(d, "resume-schedule", "weekly-digest")
    assert (out.returncode, out.stdout) == (0, "schedule weekly-digest: resumed\n")
    (listed,) = json.loads(ctl(d, "--json", "list-schedules").stdout)
    assert listed["paused"] is False and listed["next_fire"] is not None
    assert "active" in ctl(d, "list-schedules").stdout


def test_unknown_schedule_exits_1(d):
    out = ctl(d, "pause-schedule", "nope")
    assert out.returncode == 1
    assert out.stderr == "sluicectl: SCHEDULE_NOT_FOUND: schedule 'nope' not found\n"


def test_pause_list_resume_endpoint_with_hookbridge_conflicts(d):
    out = ctl(d, "resume-endpoint", ENDPOINT)
    assert out.returncode == 1
    assert out.stderr == f"sluicectl: NOT_PAUSED: endpoint {ENDPOINT} is not paused\n"

    out = ctl(d, "pause-endpoint", ENDPOINT, "--reason", "receiver down")
    assert (out.returncode, out.stdout) == (0, f"endpoint {ENDPOINT}: paused\n")
    again = ctl(d, "pause-endpoint", ENDPOINT)
    assert again.returncode == 1 and again.stderr.startswith("sluicectl: ALREADY_PAUSED: ")

    lines = ctl(d, "list-endpoints").stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "URL", "PAUSED-BY", "SOURCE", "REASON"]
    assert lines[1].split()[:3] == [ENDPOINT, "paused", "https://hooks.example.com/events"]
    assert lines[1].endswith("receiver down")
    assert json.loads(ctl(d, "list-endpoints", "--json").stdout)["data"][0]["paused"] is True

    out = ctl(d, "resume-endpoint", ENDPOINT)
    assert (out.returncode, out.stdout) == (0, f"endpoint {ENDPOINT}: resumed\n")
    bad = ctl(d, "pause-endpoint", "ep_nothex")
    assert bad.returncode == 1 and bad.stderr.startswith("sluicectl: INVALID_REQUEST: endpoint_id must be")


# -- check, status, reload ----------------------------------------------------------------


def test_check_prints_deliver_or_held_and_exits_0_either_way(d):
    out = ctl(d, "check", "other.example")
    assert (out.returncode, out.stdout) == (0, "deliver\n")

    out = ctl(d, "check", "acme@GMAIL.com")
    assert (out.returncode, out.stdout) == (0, "held: 421 4.7.28 rate limited [suspension, 10-a.toml:1]\n")

    ctl(d, "pause-queue", "q.example", "--reason", "why not")
    ctl(d, "suspend", "--domain", "q.example", "--reason", "brief", "--duration", "1h")
    out = ctl(d, "check", "q.example")
    assert out.returncode == 0
    assert out.stdout.startswith("held: brief [suspension, runtime, until ")
    assert "; why not [queue pause, runtime]\n" in out.stdout

    decision = json.loads(ctl(d, "check", "--json", "Q.example").stdout)
    assert (decision["queue"], decision["deliver"], len(decision["holds"])) == ("q.example", False, 2)


def test_check_schedule_and_endpoint(d):
    assert ctl(d, "check", "--schedule", "weekly-digest").stdout == "run\n"
    ctl(d, "pause-endpoint", ENDPOINT)
    out = ctl(d, "check", "--endpoint", ENDPOINT)
    assert (out.returncode, out.stdout) == (0, "held: no reason given [endpoint pause, runtime]\n")
    missing = ctl(d, "check", "--schedule", "nope")
    assert missing.returncode == 1 and "SCHEDULE_NOT_FOUND" in missing.stderr


def test_check_of_an_invalid_name_is_refused_and_of_nothing_is_usage(d):
    out = ctl(d, "check", "bad name.example")
    assert out.returncode == 1
    assert out.stderr.startswith("sluicectl: INVALID_QUEUE_NAME: ")
    assert ctl(d, "check").returncode == 2
    assert ctl(d, "check", "a.example", "--endpoint", ENDPOINT).returncode == 2


def test_status(d):
    out = ctl(d, "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("sluiced ") and lines[0].endswith(", generation 1")
    assert lines[1] == "policy files: 10-a.toml"
    assert lines[2].startswith("last reload: ok at ")
    assert lines[3] == (
        "in force: 1 suspension, 1 paused queue, 0 of 1 schedule paused, 0 of 1 endpoint paused"
    )
    status = json.loads(ctl(d, "status", "--json").stdout)
    assert status["generation"] == 1 and status["files"] == ["10-a.toml"]


def test_reload(d):
    out = ctl(d, "reload")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("reloaded: generation ")
    assert out.stdout.endswith(", 0 changes, 1 file\n")
    assert json.loads(ctl(d, "--json", "reload").stdout)["ok"] is True


def test_reload_of_a_broken_policy_exits_1_and_status_shows_why(d):
    (d.policy / "20-bad.toml").write_text("[[queue]\n")
    out = ctl(d, "reload")
    assert out.returncode == 1
    assert out.stderr.startswith("sluicectl: INVALID_POLICY: reload refused")
    assert "20-bad.toml:1: TOML syntax error" in out.stderr
    status = ctl(d, "status").stdout
    assert "last reload: FAILED at " in status
    assert "\n  20-bad.toml:1: TOML syntax error" in status


# -- watch -------------------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Watch:
    """``sluicectl watch`` running, its stdout lines read into a queue."""

    def __init__(self, d: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen(
            command("watch", *args, socket_path=d.admin),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=clean_env(),
            # as from a terminal: Ctrl-C interrupts it even when the test
            # runner itself was started with SIGINT ignored (a background job)
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, predicate) -> str:
        """The next line that satisfies ``predicate`` (earlier ones are skipped)."""
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            if line is None:
                raise AssertionError(f"watch ended: {self.proc.wait(TIMEOUT)} {self.proc.stderr.read()}")
            if predicate(line):
                return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def watching():
    started: list[Watch] = []

    def start(d: Daemon, *args: str) -> Watch:
        started.append(Watch(d, *args))
        return started[-1]

    yield start
    for w in started:
        w.close()


def test_watch_json_prints_the_streams_lines(d, watching):
    w = watching(d, "--json")
    hello = json.loads(w.until(lambda line: True))  # subscribed from here on
    assert hello["event"] == "hello"
    ctl(d, "pause-queue", "w.example", "--reason", "watch me")
    event = json.loads(w.until(lambda line: "queue_paused" in line))
    assert (event["queue"], event["reason"]) == ("w.example", "watch me")
    assert event["generation"] > hello["generation"]
    w.proc.terminate()
    w.proc.wait(TIMEOUT)


def test_watch_prints_a_line_per_event_for_people_and_ctrl_c_exits_0(d, watching):
    w = watching(d)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ gen \d+ hello\n", w.until(lambda line: True))
    ctl(d, "pause-queue", "w.example", "--reason", "watch me")
    line = w.until(lambda line: "queue_paused" in line)
    assert re.search(r' gen \d+ queue_paused queue=w\.example reason="watch me" by=', line)
    d.write("20-b.toml", '[[queue]]\nname = "f.example"\npaused = true\n')
    line = w.until(lambda line: "reload_applied" in line)
    assert "trigger=watch changes=\"added queue f.example\"" in line
    w.proc.send_signal(signal.SIGINT)
    assert w.proc.wait(TIMEOUT) == 0


def test_watch_ends_when_the_daemon_stops(d, watching):
    w = watching(d)
    w.until(lambda line: True)
    d.stop(signal.SIGTERM)
    # The daemon ends the stream at shutdown with a "shutdown" event: a
    # stream the daemon finished (0), not a lost connection (3).
    assert "shutdown" in w.until(lambda line: "shutdown" in line)
    assert w.proc.wait(TIMEOUT) == 0
    assert w.proc.stderr.read() == ""


# -- finding the daemon, exit codes --------------------------------------------------------


def test_a_missing_socket_exits_3_naming_it(tmp_path):
    path = tmp_path / "nope.sock"
    out = run("status", socket_path=path)
    assert out.returncode == 3
    assert out.stderr == (
        f"sluicectl: cannot reach sluiced at {path}: no such socket (is sluiced running? see --socket)\n"
    )


def test_a_socket_nobody_listens_on_exits_3(tmp_path):
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    out = run("suspend-list", socket_path=path)
    assert out.returncode == 3
    assert out.stderr == (
        f"sluicectl: cannot reach sluiced at {path}: connection refused (is sluiced running?)\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["suspend", "--domain", "x.example"],  # no --reason
        ["suspend", "--domain", "x", "--reason", "r", "--duration", "5m", "--expires", "2099-01-01Z"],
        ["suspend-cancel"],
        ["pause-queue"],
        ["status", "extra"],
    ],
)
def test_usage_errors_exit_2(tmp_path, args):
    out = run(*args, socket_path=tmp_path / "never-asked.sock")
    assert out.returncode == 2
    assert "usage: sluicectl" in out.stderr


def test_sluice_socket_env(d):
    out = run("status", "--json", socket_path=None, env=clean_env(SLUICE_SOCKET=str(d.admin)))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["generation"] == 1


def test_the_socket_comes_from_the_config(d):
    out = run("--config", str(d.config), "check", "gmail.com", socket_path=None)
    assert (out.returncode, out.stdout[:5]) == (0, "held:")
    out = run("status", socket_path=None, env=clean_env(SLUICE_CONFIG=str(d.config)))
    assert out.returncode == 0, out.stderr
    # a flag beats the environment
    out = run(
        "--config", str(d.config), "status", socket_path=None,
        env=clean_env(SLUICE_SOCKET=str(d.dir / "elsewhere.sock")),
    )
    assert out.returncode == 0, out.stderr


def test_a_broken_config_is_a_usage_error(tmp_path):
    (tmp_path / "bad.toml").write_text("nonsense = 1\n")
    out = run("--config", str(tmp_path / "bad.toml"), "status", socket_path=None)
    assert out.returncode == 2
    assert out.stderr.startswith("sluicectl: ")


# -- edit -------------------------------------------------------------------------------------

EDITOR = """\
#!{python}
# A scripted editor: run N writes versions[N] over the file it is given
# (null: leave it as it is), writes meanwhile[N]'s {{path: text}}, and exits
# with codes[N] (default 0). With "ctrl_c", it first sends SIGINT to sluicectl,
# as a ctrl-C typed into a terminal editor reaches it too.
import json, os, signal, sys
from pathlib import Path
here = Path(__file__).parent
count = here / "editor.count"
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
script = json.loads((here / "editor.json").read_text())
if script.get("ctrl_c"):
    os.kill(os.getppid(), signal.SIGINT)
with open(here / "editor.log", "a") as log:
    log.write(sys.argv[1] + "\\n")
text = script["versions"][n]
if text is not None:
    Path(sys.argv[1]).write_text(text)
for path, other in script.get("meanwhile", {{}}).get(str(n), {{}}).items():
    Path(path).write_text(other)  # someone else's change, made while we edit
sys.exit(script.get("codes", {{}}).get(str(n), 0))
"""

GOOD_EDIT = POLICY.replace('domain = "gmail.com"', 'domain = "yahoo.com"').lstrip()
BROKEN_EDIT = POLICY.replace('domain = "gmail.com"', 'domian = "yahoo.com"').lstrip()


class Editor:
    def __init__(
        self,
        tmp_path: Path,
        versions: list[str | None],
        codes: dict[int, int] | None = None,
        meanwhile: dict[int, dict[str, str]] | None = None,
        ctrl_c: bool = False,
    ) -> None:
        self.dir = tmp_path / "editor"
        self.dir.mkdir()
        self.path = self.dir / "editor.py"
        self.path.write_text(EDITOR.format(python=sys.executable))
        self.path.chmod(0o755)
        (self.dir / "editor.json").write_text(
            json.dumps(
                {
                    "versions": versions,
                    "codes": {str(k): v for k, v in (codes or {}).items()},
                    "meanwhile": {str(k): v for k, v in (meanwhile or {}).items()},
                    "ctrl_c": ctrl_c,
                }
            )
        )

    @property
    def runs(self) -> int:
        count = self.dir / "editor.count"
        return int(count.read_text()) if count.exists() else 0

    @property
    def edited(self) -> list[str]:
        return (self.dir / "editor.log").read_text().splitlines()

    def env(self) -> dict[str, str]:
        return clean_env(EDITOR=shlex.quote(str(self.path)))


def edit(editor: Editor, file: Path, answers: bytes | None = None, tty: bool = True):
    """Run ``sluicectl edit FILE``, its stdin a terminal that ``answers`` are typed on."""
    cmd = command("edit", str(file), socket_path=None)
    if not tty:
        return subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT,
            env=editor.env(), timeout=TIMEOUT,
        )
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen(
            cmd, stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT, env=editor.env(),
        )
        os.close(secondary)
        if answers:
            os.write(primary, answers)  # waits in the terminal until sluicectl reads it
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(primary)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def only_policy_files(d: Daemon) -> list[str]:
    return sorted(os.listdir(d.policy))


def test_edit_broken_then_edit_again_then_valid_is_installed_and_loaded(d, tmp_path):
    target = d.policy / "10-a.toml"
    target.chmod(0o640)
    editor = Editor(tmp_path, [BROKEN_EDIT, GOOD_EDIT])
    out = edit(editor, target, answers=b"e\n")
    assert out.returncode == 0, out.stderr
    assert editor.runs == 2
    # the problem, with file, line and key, then the question
    assert "10-a.toml:2: suspension[0].domian: unknown field" in out.stderr
    assert f"{d.policy}: invalid: 1 problem\n" in out.stderr
    assert "What now? [e]dit again, [x] exit without saving: " in out.stderr
    assert out.stdout.endswith(f"{target}: installed\n")
    assert "10-a.toml: ok, 1 suspension, 1 queue, 1 schedule, 1 endpoint" in out.stdout
    # the copy was edited next to FILE, under a name the daemon does not read, both times
    first, second = (Path(p) for p in editor.edited)
    assert first == second and first.parent == d.policy
    assert first.name.startswith(".10-a.sluicectl-") and first.name.endswith(".toml")
    assert not first.exists()
    assert target.read_text() == GOOD_EDIT
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert only_policy_files(d) == ["10-a.toml"]
    # and the running daemon took it in
    wait_until(d, lambda: {s["domain"] for s in suspensions(d).values()} == {"yahoo.com"})
    assert d.status()["last_reload"]["ok"] is True


def test_edit_broken_then_exit_leaves_the_file_untouched(d, tmp_path):
    target = d.policy / "10-a.toml"
    before = target.read_bytes()
    editor = Editor(tmp_path, [BROKEN_EDIT])
    out = edit(editor, target, answers=b"x\n")
    assert out.returncode == 1
    assert editor.runs == 1
    assert "10-a.toml:2: suspension[0].domian: unknown field" in out.stderr
    assert out.stderr.endswith(f"{target} not saved, left as it was\n")
    assert target.read_bytes() == before
    assert only_policy_files(d) == ["10-a.toml"]
    assert ctl(d, "check", "gmail.com").stdout.startswith("held:")


def test_edit_without_a_terminal_to_ask_on_does_not_save(d, tmp_path):
    target = d.policy / "10-a.toml"
    before = target.read_bytes()
    editor = Editor(tmp_path, [BROKEN_EDIT, GOOD_EDIT])
    out = edit(editor, target, tty=False)
    assert out.returncode == 1
    assert editor.runs == 1
    assert "What now?" not in out.stderr and "stdin is not a TTY" in out.stderr
    assert target.read_bytes() == before
    assert only_policy_files(d) == ["10-a.toml"]


def test_edit_at_end_of_input_does_not_save(d, tmp_path):
    target = d.policy / "10-a.toml"
    before = target.read_bytes()
    editor = Editor(tmp_path, [BROKEN_EDIT, GOOD_EDIT])
    out = edit(editor, target, answers=b"maybe\n\x04")  # an unknown answer, then ctrl-D
    assert out.returncode == 1
    assert out.stderr.count("What now?") == 2
    assert target.read_bytes() == before


def test_edit_validates_the_whole_directory(d, tmp_path):
    """An entry valid alone but clashing with another file's is refused."""
    d.write("20-b.toml", '[[schedule]]\nid = "daily"\n')
    target = d.policy / "30-c.toml"  # a new file
    editor = Editor(tmp_path, ['[[schedule]]\nid = "daily"\n', '[[schedule]]\nid = "hourly"\n'])
    out = edit(editor, target, answers=b"e\n")
    assert out.returncode == 0, out.stderr
    assert "30-c.toml:1: schedule: schedule id 'daily' is also defined at 20-b.toml:1" in out.stderr
    assert out.stdout.endswith(f"{target}: created\n")
    assert target.read_text() == '[[schedule]]\nid = "hourly"\n'
    wait_until(d, lambda: "hourly" in {s["id"] for s in d.get("/api/admin/schedules").json()})


def test_edit_without_change_says_so(d, tmp_path):
    target = d.policy / "10-a.toml"
    mtime = target.stat().st_mtime_ns
    out = edit(Editor(tmp_path, [None]), target)
    assert (out.returncode, out.stdout) == (0, f"{target}: unchanged\n")
    assert target.stat().st_mtime_ns == mtime
    assert only_policy_files(d) == ["10-a.toml"]


def test_edit_when_the_editor_fails_saves_nothing(d, tmp_path):
    target = d.policy / "10-a.toml"
    before = target.read_bytes()
    out = edit(Editor(tmp_path, [GOOD_EDIT], codes={0: 1}), target)
    assert out.returncode == 1
    assert "editor exited with status 1" in out.stderr
    assert target.read_bytes() == before
    assert only_policy_files(d) == ["10-a.toml"]


def test_edit_of_a_missing_directory_is_refused(tmp_path):
    out = edit(Editor(tmp_path, [GOOD_EDIT]), tmp_path / "nope" / "a.toml")
    assert out.returncode == 1
    assert "no such directory" in out.stderr


def test_edit_does_not_overwrite_a_change_made_meanwhile(d, tmp_path):
    """If FILE changed on disk during the edit, it is not replaced; the edit is kept aside."""
    target = d.policy / "10-a.toml"
    theirs = POLICY.replace("gmail.com", "aol.com").lstrip()
    editor = Editor(tmp_path, [GOOD_EDIT], meanwhile={0: {str(target): theirs}})
    out = edit(editor, target)
    assert out.returncode == 1
    assert "changed on disk while you edited it; not replaced" in out.stderr
    assert target.read_text() == theirs
    (kept,) = editor.edited
    assert out.stderr.rstrip().endswith(kept)
    assert Path(kept).read_text() == GOOD_EDIT
    assert only_policy_files(d) == sorted([Path(kept).name, "10-a.toml"])


def test_edit_through_a_symlink_replaces_the_target_and_keeps_the_link(d, tmp_path):
    elsewhere = tmp_path / "managed"
    elsewhere.mkdir()
    real = elsewhere / "10-a.toml"
    (d.policy / "10-a.toml").rename(real)
    (d.policy / "10-a.toml").symlink_to(real)
    out = edit(Editor(tmp_path, [GOOD_EDIT]), d.policy / "10-a.toml")
    assert out.returncode == 0, out.stderr
    assert (d.policy / "10-a.toml").is_symlink()
    assert real.read_text() == GOOD_EDIT
    assert sorted(os.listdir(elsewhere)) == ["10-a.toml"]


def test_ctrl_c_while_the_editor_runs_is_the_editors(d, tmp_path):
    """vi uses ctrl-C; sluicectl must not die of it (and kill the editor) meanwhile."""
    target = d.policy / "10-a.toml"
    out = edit(Editor(tmp_path, [GOOD_EDIT], ctrl_c=True), target)
    assert out.returncode == 0, out.stderr
    assert target.read_text() == GOOD_EDIT


def test_token_new_prints_a_token_once_and_an_entry_that_accepts_it():
    from sluice.policy.tokens import parse_tokens

    out = subprocess.run(
        [sys.executable, "-m", "sluice.daemon.ctl", "token", "new", "deploy-bot", "--role", "admin"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.split("\n")[1].strip()
    entry = out.stdout[out.stdout.index("[[token]]"):]
    tokens, problems = parse_tokens(entry, "tokens.toml")
    assert problems == []
    found = tokens.find(token)
    assert found is not None and (found.name, found.role) == ("deploy-bot", "admin")
    assert token not in entry
    bad = subprocess.run(
        [sys.executable, "-m", "sluice.daemon.ctl", "token", "new", "bad name"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert bad.returncode == 2


def test_state_export_and_import_through_sluicectl(tmp_path):
    from sluice.daemon.state.encoding import render
    from sluice.policy.model import Suspension

    def config(where):
        where.mkdir()
        (where / "sluiced.toml").write_text('policy_dir = "policy.d"\nstate_dir = "state"\n')
        return where / "sluiced.toml"

    source, target = config(tmp_path / "a"), config(tmp_path / "b")
    runtime = tmp_path / "a" / "state" / "runtime"
    runtime.mkdir(parents=True)
    entry = Suspension(id="6f0b7c52-3f7e-4a59-9a43-7b3e1f0e8a11", domain="x.example", reason="moved")
    (runtime / f"suspension-{entry.id}.toml").write_bytes(render(entry))

    def ctl(*args):
        return subprocess.run(
            [sys.executable, "-m", "sluice.daemon.ctl", *args], capture_output=True, text=True, cwd=ROOT
        )

    out = ctl("--config", str(source), "state", "export", str(tmp_path / "dump.toml"))
    assert out.returncode == 0, out.stderr
    assert out.stderr == "exported 1 entries\n"
    out = ctl("--config", str(target), "state", "import", str(tmp_path / "dump.toml"))
    assert out.returncode == 0, out.stderr
    copied = tmp_path / "b" / "state" / "runtime" / f"suspension-{entry.id}.toml"
    assert copied.read_bytes() == render(entry)
    out = ctl("--config", str(target), "state", "import", str(tmp_path / "missing.toml"))
    assert out.returncode == 1 and out.stderr.startswith("sluicectl: ")
