"""docs/openapi.yaml is kept true: every route is in it, and every real answer is valid against it.

How this works
--------------
The real daemon (``harness.Daemon``) runs with a policy holding every kind of
table, and every request goes through ``Api.call`` (tests/daemon/openapi_support.py),
which checks the answer against the document. The events stream is checked
line by line against the ``Event`` schema.

The route table, built as ``daemon/main.py`` builds it, and the document's
paths are compared both ways, so neither can move without the other.

This file: the document itself, the route table, every native operation on
the unix socket, HEAD, the events stream, limits and drift. Error answers
route by route are in test_openapi_errors.py; the seeds' own APIs over TCP,
with tokens, in test_openapi_seeds.py.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
import signal
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import httpx
import pytest
import trio
from jsonschema import Draft202012Validator
from websockets.sync.client import unix_connect

import kumod_log
from harness import Daemon
from openapi_support import (
    DOC,
    EP_ACTIVE,
    EP_FILE_PAUSED,
    FILES,
    UNKNOWN_UUID,
    Api,
    assert_valid,
    at,
    check_operation,
    concrete,
    is_seeds,
    is_websocket,
    operations,
    pointer,
    raw_exchange,
    read_response,
    resolve,
    schema_errors,
    shape,
    validator,
    websocket_frames,
)


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("openapi"), files=FILES)
    daemon.start()
    yield daemon
    daemon.close()


@pytest.fixture
def api(d: Daemon) -> Iterator[Api]:
    with d.client() as client:
        yield Api(client)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path, files=FILES)
    daemon.start()
    yield daemon
    daemon.close()


# -- the document itself ---------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    """docs/openapi.yaml is a valid OpenAPI 3.1 document."""
    from openapi_spec_validator import validate

    assert DOC["openapi"].startswith("3.1")
    validate(DOC)


def test_every_schema_in_the_document_is_a_valid_2020_12_schema() -> None:
    for name in DOC["components"]["schemas"]:
        Draft202012Validator.check_schema(DOC["components"]["schemas"][name])
        validator(pointer("components", "schemas", name))  # its refs resolve
    for (method, template), op in operations().items():
        for status in op["responses"]:
            ptr, response = resolve(pointer("paths", template, method.lower(), "responses", status))
            assert "X-Request-Id" in response.get("headers", {}), f"{method} {template} {status}"
            for media_type in response.get("content", {}):
                validator(ptr + pointer("content", media_type, "schema")).is_valid(None)


def test_every_operation_lists_401_in_its_api_error_shape() -> None:
    """Over TCP every route can answer 401; QStash routes in QStash's shape, the others in sluice's."""
    for (method, template), op in operations().items():
        assert "401" in op["responses"], f"{method} {template} does not list 401"
        ptr, _ = resolve(pointer("paths", template, method.lower(), "responses", "401"))
        expected = "QStashUnauthorized" if template.startswith("/v2/") else "Unauthorized"
        assert ptr == pointer("components", "responses", expected), (method, template, ptr)
        if template.startswith("/v2/"):
            names = {p.get("$ref", "").rsplit("/", 1)[-1] for p in DOC["paths"][template].get("parameters", [])}
            assert "QStashToken" in names, f"{template} does not take ?qstash_token="
    assert DOC["components"]["securitySchemes"]["bearerAuth"] == {
        **DOC["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"
    }
    assert {"bearerAuth": []} in DOC["security"] and {} in DOC["security"]  # the unix socket needs none


# -- the route table and the document ---------------------------------------------------


def _call_with_dummies(function: Any, *args: Any, **given: Any) -> Any:
    """Call ``function`` with ``given``, and a MagicMock for every other required parameter."""
    params = list(inspect.signature(function).parameters.values())[len(args):]
    for p in params:
        if p.name not in given and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            given[p.name] = MagicMock(name=p.name)
    return function(*args, **given)


def wired_routes() -> dict[tuple[str, str], bool]:
    """(METHOD, path shape) -> needs-change-rights, from a Router built as daemon/main.py builds it.

    Every ``add_*_routes`` function that ``daemon/main.py`` calls is called on a
    fresh Router; handlers are closures, so registering needs none of the
    daemon's state and stand-ins do. Paths are compared by shape, parameters
    unnamed (``/v2/queues/{}``): the document names them as each API's own
    documentation does (``{queueName}``), the code as it likes (``{name}``).
    """
    import sluice.daemon.main as main
    from sluice.daemon.http.routes import Router

    tree = ast.parse(inspect.getsource(main))
    adders = sorted(
        {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and re.fullmatch(r"add_\w+_routes", node.func.id)
        }
    )
    assert {"add_admin_routes", "add_check_routes", "add_qstash_routes", "add_hookbridge_routes"} <= set(adders), adders
    router = _call_with_dummies(Router, may_change=lambda peer: False)
    for name in adders:
        _call_with_dummies(getattr(main, name), router)
    wired: dict[tuple[str, str], bool] = {}
    for route in router.routes:
        key = (route.method, shape(route.pattern))
        assert key not in wired, f"two routes for {key}"
        wired[key] = route.change
    return wired


def documented_routes() -> dict[tuple[str, str], bool]:
    return {(m, shape(p)): bool(op.get("x-sluice-change", False)) for (m, p), op in operations().items()}


def test_every_wired_route_is_documented() -> None:
    """A route added to the daemon without a description in docs/openapi.yaml fails here."""
    documented = documented_routes()
    missing = sorted(f"{m} {p}" for (m, p) in wired_routes() if (m, p) not in documented)
    assert not missing, "routes the daemon serves that docs/openapi.yaml does not describe: " + ", ".join(missing)


def test_every_documented_route_is_wired() -> None:
    """A route in docs/openapi.yaml that the daemon does not serve fails here, by name."""
    wired = wired_routes()
    missing = sorted(f"{m} {p}" for (m, p) in documented_routes() if (m, p) not in wired)
    assert not missing, "described in docs/openapi.yaml but not served: " + ", ".join(missing)


def test_change_rights_in_the_document_match_the_route_table() -> None:
    """x-sluice-change marks exactly the routes that need a peer allowed to change state."""
    wired = wired_routes()
    wrong = sorted(
        f"{m} {p}: route table says change={wired[m, p]}, document says {flag}"
        for (m, p), flag in documented_routes().items()
        if (m, p) in wired and wired[m, p] != flag
    )
    assert not wrong, "\n".join(wrong)


def test_path_parameters_are_declared_for_every_operation() -> None:
    """Each {parameter} of a path is declared (path item or operation), and nothing more."""
    for (method, template), op in operations().items():
        declared = {
            resolve(p["$ref"].removeprefix("#"))[1]["name"] if "$ref" in p else p["name"]
            for p in DOC["paths"][template].get("parameters", []) + op.get("parameters", [])
            if (resolve(p["$ref"].removeprefix("#"))[1] if "$ref" in p else p)["in"] == "path"
        }
        assert declared == set(re.findall(r"\{([^}]+)\}", template)), (method, template, declared)


# -- every operation, as its users call it ----------------------------------------------


def test_every_operation_answers_as_documented(api: Api, d: Daemon) -> None:
    """Each documented native operation, called for real on the unix socket, answers as documented.

    The seeds' operations are called over TCP in test_openapi_seeds.py.
    """
    # suspensions
    listed = api.call("GET", "/api/admin/suspend/v1", expect=200)
    assert {s["source"] for s in listed} >= {"10-holds.toml:1", "10-holds.toml:6"}
    body = {"domain": "Yahoo.com", "reason": "421 deferrals", "duration": "30m"}
    created = api.call("POST", "/api/admin/suspend/v1", expect=200, json=body)
    again = api.call("POST", "/api/admin/suspend/v1", expect=200,
                     json={"domain": "yahoo.com", "reason": "still deferring", "duration": 600})
    assert again["id"] == created["id"]  # equal criteria: updated in place
    api.call("POST", "/api/admin/suspend/v1", expect=200,
             json={"queue_names": ["promo:shop@example.net"], "reason": "hold",
                   "expires": "2099-06-01T00:00:00+02:00"})
    everything = api.call("POST", "/api/admin/suspend/v1", expect=200,
                          json={"everything": True, "reason": "maintenance window"})
    listed = api.call("GET", "/api/admin/suspend/v1", expect=200)
    assert {s["source"] for s in listed} >= {"runtime"}
    assert any(s["everything"] for s in listed)
    assert api.call("DELETE", "/api/admin/suspend/v1", expect=200, json={"id": everything["id"]}) == {
        "id": everything["id"], "cancelled": True
    }

    # queues
    paused = api.call("POST", "/api/admin/queues/{name}/pause", {"name": "newsletter:acme@Example.NET"},
                      expect=200, json={"reason": "warming", "parallelism": 2})
    assert paused["name"] == "newsletter:acme@example.net" and paused["paused"]
    api.call("POST", "/api/admin/queues/{name}/pause", {"name": "plain.example"}, expect=200)
    queues = api.call("GET", "/api/admin/queues", expect=200)
    assert {q["name"] for q in queues} >= {"held.example", "plain.example", "newsletter:acme@example.net"}
    api.call("POST", "/api/admin/queues/{name}/resume", {"name": "newsletter:acme@example.net"}, expect=200)
    api.call("POST", "/api/admin/queues/{name}/resume", {"name": "plain.example"}, expect=200, json={})
    unknown = api.call("POST", "/api/admin/queues/{name}/resume", {"name": "never-seen.example"}, expect=200)
    assert unknown == {"name": "never-seen.example", "paused": False, "reason": None, "parallelism": None,
                       "source": None, "created_at": None, "created_by": None, "updated_at": None}
    api.call("POST", "/api/admin/queues/{name}/resume", {"name": "my_queue"}, expect=200)

    # schedules
    assert len(api.call("GET", "/api/admin/schedules", expect=200)) == 2
    api.call("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, expect=200,
             json={"reason": "holiday"})
    api.call("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, expect=200)  # idempotent
    api.call("GET", "/api/admin/schedules", expect=200)
    resumed = api.call("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, expect=200)
    assert resumed["next_fire"] is not None
    api.call("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, expect=200, json={})

    # endpoints
    api.call("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_ACTIVE}, expect=200, json={"reason": "deploy"})
    listed = api.call("GET", "/api/admin/endpoints", expect=200)
    assert [e["paused"] for e in listed["data"]] == [True, True]
    api.call("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_ACTIVE}, expect=200, json={})

    # flow-control keys
    paused = api.call("POST", "/api/admin/flow-controls/{key}/pause", {"key": "Orders-EU"}, expect=200,
                      json={"reason": "provider throttling"})
    assert paused["paused"] and paused["reason"] == "provider throttling" and paused["source"] == "runtime"
    assert [c["key"] for c in api.call("GET", "/api/admin/flow-controls", expect=200)] == ["Orders-EU"]
    held = api.call("GET", "/api/check/v1", expect=200, params={"flow_control": "Orders-EU"})
    assert not held["deliver"] and held["holds"][0]["kind"] == "flow_control_pause"
    resumed = api.call("POST", "/api/admin/flow-controls/{key}/resume", {"key": "Orders-EU"}, expect=200)
    assert not resumed["paused"] and resumed["source"] is None  # nothing left of it
    api.call("POST", "/api/admin/flow-controls/{key}/pause", {"key": "bad key!"}, expect=400, code="INVALID_REQUEST")
    api.call("GET", "/api/check/v1", expect=200, params={"flow_control": "never-seen"})

    # decisions
    held = api.call("GET", "/api/check/v1", expect=200, params={"queue": "black-friday:acme@file.example"})
    assert [h["kind"] for h in held["holds"]] == ["suspension", "suspension"] and not held["deliver"]
    api.call("GET", "/api/check/v1", expect=200, params={"queue": "held.example"})
    free = api.call("GET", "/api/check/v1", expect=200, params={"queue": "my_queue"})
    assert free["deliver"] and free["parallelism"] == 4
    api.call("GET", "/api/check/v1", expect=200, params={"queue": "yahoo.com"})
    api.call("GET", "/api/check/v1", expect=200, params={"schedule": "weekly-digest"})
    api.call("GET", "/api/check/v1", expect=200, params={"schedule": "nightly-report"})
    api.call("GET", "/api/check/v1", expect=200, params={"endpoint": EP_ACTIVE})
    api.call("GET", "/api/check/v1", expect=200, params={"endpoint": EP_FILE_PAUSED})
    batch = api.call("POST", "/api/check/v1", expect=200, json={
        "queues": ["held.example", "my_queue", "newsletter:acme@example.com", "bad name", "yahoo.com"]
    })
    assert [r.get("error", {}).get("code") for r in batch["results"]] == [None, None, None, "INVALID_QUEUE_NAME", None]

    # automation: kumod's log records in
    record = kumod_log.record(queue="news:acme@automation.example", recipient="x@automation.example")
    published = api.call("POST", "/publish_log_v1", expect=200, json=record)
    assert [(h["tenant"], h["change"]) for h in published["holds"]] == [("acme", "added"), (None, "added")]
    again = api.call("POST", "/publish_log_v1", expect=200,
                     json=[record, kumod_log.record(kind="Delivery", code=250, enhanced=(2, 0, 0), content="OK")])
    assert again["records"] == 2 and {h["change"] for h in again["holds"]} <= {"extended", "unchanged"}

    # kumod's TSA subscription: the set (the automation hold of acme just made), its 101 and frames
    def unix_ws(path: str):
        return unix_connect(str(d.admin), f"ws://sluice{path}", open_timeout=15, proxy=None)

    listed = api.call("GET", "/get_suspension_v1", expect=200)
    assert [s["tenant"] for s in listed["sched_q"]] == ["acme"] and listed["ready_q"] == []
    assert api.call("GET", "/get_suspension_v1/suspended.json", expect=200) == listed
    assert tomllib.loads(api.call("GET", "/get_config_v1/shaping.toml", expect=200)) == {}  # kumod's overlay
    for template, tag in (("/subscribe_event_v1", "SchedQSuspension"), ("/subscribe_suspension_v1", "SchedQ")):
        frames = websocket_frames(unix_ws, template, len(listed["sched_q"]))
        assert [f[tag] for f in frames] == listed["sched_q"]
        api.exercised.add(("GET", template))
        api.call("GET", template, expect=426, code="UPGRADE_REQUIRED")

    # the events stream: its head here; its lines in test_events_stream_lines_match_the_event_schema
    with api.client.stream("GET", "/api/events/v1") as stream:
        check_operation(stream, "GET", "/api/events/v1", read_body=False)
        first = next(line for line in stream.iter_lines() if line.strip())
        assert_valid(pointer("components", "schemas", "Event"), json.loads(first), "events: first line")
    api.exercised.add(("GET", "/api/events/v1"))

    # the daemon
    status = api.call("GET", "/api/status/v1", expect=200)
    assert status["files"] == ["10-holds.toml", "20-objects.toml"]
    first = api.call("POST", "/api/admin/reload/v1", expect=200)
    again = api.call("POST", "/api/admin/reload/v1", expect=200, json={})
    assert again["generation"] == first["generation"] and again["changes"] == 0  # nothing changed
    metrics = api.call("GET", "/metrics", expect=200)
    from prometheus_client.parser import text_string_to_metric_families

    assert any(f.name.startswith("sluice_") for f in text_string_to_metric_families(metrics))

    native = {key for key in operations() if not is_seeds(key[1])}
    assert api.exercised == native, (
        "documented operations this test did not call: "
        + ", ".join(sorted(f"{m} {p}" for m, p in native - api.exercised))
    )


def test_a_batch_of_10000_names_fits(api: Api) -> None:
    """10,000 realistic names (over 64 KiB of JSON) are one batch; 10,001 are 413 BATCH_TOO_LARGE."""
    names = [f"tenant{i}@domain{i}.example" for i in range(10_000)]
    assert len(json.dumps({"queues": names})) > 64 * 1024
    batch = api.call("POST", "/api/check/v1", expect=200, json={"queues": names})
    assert len(batch["results"]) == 10_000
    assert [r["queue"] for r in batch["results"]] == names
    assert all(r["deliver"] for r in batch["results"])
    api.call("POST", "/api/check/v1", expect=413, code="BATCH_TOO_LARGE",
             json={"queues": names + ["tenant10000@domain10000.example"]})


def test_head_answers_every_get_with_its_headers_and_no_body(d: Daemon) -> None:
    """HEAD on each documented GET path: the status and headers GET has, no body."""
    gets = sorted(template for (method, template) in operations() if method == "GET")
    with d.client() as client:
        for template in gets:
            path = concrete(template) + ("?queue=my_queue" if template == "/api/check/v1" else "")
            if template == "/api/events/v1":
                # on a connection of its own: see test_head_on_the_events_stream_keeps_the_connection
                with d.client() as once:
                    head = once.head(path)
                assert head.status_code == 200 and head.content == b""
                check_operation(head, "GET", template, read_body=False)
                continue  # a stream has no length
            head = client.head(path)
            if is_websocket("GET", template):  # HEAD asks no websocket: the GET's 426, no body
                assert head.status_code == 426 and head.content == b"", template
                check_operation(head, "GET", template, read_body=False)
                continue
            assert head.status_code == 200, (template, head.status_code)
            assert head.content == b""
            check_operation(head, "GET", template, read_body=False)
            got = client.get(path)
            assert head.headers["content-type"] == got.headers["content-type"], template
            assert int(head.headers["content-length"]) > 0, template
        # a HEAD the route cannot answer: the GET's error status, still without a body
        missing = client.head("/v2/queues/never-seen.example")
        assert missing.status_code == 404 and missing.content == b""
        check_operation(missing, "GET", "/v2/queues/{queueName}", read_body=False)


def test_head_on_the_events_stream_keeps_the_connection(d: Daemon) -> None:
    """HEAD on the stream is headers only, and the keep-alive connection serves the next request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(d.admin))
        sock.sendall(b"HEAD /api/events/v1 HTTP/1.1\r\nHost: sluice\r\n\r\n")
        assert read_response(sock, no_body=True).status_code == 200
        try:
            sock.sendall(b"GET /api/status/v1 HTTP/1.1\r\nHost: sluice\r\n\r\n")
            answer = sock.recv(65536)
        except OSError:
            answer = b""
        assert answer.startswith(b"HTTP/1.1 200 "), f"the connection was dropped after HEAD: {answer[:100]!r}"


# -- the events stream -----------------------------------------------------------------


class EventReader:
    """Reads the stream's lines, checking each against the Event schema."""

    SCHEMA = pointer("paths", "/api/events/v1", "get", "responses", "200", "content",
                     "application/x-ndjson", "schema")

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.seen: list[dict] = []

    def until(self, event: str, **fields: Any) -> dict:
        """Read until an event named ``event`` whose fields include ``fields``; return it."""
        for line in self.lines:
            if not line.strip():
                continue  # a heartbeat
            message = json.loads(line)
            assert_valid(self.SCHEMA, message, f"events line {line!r}")
            self.seen.append(message)
            if message["event"] == event and all(message.get(k) == v for k, v in fields.items()):
                return message
        raise AssertionError(f"the stream ended before {event}; seen: {[m['event'] for m in self.seen]}")


def test_events_stream_lines_match_the_event_schema(fresh: Daemon) -> None:
    """Each kind of change, made through the API or the files, arrives as a valid event line.

    Every line carries ``at``, RFC 3339 UTC with milliseconds; the stream's
    last line, when the daemon stops, is ``shutdown``.
    """
    d = fresh
    with d.client() as listener, d.client() as client:
        api = Api(client)
        with listener.stream("GET", "/api/events/v1") as stream:
            check_operation(stream, "GET", "/api/events/v1", read_body=False)
            events = EventReader(stream.iter_lines())
            hello = events.until("hello")

            short = api.call("POST", "/api/admin/suspend/v1", expect=200,
                             json={"tenant": "acme", "domain": "short.example", "reason": "r", "duration": "1s"})
            added = events.until("suspension_added", id=short["id"])
            assert added["generation"] > hello["generation"] and added["tenant"] == "acme"
            api.call("POST", "/api/admin/suspend/v1", expect=200,
                     json={"tenant": "acme", "domain": "short.example", "reason": "r2", "duration": "1s"})
            events.until("suspension_updated", id=short["id"])
            events.until("suspension_expired", id=short["id"])

            for body in ({"queue_names": ["a@b.example"], "reason": "r"}, {"everything": True, "reason": "r"}):
                made = api.call("POST", "/api/admin/suspend/v1", expect=200, json=body)
                api.call("DELETE", "/api/admin/suspend/v1", expect=200, json={"id": made["id"]})
                events.until("suspension_removed", id=made["id"])

            api.call("POST", "/api/admin/queues/{name}/pause", {"name": "q.example"}, expect=200,
                     json={"reason": "warming", "parallelism": 3})
            events.until("queue_paused", queue="q.example")
            api.call("POST", "/api/admin/queues/{name}/resume", {"name": "q.example"}, expect=200)
            events.until("queue_resumed", queue="q.example")
            api.call("POST", "/api/admin/queues/{name}/pause", {"name": "r.example"}, expect=200)
            events.until("queue_paused", queue="r.example", reason=None)
            api.call("POST", "/api/admin/queues/{name}/resume", {"name": "r.example"}, expect=200)
            events.until("queue_resumed", queue="r.example")

            api.call("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, expect=200)
            events.until("schedule_paused", id="weekly-digest")
            api.call("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, expect=200)
            events.until("schedule_resumed", id="weekly-digest")
            api.call("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_ACTIVE}, expect=200,
                     json={"reason": "deploy"})
            events.until("endpoint_paused", id=EP_ACTIVE)
            api.call("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_ACTIVE}, expect=200)
            events.until("endpoint_resumed", id=EP_ACTIVE)

            api.call("POST", "/api/admin/reload/v1", expect=200)
            events.until("reload_applied")
            broken = d.write("30-broken.toml", '[[schedule]]\nid = "x"\ncron = "not a cron"\n')
            failed = api.call("POST", "/api/admin/reload/v1", expect=422, code="INVALID_POLICY")
            assert "30-broken.toml" in failed["error"]["message"]
            events.until("reload_failed")
            broken.write_text('[[schedule]]\nid = "added-later"\n')
            api.call("POST", "/api/admin/reload/v1", expect=200)
            applied = events.until("reload_applied")
            while {"kind": "schedule", "action": "added", "key": "added-later"} not in applied["changes"]:
                applied = events.until("reload_applied")  # the watcher may have been first

            runtime = d.state / "runtime"
            (runtime / "queue-hand.example.toml").write_text(
                '[[queue]]\nname = "hand.example"\npaused = true\nreason = "edited by hand"\n'
            )
            events.until("runtime_reloaded")

            # the QStash routes, on the unix socket with no token
            api.call("POST", "/v2/queues", expect=200,
                     json={"queueName": "upserted_queue", "parallelism": 3, "paused": False})
            events.until("queue_updated", queue="upserted_queue", reason=None)
            api.call("POST", "/v2/queues", expect=200,
                     json={"queueName": "upserted_queue", "parallelism": 3, "paused": True})
            events.until("queue_paused", queue="upserted_queue")
            api.call("POST", "/v2/queues/{queueName}/resume", {"queueName": "upserted_queue"}, expect=200)
            events.until("queue_resumed", queue="upserted_queue")
            api.call("DELETE", "/v2/queues/{queueName}", {"queueName": "upserted_queue"}, expect=200)
            events.until("queue_deleted", queue="upserted_queue")

            # QStash schedules and flow-control keys
            created = api.call("POST", "/v2/schedules/{scheduleId}", {"scheduleId": "https://app.example.com/r"},
                               expect=200, headers={"Upstash-Cron": "*/5 * * * *", "Upstash-Schedule-Id": "ev-report"})
            assert created == {"scheduleId": "ev-report"}
            events.until("schedule_created", id="ev-report", destination="https://app.example.com/r")
            api.call("POST", "/v2/schedules/{scheduleId}", {"scheduleId": "https://app.example.com/r2"},
                     expect=200, headers={"Upstash-Cron": "*/5 * * * *", "Upstash-Schedule-Id": "ev-report"})
            events.until("schedule_updated", id="ev-report")
            api.call("PATCH", "/v2/schedules/{scheduleId}/pause", {"scheduleId": "ev-report"}, expect=200)
            events.until("schedule_paused", id="ev-report")
            api.call("PATCH", "/v2/schedules/{scheduleId}/resume", {"scheduleId": "ev-report"}, expect=200)
            events.until("schedule_resumed", id="ev-report")
            api.call("DELETE", "/v2/schedules/{scheduleId}", {"scheduleId": "ev-report"}, expect=200)
            events.until("schedule_deleted", id="ev-report")
            made = api.call("POST", "/v1/endpoints", expect=201, json={"url": "https://hooks.example.com/ev"})
            ep = {"id": made["data"]["id"]}
            events.until("endpoint_created", id=ep["id"], url="https://hooks.example.com/ev")
            api.call("PATCH", "/v1/endpoints/{id}", ep, expect=200, json={"url": "https://hooks.example.com/ev2"})
            events.until("endpoint_updated", id=ep["id"], url="https://hooks.example.com/ev2")
            api.call("DELETE", "/v1/endpoints/{id}", ep, expect=200)
            events.until("endpoint_deleted", id=ep["id"])
            api.call("POST", "/v2/flowControl/{key}/pause", {"key": "ev-key"}, expect=200)
            events.until("flow_control_paused", key="ev-key")
            api.call("POST", "/v2/flowControl/{key}/pin", {"key": "ev-key"}, expect=200, params={"rate": "5"})
            events.until("flow_control_pinned", key="ev-key", rate=5)
            api.call("POST", "/v2/flowControl/{key}/resume", {"key": "ev-key"}, expect=200)
            events.until("flow_control_resumed", key="ev-key")
            api.call("POST", "/v2/flowControl/{key}/unpin", {"key": "ev-key"}, expect=200, params={"rate": "true"})
            events.until("flow_control_unpinned", key="ev-key", rate=None)

            # the stream's last line, at shutdown
            d.send(signal.SIGTERM)
            shutdown = events.until("shutdown")
            assert shutdown["generation"] == events.seen[-2]["generation"]
            assert [line for line in events.lines if line.strip()] == [], "the stream goes on after shutdown"
    assert d.stop(None) == 0

    kinds = {m["event"] for m in events.seen}
    schema_kinds = {
        kind
        for ref in at(pointer("components", "schemas", "Event"))["oneOf"]
        for kind in _event_names(resolve(ref["$ref"].removeprefix("#"))[1])
    }
    untested = schema_kinds - kinds - {"overflow"}  # overflow: the next test
    assert not untested, f"event kinds in the document this test never saw: {sorted(untested)}"
    for message in events.seen:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message["at"]), message


def _event_names(schema: dict) -> list[str]:
    event = schema["properties"]["event"]
    return [event["const"]] if "const" in event else list(event["enum"])


async def test_overflow_line_matches_the_event_schema() -> None:
    """A consumer that falls behind gets an overflow line, valid against the Event schema.

    Filling the real daemon's buffer would take thousands of changes, so the
    real handler runs in process on a Broadcaster with a buffer of one.
    """
    from sluice.daemon.current import Current
    from sluice.daemon.events import Broadcaster
    from sluice.daemon.http.check import add_check_routes
    from sluice.daemon.http.peer import Peer
    from sluice.daemon.http.routes import Router
    from sluice.daemon.http.message import NO_PARAMS, Request
    from sluice.policy.files import combine
    from sluice.policy.snapshot import Snapshot

    current = Current(Snapshot.build(combine([])))
    events = Broadcaster(buffer=1)
    router = _call_with_dummies(Router, may_change=lambda peer: False)
    _call_with_dummies(add_check_routes, router, current=current, events=events)
    route = next(r for r in router.routes if (r.method, r.pattern) == ("GET", "/api/events/v1"))
    request = Request(method="GET", target="/api/events/v1", path="/api/events/v1", query={},
                      raw_headers=[], body=b"", peer=Peer(), request_id="req_0000000000000000",
                      params=NO_PARAMS)
    response = await route.handler(request)
    lines = [await response.stream.__anext__()]
    for n in range(3):
        events.publish("queue_paused", n + 2, queue=f"q{n}.example", reason=None, by="test")
    with trio.fail_after(5):
        lines += [line async for line in response.stream]
    messages = [json.loads(line) for line in lines if line.strip()]
    assert [m["event"] for m in messages] == ["hello", "queue_paused", "overflow"]
    for message in messages:
        assert_valid(EventReader.SCHEMA, message, "events line")
    assert schema_errors(EventReader.SCHEMA, {k: v for k, v in messages[-1].items() if k != "at"})


# -- limits --------------------------------------------------------------------------------


def _refused(d: Daemon) -> httpx.Response:
    """The answer to a connection over the cap of 256, with 256 keep-alive connections open."""
    held = []
    try:
        for _ in range(256):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(15)
            sock.connect(str(d.admin))
            sock.sendall(b"GET /api/status/v1 HTTP/1.1\r\nHost: sluice\r\n\r\n")
            held.append(sock)
        for sock in held:
            assert read_response(sock).status_code == 200  # served, and kept open
        return raw_exchange(d.admin, b"GET /api/status/v1 HTTP/1.1\r\nHost: sluice\r\n\r\n")
    finally:
        for sock in held:
            sock.close()


def test_a_connection_over_the_cap_gets_the_documented_503(fresh: Daemon) -> None:
    """The 503 is the documented error, with X-Request-Id like every response."""
    response = _refused(fresh)
    assert response.status_code == 503
    assert response.reason_phrase == "Service Unavailable"
    body = check_operation(response, "GET", "/api/status/v1")
    assert body["error"]["code"] == "TOO_MANY_CONNECTIONS"


def test_state_unavailable_answers_as_documented() -> None:
    """With the etcd store away a change is 503 STATE_UNAVAILABLE (DESIGN 8b), in each API's shape.

    The daemon's own error is put through the daemon's own mapping
    (server.map_error, with each route's error style) in process: making etcd
    unreachable is the etcd tests' business.
    """
    store = pytest.importorskip("sluice.daemon.state.base")
    from sluice.daemon.http.message import map_error

    error = store.StateUnavailable("etcd is unreachable (connection refused)")
    request_id = "req_0123456789abcdef"
    changes = [key for key, op in operations().items()
               if op.get("x-sluice-change") and key != ("POST", "/api/admin/reload/v1")]
    assert len(changes) >= 18
    for method, template in changes:
        mapped = map_error(error, request_id, "qstash" if template.startswith("/v2/") else "sluice")
        response = httpx.Response(
            mapped.status,
            headers=[("X-Request-Id", request_id), ("Content-Type", mapped.content_type), *mapped.headers],
            content=mapped.body,
        )
        assert response.status_code == 503
        body = check_operation(response, method, template)
        if not template.startswith("/v2/"):
            assert body["error"]["code"] == "STATE_UNAVAILABLE"


# -- the validator catches drift ---------------------------------------------------------------


def _errors_for(method: str, template: str, status: int, body: Any) -> list[str]:
    ptr, _ = resolve(pointer("paths", template, method.lower(), "responses", str(status)))
    return schema_errors(ptr + pointer("content", "application/json", "schema"), body)


def test_validation_catches_drift(api: Api) -> None:
    """Real answers, changed as code drift would change them, no longer validate."""
    status = api.call("GET", "/api/status/v1", expect=200)
    assert _errors_for("GET", "/api/status/v1", 200, status) == []
    drifted = [
        {**status, "started_at": "2026-01-01T00:00:00Z"},  # a field the document does not know
        {**status, "generation": str(status["generation"])},  # a type changed
        {k: v for k, v in status.items() if k != "degraded"},  # a field gone
        {**status, "counts": {**status["counts"], "paused_hosts": 0}},  # nested unknown field
        {**status, "last_reload": {**status["last_reload"], "at": 1.5}},  # epoch, not RFC 3339
    ]
    for body in drifted:
        assert _errors_for("GET", "/api/status/v1", 200, body), body

    listed = api.call("GET", "/api/admin/suspend/v1", expect=200)
    assert listed
    bad = copy.deepcopy(listed)
    bad[0]["expires_at"] = 0
    assert _errors_for("GET", "/api/admin/suspend/v1", 200, bad)
    bad = copy.deepcopy(listed)
    bad[0]["everything"] = "false"
    assert _errors_for("GET", "/api/admin/suspend/v1", 200, bad)

    decision = api.call("GET", "/api/check/v1", expect=200, params={"queue": "held.example"})
    bad = copy.deepcopy(decision)
    bad["holds"][0]["kind"] = "queue_hold"  # a new kind of hold
    assert _errors_for("GET", "/api/check/v1", 200, bad)
    bad = copy.deepcopy(decision)
    bad["retry_after"] = "soon"
    assert _errors_for("GET", "/api/check/v1", 200, bad)
    bad = copy.deepcopy(decision)
    bad["deliver"] = True  # deliver with holds
    assert _errors_for("GET", "/api/check/v1", 200, bad)

    error = api.call("POST", "/api/admin/schedules/{id}/pause", {"id": "no-such-schedule"},
                     expect=404, code="SCHEDULE_NOT_FOUND")
    assert _errors_for("POST", "/api/admin/schedules/{id}/pause", 404, error) == []
    relabelled = copy.deepcopy(error)
    relabelled["error"]["code"] = "ENDPOINT_NOT_FOUND"  # a code this route does not answer
    assert _errors_for("POST", "/api/admin/schedules/{id}/pause", 404, relabelled)
    assert _errors_for("POST", "/api/admin/schedules/{id}/pause", 404, {**error, "detail": "x"})
    assert _errors_for("POST", "/api/admin/schedules/{id}/pause", 404, {"error": error["error"]})

    hello = {"event": "hello", "generation": 1, "at": "2026-11-23T11:40:00.123Z"}
    assert schema_errors(EventReader.SCHEMA, hello) == []
    assert schema_errors(EventReader.SCHEMA, {**hello, "event": "queue_frozen"})
    assert schema_errors(EventReader.SCHEMA, {**hello, "extra": 1})
    assert schema_errors(EventReader.SCHEMA, {**hello, "at": 1795434000.123})  # epoch seconds, as before
    assert schema_errors(EventReader.SCHEMA, {**hello, "at": "2026-11-23T11:40:00Z"})  # no milliseconds
    assert schema_errors(EventReader.SCHEMA, {**hello, "at": "2026-11-23T12:40:00.123+01:00"})  # not UTC
    paused = {"event": "queue_paused", "generation": 2, "at": "2026-11-23T11:40:00.123Z", "queue": "q",
              "reason": None, "by": "me"}
    assert schema_errors(EventReader.SCHEMA, paused) == []
    assert schema_errors(EventReader.SCHEMA, {k: v for k, v in paused.items() if k != "queue"})
    added = {"event": "suspension_added", "generation": 3, "at": "2026-11-23T11:40:00.123Z",
             "id": UNKNOWN_UUID, "by": "me", "domain": "x.example"}
    assert schema_errors(EventReader.SCHEMA, added) == []
    assert schema_errors(EventReader.SCHEMA, {**added, "domian": "x.example"})  # criteria are closed too

    queue = api.call("POST", "/api/admin/queues/{name}/resume", {"name": "never-seen.example"}, expect=200)
    assert _errors_for("POST", "/api/admin/queues/{name}/resume", 200, {"name": "x.example", "paused": False})
    assert _errors_for("POST", "/api/admin/queues/{name}/resume", 200, {**queue, "source": 7})
