"""The admin API through the real daemon, spoken to with curl --unix-socket as operators do."""

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from harness import Daemon

FILES = {
    "10-a.toml": """
        [[suspension]]
        domain = "file.example"
        reason = "from a file"

        [[queue]]
        name = "held.example"
        paused = true
        reason = "warming up"

        [[schedule]]
        id = "digest"
        cron = "0 9 * * MON"

        [[endpoint]]
        id = "ep_550e8400e29b41d4a716446655440000"
        url = "https://hooks.example.com/events"
        """
}

pytestmark = pytest.mark.skipif(shutil.which("curl") is None and not os.environ.get("CI"), reason="curl is not installed")


@pytest.fixture
def d(tmp_path):
    daemon = Daemon(tmp_path, files=FILES)
    daemon.start()
    yield daemon
    daemon.close()


def curl(d, method, path, body=None, *, raw=None, headers=()):
    """Run curl against the admin socket; returns (status, parsed JSON body, headers text)."""
    args = ["curl", "-sS", "--unix-socket", str(d.admin), "-X", method, "-D", "-", f"http://sluice{path}"]
    for h in headers:
        args += ["-H", h]
    if body is not None or raw is not None:
        if not any(h.lower().startswith("content-type:") for h in headers):
            args += ["-H", "Content-Type: application/json"]
        args += ["--data-binary", raw if raw is not None else json.dumps(body)]
    out = subprocess.run(args, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, text = out.stdout.decode().partition("\r\n\r\n")
    status = int(head.split()[1])
    return status, (json.loads(text) if text.strip() and "json" in head.lower() else text), head


def test_kumomta_suspend_flow(d):
    status, body, head = curl(d, "POST", "/api/admin/suspend/v1", {"domain": "gmail.com", "reason": "421 busy", "duration": "1h"})
    assert status == 200 and set(body) == {"id"}
    assert "x-request-id: req_" in head.lower()
    first = body["id"]
    status, body, _ = curl(
        d, "POST", "/api/admin/suspend/v1",
        {"tenant": "acme", "campaign": "news", "reason": "hold", "expires": "2099-01-01T00:00:00Z"},
    )
    second = body["id"]
    status, listed, _ = curl(d, "GET", "/api/admin/suspend/v1")
    by_id = {s["id"]: s for s in listed}
    assert by_id[first]["domain"] == "gmail.com"
    assert by_id[first]["duration"] in ("1h", "59m 59s")
    assert by_id[first]["source"] == "runtime" and by_id[first]["created_by"].startswith("uid=")
    assert by_id[second]["expires"] == "2099-01-01T00:00:00Z"
    assert {s["source"] for s in listed} == {"runtime", "10-a.toml:1"}
    status, body, _ = curl(d, "DELETE", "/api/admin/suspend/v1", {"id": first})
    assert status == 200
    status, body, _ = curl(d, "DELETE", "/api/admin/suspend/v1", {"id": first})
    assert status == 404 and body["error"]["code"] == "SUSPENSION_NOT_FOUND"
    assert body["meta"]["request_id"].startswith("req_")
    status, body, _ = curl(d, "DELETE", "/api/admin/suspend/v1", {"id": "00000000-0000-4000-8000-000000000000"})
    assert status == 404


def test_same_criteria_update_in_place(d):
    _, a, _ = curl(d, "POST", "/api/admin/suspend/v1", {"domain": "x.example", "reason": "one"})
    _, b, _ = curl(d, "POST", "/api/admin/suspend/v1", {"domain": "X.example.", "reason": "two", "duration": 600})
    assert a["id"] == b["id"]
    _, listed, _ = curl(d, "GET", "/api/admin/suspend/v1")
    [entry] = [s for s in listed if s["domain"] == "x.example"]
    assert entry["reason"] == "two" and entry["duration"] in ("10m", "9m 59s")


@pytest.mark.parametrize(
    "raw,status,code,fragment",
    [
        ('{"domian": "gmail.com", "reason": "typo"}', 400, "INVALID_REQUEST", "did you mean 'domain'"),
        ('{"reason": "no criterion"}', 400, "INVALID_REQUEST", "everything"),
        ('{"domain": "x.com", "reason": "r", "duration": "5m", "expires": "2099-01-01T00:00:00Z"}', 400, "INVALID_REQUEST", "not both"),
        ('{"domain": "x.com", "reason": "r", "expires": "2001-01-01T00:00:00Z"}', 400, "INVALID_REQUEST", "in the past"),
        ('{"domain": "x.com", "reason": "r", "duration": "-1m"}', 400, "INVALID_DURATION", "duration"),
        ('{"domain": "x.com", "reason": "r", "duration": 0}', 400, "INVALID_DURATION", "greater than zero"),
        ('{"domain": "bad domain", "reason": "r"}', 400, "INVALID_QUEUE_NAME", "a space"),
        ('{"domain": "x.com", "reason": ', 400, "INVALID_JSON", "not valid JSON"),
        ("[1, 2]", 400, "INVALID_REQUEST", "expected a suspension (a JSON object or TOML table), got an array"),
        ('{"domain": "x.com", "reason": "r", "duration": 1e308}', 400, "INVALID_DURATION", "duration is over 1000 years"),
        ('{"domain": "x.com", "reason": "r", "duration": "99999999999999999999 years"}', 400, "INVALID_DURATION", "over 1000 years"),
        ('{"domain": "x.com", "reason": "\\ud800x"}', 400, "INVALID_REQUEST", "reason: is not valid Unicode text"),
        ("[" * 30000, 400, "INVALID_JSON", "nested too deeply"),
    ],
)
def test_strictness(d, raw, status, code, fragment):
    got, body, _ = curl(d, "POST", "/api/admin/suspend/v1", raw=raw)
    assert got == status
    assert body["error"]["code"] == code
    assert fragment in body["error"]["message"]
    _, listed, _ = curl(d, "GET", "/api/admin/suspend/v1")
    assert [s["source"] for s in listed] == ["10-a.toml:1"]  # nothing was added


def test_non_json_body_is_415_and_wrong_method_405(d):
    status, body, _ = curl(d, "POST", "/api/admin/suspend/v1", raw="domain=x", headers=["Content-Type: text/plain"])
    assert status == 415 and body["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    status, body, head = curl(d, "PUT", "/api/admin/suspend/v1")
    assert status == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"
    status, body, _ = curl(d, "GET", "/api/nope")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


def test_queue_pause_is_idempotent_and_file_holds_are_defined_in_file(d):
    for _ in range(2):
        status, body, _ = curl(d, "POST", "/api/admin/queues/acme@Example.com/pause", {"reason": "ops"})
        assert status == 200 and body["paused"] and body["name"] == "acme@example.com"
    _, listed, _ = curl(d, "GET", "/api/admin/queues")
    assert {q["name"] for q in listed} == {"acme@example.com", "held.example"}
    for _ in range(2):
        status, body, _ = curl(d, "POST", "/api/admin/queues/acme@example.com/resume")
        assert status == 200 and body["paused"] is False
    status, body, _ = curl(d, "POST", "/api/admin/queues/held.example/resume")
    assert status == 409 and body["error"]["code"] == "DEFINED_IN_FILE"
    assert "10-a.toml line 5" in body["error"]["message"]
    _, listed, _ = curl(d, "GET", "/api/admin/suspend/v1")
    status, body, _ = curl(d, "DELETE", "/api/admin/suspend/v1", {"id": listed[0]["id"]})
    assert status == 409 and body["error"]["code"] == "DEFINED_IN_FILE"


def test_schedule_pause_is_idempotent(d):
    for _ in range(2):
        status, body, _ = curl(d, "POST", "/api/admin/schedules/digest/pause")
        assert status == 200 and body["paused"] is True
    status, body, _ = curl(d, "GET", "/api/check/v1?schedule=digest")
    assert body["run"] is False
    for _ in range(2):
        status, body, _ = curl(d, "POST", "/api/admin/schedules/digest/resume")
        assert status == 200 and body["paused"] is False and body["next_fire"]
    status, body, _ = curl(d, "POST", "/api/admin/schedules/nope/pause")
    assert status == 404 and body["error"]["code"] == "SCHEDULE_NOT_FOUND"


def test_endpoint_pause_has_hookbridge_semantics(d):
    ep = "ep_550e8400e29b41d4a716446655440000"
    status, body, _ = curl(d, "POST", f"/api/admin/endpoints/{ep}/pause")
    assert status == 200 and body["data"] == {"id": ep, "paused": True}
    assert body["meta"]["request_id"].startswith("req_")
    status, body, _ = curl(d, "POST", f"/api/admin/endpoints/{ep}/pause")
    assert status == 409 and body["error"]["code"] == "ALREADY_PAUSED"
    status, body, _ = curl(d, "POST", f"/api/admin/endpoints/{ep}/resume")
    assert status == 200 and body["data"]["paused"] is False
    status, body, _ = curl(d, "POST", f"/api/admin/endpoints/{ep}/resume")
    assert status == 409 and body["error"]["code"] == "NOT_PAUSED"
    status, body, _ = curl(d, "POST", "/api/admin/endpoints/ep_123/pause")
    assert status == 400 and "endpoint_id must be in format ep_xxx" in body["error"]["message"]
    status, body, _ = curl(d, "POST", f"/api/admin/endpoints/ep_{'0' * 32}/pause")
    assert status == 404 and body["error"]["code"] == "ENDPOINT_NOT_FOUND"


def test_metrics(d):
    curl(d, "GET", "/api/check/v1?queue=file.example")
    curl(d, "GET", "/api/check/v1?queue=other.example")
    curl(d, "POST", "/api/admin/reload/v1")
    status, text, head = curl(d, "GET", "/metrics")
    assert status == 200 and "text/plain" in head
    assert 'sluice_decisions_total{outcome="hold",source="http"} 1.0' in text
    assert 'sluice_decisions_total{outcome="deliver",source="http"} 1.0' in text
    assert 'sluice_reloads_total{result="applied"} 1.0' in text
    assert 'sluice_active_holds{kind="suspension"} 1.0' in text
    assert 'sluice_active_holds{kind="queue_pause"} 1.0' in text
    assert 'sluice_http_requests_total{method="GET",route="/api/check/v1",status="200"} 2.0' in text


@pytest.fixture
def shared(tmp_path):
    """A daemon whose admin socket other users reach (mode 0666, ``[admin] group = "staff"``),
    and ``as_user(user, group, groups, *curl_args)`` to speak to it as them."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run this as root with setpriv")
        pytest.skip("needs root and setpriv to act as another user")
    run = Path(tempfile.mkdtemp(prefix="sluice-authz-"))
    run.chmod(0o755)  # other users must reach the socket to be judged by credentials, not by the file system
    d = Daemon(tmp_path, files=FILES)
    d.config.write_text(
        d.config.read_text().replace(
            'socket = "run/admin.sock"', f'socket = "{run}/admin.sock"\nmode = "0666"\ngroup = "{{group}}"'
        )
    )
    d.admin = run / "admin.sock"

    def start(group: str = "") -> Daemon:
        d.config.write_text(d.config.read_text().replace("{group}", group))
        return d.start()

    def as_user(user: str, group: str, groups: list[str], *args: str) -> subprocess.CompletedProcess:
        groups_option = [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]
        return subprocess.run(
            ["setpriv", f"--reuid={user}", f"--regid={group}", *groups_option,
             "curl", "-sS", "--unix-socket", str(d.admin), *args],
            capture_output=True, text=True, timeout=30,
        )

    d.start_with_group = start
    d.as_user = as_user
    try:
        yield d
    finally:
        d.close()
        shutil.rmtree(run, ignore_errors=True)


SUSPEND = ("-H", "Content-Type: application/json", "-d", '{"domain": "x.com", "reason": "r"}',
           "http://sluice/api/admin/suspend/v1")


def test_changes_are_refused_to_other_users_but_reads_are_served(shared):
    d = shared.start_with_group()
    read = d.as_user("nobody", "nogroup", [], "-o", "/dev/null", "-w", "%{http_code}",
                     "http://sluice/api/admin/suspend/v1")
    assert read.stdout == "200"
    body = json.loads(d.as_user("nobody", "nogroup", [], *SUSPEND).stdout)
    assert body["error"]["code"] == "FORBIDDEN"
    assert "uid=65534(nobody)" in body["error"]["message"]
    status, listed, _ = curl(d, "GET", "/api/admin/suspend/v1")
    assert len(listed) == 1


def test_the_admin_group_is_judged_by_the_peers_own_groups_not_etc_group(shared):
    """A process holding the admin group among its supplementary groups may change state,
    though /etc/group does not list its user; without the group it may not."""
    assert "nobody" not in grp.getgrnam("staff").gr_mem
    d = shared.start_with_group("staff")
    created = d.as_user("nobody", "nogroup", ["staff"], *SUSPEND)
    assert "id" in json.loads(created.stdout), created.stdout
    refused = json.loads(d.as_user("nobody", "nogroup", [], *SUSPEND).stdout)
    assert refused["error"]["code"] == "FORBIDDEN"


def test_a_user_listed_in_etc_group_who_dropped_the_group_may_not_change(shared):
    listed = [
        (group.gr_name, member) for group in grp.getgrall() for member in group.gr_mem
        if _uid(member) not in (None, 0)
    ]
    if not listed:
        pytest.skip("no group in /etc/group lists a member user")
    group, user = listed[0]
    d = shared.start_with_group(group)
    refused = json.loads(d.as_user(user, "nogroup", [], *SUSPEND).stdout)
    assert refused.get("error", {}).get("code") == "FORBIDDEN", refused
    created = d.as_user(user, "nogroup", [group], *SUSPEND)
    assert "id" in json.loads(created.stdout), created.stdout


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def raw_exchange(path: Path, data: bytes, timeout: float = 20) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    try:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


def test_hostile_clients(d):
    # a body that never finishes: started first, checked last (408 after 10 s)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.settimeout(30)
    slow.connect(str(d.admin))
    slow.sendall(b"POST /api/admin/suspend/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"dom")

    garbage = raw_exchange(d.admin, b"\x16\x03\x01 garbage that is not HTTP\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400")
    assert b'"code":"BAD_REQUEST"' in garbage

    huge_header = raw_exchange(d.admin, b"GET /api/status/v1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert huge_header.startswith(b"HTTP/1.1 431")

    big = b"x" * (70 * 1024)
    huge_body = raw_exchange(
        d.admin,
        b"POST /api/admin/suspend/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(big)}\r\n\r\n".encode() + big,
    )
    assert huge_body.startswith(b"HTTP/1.1 413")

    chunked = raw_exchange(
        d.admin,
        b"POST /api/admin/suspend/v1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"4000\r\n" + b"y" * 0x4000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n",
    )
    assert chunked.startswith(b"HTTP/1.1 413")

    reply = slow.recv(65536)
    slow.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply

    # 300 simultaneous idle connections, more than the cap: the oldest give way to the next client
    idle = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.admin))
            idle.append(s)
        answer = raw_exchange(d.admin, b"GET /api/status/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        for s in idle:
            s.close()
    assert d.status()["generation"] == 1
    log = d.log_lines()
    assert '"status":431' in log and '"status":408' in log


def test_keep_alive_serves_many_requests_on_one_connection(d):
    with d.client() as c:
        for _ in range(51):
            assert c.get("/api/status/v1").status_code == 200
    # a request is logged after its answer, before the next one is read: the
    # 51st answer on the same connection means the first 50 are logged
    assert d.log_lines().count('"path":"/api/status/v1"') >= 50


def test_100_concurrent_clients_create_durable_suspensions(d):
    answered: list[str] = []
    lock = threading.Lock()

    def client(i):
        with d.client() as c:
            r = c.post("/api/admin/suspend/v1", json={"domain": f"c{i}.example", "reason": "load", "duration": "1h"})
            if r.status_code == 200:
                with lock:
                    answered.append(r.json()["id"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answered) == 100
    listed = {s["id"] for s in d.get("/api/admin/suspend/v1").json()}
    assert set(answered) <= listed
    d.kill()
    d.start()
    listed = {s["id"] for s in d.get("/api/admin/suspend/v1").json()}
    assert set(answered) <= listed


def test_a_batch_check_nested_a_million_deep_is_400(d):
    response = d.post("/api/check/v1", content=b"[" * 1_000_000, headers={"Content-Type": "application/json"})
    body = response.json()
    assert response.status_code == 400 and body["error"]["code"] == "INVALID_JSON"
    assert "nested too deeply" in body["error"]["message"]


@pytest.mark.parametrize(
    "name",
    ["a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 60 + ".com", "ü" * 60 + "@example.com"],
    ids=["251-character domain", "60 ü in a tenant"],
)
def test_a_queue_name_too_long_to_store_is_400_not_500(d, name):
    from urllib.parse import quote

    status, body, _ = curl(d, "POST", f"/api/admin/queues/{quote(name)}/pause", {"reason": "r"})
    assert status == 400 and "too long to store" in body["error"]["message"]
    _, listed, _ = curl(d, "GET", "/api/admin/queues")
    assert all(q["source"] != "runtime" for q in listed)  # nothing was half stored
