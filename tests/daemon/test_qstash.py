"""QStash's own clients against the real daemon: the qstash SDK's upstream tests
for queues, schedules and flow control (sync and async), @upstash/qstash through
node, QStash names kept verbatim, and QStash's error shape on every /v2 answer.

The upstream tests (upstash/qstash-py 3.4.0, tests/test_queue.py,
tests/test_schedules.py, tests/test_flow_control.py and their asyncio twins)
are replayed as written, with the client pointed at sluice; the flow-control
ones publish a message first to make the key exist, which sluice (keeping no
messages) needs not: any key can be asked about.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import qstash
from qstash.message import FlowControl

from harness import ROOT, unavailable
from test_seeds_tcp import ADMIN_TOKEN, READ_TOKEN, check, ctl, make


@pytest.fixture
def d(tmp_path):
    daemon = make(tmp_path)
    daemon.start()
    yield daemon
    daemon.close()


@pytest.fixture
def client(d):
    return qstash.QStash(ADMIN_TOKEN, base_url=d.base, retry=False)


@pytest.fixture
def async_client(d):
    return qstash.AsyncQStash(ADMIN_TOKEN, base_url=d.base, retry=False)


# -- upstream tests/test_queue.py ---------------------------------------------


def test_upstream_queue(client):
    name = "test_queue"
    client.queue.upsert(queue=name, parallelism=1)
    queue = client.queue.get(name)
    assert queue.name == name
    assert queue.parallelism == 1
    client.queue.upsert(queue=name, parallelism=2)
    queue = client.queue.get(name)
    assert queue.name == name
    assert queue.parallelism == 2
    all_queues = client.queue.list()
    assert any(True for q in all_queues if q.name == name)
    client.queue.delete(name)
    all_queues = client.queue.list()
    assert not any(True for q in all_queues if q.name == name)


def test_upstream_queue_pause_resume(client):
    name = "test_queue"
    client.queue.upsert(queue=name)
    assert client.queue.get(name).paused is False
    client.queue.pause(name)
    assert client.queue.get(name).paused is True
    client.queue.resume(name)
    assert client.queue.get(name).paused is False
    client.queue.upsert(name, paused=True)
    assert client.queue.get(name).paused is True
    client.queue.upsert(name, paused=False)
    assert client.queue.get(name).paused is False


# -- upstream tests/test_schedules.py -----------------------------------------


def test_upstream_schedule_lifecycle(client):
    schedule_id = client.schedule.create_json(
        cron="1 1 1 1 1",
        destination="https://mock.httpstatus.io/200",
        body={"ex_key": "ex_value"},
        retry_delay="5000 * retried",
    )
    assert len(schedule_id) > 0
    res = client.schedule.get(schedule_id)
    assert res.schedule_id == schedule_id
    assert res.cron == "1 1 1 1 1"
    assert res.retry_delay_expression == "5000 * retried"
    assert any(s.schedule_id == schedule_id for s in client.schedule.list())
    client.schedule.delete(schedule_id)
    assert not any(s.schedule_id == schedule_id for s in client.schedule.list())


def test_upstream_schedule_pause_resume(client):
    schedule_id = client.schedule.create_json(
        cron="1 1 1 1 1", destination="https://mock.httpstatus.io/200", body={"ex_key": "ex_value"}
    )
    res = client.schedule.get(schedule_id)
    assert res.schedule_id == schedule_id and res.cron == "1 1 1 1 1" and res.paused is False
    client.schedule.pause(schedule_id)
    assert client.schedule.get(schedule_id).paused is True
    client.schedule.resume(schedule_id)
    assert client.schedule.get(schedule_id).paused is False


def test_upstream_schedule_with_flow_control(client):
    schedule_id = client.schedule.create_json(
        cron="1 1 1 1 1",
        destination="https://mock.httpstatus.io/200",
        body={"ex_key": "ex_value"},
        flow_control=FlowControl(key="flow-key", parallelism=2),
    )
    flow_control = client.schedule.get(schedule_id).flow_control
    assert flow_control is not None
    assert flow_control.key == "flow-key"
    assert flow_control.parallelism == 2
    assert flow_control.rate is None
    assert flow_control.period == 1


def test_upstream_schedule_enqueue_and_labels(client):
    schedule_id = client.schedule.create_json(
        cron="1 1 1 1 1", destination="https://mock.httpstatus.io/200", body={"key": "value"},
        queue="schedule-queue",
    )
    assert client.schedule.get(schedule_id).queue == "schedule-queue"
    schedule_id = client.schedule.create(
        cron="*/5 * * * *", destination="https://mock.httpstatus.io/200",
        body="test-schedule-with-label", label="test-schedule-label",
    )
    res = client.schedule.get(schedule_id)
    assert res.schedule_id == schedule_id and res.label == "test-schedule-label"
    schedule_id = client.schedule.create_json(
        cron="*/10 * * * *", destination="https://mock.httpstatus.io/200",
        body={"schedule": "json-test", "with_label": True}, label="test-schedule-json-label",
    )
    assert client.schedule.get(schedule_id).label == "test-schedule-json-label"


# -- upstream tests/asyncio twins (trio drives httpx's async client) ------------


async def test_upstream_async_queue_and_schedules(async_client):
    name = "test_queue"
    await async_client.queue.upsert(queue=name, parallelism=1)
    assert (await async_client.queue.get(name)).parallelism == 1
    await async_client.queue.upsert(queue=name, parallelism=2)
    assert (await async_client.queue.get(name)).parallelism == 2
    await async_client.queue.pause(name)
    assert (await async_client.queue.get(name)).paused is True
    await async_client.queue.resume(name)
    assert (await async_client.queue.get(name)).paused is False
    await async_client.queue.delete(name)
    assert not any(q.name == name for q in await async_client.queue.list())

    schedule_id = await async_client.schedule.create_json(
        cron="1 1 1 1 1", destination="https://mock.httpstatus.io/200", body={"ex_key": "ex_value"}
    )
    res = await async_client.schedule.get(schedule_id)
    assert res.schedule_id == schedule_id and res.cron == "1 1 1 1 1"
    assert any(s.schedule_id == schedule_id for s in await async_client.schedule.list())
    await async_client.schedule.pause(schedule_id)
    assert (await async_client.schedule.get(schedule_id)).paused is True
    await async_client.schedule.resume(schedule_id)
    assert (await async_client.schedule.get(schedule_id)).paused is False
    await async_client.schedule.delete(schedule_id)
    assert not any(s.schedule_id == schedule_id for s in await async_client.schedule.list())

    key = "fc-async"
    await async_client.flow_control.pause(key)
    assert (await async_client.flow_control.get(key)).is_paused is True
    await async_client.flow_control.resume(key)
    assert (await async_client.flow_control.get(key)).is_paused is False
    info = await async_client.flow_control.get_global_parallelism()
    assert isinstance(info.parallelism_max, int)


# -- upstream tests/test_flow_control.py --------------------------------------


def test_upstream_flow_control(client, d):
    key = "fc-info-1"
    single = client.flow_control.get(key)
    assert single.key == key and single.wait_list_size == 0 and single.parallelism_count == 0
    info = client.flow_control.get_global_parallelism()
    assert isinstance(info.parallelism_max, int) and isinstance(info.parallelism_count, int)

    client.flow_control.pause(key)
    assert client.flow_control.get(key).is_paused is True
    held = d.get("/api/check/v1", params={"flow_control": key}).json()
    assert held["deliver"] is False and held["holds"][0]["kind"] == "flow_control_pause"
    client.flow_control.resume(key)
    assert client.flow_control.get(key).is_paused is False
    assert d.get("/api/check/v1", params={"flow_control": key}).json()["deliver"] is True

    client.flow_control.pin(key, {"parallelism": 3, "rate": 20, "period": 120})
    pinned = client.flow_control.get(key)
    assert pinned.is_pinned_parallelism is True and pinned.is_pinned_rate is True
    assert (pinned.parallelism_max, pinned.rate_max, pinned.rate_period) == (3, 20, 120)
    decision = d.get("/api/check/v1", params={"flow_control": key}).json()
    assert decision["deliver"] is True
    assert (decision["parallelism"], decision["rate"], decision["period"]) == (3, 20, 120)
    client.flow_control.unpin(key, {"parallelism": True})
    partial = client.flow_control.get(key)
    assert partial.is_pinned_parallelism is False and partial.is_pinned_rate is True
    client.flow_control.unpin(key, {"parallelism": True, "rate": True})
    unpinned = client.flow_control.get(key)
    assert unpinned.is_pinned_parallelism is False and unpinned.is_pinned_rate is False
    client.flow_control.reset_rate(key)
    assert client.flow_control.get(key).rate_count == 0


# -- what sluice adds: durable, announced, listed, names verbatim ------------


def test_a_schedule_made_through_qstash_is_a_runtime_object(client, d):
    with d.client() as c, c.stream("GET", "/api/events/v1", timeout=15) as events:
        lines = events.iter_lines()
        assert json.loads(next(lines))["event"] == "hello"
        schedule_id = client.schedule.create(
            destination="https://app.example.com/report",
            cron="0 * * * *",
            body=b"\xff\x00binary",
            method="PUT",
            headers={"X-Tenant": "acme"},
            callback_headers={"X-Cb": "1"},
            failure_callback_headers={"X-Fail": "2"},
            retries=5,
            retry_delay="1000",
            callback="https://app.example.com/cb",
            failure_callback="https://app.example.com/failed",
            delay="90s",
            timeout=30,
            schedule_id="hourly-report",
            queue="Reports.Q",
            flow_control=FlowControl(key="reports", parallelism=2, rate=10, period="1m"),
            label="reports",
        )
        assert schedule_id == "hourly-report"
        created = json.loads(next(lines))
        assert created["event"] == "schedule_created" and created["id"] == "hourly-report"
        assert created["by"] == "token:deploy-bot" or "deploy-bot" in created["by"]

        client.schedule.pause(schedule_id)
        paused = json.loads(next(lines))
        assert paused["event"] == "schedule_paused" and paused["id"] == schedule_id

    got = client.schedule.get(schedule_id)
    assert (got.method, got.retries, got.delay, got.timeout) == ("PUT", 5, 90, 30)
    assert got.body_base64 and got.body is None
    assert got.headers == {"X-Tenant": ["acme"]}
    assert got.callback_headers == {"X-Cb": ["1"]} and got.failure_callback_headers == {"X-Fail": ["2"]}
    assert got.callback == "https://app.example.com/cb"
    assert got.failure_callback == "https://app.example.com/failed"
    assert got.queue == "Reports.Q" and got.label == "reports" and got.paused
    assert (got.flow_control.parallelism, got.flow_control.rate, got.flow_control.period) == (2, 10, 60)
    assert d.get("/api/check/v1", params={"schedule": schedule_id}).json()["run"] is False
    listed = {s["id"]: s for s in ctl(d, "list-schedules")}
    assert listed["hourly-report"]["paused"] and listed["hourly-report"]["source"] == "runtime"

    # posting the same id again replaces its settings and keeps its pause
    client.schedule.create(destination="https://app.example.com/report2", cron="5 * * * *",
                           schedule_id="hourly-report")
    again = client.schedule.get(schedule_id)
    assert again.destination == "https://app.example.com/report2" and again.paused
    assert again.created_at == got.created_at

    d.stop()
    d.start()
    kept = client.schedule.get(schedule_id)
    assert kept.cron == "5 * * * *" and kept.paused  # durable before the answer

    with pytest.raises(qstash.errors.QStashError) as info:
        client.schedule.delete("weekly-digest")  # the policy file's
    assert "409" in str(info.value) and "10-a.toml line" in str(info.value)
    client.schedule.delete(schedule_id)
    with pytest.raises(qstash.errors.QStashError, match="404"):
        client.schedule.get(schedule_id)
    with pytest.raises(qstash.errors.QStashError, match="400"):
        client.schedule.create(destination="https://x.example/", cron="not a cron")
    with pytest.raises(qstash.errors.QStashError, match="400"):
        client.schedule.create(destination="mailto:someone", cron="* * * * *")


def test_flow_control_holds_are_durable_and_listed(client, d):
    client.flow_control.pause("Orders-EU")
    client.flow_control.pin("pinned.key", {"rate": 5})
    d.stop()
    d.start()
    assert client.flow_control.get("Orders-EU").is_paused is True
    assert client.flow_control.get("pinned.key").rate_max == 5
    listed = {c["flowControlKey"]: c for c in d.get("/v2/flowControl").json()}
    assert listed["Orders-EU"]["isPaused"] and listed["pinned.key"]["isPinnedRate"]
    out = {c["key"]: c for c in ctl(d, "list-flow-controls")}
    assert out["Orders-EU"]["paused"] and out["pinned.key"]["rate"] == 5
    assert ctl(d, "check", "--flow-control", "Orders-EU")["deliver"] is False
    ctl(d, "resume-flow-control", "Orders-EU")
    assert client.flow_control.get("Orders-EU").is_paused is False
    ctl(d, "pause-flow-control", "pinned.key", "--reason", "provider throttling")
    assert check_key(d, "pinned.key")["holds"][0]["reason"] == "provider throttling"
    assert check_key(d, "pinned.key")["rate"] == 5  # the pin stays with the pause
    with pytest.raises(qstash.errors.QStashError, match="400"):
        client.flow_control.pause("bad key!")


def test_a_pin_out_of_bounds_is_400_and_the_daemon_starts_again(d):
    """A pin the stored state could not be read back with is refused (it was
    stored, and the daemon then refused to start on its own state)."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for query in ("parallelism=0", "rate=99999999999", "period=0s", "period=30d"):
        r = d.post(f"/v2/flowControl/bounded/pin?{query}", headers=auth)
        assert r.status_code == 400 and "must be from 1 to" in r.json()["error"], (query, r.text)
    assert d.post("/v2/flowControl/bounded/pin?rate=5&period=1m", headers=auth).status_code == 200
    d.stop()
    d.start()
    assert check_key(d, "bounded")["period"] == 60


def test_a_flow_control_key_edited_into_a_policy_file_holds_after_reload(client, d):
    """Editing an existing file to pause a key is a change a reload applies
    (one that changed only a flow-control table used to be dropped as no change)."""
    text = (d.policy / "10-a.toml").read_text()
    d.write("10-a.toml", text + '\n[[flow_control]]\nkey = "Orders-EU"\npaused = true\nreason = "file hold"\n')
    result = d.post("/api/admin/reload/v1").json()
    assert result["ok"]
    held = check_key(d, "Orders-EU")
    assert held["deliver"] is False and held["holds"][0]["source"].startswith("10-a.toml:")
    assert client.flow_control.get("Orders-EU").is_paused is True
    d.write("10-a.toml", text)
    d.post("/api/admin/reload/v1")
    assert check_key(d, "Orders-EU")["deliver"] is True


def check_key(d, key):
    return d.get("/api/check/v1", params={"flow_control": key}).json()


def test_qstash_queue_names_are_kept_verbatim(client, d):
    long_name = "Q" * 100
    client.queue.upsert("MyQueue", parallelism=3, paused=True)
    client.queue.pause(long_name)
    assert client.queue.get("MyQueue").name == "MyQueue"
    assert {"MyQueue", long_name} <= {q.name for q in client.queue.list()}
    with pytest.raises(qstash.errors.QStashError, match="404"):
        client.queue.get("myqueue")  # case is kept: another queue
    held = check(d, "MyQueue")
    assert held["queue"] == "MyQueue" and held["deliver"] is False and held["parallelism"] == 3
    assert check(d, long_name)["deliver"] is False
    assert check(d, "myqueue")["deliver"] is True
    assert {"MyQueue", long_name} <= {q["name"] for q in ctl(d, "list-queues")}
    ctl(d, "resume-queue", "MyQueue")  # sluicectl finds it by the name it is held under
    assert check(d, "MyQueue")["deliver"] is True
    for bad in ("bad name", "a/b", "ü-queue", "x" * 201):
        r = d.post(f"/v2/queues/{bad}/pause", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code in (400, 404) and set(r.json()) == {"error"}, bad
    r = d.post("/v2/queues/bad%20name/pause", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 400 and "letters, digits" in r.json()["error"]


def test_every_v2_answer_is_in_qstash_shape(d):
    with httpx.Client(base_url=d.base) as c:
        for method, path, token, status in (
            ("GET", "/v2/nothing-here", ADMIN_TOKEN, 404),
            ("GET", "/v2/queues", None, 401),
            ("GET", "/v2/queues", "sl_wrong", 401),
            ("POST", "/v2/queues/q/pause", READ_TOKEN, 403),
            ("PUT", "/v2/queues/q", ADMIN_TOKEN, 405),
            ("GET", "/v2/schedules/nope", ADMIN_TOKEN, 404),
            ("POST", "/v2/flowControl/k/pin", ADMIN_TOKEN, 400),
        ):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = c.request(method, path, headers=headers)
            assert r.status_code == status, (method, path, r.text)
            assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str), (method, path)


# -- @upstash/qstash through node ----------------------------------------------

JS_PACKAGE = "@upstash/qstash@2.12.0"
JS_CACHE = ROOT / ".cache" / "npm-qstash"

JS_SCRIPT = r"""
const { Client } = require("@upstash/qstash");
const assert = require("node:assert/strict");
(async () => {
  const c = new Client({ token: process.env.TOKEN, baseUrl: process.env.BASE, retry: false });
  const q = c.queue({ queueName: "JsQueue" });
  await q.upsert({ parallelism: 2 });
  await q.pause();
  const got = await q.get();
  assert.equal(got.name, "JsQueue"); assert.equal(got.paused, true); assert.equal(got.parallelism, 2);
  await q.resume();
  const { scheduleId } = await c.schedules.create({
    destination: "https://app.example.com/js", cron: "*/5 * * * *", body: "hi",
    retries: 2, delay: 10, queueName: "JsQueue", label: "js",
    flowControl: { key: "js-key", parallelism: 4, rate: 8, period: "10s" },
  });
  let s = await c.schedules.get(scheduleId);
  assert.equal(s.cron, "*/5 * * * *"); assert.equal(s.retries, 2); assert.equal(s.delay, 10);
  assert.equal(s.queueName, "JsQueue"); assert.equal(s.label, "js"); assert.equal(s.ratePerSecond, 8);
  assert.ok((await c.schedules.list()).some((x) => x.scheduleId === scheduleId));
  await c.schedules.pause({ schedule: scheduleId });
  assert.equal((await c.schedules.get(scheduleId)).isPaused, true);
  await c.schedules.resume({ schedule: scheduleId });
  assert.equal((await c.schedules.get(scheduleId)).isPaused, false);
  await c.schedules.delete(scheduleId);
  assert.ok(!(await c.schedules.list()).some((x) => x.scheduleId === scheduleId));
  await c.flowControl.pause("js-key");
  assert.equal((await c.flowControl.get("js-key")).isPaused, true);
  await c.flowControl.resume("js-key");
  await c.flowControl.pin("js-key", { parallelism: 3, rate: 20, period: 120 });
  const pinned = await c.flowControl.get("js-key");
  assert.equal(pinned.isPinnedParallelism, true); assert.equal(pinned.rateMax, 20);
  await c.flowControl.unpin("js-key", { parallelism: true, rate: true });
  assert.equal((await c.flowControl.get("js-key")).isPinnedRate, false);
  await c.flowControl.resetRate("js-key");
  const g = await c.flowControl.getGlobalParallelism();
  assert.equal(typeof g.parallelismMax, "number");
  console.log("ok");
})().catch((e) => { console.error(e); process.exit(1); });
"""


def js_client() -> Path:
    """The package installed once under .cache/ (npm from the registry)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("node and npm are not installed")
    if not (JS_CACHE / "node_modules" / "@upstash" / "qstash" / "package.json").exists():
        JS_CACHE.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(JS_CACHE), JS_PACKAGE],
            capture_output=True, text=True, timeout=300,
        )
        if out.returncode != 0:
            unavailable(f"npm install {JS_PACKAGE} failed: {out.stderr[-500:]}")
    return JS_CACHE


def test_upstash_qstash_js_client(d):
    cache = js_client()
    out = subprocess.run(
        ["node", "-e", JS_SCRIPT],
        capture_output=True, text=True, timeout=60, cwd=cache,
        env={**os.environ, "TOKEN": ADMIN_TOKEN, "BASE": d.base, "NODE_PATH": str(cache / "node_modules")},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
