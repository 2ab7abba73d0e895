"""docs/openapi.yaml is kept true for the seeds' own APIs and for the TCP listener.

The real daemon runs with a TCP listener and a tokens file (as
test_seeds_tcp.py builds it), and every QStash v2 and HookBridge v1
operation is called over TCP with a bearer token, for its success and its
errors, each answer checked against the document by ``Api.call``
(tests/daemon/openapi_support.py). Then every documented operation, native
or not, is called over TCP without a token (401), and every change with a
read token (403), each in its API's error shape. The same routes on the unix
socket need no token; one call of each API there is enough to show it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import Daemon
from openapi_support import (
    EP_ACTIVE,
    EP_FILE_PAUSED,
    EP_UNKNOWN,
    Api,
    check_operation,
    concrete,
    error_text,
    is_qstash,
    is_seeds,
    is_websocket,
    operations,
    pointer,
    resolve,
    schema_errors,
    tcp_daemon,
)

ADMIN_TOKEN = "sl_openapi-admin-token-value"
READ_TOKEN = "sl_openapi-read-token-value"
TIMEOUT = 15.0


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """sluiced on FILES, with a TCP listener and two tokens: one admin, one read."""
    daemon = tcp_daemon(
        tmp_path_factory.mktemp("openapi-seeds"),
        {"openapi-admin": (ADMIN_TOKEN, "admin"), "openapi-read": (READ_TOKEN, "read")},
    )
    daemon.start()
    yield daemon
    daemon.close()


def tcp_client(d: Daemon, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=d.base, headers=headers, timeout=TIMEOUT)  # type: ignore[attr-defined]


@pytest.fixture
def api(d: Daemon) -> Iterator[Api]:
    with tcp_client(d, ADMIN_TOKEN) as client:
        yield Api(client)


def sample_body(method: str, template: str) -> dict[str, Any]:
    """Request kwargs a route would take (its token is what is under test, not its body)."""
    if (method, template) == ("POST", "/v2/queues"):
        return {"json": {"queueName": "token_queue", "paused": False}}
    if (method, template) == ("POST", "/api/admin/suspend/v1"):
        return {"json": {"domain": "token.example", "reason": "r"}}
    if (method, template) == ("DELETE", "/api/admin/suspend/v1"):
        return {"json": {"id": "00000000-0000-4000-8000-000000000000"}}
    if (method, template) == ("POST", "/api/check/v1"):
        return {"json": {"queues": ["a.example"]}}
    if template == "/api/check/v1":
        return {"params": {"queue": "a.example"}}
    if (method, template) == ("POST", "/v2/schedules/{scheduleId}"):
        return {"headers": {"Upstash-Cron": "*/5 * * * *", "Upstash-Schedule-Id": "token-schedule"}}
    if (method, template) == ("POST", "/v1/endpoints"):
        return {"json": {"url": "https://hooks.example.com/token"}}
    if (method, template) == ("PATCH", "/v1/endpoints/{id}"):
        return {"json": {"description": "x"}}
    if template == "/v2/flowControl/{key}/pin":
        return {"params": {"parallelism": "2"}}
    return {}


def test_qstash_queue_operations_answer_as_documented(api: Api) -> None:
    """QStash v2 queues over TCP with a bearer token: successes and errors, as documented."""
    listed = api.call("GET", "/v2/queues", expect=200)
    by_name = {q["name"]: q for q in listed}
    assert by_name["held.example"]["paused"] and by_name["my_queue"]["parallelism"] == 4
    assert all(q["lag"] == 0 for q in listed)

    q = {"queueName": "my_queue"}
    assert api.call("POST", "/v2/queues/{queueName}/pause", q, expect=200) is None
    api.call("POST", "/v2/queues/{queueName}/pause", q, expect=200)  # idempotent
    got = api.call("GET", "/v2/queues/{queueName}", q, expect=200)
    assert got["paused"] and got["parallelism"] == 4 and got["updatedAt"] >= got["createdAt"] > 1_700_000_000_000
    api.call("POST", "/v2/queues/{queueName}/resume", q, expect=200)
    api.call("POST", "/v2/queues/{queueName}/resume", {"queueName": "never-seen.example"}, expect=200)
    assert api.call("GET", "/v2/queues/{queueName}", q, expect=200)["paused"] is False

    upserted = {"queueName": "upserted_queue"}
    api.call("POST", "/v2/queues", expect=200,
             json={"queueName": "upserted_queue", "parallelism": 5, "paused": True})
    got = api.call("GET", "/v2/queues/{queueName}", upserted, expect=200)
    assert got["paused"] and got["parallelism"] == 5
    api.call("POST", "/v2/queues", expect=200, json={"queueName": "Upserted_Queue"})  # a name of its own
    assert api.call("GET", "/v2/queues/{queueName}", {"queueName": "Upserted_Queue"}, expect=200)["paused"] is False
    assert api.call("GET", "/v2/queues/{queueName}", upserted, expect=200)["paused"] is True
    api.call("DELETE", "/v2/queues/{queueName}", {"queueName": "Upserted_Queue"}, expect=200)
    api.call("DELETE", "/v2/queues/{queueName}", upserted, expect=200)

    # errors, in QStash's shape
    for template in ("/v2/queues/{queueName}", "/v2/queues/{queueName}/pause", "/v2/queues/{queueName}/resume"):
        method = "GET" if template.endswith("}") else "POST"
        api.call(method, template, {"queueName": "bad name!"}, expect=400)
    api.call("DELETE", "/v2/queues/{queueName}", {"queueName": "tenant@"}, expect=400)
    api.call("GET", "/v2/queues/{queueName}", upserted, expect=404, says="not found")
    api.call("DELETE", "/v2/queues/{queueName}", upserted, expect=404, says="not found")
    api.call("DELETE", "/v2/queues/{queueName}", {"queueName": "held.example"}, expect=409,
             says="10-holds.toml line")
    api.call("POST", "/v2/queues/{queueName}/resume", {"queueName": "held.example"}, expect=409,
             says="10-holds.toml line")
    api.call("POST", "/v2/queues", expect=409, says="10-holds.toml line",
             json={"queueName": "held.example", "paused": False})
    for body in ({"queueName": 5}, {"parallelism": 2}, {"queueName": "q", "paused": "yes"},
                 {"queueName": "q", "priority": 1}, {"queueName": "q", "parallelism": 0},
                 {"queueName": "bad name"}, ["q"]):
        api.call("POST", "/v2/queues", expect=400, json=body)
    api.call("POST", "/v2/queues", expect=400, content=b"{", headers={"Content-Type": "application/json"})
    api.call("POST", "/v2/queues", expect=400)  # no body
    api.call("POST", "/v2/queues", expect=415, content=b"q", headers={"Content-Type": "text/plain"})


def test_qstash_schedule_operations_answer_as_documented(api: Api) -> None:
    """QStash v2 schedules over TCP, pause and resume by POST and by PATCH (as the SDKs send)."""
    listed = api.call("GET", "/v2/schedules", expect=200)
    assert [s["scheduleId"] for s in listed] == ["weekly-digest", "nightly-report"]
    weekly = {"scheduleId": "weekly-digest"}
    got = api.call("GET", "/v2/schedules/{scheduleId}", weekly, expect=200)
    assert got["method"] == "PUT" and got["retries"] == 5 and got["nextScheduleTime"] > got["createdAt"]
    nightly = api.call("GET", "/v2/schedules/{scheduleId}", {"scheduleId": "nightly-report"}, expect=200)
    assert nightly["isPaused"] and "nextScheduleTime" not in nightly and nightly["cron"] == ""

    for method in ("POST", "PATCH"):
        api.call(method, "/v2/schedules/{scheduleId}/pause", weekly, expect=200)
        api.call(method, "/v2/schedules/{scheduleId}/pause", weekly, expect=200)  # idempotent
        paused = api.call("GET", "/v2/schedules/{scheduleId}", weekly, expect=200)
        assert paused["isPaused"] and "nextScheduleTime" not in paused
        api.call(method, "/v2/schedules/{scheduleId}/resume", weekly, expect=200)
        api.call(method, "/v2/schedules/{scheduleId}/resume", weekly, expect=200)  # idempotent
        assert not api.call("GET", "/v2/schedules/{scheduleId}", weekly, expect=200)["isPaused"]

        for action in ("pause", "resume"):
            template = f"/v2/schedules/{{scheduleId}}/{action}"
            api.call(method, template, {"scheduleId": "no-such-schedule"}, expect=404, says="not found")
            api.call(method, template, {"scheduleId": "-bad"}, expect=400)
        api.call(method, "/v2/schedules/{scheduleId}/resume", {"scheduleId": "nightly-report"}, expect=409,
                 says="20-objects.toml line")
    api.call("GET", "/v2/schedules/{scheduleId}", {"scheduleId": "no-such-schedule"}, expect=404)


def test_qstash_schedule_creation_and_flow_control_answer_as_documented(api: Api) -> None:
    """Schedules made and deleted through QStash, and flow-control keys, with their errors."""
    dest = {"scheduleId": "https://app.example.com/hook/1"}
    made = api.call("POST", "/v2/schedules/{scheduleId}", dest, expect=200, content=b"\xff\x00",
                    headers={"Upstash-Cron": "0 * * * *", "Upstash-Delay": "1m", "Upstash-Queue-Name": "Q.1",
                             "Upstash-Forward-X-Trace": "t1", "Upstash-Flow-Control-Key": "fk",
                             "Upstash-Flow-Control-Value": "parallelism=2, rate=9, period=1h"})
    got = api.call("GET", "/v2/schedules/{scheduleId}", made, expect=200)
    assert got["delay"] == 60 and got["queueName"] == "Q.1" and got["header"] == {"X-Trace": ["t1"]}
    assert (got["parallelism"], got["rate"], got["period"]) == (2, 9, 3600) and "bodyBase64" in got
    assert made["scheduleId"] in {s["scheduleId"] for s in api.call("GET", "/v2/schedules", expect=200)}
    for headers in ({}, {"Upstash-Cron": "nope"}, {"Upstash-Cron": "* * * * *", "Upstash-Retries": "many"},
                    {"Upstash-Cron": "* * * * *", "Upstash-Delay": "soon"},
                    {"Upstash-Cron": "* * * * *", "Upstash-Flow-Control-Value": "speed=3"},
                    {"Upstash-Cron": "* * * * *", "Upstash-Schedule-Id": "-bad"}):
        api.call("POST", "/v2/schedules/{scheduleId}", dest, expect=400, headers=headers)
    api.call("POST", "/v2/schedules/{scheduleId}", {"scheduleId": "not-a-url"}, expect=400,
             headers={"Upstash-Cron": "* * * * *"})
    api.call("POST", "/v2/schedules/{scheduleId}", dest, expect=409, says="20-objects.toml line",
             headers={"Upstash-Cron": "* * * * *", "Upstash-Schedule-Id": "weekly-digest"})
    api.call("DELETE", "/v2/schedules/{scheduleId}", {"scheduleId": "weekly-digest"}, expect=409,
             says="20-objects.toml line")
    api.call("DELETE", "/v2/schedules/{scheduleId}", made, expect=200)
    api.call("DELETE", "/v2/schedules/{scheduleId}", made, expect=404, says="not found")
    api.call("DELETE", "/v2/schedules/{scheduleId}", {"scheduleId": "-bad"}, expect=400)

    key = {"key": "Fc.Key_1"}
    fresh = api.call("GET", "/v2/flowControl/{key}", key, expect=200)
    assert not fresh["isPaused"] and fresh["parallelismMax"] == 0
    api.call("POST", "/v2/flowControl/{key}/pause", key, expect=200)
    api.call("POST", "/v2/flowControl/{key}/pin", key, expect=200, params={"parallelism": "3", "period": "2m"})
    got = api.call("GET", "/v2/flowControl/{key}", key, expect=200)
    assert got["isPaused"] and got["isPinnedParallelism"] and got["parallelismMax"] == 3 and got["ratePeriod"] == 120
    assert "Fc.Key_1" in {c["flowControlKey"] for c in api.call("GET", "/v2/flowControl", expect=200)}
    api.call("POST", "/v2/flowControl/{key}/resetRate", key, expect=200)
    api.call("POST", "/v2/flowControl/{key}/unpin", key, expect=200, params={"parallelism": "true"})
    api.call("POST", "/v2/flowControl/{key}/resume", key, expect=200)
    assert "Fc.Key_1" not in {c["flowControlKey"] for c in api.call("GET", "/v2/flowControl", expect=200)}
    for template in ("/v2/flowControl/{key}/pause", "/v2/flowControl/{key}/resume", "/v2/flowControl/{key}/resetRate"):
        api.call("POST", template, {"key": "bad key"}, expect=400)
    api.call("GET", "/v2/flowControl/{key}", {"key": "bad key"}, expect=400)
    api.call("POST", "/v2/flowControl/{key}/pin", key, expect=400)  # nothing to pin
    api.call("POST", "/v2/flowControl/{key}/pin", key, expect=400, params={"rate": "fast"})
    api.call("POST", "/v2/flowControl/{key}/unpin", key, expect=400, params={"rate": "maybe"})
    assert api.call("GET", "/v2/globalParallelism", expect=200) == {"parallelismMax": 0, "parallelismCount": 0}


def test_hookbridge_endpoints_made_through_the_api_answer_as_documented(api: Api) -> None:
    made = api.call("POST", "/v1/endpoints", expect=201,
                    json={"url": "https://hooks.example.com/new", "description": "n", "rate_limit_rps": 3,
                          "burst": 4, "headers": {"X-A": "b"}})["data"]
    ep = {"id": made["id"]}
    got = api.call("GET", "/v1/endpoints/{id}", ep, expect=200)["data"]
    assert got["rate_limit_rps"] == 3 and got["headers"] == {"X-A": "b"} and not got["paused"]
    changed = api.call("PATCH", "/v1/endpoints/{id}", ep, expect=200, json={"burst": 9})["data"]
    assert changed["burst"] == 9 and changed["url"] == "https://hooks.example.com/new"
    for body in ({}, {"url": "http://plain.example/"}, {"colour": "red"}, {"burst": -1}, {"headers": {"a b": "c"}}):
        api.call("PATCH", "/v1/endpoints/{id}", ep, expect=400, code="INVALID_REQUEST", json=body)
    for body in ({"description": "no url"}, {"url": 5}, ["x"]):
        api.call("POST", "/v1/endpoints", expect=400, code="INVALID_REQUEST", json=body)
    api.call("POST", "/v1/endpoints", expect=400, code="INVALID_JSON", content=b"{", headers={"Content-Type": "application/json"})
    api.call("PATCH", "/v1/endpoints/{id}", {"id": EP_ACTIVE}, expect=409, code="DEFINED_IN_FILE", json={"burst": 1})
    api.call("DELETE", "/v1/endpoints/{id}", {"id": EP_ACTIVE}, expect=409, code="DEFINED_IN_FILE")
    api.call("PATCH", "/v1/endpoints/{id}", {"id": EP_UNKNOWN}, expect=404, code="ENDPOINT_NOT_FOUND", json={"burst": 1})
    api.call("DELETE", "/v1/endpoints/{id}", {"id": "ep_123"}, expect=400, code="INVALID_REQUEST")
    assert api.call("DELETE", "/v1/endpoints/{id}", ep, expect=200)["data"] == {"id": made["id"], "deleted": True}
    api.call("DELETE", "/v1/endpoints/{id}", ep, expect=404, code="ENDPOINT_NOT_FOUND")


def test_hookbridge_operations_answer_as_documented(api: Api) -> None:
    """HookBridge v1 endpoints over TCP: {"data", "meta"} bodies and HookBridge's error codes."""
    listed = api.call("GET", "/v1/endpoints", expect=200)
    assert [e["id"] for e in listed["data"]] == [EP_ACTIVE, EP_FILE_PAUSED]
    assert listed["meta"]["next_cursor"] is None
    ep = {"id": EP_ACTIVE}
    got = api.call("GET", "/v1/endpoints/{id}", ep, expect=200)
    assert got["data"]["paused"] is False and got["data"]["url"] == "https://hooks.example.com/events"

    assert api.call("POST", "/v1/endpoints/{id}/pause", ep, expect=200)["data"] == {"id": EP_ACTIVE, "paused": True}
    api.call("POST", "/v1/endpoints/{id}/pause", ep, expect=409, code="ALREADY_PAUSED")
    assert api.call("GET", "/v1/endpoints/{id}", ep, expect=200)["data"]["paused"] is True
    resumed = api.call("POST", "/v1/endpoints/{id}/resume", ep, expect=200)
    assert resumed["data"] == {"id": EP_ACTIVE, "paused": False, "messages_requeued": 0}
    api.call("POST", "/v1/endpoints/{id}/resume", ep, expect=409, code="NOT_PAUSED")
    api.call("POST", "/v1/endpoints/{id}/resume", {"id": EP_FILE_PAUSED}, expect=409, code="DEFINED_IN_FILE")
    api.call("POST", "/v1/endpoints/{id}/pause", {"id": EP_FILE_PAUSED}, expect=409, code="ALREADY_PAUSED")

    for template in ("/v1/endpoints/{id}", "/v1/endpoints/{id}/pause", "/v1/endpoints/{id}/resume"):
        method = "GET" if template.endswith("}") else "POST"
        api.call(method, template, {"id": EP_UNKNOWN}, expect=404, code="ENDPOINT_NOT_FOUND")
        api.call(method, template, {"id": "ep_123"}, expect=400, code="INVALID_REQUEST",
                 says="endpoint_id must be in format ep_xxx")


def test_every_seeds_operation_answers_200_over_tcp(d: Daemon) -> None:
    """Each QStash and HookBridge operation in the document, called once with a token, answers 200.

    In (method, path) order, which pauses each object before resuming it, so
    every call succeeds and the policy is left as it was.
    """
    with tcp_client(d, ADMIN_TOKEN) as client:
        api = Api(client)
        seeds = sorted(key for key in operations() if is_seeds(key[1]))
        for method, template in seeds:
            if (method, template) == ("DELETE", "/v2/queues/{queueName}"):
                api.call("POST", "/v2/queues", expect=200, json={"queueName": "delete_me", "parallelism": 2})
                api.call(method, template, {"queueName": "delete_me"}, expect=200)
                continue
            if (method, template) == ("DELETE", "/v2/schedules/{scheduleId}"):
                api.call("POST", "/v2/schedules/{scheduleId}", {"scheduleId": "https://x.example/"}, expect=200,
                         headers={"Upstash-Cron": "* * * * *", "Upstash-Schedule-Id": "delete-me"})
                api.call(method, template, {"scheduleId": "delete-me"}, expect=200)
                continue
            if template in ("/v1/endpoints", "/v1/endpoints/{id}") and method in ("POST", "PATCH", "DELETE"):
                if method == "POST":  # made, changed and deleted in one go
                    made = api.call("POST", "/v1/endpoints", expect=201, **sample_body(method, template))
                    ident = {"id": made["data"]["id"]}
                    api.call("PATCH", "/v1/endpoints/{id}", ident, expect=200, json={"description": "d"})
                    api.call("DELETE", "/v1/endpoints/{id}", ident, expect=200)
                continue
            if (method, template) == ("POST", "/v2/schedules/{scheduleId}"):
                api.call(method, template, {"scheduleId": "https://x.example/"}, expect=200,
                         **sample_body(method, template))
                continue
            kwargs = sample_body(method, template)
            response = client.request(method, concrete(template), **kwargs)
            assert response.status_code == 200, (method, template, response.text)
            check_operation(response, method, template)
            api.exercised.add((method, template))
        assert api.exercised == set(seeds)


def test_every_route_over_tcp_without_a_token_is_401(d: Daemon) -> None:
    """No token, or an unknown one, is 401 on every documented route, in that API's error shape."""
    for token in (None, "sl_not-a-token"):
        with tcp_client(d, token) as client:
            for (method, template), _op in sorted(operations().items()):
                response = client.request(method, concrete(template), **sample_body(method, template))
                assert response.status_code == 401, (token, method, template, response.text)
                body = check_operation(response, method, template)
                if is_qstash(template):
                    assert set(body) == {"error"} and isinstance(body["error"], str), body
                else:
                    assert body["error"]["code"] == "UNAUTHORIZED", body
    with tcp_client(d) as client:
        response = client.get("/v2/queues", params={"qstash_token": "sl_not-a-token"})
        assert response.status_code == 401
        check_operation(response, "GET", "/v2/queues")
        # the token as QStash clients may send it, in the query
        response = client.get("/v2/queues", params={"qstash_token": ADMIN_TOKEN})
        assert response.status_code == 200
        check_operation(response, "GET", "/v2/queues")
        response = client.post("/v2/queues/query_token_queue/pause", params={"qstash_token": ADMIN_TOKEN})
        assert response.status_code == 200
        check_operation(response, "POST", "/v2/queues/{queueName}/pause")
        # a HEAD without a token: the 401's headers
        response = client.head("/api/status/v1")
        assert response.status_code == 401 and response.content == b""


def test_every_change_over_tcp_with_a_read_token_is_403(d: Daemon) -> None:
    """A read token may read everything and change nothing: 403 in each API's error shape."""
    with tcp_client(d, READ_TOKEN) as client:
        for (method, template), op in sorted(operations().items()):
            if template == "/api/events/v1":
                continue  # a stream: its head is checked in test_openapi.py
            response = client.request(method, concrete(template), **sample_body(method, template))
            expected = 403 if op.get("x-sluice-change") else 426 if is_websocket(method, template) else 200
            assert response.status_code == expected, (method, template, response.text)
            body = check_operation(response, method, template)
            if expected == 403:
                assert "may read but not change state" in error_text(body)
                if not is_qstash(template):
                    assert body["error"]["code"] == "FORBIDDEN"


def test_the_seeds_routes_on_the_unix_socket_need_no_token(d: Daemon) -> None:
    """The same routes on the admin socket: no token, the same documented answers."""
    with d.client() as client:
        api = Api(client)
        assert {q["name"] for q in api.call("GET", "/v2/queues", expect=200)} >= {"held.example", "my_queue"}
        api.call("GET", "/v2/queues/{queueName}", {"queueName": "no-such-queue"}, expect=404)
        api.call("POST", "/v2/schedules/{scheduleId}/resume", {"scheduleId": "nightly-report"}, expect=409)
        api.call("GET", "/v1/endpoints", expect=200)
        api.call("GET", "/v1/endpoints/{id}", {"id": EP_UNKNOWN}, expect=404, code="ENDPOINT_NOT_FOUND")


def test_validation_catches_seeds_drift(api: Api) -> None:
    """Real seeds answers, changed as code drift would change them, no longer validate."""

    def errors(method: str, template: str, status: int, body: Any) -> list[str]:
        ptr, _ = resolve(pointer("paths", template, method.lower(), "responses", str(status)))
        return schema_errors(ptr + pointer("content", "application/json", "schema"), body)

    queue = api.call("GET", "/v2/queues/{queueName}", {"queueName": "my_queue"}, expect=200)
    assert errors("GET", "/v2/queues/{queueName}", 200, queue) == []
    for bad in ({**queue, "lag": 3}, {**queue, "createdAt": "2026-11-23T11:40:00Z"},
                {**queue, "parallelism": None}, {**queue, "queueName": queue["name"]}):
        assert errors("GET", "/v2/queues/{queueName}", 200, bad), bad

    missing = api.call("GET", "/v2/queues/{queueName}", {"queueName": "no-such-queue"}, expect=404)
    assert errors("GET", "/v2/queues/{queueName}", 404, missing) == []
    sluice_shaped = {"error": {"code": "QUEUE_NOT_FOUND", "message": missing["error"]},
                     "meta": {"request_id": "req_0000000000000000"}}
    assert errors("GET", "/v2/queues/{queueName}", 404, sluice_shaped)  # QStash's shape, not sluice's

    schedule = api.call("GET", "/v2/schedules/{scheduleId}", {"scheduleId": "weekly-digest"}, expect=200)
    assert errors("GET", "/v2/schedules/{scheduleId}", 200, {**schedule, "isPaused": True})  # paused, yet a next time
    assert errors("GET", "/v2/schedules/{scheduleId}", 200, {**schedule, "paused": False})

    listed = api.call("GET", "/v1/endpoints", expect=200)
    assert errors("GET", "/v1/endpoints", 200, {**listed, "meta": {"request_id": listed["meta"]["request_id"]}})
    assert errors("GET", "/v1/endpoints", 200, {**listed, "meta": {**listed["meta"], "next_cursor": "abc"}})
    endpoint = api.call("GET", "/v1/endpoints/{id}", {"id": EP_ACTIVE}, expect=200)
    assert errors("GET", "/v1/endpoints/{id}", 200, {**endpoint, "data": {**endpoint["data"], "name": "x"}})
    assert errors("GET", "/v1/endpoints/{id}", 200,
                  {**endpoint, "data": {**endpoint["data"], "created_at": 1795434000}})
