"""The seeds' own APIs over TCP, driven by the vendors' official SDKs, with tokens and TLS."""

import hashlib
import json
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from harness import ROOT, Daemon, write_atomic

import qstash
import hookbridge

ADMIN_TOKEN = "sl_admin-secret-token-value"
READ_TOKEN = "sl_read-secret-token-value"
EP = "ep_550e8400e29b41d4a716446655440000"
EP_FILE_PAUSED = "ep_6ba7b8109dad11d180b400c04fd430c8"

FILES = {
    "10-a.toml": f"""
        [[schedule]]
        id = "weekly-digest"
        cron = "0 9 * * MON"
        destination = "https://app.example.com/digest"

        [[queue]]
        name = "held_queue"
        paused = true
        reason = "file hold"

        [[endpoint]]
        id = "{EP}"
        url = "https://hooks.example.com/events"
        description = "events"

        [[endpoint]]
        id = "{EP_FILE_PAUSED}"
        url = "https://hooks.example.com/other"
        paused = true
        """
}


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tokens_text(*entries):
    return "".join(
        f'[[token]]\nname = "{name}"\nsha256 = "{digest(token)}"\nrole = "{role}"\n\n'
        for name, token, role in entries
    )


def make(tmp_path, *, trusted="[]", tls="", listen_host="127.0.0.1"):
    port = free_port()
    d = Daemon(tmp_path, files=FILES)
    (tmp_path / "tokens.toml").write_text(
        tokens_text(("deploy-bot", ADMIN_TOKEN, "admin"), ("grafana", READ_TOKEN, "read"))
    )
    d.config.write_text(
        d.config.read_text().replace(
            "[reload]",
            textwrap.dedent(
                f"""
                [http]
                listen = "{listen_host}:{port}"
                tokens_file = "tokens.toml"
                trusted_hosts = {trusted}
                {tls}
                [reload]"""
            ),
        )
    )
    d.base = f"http://127.0.0.1:{port}"
    d.port = port
    return d


@pytest.fixture
def d(tmp_path):
    daemon = make(tmp_path)
    daemon.start()
    yield daemon
    daemon.close()


def check(d, queue):
    return d.get("/api/check/v1", params={"queue": queue}).json()


def ctl(d, *args):
    out = subprocess.run(
        [sys.executable, "-m", "sluice.daemon.ctl", "--socket", str(d.admin), "--json", *args],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_qstash_sdk_queues(d):
    client = qstash.QStash(ADMIN_TOKEN, base_url=d.base, retry=False)
    client.queue.pause("my_queue")
    client.queue.pause("my_queue")  # idempotent
    q = client.queue.get("my_queue")
    assert q.name == "my_queue" and q.paused and q.lag == 0 and q.parallelism == 1
    assert q.created_at > 1_700_000_000_000
    assert check(d, "my_queue")["deliver"] is False
    assert "my_queue" in {entry["name"] for entry in ctl(d, "list-queues")}
    client.queue.resume("my_queue")
    assert check(d, "my_queue")["deliver"] is True

    client.queue.upsert("other_queue", parallelism=5, paused=True)
    decision = check(d, "other_queue")
    assert decision["deliver"] is False and decision["parallelism"] == 5
    listed = {q.name: q for q in client.queue.list()}
    assert listed["other_queue"].parallelism == 5 and listed["held_queue"].paused
    client.queue.upsert("other_queue", parallelism=2, paused=False)
    assert check(d, "other_queue") | {"generation": 0} == {
        "queue": "other_queue", "deliver": True, "holds": [], "retry_after": None,
        "generation": 0, "parallelism": 2,
    }
    client.queue.delete("other_queue")
    with pytest.raises(qstash.errors.QStashError, match="404"):
        client.queue.get("other_queue")
    with pytest.raises(qstash.errors.QStashError, match="400"):
        client.queue.pause("bad name!")
    with pytest.raises(qstash.errors.QStashError) as info:
        client.queue.resume("held_queue")
    assert "409" in str(info.value) and "10-a.toml line" in str(info.value)
    assert '"error":' in str(info.value) and '"code"' not in str(info.value)  # QStash's own shape


def test_qstash_sdk_schedules(d):
    client = qstash.QStash(ADMIN_TOKEN, base_url=d.base, retry=False)
    s = client.schedule.get("weekly-digest")
    assert s.cron == "0 9 * * MON" and s.destination == "https://app.example.com/digest"
    assert s.method == "POST" and s.retries == 3 and not s.paused
    assert s.next_schedule_time and s.next_schedule_time > 1_700_000_000_000
    client.schedule.pause("weekly-digest")
    client.schedule.pause("weekly-digest")  # idempotent
    assert [x.paused for x in client.schedule.list()] == [True]
    assert d.get("/api/check/v1", params={"schedule": "weekly-digest"}).json()["run"] is False
    client.schedule.resume("weekly-digest")
    assert client.schedule.get("weekly-digest").paused is False
    with pytest.raises(qstash.errors.QStashError, match="404"):
        client.schedule.pause("nope")


def test_hookbridge_sdk_endpoints(d):
    client = hookbridge.HookBridge(ADMIN_TOKEN, base_url=d.base)
    state = client.pause_endpoint(EP)
    assert state.id == EP and state.paused is True
    assert d.get("/api/check/v1", params={"endpoint": EP}).json()["deliver"] is False
    assert any(e["id"] == EP and e["paused"] for e in ctl(d, "list-endpoints")["data"])
    with pytest.raises(hookbridge.HookBridgeError) as info:
        client.pause_endpoint(EP)
    assert info.value.status_code == 409 and info.value.code == "ALREADY_PAUSED"
    endpoint = client.get_endpoint(EP)
    assert endpoint.paused and endpoint.url == "https://hooks.example.com/events"
    assert client.resume_endpoint(EP).paused is False
    with pytest.raises(hookbridge.HookBridgeError) as info:
        client.resume_endpoint(EP)
    assert info.value.status_code == 409 and info.value.code == "NOT_PAUSED"
    with pytest.raises(hookbridge.HookBridgeError) as info:
        client.resume_endpoint(EP_FILE_PAUSED)
    assert info.value.code == "DEFINED_IN_FILE"
    listed = client.list_endpoints()
    assert {e.id for e in listed.endpoints} == {EP, EP_FILE_PAUSED} and not listed.has_more
    with pytest.raises(hookbridge.NotFoundError):
        client.get_endpoint("ep_" + "0" * 32)
    with pytest.raises(hookbridge.HookBridgeError) as info:
        client.pause_endpoint("ep_123")
    assert info.value.status_code == 400 and "endpoint_id must be in format ep_xxx" in str(info.value)
    with pytest.raises(hookbridge.AuthenticationError):
        hookbridge.HookBridge("sl_wrong", base_url=d.base).get_endpoint(EP)


def test_tokens(d):
    import httpx

    with httpx.Client(base_url=d.base) as c:
        r = c.get("/api/status/v1")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        r = c.get("/api/status/v1", headers={"Authorization": "Bearer sl_wrong"})
        assert r.status_code == 401
        r = c.get("/v2/queues", headers={"Authorization": "Bearer sl_wrong"})
        assert r.status_code == 401 and set(r.json()) == {"error"}  # QStash's shape
        r = c.get("/api/status/v1", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert r.status_code == 200
        r = c.post("/api/admin/suspend/v1", json={"domain": "x.com", "reason": "r"},
                   headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
        r = c.post("/v2/queues/q1/pause", params={"qstash_token": ADMIN_TOKEN})
        assert r.status_code == 200
        r = c.post("/api/admin/suspend/v1", json={"domain": "x.com", "reason": "r"},
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200
    listed = d.get("/api/admin/suspend/v1").json()
    assert listed[0]["created_by"].startswith("token=deploy-bot")

    # the tokens file reloads with the policy
    write_atomic(d.dir / "tokens.toml", tokens_text(("new-bot", "sl_brand-new", "admin")))
    d.notify.wait_for("READY=1")  # the reload the watcher started (tokens change no generation)
    with httpx.Client(base_url=d.base) as c:
        assert c.get("/api/status/v1", headers={"Authorization": "Bearer sl_brand-new"}).status_code == 200
        assert c.get("/api/status/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 401

    # a broken tokens file is refused like a broken policy file
    write_atomic(d.dir / "tokens.toml", '[[token]]\nname = "x"\nsha256 = "nothex"\nrole = "god"\n')
    d.notify.wait_for("READY=1")
    status = d.status()
    assert status["last_reload"]["ok"] is False
    assert "tokens.toml:3: token[0].sha256" in " ".join(status["last_reload"]["errors"])
    with httpx.Client(base_url=d.base) as c:
        assert c.get("/api/status/v1", headers={"Authorization": "Bearer sl_brand-new"}).status_code == 200

    log = d.log_lines()
    for secret in (ADMIN_TOKEN, READ_TOKEN, "sl_brand-new", "sl_wrong"):
        assert secret not in log
    runtime = "".join(p.read_text() for p in (d.state / "runtime").iterdir())
    assert ADMIN_TOKEN not in runtime and "deploy-bot" in runtime


def test_trusted_host_needs_no_token(tmp_path):
    d = make(tmp_path, trusted='["127.0.0.0/8"]')
    try:
        d.start()
        out = subprocess.run(
            ["curl", "-sS", "-H", "Content-Type: application/json", "-d",
             '{"domain": "gmail.com", "reason": "kcli-style, from a trusted host", "duration": "5m"}',
             f"{d.base}/api/admin/suspend/v1"],
            capture_output=True, text=True, check=True,
        )
        ident = json.loads(out.stdout)["id"]
        listed = d.get("/api/admin/suspend/v1").json()
        assert [s["created_by"] for s in listed if s["id"] == ident] == ["trusted=127.0.0.1"]
    finally:
        d.close()


def test_non_loopback_listen_without_tls_is_refused(tmp_path):
    d = make(tmp_path, listen_host="0.0.0.0")
    try:
        d.start(wait=False)
        assert d.stop(None) == 78
        assert "TLS" in d.log_lines() and "0.0.0.0" in d.log_lines()
    finally:
        d.close()


def test_tls_serves_the_same_sdk_calls(tmp_path, monkeypatch):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    d = make(tmp_path, tls='tls_cert = "server.pem"\ntls_key = "server.pem"')
    try:
        d.start()
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        base = f"https://127.0.0.1:{d.port}"
        client = qstash.QStash(ADMIN_TOKEN, base_url=base, retry=False)
        client.queue.pause("tls_queue")
        assert client.queue.get("tls_queue").paused
        hb = hookbridge.HookBridge(ADMIN_TOKEN, base_url=base)
        assert hb.pause_endpoint(EP).paused
        assert check(d, "tls_queue")["deliver"] is False
    finally:
        d.close()


def test_hostile_clients_on_tcp(d):
    def exchange(data):
        with socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    assert exchange(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert exchange(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    # more idle connections than the cap: the oldest give way to the next client
    idle = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(300)]
    try:
        request = f"GET /api/status/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ_TOKEN}\r\nConnection: close\r\n\r\n"
        assert exchange(request.encode()).startswith(b"HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()


def test_hookbridge_sdk_endpoint_lifecycle(d):
    """create -> get -> list -> update -> pause -> resume -> delete, as the SDK sends them;
    durable, announced, answered by the check API; a file's endpoint cannot be changed."""
    client = hookbridge.HookBridge(ADMIN_TOKEN, base_url=d.base)
    made = client.create_endpoint(
        "https://hooks.example.com/made", description="made at runtime", rate_limit_rps=5, burst=10,
        headers={"X-Team": "ops"},
    )
    assert re.fullmatch(r"ep_[a-f0-9]{32}", made.id) and made.signing_secret
    got = client.get_endpoint(made.id)
    assert (got.url, got.description, got.rate_limit_rps, got.burst, got.headers) == (
        "https://hooks.example.com/made", "made at runtime", 5, 10, {"X-Team": "ops"})
    assert made.id in {e.id for e in client.list_endpoints().endpoints}
    client.update_endpoint(made.id, url="https://hooks.example.com/moved", rate_limit_rps=7)
    moved = client.get_endpoint(made.id)
    assert moved.url == "https://hooks.example.com/moved" and moved.rate_limit_rps == 7 and moved.burst == 10
    assert client.pause_endpoint(made.id).paused is True
    assert d.get("/api/check/v1", params={"endpoint": made.id}).json()["deliver"] is False
    assert any(e["id"] == made.id and e["paused"] for e in ctl(d, "list-endpoints")["data"])

    d.stop()
    d.start()  # durable before each answer
    kept = client.get_endpoint(made.id)
    assert kept.paused and kept.url == "https://hooks.example.com/moved"
    assert client.resume_endpoint(made.id).paused is False
    client.update_endpoint(made.id, description="still here")
    assert client.get_endpoint(made.id).paused is False

    for change in (lambda: client.update_endpoint(EP, description="x"), lambda: client.delete_endpoint(EP)):
        with pytest.raises(hookbridge.HookBridgeError) as info:
            change()
        assert info.value.status_code == 409 and info.value.code == "DEFINED_IN_FILE"
    with pytest.raises(hookbridge.HookBridgeError) as info:
        client.create_endpoint("http://insecure.example.com/")
    assert info.value.status_code == 400 and "https://" in str(info.value)
    with pytest.raises(hookbridge.HookBridgeError) as info:
        client.update_endpoint(made.id, rate_limit_rps=-1)
    assert info.value.status_code == 400

    with d.client() as c, c.stream("GET", "/api/events/v1", timeout=15) as events:
        lines = events.iter_lines()
        assert json.loads(next(lines))["event"] == "hello"
        client.delete_endpoint(made.id)
        deleted = json.loads(next(lines))
        assert deleted["event"] == "endpoint_deleted" and deleted["id"] == made.id
    with pytest.raises(hookbridge.NotFoundError):
        client.get_endpoint(made.id)
    with pytest.raises(hookbridge.NotFoundError):
        client.delete_endpoint(made.id)


async def test_hookbridge_async_sdk_creates_and_deletes(d):
    client = hookbridge.AsyncHookBridge(ADMIN_TOKEN, base_url=d.base)
    made = await client.create_endpoint("https://hooks.example.com/async")
    assert (await client.get_endpoint(made.id)).url == "https://hooks.example.com/async"
    await client.update_endpoint(made.id, description="async")
    assert (await client.get_endpoint(made.id)).description == "async"
    await client.delete_endpoint(made.id)
    assert made.id not in {e.id for e in (await client.list_endpoints()).endpoints}
