"""docs/openapi.yaml is kept true: every route is in it, and every real answer is valid against it.

How this works
--------------
The real daemon (``harness.Daemon``) runs with a policy holding every kind of
table, and every request goes through ``Api.call``, which checks the answer
against the document: the status is one the operation lists, the content
type is one that status lists, the JSON body is valid against that status's
schema (Draft 2020-12; ``$ref``s are resolved into the document through a
``referencing`` registry), and ``X-Request-Id`` is there and equals
``meta.request_id`` where a body carries one. Answers that belong to no
operation (unknown path, wrong method, unparseable request) are checked
against ``x-sluice-unrouted-responses``. The events stream is checked line by
line against the ``Event`` schema.

The route table, built as ``daemon/main.py`` builds it, and the document's
paths are compared both ways, so neither can move without the other.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock
from urllib.parse import quote

import httpx
import pytest
import trio
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from harness import ROOT, Daemon

DOC_PATH = ROOT / "docs" / "openapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
BASE_URI = "urn:sluice:openapi"
REGISTRY = Registry().with_resource(BASE_URI, DRAFT202012.create_resource(DOC))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Routes of the seeds' own APIs (DESIGN 4b) are described in a later change;
# until then the route-table check names them in a warning instead of failing.
NOT_YET_DOCUMENTED = {
    "/v2/": "QStash v2 (DESIGN 4b)",
    "/v1/": "HookBridge v1 (DESIGN 4b)",
}

EP_ACTIVE = "ep_550e8400e29b41d4a716446655440000"
EP_FILE_PAUSED = "ep_6ba7b8109dad11d180b400c04fd430c8"
EP_UNKNOWN = "ep_00000000000000000000000000000000"
UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"

FILES = {
    "10-holds.toml": """
        [[suspension]]
        domain = "file.example"
        reason = "421 4.7.28 rate limited; backing off"
        expires = 2099-01-01T12:00:00+02:00

        [[suspension]]
        queue_names = ["newsletter:acme@example.com"]
        reason = "customer asked to hold this campaign"

        [[suspension]]
        campaign = "black-friday"
        tenant = "acme"
        reason = "content under review"

        [[queue]]
        name = "held.example"
        paused = true
        reason = "warming up new IPs"

        [[queue]]
        name = "my_queue"
        paused = false
        parallelism = 4
        """,
    "20-objects.toml": f"""
        [[schedule]]
        id = "weekly-digest"
        cron = "0 9 * * MON"
        description = "Monday morning digest"
        destination = "https://reports.example.com/run"
        method = "PUT"
        retries = 5

        [[schedule]]
        id = "nightly-report"
        paused = true
        reason = "report backend migrating"

        [[endpoint]]
        id = "{EP_ACTIVE}"
        url = "https://hooks.example.com/events"
        name = "events"
        description = "order events for the shop backend"

        [[endpoint]]
        id = "{EP_FILE_PAUSED}"
        url = "https://crm.example.com/hooks"
        paused = true
        reason = "CRM down for maintenance"
        """,
}


# -- the document ------------------------------------------------------------------


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def pointer(*parts: str) -> str:
    return "".join("/" + _escape(str(p)) for p in parts)


def at(ptr: str) -> Any:
    node: Any = DOC
    for part in ptr.split("/")[1:]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(ptr: str) -> tuple[str, Any]:
    """The object at ``ptr`` and its own pointer, following ``$ref`` (responses, headers)."""
    node = at(ptr)
    while isinstance(node, dict) and set(node) == {"$ref"}:
        ptr = node["$ref"].removeprefix("#")
        node = at(ptr)
    return ptr, node


def validator(ptr: str) -> Draft202012Validator:
    """A validator for the schema at ``ptr``, its ``$ref``s resolved into the document."""
    return Draft202012Validator(
        {"$ref": f"{BASE_URI}#{ptr}"},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def schema_errors(ptr: str, instance: Any) -> list[str]:
    errors = list(validator(ptr).iter_errors(instance))
    if not errors:
        return []
    best = best_match(errors)
    return [f"{best.message} at {'/'.join(map(str, best.absolute_path)) or 'the top'}"] + [
        e.message for e in errors if e is not best
    ]


def assert_valid(ptr: str, instance: Any, what: str) -> None:
    errors = schema_errors(ptr, instance)
    assert not errors, (
        f"{what}: not valid against {ptr}:\n  " + "\n  ".join(errors)
        + f"\ninstance: {json.dumps(instance)[:2000]}"
    )


def operations() -> dict[tuple[str, str], dict]:
    """(METHOD, path template) -> operation object, for every documented operation."""
    return {
        (method.upper(), path): op
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


# -- checking real answers ----------------------------------------------------------


def check_against(response: httpx.Response, response_ptr: str, what: str, *, read_body: bool = True,
                  require_request_id: bool = True) -> Any:
    """Check ``response`` against the response object at ``response_ptr``; returns the body."""
    ptr, documented = resolve(response_ptr)
    request_id = response.headers.get("x-request-id")
    headers = documented.get("headers", {})
    assert "X-Request-Id" in headers, f"{what}: the document does not list X-Request-Id"
    if require_request_id:
        assert request_id is not None, f"{what}: no X-Request-Id header"
    for name in headers:
        header_ptr, header = resolve(ptr + pointer("headers", name))
        value = response.headers.get(name)
        if value is None:
            assert not (header.get("required") and require_request_id), f"{what}: no {name} header"
            continue
        assert_valid(header_ptr + "/schema", value, f"{what}: header {name}")

    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    content = documented.get("content", {})
    assert media_type in content, (
        f"{what}: answered {media_type!r}; the document lists {sorted(content)}"
    )
    if not read_body:
        return None
    schema_ptr = ptr + pointer("content", media_type, "schema")
    if media_type == "application/json":
        body = response.json()
        assert_valid(schema_ptr, body, what)
        if isinstance(body, dict) and isinstance(body.get("meta"), dict) and request_id:
            assert body["meta"].get("request_id") == request_id, (
                f"{what}: meta.request_id {body['meta'].get('request_id')!r} "
                f"is not X-Request-Id {request_id!r}"
            )
        return body
    body = response.text
    assert_valid(schema_ptr, body, what)
    return body


def check_operation(response: httpx.Response, method: str, template: str, **kw: Any) -> Any:
    """Check an answer of the documented operation ``method template``; returns the body."""
    op_ptr = pointer("paths", template, method.lower())
    op = at(op_ptr)
    status = str(response.status_code)
    assert status in op["responses"], (
        f"{method} {template} answered {status}, which the document does not list for it "
        f"(it lists {sorted(op['responses'])}): {response.text[:300]}"
    )
    return check_against(response, op_ptr + pointer("responses", status), f"{method} {template} {status}", **kw)


def check_unrouted(response: httpx.Response, what: str, **kw: Any) -> Any:
    """Check an answer that belongs to no operation (unknown path, wrong method, bad request)."""
    status = str(response.status_code)
    unrouted = DOC["x-sluice-unrouted-responses"]
    assert status in unrouted, f"{what}: answered {status}, not in x-sluice-unrouted-responses"
    return check_against(response, pointer("x-sluice-unrouted-responses", status), f"{what} {status}", **kw)


class Api:
    """Speaks to the daemon and checks every answer against the document."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.exercised: set[tuple[str, str]] = set()

    def call(
        self,
        method: str,
        template: str,
        fill: dict[str, str] | None = None,
        *,
        expect: int,
        code: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send ``method template`` (path parameters from ``fill``); check and return the body."""
        path = template.format(**{k: quote(v, safe="@:!") for k, v in (fill or {}).items()})
        response = self.client.request(method, path, **kwargs)
        assert response.status_code == expect, (
            f"{method} {path}: expected {expect}, got {response.status_code}: {response.text[:500]}"
        )
        body = check_operation(response, method, template)
        self.exercised.add((method, template))
        if code is not None:
            assert body["error"]["code"] == code, body
        if 200 <= expect < 300 and "json" in kwargs:
            documented = at(pointer("paths", template, method.lower())).get("requestBody")
            assert documented is not None, f"{method} {template} took a body it does not document"
            schema_ptr = pointer("paths", template, method.lower(), "requestBody", "content", "application/json", "schema")
            assert_valid(schema_ptr, kwargs["json"], f"the request body of {method} {template}")
        return body


def raw_exchange(path: Path, data: bytes) -> httpx.Response:
    """Send ``data`` on a new connection to the socket at ``path``; parse the one answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(data)
        return read_response(sock)


def read_response(sock: socket.socket) -> httpx.Response:
    """Read one answer (head, then Content-Length bytes) from ``sock``."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = int(_headers(head).get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return parse_response(head + b"\r\n\r\n" + body)


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


def parse_response(data: bytes) -> httpx.Response:
    """An httpx.Response from the raw bytes of one HTTP/1.1 answer with Content-Length."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if line]
    length = int(_headers(head).get("content-length", "0"))
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body[:length])


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


# -- the route table and the document ---------------------------------------------------


def _call_with_dummies(function: Any, *args: Any, **given: Any) -> Any:
    """Call ``function`` with ``given``, and a MagicMock for every other required parameter."""
    params = list(inspect.signature(function).parameters.values())[len(args):]
    for p in params:
        if p.name not in given and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            given[p.name] = MagicMock(name=p.name)
    return function(*args, **given)


def wired_routes() -> dict[tuple[str, str], bool]:
    """(METHOD, pattern) -> needs-change-rights, from a Router built as daemon/main.py builds it.

    Every ``add_*_routes`` function that ``daemon/main.py`` calls is called on a
    fresh Router; handlers are closures, so registering needs none of the
    daemon's state and stand-ins do.
    """
    import daemon.main as main
    from daemon.http.routes import Router

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
    assert "add_admin_routes" in adders and "add_check_routes" in adders, adders
    router = _call_with_dummies(Router, may_change=lambda peer: False)
    for name in adders:
        _call_with_dummies(getattr(main, name), router)
    return {(route.method, route.pattern): route.change for route in router.routes}


def documented_routes() -> dict[tuple[str, str], bool]:
    return {key: bool(op.get("x-sluice-change", False)) for key, op in operations().items()}


def test_every_wired_route_is_documented() -> None:
    """A route added to the daemon without a description in docs/openapi.yaml fails here."""
    wired = wired_routes()
    documented = documented_routes()
    later = sorted(
        f"{m} {p} ({why})"
        for (m, p) in wired
        for prefix, why in NOT_YET_DOCUMENTED.items()
        if p.startswith(prefix)
    )
    if later:
        warnings.warn(
            "routes wired but not yet in docs/openapi.yaml (the seeds' APIs, to be described): "
            + ", ".join(later),
            stacklevel=1,
        )
    missing = sorted(
        f"{m} {p}"
        for (m, p) in wired
        if (m, p) not in documented and not p.startswith(tuple(NOT_YET_DOCUMENTED))
    )
    assert not missing, "routes the daemon serves that docs/openapi.yaml does not describe: " + ", ".join(missing)


def test_every_documented_route_is_wired() -> None:
    """A route in docs/openapi.yaml that the daemon does not serve fails here, by name.

    GET /metrics is described before it is wired; until daemon/main.py wires it,
    this test names it.
    """
    wired = wired_routes()
    missing = sorted(f"{m} {p}" for (m, p) in documented_routes() if (m, p) not in wired)
    hint = (
        " (GET /metrics: the metrics route is not wired into the route table yet)"
        if "GET /metrics" in missing
        else ""
    )
    assert not missing, "described in docs/openapi.yaml but not served: " + ", ".join(missing) + hint


def test_change_rights_in_the_document_match_the_route_table() -> None:
    """x-sluice-change marks exactly the routes that need a peer allowed to change state."""
    wired = wired_routes()
    wrong = sorted(
        f"{m} {p}: route table says change={wired[m, p]}, document says {flag}"
        for (m, p), flag in documented_routes().items()
        if (m, p) in wired and wired[m, p] != flag
    )
    assert not wrong, "\n".join(wrong)


# -- every operation, as its users call it ----------------------------------------------


def test_every_operation_answers_as_documented(api: Api, d: Daemon) -> None:
    """Each documented operation, called for real, answers as the document says."""
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
    api.call("POST", "/api/admin/queues/{name}/resume", {"name": "never-seen.example"}, expect=200)
    api.call("POST", "/api/admin/queues/{name}/resume", {"name": "my_queue"}, expect=200)

    # schedules
    assert len(api.call("GET", "/api/admin/schedules", expect=200)) == 2
    api.call("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, expect=200,
             json={"reason": "holiday"})
    api.call("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, expect=200)  # idempotent
    api.call("GET", "/api/admin/schedules", expect=200)
    resumed = api.call("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, expect=200)
    assert resumed["next_fire"] is not None

    # endpoints
    api.call("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_ACTIVE}, expect=200, json={"reason": "deploy"})
    listed = api.call("GET", "/api/admin/endpoints", expect=200)
    assert [e["paused"] for e in listed["data"]] == [True, True]
    api.call("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_ACTIVE}, expect=200)

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

    # the events stream: its head here; its lines in test_events_stream_lines_match_the_event_schema
    with api.client.stream("GET", "/api/events/v1") as stream:
        check_operation(stream, "GET", "/api/events/v1", read_body=False)
        first = next(line for line in stream.iter_lines() if line.strip())
        assert_valid(pointer("components", "schemas", "Event"), json.loads(first), "events: first line")
    api.exercised.add(("GET", "/api/events/v1"))

    # the daemon
    status = api.call("GET", "/api/status/v1", expect=200)
    assert status["files"] == ["10-holds.toml", "20-objects.toml"]
    api.call("POST", "/api/admin/reload/v1", expect=200)
    metrics = api.call("GET", "/metrics", expect=200)
    from prometheus_client.parser import text_string_to_metric_families

    assert any(f.name.startswith("sluice_") for f in text_string_to_metric_families(metrics))

    assert api.exercised == set(operations()), (
        "documented operations this test did not call: "
        + ", ".join(sorted(f"{m} {p}" for m, p in set(operations()) - api.exercised))
    )


# -- error answers, route by route -------------------------------------------------------

JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}

ERRORS = [
    # (method, template, fill, request kwargs, status, code)
    ("POST", "/api/admin/suspend/v1", {}, {"json": {"domian": "x.example", "reason": "typo"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/suspend/v1", {}, {"json": {"reason": "no criterion"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/suspend/v1", {}, {"json": {"domain": "x.example", "reason": "r", "duration": "5m",
                                                   "expires": "2099-01-01T00:00:00Z"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/suspend/v1", {}, {"json": {"domain": "x.example", "reason": "r",
                                                   "expires": "2001-01-01T00:00:00Z"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/suspend/v1", {}, {"json": ["domain"]}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/suspend/v1", {}, {}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/suspend/v1", {}, {"content": b"{not json", "headers": JSON}, 400, "INVALID_JSON"),
    ("POST", "/api/admin/suspend/v1", {}, {"json": {"domain": "bad domain", "reason": "r"}}, 400, "INVALID_QUEUE_NAME"),
    ("POST", "/api/admin/suspend/v1", {}, {"json": {"domain": "x.example", "reason": "r", "duration": "5 parsecs"}},
     400, "INVALID_DURATION"),
    ("POST", "/api/admin/suspend/v1", {}, {"json": {"domain": "x.example", "reason": "r", "duration": 0}},
     400, "INVALID_DURATION"),
    ("POST", "/api/admin/suspend/v1", {}, {"content": b"domain=x", "headers": TEXT}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/admin/suspend/v1", {}, {"content": b"domain=x",
                                           "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
     415, "UNSUPPORTED_MEDIA_TYPE"),
    ("DELETE", "/api/admin/suspend/v1", {}, {"json": {"id": UNKNOWN_UUID}}, 404, "SUSPENSION_NOT_FOUND"),
    ("DELETE", "/api/admin/suspend/v1", {}, {"json": {"id": 5}}, 400, "INVALID_REQUEST"),
    ("DELETE", "/api/admin/suspend/v1", {}, {"json": {"ident": UNKNOWN_UUID}}, 400, "INVALID_REQUEST"),
    ("DELETE", "/api/admin/suspend/v1", {}, {"content": b"[", "headers": JSON}, 400, "INVALID_JSON"),
    ("DELETE", "/api/admin/suspend/v1", {}, {"content": b"id", "headers": TEXT}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/admin/queues/{name}/pause", {"name": "bad name"}, {}, 400, "INVALID_QUEUE_NAME"),
    ("POST", "/api/admin/queues/{name}/pause", {"name": "tenant@"}, {}, 400, "INVALID_QUEUE_NAME"),
    ("POST", "/api/admin/queues/{name}/pause", {"name": "q.example"}, {"json": {"parallelism": 0}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/queues/{name}/pause", {"name": "q.example"}, {"json": {"paused": True}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/queues/{name}/pause", {"name": "q.example"}, {"content": b"{", "headers": JSON}, 400, "INVALID_JSON"),
    ("POST", "/api/admin/queues/{name}/pause", {"name": "q.example"}, {"content": b"r", "headers": TEXT},
     415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/admin/queues/{name}/resume", {"name": "held.example"}, {}, 409, "DEFINED_IN_FILE"),
    ("POST", "/api/admin/queues/{name}/resume", {"name": "q.example"}, {"json": {"reason": "x"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/queues/{name}/resume", {"name": "bad name"}, {}, 400, "INVALID_QUEUE_NAME"),
    ("POST", "/api/admin/queues/{name}/resume", {"name": "q.example"}, {"content": b"{", "headers": JSON},
     400, "INVALID_JSON"),
    ("POST", "/api/admin/queues/{name}/resume", {"name": "q.example"}, {"content": b"r", "headers": TEXT},
     415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/admin/schedules/{id}/pause", {"id": "no-such-schedule"}, {}, 404, "SCHEDULE_NOT_FOUND"),
    ("POST", "/api/admin/schedules/{id}/pause", {"id": "-bad"}, {}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, {"json": {"reason": ""}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, {"json": {"reson": "x"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, {"content": b"{", "headers": JSON},
     400, "INVALID_JSON"),
    ("POST", "/api/admin/schedules/{id}/pause", {"id": "weekly-digest"}, {"content": b"r", "headers": TEXT},
     415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/admin/schedules/{id}/resume", {"id": "nightly-report"}, {}, 409, "DEFINED_IN_FILE"),
    ("POST", "/api/admin/schedules/{id}/resume", {"id": "no-such-schedule"}, {}, 404, "SCHEDULE_NOT_FOUND"),
    ("POST", "/api/admin/schedules/{id}/resume", {"id": "-bad"}, {}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_FILE_PAUSED}, {}, 409, "ALREADY_PAUSED"),
    ("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_UNKNOWN}, {}, 404, "ENDPOINT_NOT_FOUND"),
    ("POST", "/api/admin/endpoints/{id}/pause", {"id": "ep_xyz"}, {}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_ACTIVE}, {"json": {"reasons": "x"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_ACTIVE}, {"content": b"{", "headers": JSON}, 400, "INVALID_JSON"),
    ("POST", "/api/admin/endpoints/{id}/pause", {"id": EP_ACTIVE}, {"content": b"r", "headers": TEXT},
     415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_ACTIVE}, {}, 409, "NOT_PAUSED"),
    ("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_FILE_PAUSED}, {}, 409, "DEFINED_IN_FILE"),
    ("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_UNKNOWN}, {}, 404, "ENDPOINT_NOT_FOUND"),
    ("POST", "/api/admin/endpoints/{id}/resume", {"id": "ep_XYZ"}, {}, 400, "INVALID_REQUEST"),
    ("GET", "/api/check/v1", {}, {}, 400, "INVALID_REQUEST"),
    ("GET", "/api/check/v1", {}, {"params": {"queue": "a.example", "schedule": "weekly-digest"}}, 400, "INVALID_REQUEST"),
    ("GET", "/api/check/v1", {}, {"params": {"queue": "bad name"}}, 400, "INVALID_QUEUE_NAME"),
    ("GET", "/api/check/v1", {}, {"params": {"queue": "x" * 64 + ".example"}}, 400, "INVALID_QUEUE_NAME"),
    ("GET", "/api/check/v1", {}, {"params": {"schedule": "no-such-schedule"}}, 404, "SCHEDULE_NOT_FOUND"),
    ("GET", "/api/check/v1", {}, {"params": {"endpoint": EP_UNKNOWN}}, 404, "ENDPOINT_NOT_FOUND"),
    ("POST", "/api/check/v1", {}, {"json": {"queues": "held.example"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {"json": {"names": []}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {"json": {"queues": [1]}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {"content": b"{", "headers": JSON}, 400, "INVALID_JSON"),
    ("POST", "/api/check/v1", {}, {"content": b"q", "headers": TEXT}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/check/v1", {}, {"json": {"queues": ["a"] * 10_001}}, 413, "BATCH_TOO_LARGE"),
    ("POST", "/api/admin/suspend/v1", {}, {"content": b"x" * (64 * 1024 + 1), "headers": JSON}, 413, "BODY_TOO_LARGE"),
    ("POST", "/api/check/v1", {}, {"content": b"x" * (64 * 1024 + 1), "headers": JSON}, 413, "BODY_TOO_LARGE"),
    ("GET", "/api/status/v1", {}, {"content": b"x" * (64 * 1024 + 1)}, 413, "BODY_TOO_LARGE"),
    ("GET", "/api/status/v1", {}, {"headers": {"X-Padding": "x" * (17 * 1024)}}, 431, "HEADERS_TOO_LARGE"),
    ("GET", "/metrics", {}, {"headers": {"X-Padding": "x" * (17 * 1024)}}, 431, "HEADERS_TOO_LARGE"),
]


@pytest.mark.parametrize(
    ("method", "template", "fill", "kwargs", "status", "code"),
    ERRORS,
    ids=[f"{m} {t.format(**f)} {s} {c}" + (f" #{i}") for i, (m, t, f, _, s, c) in enumerate(ERRORS)],
)
def test_error_answers_are_documented(api: Api, method, template, fill, kwargs, status, code) -> None:
    """Each error is listed for its route, with its code in the route's enum, in the envelope."""
    body = api.call(method, template, fill, expect=status, code=code, **kwargs)
    assert body["error"]["message"]


def test_cancelling_a_file_suspension_is_defined_in_file(api: Api) -> None:
    listed = api.call("GET", "/api/admin/suspend/v1", expect=200)
    ident = next(s["id"] for s in listed if s["source"] != "runtime")
    body = api.call("DELETE", "/api/admin/suspend/v1", expect=409, code="DEFINED_IN_FILE", json={"id": ident})
    assert "10-holds.toml line" in body["error"]["message"]


def test_unknown_paths_and_methods_answer_as_documented(d: Daemon) -> None:
    """404 for an unknown path; 405 for every method a documented path does not have."""
    with d.client() as client:
        check_unrouted(client.get("/api/nothing/here"), "GET /api/nothing/here")
        for path, item in DOC["paths"].items():
            concrete = path.replace("{name}", "q.example").replace("{id}", "weekly-digest")
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                if method.lower() in item:
                    continue
                response = client.request(method, concrete)
                assert response.status_code == 405, (method, path, response.text)
                body = check_unrouted(response, f"{method} {path}")
                assert body["error"]["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /api/status/v1 HTTP/1.1\r\n\r\n",  # no Host header
        b"GET /api/status/v1 HTTP/1.1\r\nHost: sluice\r\nContent-Length: x\r\n\r\n",
    ],
    ids=["garbage", "no-host", "bad-content-length"],
)
def test_unparseable_requests_answer_as_documented(d: Daemon, raw: bytes) -> None:
    response = raw_exchange(d.admin, raw)
    body = check_unrouted(response, repr(raw))
    assert body["error"]["code"] == "BAD_REQUEST"


def _as_another_user(socket_path: Path, requests: list[bytes], uid: int = 65534) -> list[httpx.Response]:
    """Send each raw request on its own connection from a child process running as ``uid``.

    The child connects by a relative path from the socket's directory, since
    pytest's temporary directories are 0700 to other users.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, speak, report, and leave without cleanup
        status = 1
        try:
            os.close(read_end)
            os.chdir(socket_path.parent)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            answers = []
            for data in requests:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(15)
                    sock.connect(socket_path.name)
                    sock.sendall(data)
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
                answers.append(answer.decode("latin-1"))
            with os.fdopen(write_end, "w") as out:
                json.dump(answers, out)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as got:
        text = got.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and text, "the child acting as another user failed"
    return [parse_response(answer.encode("latin-1")) for answer in json.loads(text)]


def test_reads_are_open_and_changes_forbidden_to_other_users(d: Daemon) -> None:
    """A peer that is not root, the daemon's user or in the admin group gets 403 FORBIDDEN."""
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    os.chmod(d.admin, 0o666)
    changes = [(m, p) for (m, p), op in operations().items() if op.get("x-sluice-change")]
    calls = [("GET", "/api/status/v1")] + changes
    raw = []
    for method, template in calls:
        path = template.replace("{name}", "q.example").replace("{id}", "weekly-digest")
        body = b'{"id": "x"}' if method == "DELETE" else b""
        raw.append(
            f"{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
    for (method, template), response in zip(calls, _as_another_user(d.admin, raw), strict=True):
        expected = 200 if method == "GET" else 403
        assert response.status_code == expected, (method, template, response.text)
        body = check_operation(response, method, template)
        if expected == 403:
            assert body["error"]["code"] == "FORBIDDEN"


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


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path, files=FILES)
    daemon.start()
    yield daemon
    daemon.close()


def test_events_stream_lines_match_the_event_schema(fresh: Daemon) -> None:
    """Each kind of change, made through the API or the files, arrives as a valid event line."""
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

    kinds = {m["event"] for m in events.seen}
    schema_kinds = {
        kind
        for ref in at(pointer("components", "schemas", "Event"))["oneOf"]
        for kind in _event_names(resolve(ref["$ref"].removeprefix("#"))[1])
    }
    untested = schema_kinds - kinds - {"overflow", "queue_updated", "queue_deleted"}
    assert not untested, f"event kinds in the document this test never saw: {sorted(untested)}"


def _event_names(schema: dict) -> list[str]:
    event = schema["properties"]["event"]
    return [event["const"]] if "const" in event else list(event["enum"])


async def test_overflow_line_matches_the_event_schema() -> None:
    """A consumer that falls behind gets an overflow line, valid against the Event schema.

    Filling the real daemon's buffer would take thousands of changes, so the
    real handler runs in process on a Broadcaster with a buffer of one.
    """
    from daemon.current import Current
    from daemon.events import Broadcaster
    from daemon.http.check import add_check_routes
    from daemon.http.peer import Peer
    from daemon.http.routes import Router
    from daemon.http.server import Request
    from policy.files import combine
    from policy.snapshot import Snapshot

    current = Current(Snapshot.build(combine([])))
    events = Broadcaster(buffer=1)
    router = _call_with_dummies(Router, may_change=lambda peer: False)
    _call_with_dummies(add_check_routes, router, current=current, events=events)
    route = next(r for r in router.routes if (r.method, r.pattern) == ("GET", "/api/events/v1"))
    request = Request(method="GET", target="/api/events/v1", path="/api/events/v1", query={},
                      headers={}, body=b"", peer=Peer(), request_id="req_0000000000000000")
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
    response = _refused(fresh)
    assert response.status_code == 503
    body = check_operation(response, "GET", "/api/status/v1", require_request_id=False)
    assert body["error"]["code"] == "TOO_MANY_CONNECTIONS"


@pytest.mark.xfail(
    strict=True,
    reason="daemon/http/server.py _refuse() writes the 503 without X-Request-Id "
    "(DESIGN 4: X-Request-Id on every response)",
)
def test_the_503_carries_x_request_id(fresh: Daemon) -> None:
    response = _refused(fresh)
    check_operation(response, "GET", "/api/status/v1")


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

    hello = {"event": "hello", "generation": 1, "at": time.time()}
    assert schema_errors(EventReader.SCHEMA, hello) == []
    assert schema_errors(EventReader.SCHEMA, {**hello, "event": "queue_frozen"})
    assert schema_errors(EventReader.SCHEMA, {**hello, "extra": 1})
    paused = {"event": "queue_paused", "generation": 2, "at": time.time(), "queue": "q", "reason": None, "by": "me"}
    assert schema_errors(EventReader.SCHEMA, paused) == []
    assert schema_errors(EventReader.SCHEMA, {k: v for k, v in paused.items() if k != "queue"})
