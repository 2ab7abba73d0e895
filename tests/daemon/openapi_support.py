"""Helpers shared by the tests that keep docs/openapi.yaml true (tests/daemon/test_openapi*.py).

How this works
--------------
Every request goes through ``Api.call``, which checks the answer against the
document: the status is one the operation lists, the content type is one
that status lists (a status listed without content must answer an empty
body), the JSON body is valid against that status's schema (Draft 2020-12;
``$ref``s are resolved into the document through a ``referencing``
registry), every header the document lists for it is valid, and
``X-Request-Id`` is there and equals ``meta.request_id`` where a body carries
one. Answers that belong to no operation (unknown path, wrong method,
unparseable request) are checked against ``x-sluice-unrouted-responses``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
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
SEEDS_PREFIXES = ("/v1/", "/v2/")  # HookBridge v1, QStash v2 (DESIGN 4b)

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

        [[automation]]
        domain = "automation.example"
        regex = "4[.]7[.]28"
        action = ["SuspendTenant", "Suspend"]
        duration = "1h"
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


def is_seeds(template: str) -> bool:
    return template.startswith(SEEDS_PREFIXES)


def is_websocket(method: str, template: str) -> bool:
    """Whether the operation is a websocket (``x-sluice-websocket``): a plain request is 426."""
    return "x-sluice-websocket" in operations().get((method, template), {})


def websocket_frames(client: Any, template: str, count: int) -> list[Any]:
    """Open the websocket ``template`` with ``client`` (``websockets``' connect, a URL path in, a
    connection out); check its 101 and ``count`` frames against the document; return the frames."""
    op_ptr = pointer("paths", template, "get")
    with client(template) as ws:
        response = httpx.Response(ws.response.status_code, headers=list(ws.response.headers.raw_items()))
        check_operation(response, "GET", template)
        frames = [json.loads(ws.recv(timeout=15)) for _ in range(count)]
    frame_ptr = resolve(op_ptr + pointer("x-sluice-websocket", "frame"))[0]
    for frame in frames:
        assert_valid(frame_ptr, frame, f"a frame of {template}")
    return frames


def is_qstash(template: str) -> bool:
    return template.startswith("/v2/")


def shape(template: str) -> str:
    """A path template with its parameters unnamed: ``/v2/queues/{}``."""
    return re.sub(r"\{[^}]+\}", "{}", template)


SAMPLES = {"name": "my_queue", "queueName": "my_queue", "scheduleId": "weekly-digest", "key": "orders-eu"}


def concrete(template: str) -> str:
    """``template`` with each parameter a value that exists in FILES (so a GET answers 200)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "id":
            return EP_ACTIVE if "/endpoints/" in template else "weekly-digest"
        return SAMPLES[name]

    return re.sub(r"\{([^}]+)\}", value, template)


# -- checking real answers ----------------------------------------------------------


def check_against(response: httpx.Response, response_ptr: str, what: str, *, read_body: bool = True) -> Any:
    """Check ``response`` against the response object at ``response_ptr``; returns the body."""
    ptr, documented = resolve(response_ptr)
    request_id = response.headers.get("x-request-id")
    headers = documented.get("headers", {})
    assert "X-Request-Id" in headers, f"{what}: the document does not list X-Request-Id"
    assert request_id is not None, f"{what}: no X-Request-Id header"
    for name in headers:
        header_ptr, header = resolve(ptr + pointer("headers", name))
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"{what}: no {name} header"
            continue
        assert_valid(header_ptr + "/schema", value, f"{what}: header {name}")

    content = documented.get("content", {})
    if not content:
        if read_body:
            assert response.content == b"", f"{what}: the document says no body; got {response.content[:200]!r}"
        return None
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    assert media_type in content, (
        f"{what}: answered {media_type!r}; the document lists {sorted(content)}"
    )
    if not read_body:
        return None
    schema_ptr = ptr + pointer("content", media_type, "schema")
    if media_type == "application/json":
        body = response.json()
        assert_valid(schema_ptr, body, what)
        if isinstance(body, dict) and isinstance(body.get("meta"), dict):
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


def error_text(body: Any) -> str:
    """The message of an error body, in sluice's envelope or QStash's."""
    error = body["error"]
    return error if isinstance(error, str) else error["message"]


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
        says: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send ``method template`` (path parameters from ``fill``); check and return the body.

        ``code`` is the error code expected (sluice's envelope); ``says`` a
        piece of the error message expected (either envelope).
        """
        path = template.format(**{k: quote(v, safe="@:!") for k, v in (fill or {}).items()})
        response = self.client.request(method, path, **kwargs)
        assert response.status_code == expect, (
            f"{method} {path}: expected {expect}, got {response.status_code}: {response.text[:500]}"
        )
        body = check_operation(response, method, template)
        self.exercised.add((method, template))
        if code is not None:
            assert isinstance(body["error"], dict) and body["error"]["code"] == code, body
        if says is not None:
            assert says in error_text(body), body
        if 200 <= expect < 300 and "json" in kwargs:
            documented = at(pointer("paths", template, method.lower())).get("requestBody")
            assert documented is not None, f"{method} {template} took a body it does not document"
            schema_ptr = pointer("paths", template, method.lower(), "requestBody", "content", "application/json", "schema")
            assert_valid(schema_ptr, kwargs["json"], f"the request body of {method} {template}")
        return body


# -- raw exchanges ---------------------------------------------------------------------


def raw_exchange(path: Path, data: bytes) -> httpx.Response:
    """Send ``data`` on a new connection to the socket at ``path``; parse the one answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(data)
        return read_response(sock, no_body=data.startswith(b"HEAD "))


def read_response(sock: socket.socket, *, no_body: bool = False) -> httpx.Response:
    """Read one answer (head, then Content-Length bytes unless ``no_body``: HEAD) from ``sock``."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = 0 if no_body else int(_headers(head).get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return parse_response(head + b"\r\n\r\n" + body, no_body=no_body)


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


def parse_response(data: bytes, *, no_body: bool = False) -> httpx.Response:
    """An httpx.Response from the raw bytes of one HTTP/1.1 answer with Content-Length.

    The status line's reason phrase is kept as ``response.reason_phrase``.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _version, status, *reason = status_line.split(" ", 2)
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if line]
    length = 0 if no_body else int(_headers(head).get("content-length", "0"))
    return httpx.Response(
        int(status),
        headers=headers,
        content=body[:length],
        extensions={"reason_phrase": (reason[0] if reason else "").encode("latin-1")},
    )


# -- a daemon with the TCP listener --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_daemon(tmp_path: Path, tokens: dict[str, tuple[str, str]]) -> Daemon:
    """A Daemon (not started) on FILES that also listens on TCP, with ``tokens`` (name -> (token, role)).

    ``daemon.base`` is the TCP listener's base URL.
    """
    port = free_port()
    daemon = Daemon(tmp_path, files=FILES)
    (tmp_path / "tokens.toml").write_text(
        "".join(
            f'[[token]]\nname = "{name}"\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
            f'role = "{role}"\n\n'
            for name, (token, role) in tokens.items()
        )
    )
    daemon.config.write_text(
        daemon.config.read_text().replace(
            "[reload]",
            textwrap.dedent(
                f"""
                [http]
                listen = "127.0.0.1:{port}"
                tokens_file = "tokens.toml"
                [reload]"""
            ),
        )
    )
    daemon.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return daemon
