"""A fleet: three real sluiced processes sharing runtime state through a real three-member etcd.

The tests run in order on one fleet (starting etcd and three daemons once
keeps the module well under a minute). Propagation is waited for on the
events stream of the node concerned, and degraded mode on the STATUS= lines
each daemon sends to its NOTIFY_SOCKET: nothing sleeps blindly. Every event
line read is checked against the OpenAPI document's Event schema.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import threading
import time
from pathlib import Path

from datetime import datetime

import httpx
import pytest
from websockets.sync.client import unix_connect

import kumod_log
from harness import TIMEOUT, Daemon, policy_request
from openapi_support import assert_valid
from test_openapi import EventReader
from test_store_etcd import EtcdCluster

PREFIX = "/fleet/"
POSTFIX_REQUEST = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=\n"
    "recipient=user@{domain}\n\n"
)


class Events:
    """A node's events stream, read in a thread; ``until`` waits for one event."""

    def __init__(self, daemon: Daemon) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.client = daemon.client()
        self.client.timeout = httpx.Timeout(TIMEOUT, read=None)
        ready = threading.Event()

        def pump() -> None:
            try:
                with self.client.stream("GET", "/api/events/v1") as stream:
                    for line in stream.iter_lines():
                        if line.strip():
                            self.lines.put(json.loads(line))
                            ready.set()
            except (httpx.HTTPError, RuntimeError):
                pass
            finally:
                ready.set()
                self.lines.put(None)

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()
        assert ready.wait(TIMEOUT)
        assert self.until("hello")

    def until(self, event: str | tuple[str, ...], timeout: float = 5.0, **fields) -> dict:
        """The next event named ``event`` (or one of them) whose fields include ``fields``."""
        names = (event,) if isinstance(event, str) else event
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {event} {fields} in {timeout}s; seen {self.seen}") from None
            if message is None:
                raise AssertionError(f"stream ended before {event}; seen {self.seen}")
            self.seen.append(message)
            # changes made on other nodes are announced as the contract says
            assert_valid(EventReader.SCHEMA, message, f"events line {message}")
            if message["event"] in names and all(message.get(k) == v for k, v in fields.items()):
                return message

    def close(self) -> None:
        self.client.close()


class Node:
    def __init__(self, root: Path, name: str, endpoints: list[str]) -> None:
        self.name = name
        (root / name).mkdir()
        endpoints_toml = ", ".join(f'"{e}"' for e in endpoints)
        self.d = Daemon(
            root / name,
            config_extra=f'[state]\nbackend = "etcd"\n[state.etcd]\nendpoints = [{endpoints_toml}]\n'
            f'prefix = "{PREFIX}"\n',
        )
        text = self.d.config.read_text()
        assert '[postfix]\nsocket = ""\n' in text
        self.d.config.write_text(text.replace('[postfix]\nsocket = ""\n', '[postfix]\nsocket = "run/policy.sock"\n'))
        self.events: Events | None = None

    def start(self) -> Node:
        self.d.start()
        self.events = Events(self.d)
        return self

    def kill(self) -> None:
        self.events.close()
        self.d.kill()

    def stop(self) -> None:
        self.events.close()
        assert self.d.stop() == 0

    def decision(self, queue_name: str) -> dict:
        response = self.d.get("/api/check/v1", params={"queue": queue_name})
        assert response.status_code == 200, response.text
        return response.json()

    def held(self, queue_name: str) -> bool:
        return not self.decision(queue_name)["deliver"]

    def postfix(self, domain: str) -> str:
        """The Postfix policy server's action for a recipient at ``domain``."""
        return policy_request(self.d.dir / "run" / "policy.sock", POSTFIX_REQUEST.format(domain=domain)).decode().strip()

    def suspend(self, **body) -> httpx.Response:
        return self.d.post("/api/admin/suspend/v1", json={"reason": "fleet test", **body})

    def drain_notifications(self) -> None:
        self.d.notify.drain()

    def wait_status(self, degraded: bool, timeout: float = 10.0) -> str:
        """The next STATUS= line that says (or stops saying) ``degraded``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no STATUS= with degraded={degraded}; seen {self.d.notify.seen[-5:]}")
            try:
                message = self.d.notify.next(remaining)
            except (TimeoutError, socket.timeout):
                continue
            for line in message.split("\n"):
                if line.startswith("STATUS=") and line.endswith("; degraded") == degraded:
                    return line


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    etcd = EtcdCluster(root / "etcd", size=3)
    nodes: list[Node] = []
    try:
        etcd.start()
        nodes.extend(Node(root, name, etcd.endpoints) for name in "abc")
        for node in nodes:
            node.start()
        yield etcd, nodes
    finally:
        for node in nodes:
            if node.events is not None:
                node.events.close()
            node.d.close()
        etcd.stop()
        etcd.close()


def test_a_suspension_made_on_a_holds_on_b_and_c_and_cancelling_it_on_c_lifts_it_everywhere(fleet):
    """Through the check API and the Postfix policy socket of every node, with an event on each."""
    _, (a, b, c) = fleet
    response = a.suspend(domain="gmail.example", duration="1h")
    assert response.status_code == 200, response.text
    ident = response.json()["id"]
    for node in (a, b, c):
        added = node.events.until("suspension_added", id=ident)
        assert added["domain"] == "gmail.example"
        decision = node.decision("tenant@gmail.example")
        assert not decision["deliver"] and decision["holds"][0]["id"] == ident
        assert node.postfix("gmail.example").startswith("action=DEFER_IF_PERMIT 4.7.1 ")
    with c.d.client() as client:
        response = client.request("DELETE", "/api/admin/suspend/v1", json={"id": ident})
    assert response.status_code == 200, response.text
    for node in (a, b, c):
        node.events.until("suspension_removed", id=ident)
        assert not node.held("gmail.example")
        assert node.postfix("gmail.example") == "action=DUNNO"


def test_a_queue_pause_on_b_reaches_a_and_c(fleet):
    _, (a, b, c) = fleet
    response = b.d.post("/api/admin/queues/news:acme@example.com/pause", json={"reason": "warm-up"})
    assert response.status_code == 200, response.text
    for node in (a, b, c):
        node.events.until("queue_paused", queue="news:acme@example.com")
        [hold] = node.decision("news:acme@example.com")["holds"]
        assert hold["kind"] == "queue_pause" and hold["reason"] == "warm-up"
    assert a.d.post("/api/admin/queues/news:acme@example.com/resume").status_code == 200
    for node in (a, b, c):
        node.events.until("queue_resumed", queue="news:acme@example.com")
        assert not node.held("news:acme@example.com")


def test_qstash_schedules_flow_control_keys_and_hookbridge_endpoints_are_shared(fleet):
    """Made through QStash's and HookBridge's routes on one node, held and answered on every node."""
    _, (a, b, c) = fleet
    headers = {"Upstash-Cron": "*/5 * * * *", "Upstash-Schedule-Id": "fleet-report", "Upstash-Label": "fleet"}
    with a.d.client() as client:
        response = client.post("/v2/schedules/https://app.example.com/report", headers=headers, content=b"{}")
    assert response.status_code == 200 and response.json() == {"scheduleId": "fleet-report"}, response.text
    for node in (a, b, c):
        node.events.until("schedule_created", id="fleet-report")
        got = node.d.get("/v2/schedules/fleet-report").json()
        assert got["label"] == "fleet" and got["destination"] == "https://app.example.com/report"
    assert b.d.post("/v2/schedules/fleet-report/pause").status_code == 200
    for node in (a, b, c):
        node.events.until("schedule_paused", id="fleet-report")
        assert node.d.get("/api/check/v1", params={"schedule": "fleet-report"}).json()["run"] is False
    assert c.d.post("/v2/flowControl/Fleet-Key/pause").status_code == 200
    for node in (a, b, c):
        node.events.until("flow_control_paused", key="Fleet-Key")
        assert node.d.get("/api/check/v1", params={"flow_control": "Fleet-Key"}).json()["deliver"] is False
    with a.d.client() as client:
        assert client.delete("/v2/schedules/fleet-report").status_code == 200
    assert a.d.post("/v2/flowControl/Fleet-Key/resume").status_code == 200
    for node in (a, b, c):
        node.events.until("schedule_deleted", id="fleet-report")
        node.events.until("flow_control_resumed", key="Fleet-Key")
        assert node.d.get("/v2/schedules/fleet-report").status_code == 404

    made = b.d.post("/v1/endpoints", json={"url": "https://hooks.example.com/fleet"})
    assert made.status_code == 201, made.text
    ident = made.json()["data"]["id"]
    for node in (a, b, c):
        node.events.until("endpoint_created", id=ident)
        assert node.d.get(f"/v1/endpoints/{ident}").json()["data"]["url"] == "https://hooks.example.com/fleet"
    assert c.d.post(f"/v1/endpoints/{ident}/pause").status_code == 200
    for node in (a, b, c):
        node.events.until("endpoint_paused", id=ident)
        assert node.d.get("/api/check/v1", params={"endpoint": ident}).json()["deliver"] is False
    with a.d.client() as client:
        assert client.delete(f"/v1/endpoints/{ident}").status_code == 200
    for node in (a, b, c):
        node.events.until("endpoint_deleted", id=ident)


def _load_rules(node: Node, text: str | None) -> None:
    """Write (or, with None, remove) the node's automation rule file and wait until it is in force."""
    node.drain_notifications()
    if text is None:
        (node.d.policy / "50-auto.toml").unlink()
    else:
        node.d.write("50-auto.toml", text)
    wanted = 0 if text is None else 1
    while node.d.status()["counts"]["automation_rules"] != wanted:
        node.d.notify.wait_for("READY=1")


def test_a_hold_an_automation_rule_makes_on_a_is_enforced_on_b_and_c_and_extended_from_b(fleet):
    """kumod's records posted to one node hold at every node's front doors; a match posted
    to another node lengthens the same hold; cancelling it anywhere lifts it everywhere."""
    _, (a, b, c) = fleet
    rule = '[[automation]]\ndomain = "auto.example"\nregex = "4\\\\.7\\\\.28"\naction = "Suspend"\nduration = "1h"\n'
    for node in (a, b):
        _load_rules(node, rule)
    now = time.time()
    sent = kumod_log.body(kumod_log.record(recipient="x@auto.example", queue="acme@auto.example", at=now - 10))
    response = a.d.post("/publish_log_v1", content=sent, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    (held,) = response.json()["holds"]
    for node in (a, b, c):
        added = node.events.until("suspension_added", id=held["id"])
        assert added["domain"] == "auto.example" and added["by"] == "automation 50-auto.toml:1"
        assert node.held("beta@auto.example")
        assert node.postfix("auto.example").startswith("action=DEFER_IF_PERMIT 4.7.1 automation rule")
    later = kumod_log.body(kumod_log.record(recipient="y@auto.example", queue="beta@auto.example", at=now))
    response = b.d.post("/publish_log_v1", content=later, headers={"content-type": "application/json"})
    (extended,) = response.json()["holds"]
    assert extended["id"] == held["id"] and extended["change"] == "extended"
    for node in (a, b, c):
        node.events.until("suspension_updated", id=held["id"])
        (hold,) = node.decision("auto.example")["holds"]
        assert hold["expires"].startswith(extended["expires"][:19])
    with c.d.client() as client:
        assert client.request("DELETE", "/api/admin/suspend/v1", json={"id": held["id"]}).status_code == 200
    for node in (a, b, c):
        node.events.until("suspension_removed", id=held["id"])
        assert not node.held("auto.example")
    for node in (a, b):
        _load_rules(node, None)


def test_a_hold_a_rule_makes_on_a_reaches_a_websocket_subscriber_on_b(fleet):
    """kumod following node b (/subscribe_event_v1) is sent the hold a record posted to
    node a made, as TSA's SubscriptionItem frame, and its lifting when it is cancelled on c."""
    _, (a, b, c) = fleet
    rule = '[[automation]]\ndomain = "ws.example"\nregex = "4\\\\.7\\\\.28"\naction = "SuspendTenant"\nduration = "1h"\n'
    _load_rules(a, rule)
    with unix_connect(str(b.d.admin), "ws://sluice/subscribe_event_v1", open_timeout=TIMEOUT, proxy=None) as ws:
        sent = kumod_log.body(kumod_log.record(recipient="x@ws.example", queue="news:acme@ws.example"))
        response = a.d.post("/publish_log_v1", content=sent, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        (held,) = response.json()["holds"]
        frame = _frame_for(ws, held["id"])
        assert frame == {
            "rule_hash": held["id"], "tenant": "acme", "domain": "ws.example", "campaign": None,
            "reason": frame["reason"], "expires": frame["expires"],
        }
        assert frame["reason"].startswith("automation rule: 4\\.7\\.28 tenant=acme domain=ws.example (50-auto.toml:1)")
        assert abs(datetime.fromisoformat(frame["expires"]).timestamp()
                   - datetime.fromisoformat(held["expires"]).timestamp()) < 1
        with c.d.client() as client:
            assert client.request("DELETE", "/api/admin/suspend/v1", json={"id": held["id"]}).status_code == 200
        lifted = _frame_for(ws, held["id"])
        assert datetime.fromisoformat(lifted["expires"]) < datetime.fromisoformat(frame["expires"])
    _load_rules(a, None)


def _frame_for(ws, ident: str) -> dict:
    """The next SubscriptionItem frame for the hold ``ident`` (the set sent first may hold others)."""
    while True:
        data = json.loads(ws.recv(timeout=TIMEOUT))
        assert list(data) == ["SchedQSuspension"], data
        fields = data["SchedQSuspension"]
        assert list(fields) == ["rule_hash", "tenant", "domain", "campaign", "reason", "expires"], fields
        if fields["rule_hash"] == ident:
            return fields


def test_the_same_criteria_posted_on_every_node_at_once_get_one_id(fleet):
    _, nodes = fleet
    for round_ in range(3):
        barrier = threading.Barrier(len(nodes))
        ids: list[str] = []

        def post(node: Node) -> None:
            with node.d.client() as client:
                barrier.wait()
                response = client.post(
                    "/api/admin/suspend/v1",
                    json={"tenant": f"race{round_}", "reason": f"from {node.name}"},
                )
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])

        threads = [threading.Thread(target=post, args=(node,)) for node in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == 3 and len(set(ids)) == 1, ids
        for node in nodes:
            # a node that lost the race updated the winner's suspension, and says so
            node.events.until(("suspension_added", "suspension_updated"), id=ids[0])
            listed = [s for s in node.d.get("/api/admin/suspend/v1").json() if s["tenant"] == f"race{round_}"]
            assert [s["id"] for s in listed] == ids[:1]


def test_a_killed_node_catches_up_when_it_comes_back(fleet):
    _, (a, b, c) = fleet
    b.kill()
    first = a.suspend(domain="while-b-was-down.example").json()["id"]
    assert c.d.post("/api/admin/queues/down.example/pause").status_code == 200
    c.events.until("suspension_added", id=first)
    b.start()
    assert b.held("while-b-was-down.example") and b.held("down.example")
    # and it follows again
    second = c.suspend(domain="after-b-came-back.example").json()["id"]
    b.events.until("suspension_added", id=second)


def test_losing_one_etcd_member_keeps_changes_flowing(fleet):
    """The leader itself is killed; the nodes move to another member of the endpoints list."""
    etcd, (a, b, c) = fleet
    status = etcd.call("/v3/maintenance/status", {})
    leader = next(
        i for i, m in enumerate(etcd.members)
        if httpx.post(m.url + "/v3/maintenance/status", json={}).json()["header"]["member_id"] == status["leader"]
    )
    etcd.stop(leader, sig=signal.SIGKILL)
    response = a.suspend(domain="one-member-down.example")
    assert response.status_code == 200, response.text
    ident = response.json()["id"]
    for node in (a, b, c):
        node.events.until("suspension_added", id=ident, timeout=10)
    assert c.d.post("/api/admin/queues/one-member-down.example/pause").status_code == 200
    for node in (a, b, c):
        node.events.until("queue_paused", queue="one-member-down.example", timeout=10)
        assert node.held("one-member-down.example")
        assert node.d.status()["degraded"] is False
    etcd.start(leader)


def test_without_etcd_every_node_serves_the_last_state_refuses_changes_and_recovers(fleet):
    etcd, (a, b, c) = fleet
    held = a.suspend(domain="before-the-outage.example").json()["id"]
    for node in (a, b, c):
        node.events.until("suspension_added", id=held)
        node.drain_notifications()
    etcd.stop()
    for node in (a, b, c):
        assert "; degraded" in node.wait_status(degraded=True)
        assert node.d.status()["degraded"] is True
        assert "sluice_degraded 1.0" in node.d.get("/metrics").text
        assert node.held("before-the-outage.example")  # a hold is never dropped
        assert node.postfix("before-the-outage.example").startswith("action=DEFER_IF_PERMIT")
        response = node.suspend(domain="during-the-outage.example")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "STATE_UNAVAILABLE"
        response = node.d.post("/api/admin/queues/during.example/pause")
        assert response.status_code == 503
    # a node started while etcd is down serves its local copy
    b.stop()
    b.d.notify.seen.clear()
    b.start()
    assert b.d.status()["degraded"] is True
    assert b.held("before-the-outage.example") and b.held("while-b-was-down.example")
    assert b.suspend(domain="x.example").status_code == 503

    for node in (a, b, c):
        node.drain_notifications()
    etcd.start()
    for node in (a, b, c):
        node.wait_status(degraded=False, timeout=15)
        assert node.d.status()["degraded"] is False
    with c.d.client() as client:
        response = client.request("DELETE", "/api/admin/suspend/v1", json={"id": held})
    assert response.status_code == 200, response.text
    for node in (a, b, c):
        node.events.until("suspension_removed", id=held)
        assert not node.held("before-the-outage.example")
