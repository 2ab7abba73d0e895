"""docs/openapi.yaml is kept true for error answers: each is listed for its route, in its shape.

Every request goes through ``Api.call`` (tests/daemon/openapi_support.py),
which checks the status, the content type, the body and the headers against
the document. Unknown paths, wrong methods and unparseable requests are
checked against ``x-sluice-unrouted-responses``. The seeds' own errors, over
TCP, are in test_openapi_seeds.py.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from harness import Daemon
from openapi_support import (
    DOC,
    EP_ACTIVE,
    EP_FILE_PAUSED,
    EP_UNKNOWN,
    FILES,
    UNKNOWN_UUID,
    Api,
    check_operation,
    check_unrouted,
    concrete,
    error_text,
    is_qstash,
    operations,
    parse_response,
    raw_exchange,
)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("openapi-errors"), files=FILES)
    daemon.start()
    yield daemon
    daemon.close()


@pytest.fixture
def api(d: Daemon) -> Iterator[Api]:
    with d.client() as client:
        yield Api(client)


# -- error answers, route by route -------------------------------------------------------

JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}

ERRORS = [
    # (method, template, fill, request kwargs, status, code)
    ("POST", "/publish_log_v1", {}, {"json": {"type": "Bounce"}}, 400, "INVALID_REQUEST"),
    ("POST", "/publish_log_v1", {}, {"json": [{"type": "Bounce", "recipient": "nobody", "queue": "q.example",
                                               "timestamp": 1800000000, "response": {"code": 550, "content": "x"}}]},
     400, "INVALID_REQUEST"),
    ("POST", "/publish_log_v1", {}, {"content": b'{"type": ', "headers": JSON}, 400, "INVALID_JSON"),
    ("POST", "/publish_log_v1", {}, {}, 400, "INVALID_REQUEST"),
    ("POST", "/publish_log_v1", {}, {"content": b"type=Bounce", "headers": TEXT}, 415, "UNSUPPORTED_MEDIA_TYPE"),
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
    ("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, {"json": {"reason": "x"}},
     400, "INVALID_REQUEST"),
    ("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, {"json": []}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, {"content": b"{", "headers": JSON},
     400, "INVALID_JSON"),
    ("POST", "/api/admin/schedules/{id}/resume", {"id": "weekly-digest"}, {"content": b"r", "headers": TEXT},
     415, "UNSUPPORTED_MEDIA_TYPE"),
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
    ("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_FILE_PAUSED}, {"json": {"reason": "x"}},
     400, "INVALID_REQUEST"),
    ("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_FILE_PAUSED}, {"content": b"{", "headers": JSON},
     400, "INVALID_JSON"),
    ("POST", "/api/admin/endpoints/{id}/resume", {"id": EP_FILE_PAUSED}, {"content": b"r", "headers": TEXT},
     415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/admin/reload/v1", {}, {"json": {"force": True}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/reload/v1", {}, {"json": ["now"]}, 400, "INVALID_REQUEST"),
    ("POST", "/api/admin/reload/v1", {}, {"content": b"{", "headers": JSON}, 400, "INVALID_JSON"),
    ("POST", "/api/admin/reload/v1", {}, {"content": b"now", "headers": TEXT}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("GET", "/api/check/v1", {}, {}, 400, "INVALID_REQUEST"),
    ("GET", "/api/check/v1", {}, {"params": {"queue": "a.example", "schedule": "weekly-digest"}}, 400, "INVALID_REQUEST"),
    ("GET", "/api/check/v1", {}, {"params": {"queue": "bad name"}}, 400, "INVALID_QUEUE_NAME"),
    ("GET", "/api/check/v1", {}, {"params": {"queue": "x" * 64 + ".example"}}, 400, "INVALID_QUEUE_NAME"),
    ("GET", "/api/check/v1", {}, {"params": {"schedule": "no-such-schedule"}}, 404, "SCHEDULE_NOT_FOUND"),
    ("GET", "/api/check/v1", {}, {"params": {"endpoint": EP_UNKNOWN}}, 404, "ENDPOINT_NOT_FOUND"),
    ("GET", "/api/check/v1", {}, {"params": {"endpoint": "ep_xyz"}}, 400, "INVALID_REQUEST"),
    ("GET", "/api/check/v1", {}, {"params": {"endpoint": EP_ACTIVE.upper()}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {"json": {"queues": "held.example"}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {"json": {"names": []}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {"json": {"queues": [1]}}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {}, 400, "INVALID_REQUEST"),
    ("POST", "/api/check/v1", {}, {"content": b"{", "headers": JSON}, 400, "INVALID_JSON"),
    ("POST", "/api/check/v1", {}, {"content": b"q", "headers": TEXT}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/api/check/v1", {}, {"json": {"queues": ["a"] * 10_001}}, 413, "BATCH_TOO_LARGE"),
    ("POST", "/api/admin/suspend/v1", {}, {"content": b"x" * (64 * 1024 + 1), "headers": JSON}, 413, "BODY_TOO_LARGE"),
    ("POST", "/api/check/v1", {}, {"content": b"x" * (2 * 1024 * 1024 + 1), "headers": JSON}, 413, "BODY_TOO_LARGE"),
    ("POST", "/api/admin/queues/{name}/resume", {"name": "q.example"}, {"content": b"x" * (64 * 1024 + 1),
                                                                      "headers": JSON}, 413, "BODY_TOO_LARGE"),
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


def test_a_malformed_endpoint_id_in_a_check_says_the_format(api: Api) -> None:
    body = api.call("GET", "/api/check/v1", expect=400, code="INVALID_REQUEST", params={"endpoint": "ep_123"})
    assert "endpoint_id must be in format ep_xxx" in body["error"]["message"]


def test_a_body_over_64_kib_but_under_2_mib_is_taken_by_check_only(api: Api) -> None:
    """/api/check/v1 takes bodies up to 2 MiB; other routes stop at 64 KiB."""
    padded = json.dumps({"queues": ["a.example"], "pad": "x" * (64 * 1024)}).encode()
    body = api.call("POST", "/api/check/v1", expect=400, code="INVALID_REQUEST", content=padded, headers=JSON)
    assert "pad" in body["error"]["message"]  # read and refused for its unknown field, not its size
    api.call("POST", "/api/admin/suspend/v1", expect=413, code="BODY_TOO_LARGE", content=padded, headers=JSON)


def test_cancelling_a_file_suspension_is_defined_in_file(api: Api) -> None:
    listed = api.call("GET", "/api/admin/suspend/v1", expect=200)
    ident = next(s["id"] for s in listed if s["source"] != "runtime")
    body = api.call("DELETE", "/api/admin/suspend/v1", expect=409, code="DEFINED_IN_FILE", json={"id": ident})
    assert "10-holds.toml line" in body["error"]["message"]


def test_unknown_paths_and_methods_answer_as_documented(d: Daemon) -> None:
    """404 for an unknown path; 405, with Allow, for every method a documented path does not have."""
    with d.client() as client:
        check_unrouted(client.get("/api/nothing/here"), "GET /api/nothing/here")
        check_unrouted(client.get("/v2/nothing/here"), "GET /v2/nothing/here")
        for path, item in DOC["paths"].items():
            has = {m.upper() for m in item if m in ("get", "post", "put", "delete", "patch")}
            allowed = sorted(has | ({"HEAD"} if "GET" in has else set()))
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"):
                if method in allowed:
                    continue
                response = client.request(method, concrete(path))
                assert response.status_code == 405, (method, path, response.text)
                assert response.headers["allow"] == ", ".join(allowed), (method, path)
                body = check_unrouted(response, f"{method} {path}", read_body=method != "HEAD")
                if method == "HEAD":
                    assert response.content == b""
                elif is_qstash(path):
                    assert set(body) == {"error"} and isinstance(body["error"], str), body  # QStash's shape
                    assert method in body["error"]
                else:
                    assert body["error"]["code"] == "METHOD_NOT_ALLOWED"
                    assert ", ".join(allowed) in body["error"]["message"]


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
    assert response.reason_phrase == "Bad Request"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /api/status/v1 HTTP/1.1\r\nHost: sluice\r\n\r\n", 200),
        (b"HEAD /api/status/v1 HTTP/1.1\r\nHost: sluice\r\n\r\n", 200),
        (b"GET /api/nothing HTTP/1.1\r\nHost: sluice\r\n\r\n", 404),
        (b"PUT /api/status/v1 HTTP/1.1\r\nHost: sluice\r\nContent-Length: 0\r\n\r\n", 405),
        (b"POST /api/admin/suspend/v1 HTTP/1.1\r\nHost: sluice\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 1\r\n\r\nx", 415),
        (b"GET /api/status/v1 HTTP/1.1\r\nHost: sluice\r\nX-Padding: " + b"x" * 17000 + b"\r\n\r\n", 431),
        (b"POST /api/admin/reload/v1 HTTP/1.1\r\nHost: sluice\r\nContent-Length: 0\r\n\r\n", 200),
    ],
    ids=["200", "head", "404", "405", "415", "431", "reload"],
)
def test_status_lines_carry_the_reason_phrase(d: Daemon, raw: bytes, status: int) -> None:
    response = raw_exchange(d.admin, raw)
    assert response.status_code == status, response.text
    assert response.reason_phrase == HTTPStatus(status).phrase




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
    """A peer that is not root, the daemon's user or in the admin group gets 403 FORBIDDEN.

    The seeds' change routes too, on the unix socket, each in its API's error shape.
    """
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    os.chmod(d.admin, 0o666)
    changes = [(m, p) for (m, p), op in operations().items() if op.get("x-sluice-change")]
    calls = [("GET", "/api/status/v1"), ("GET", "/v2/queues"), ("GET", "/v1/endpoints")] + changes
    raw = []
    for method, template in calls:
        path = concrete(template)
        body = b'{"id": "x"}' if method == "DELETE" else b""
        raw.append(
            f"{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
    for (method, template), response in zip(calls, _as_another_user(d.admin, raw), strict=True):
        expected = 200 if method == "GET" else 403
        assert response.status_code == expected, (method, template, response.text)
        body = check_operation(response, method, template)
        if expected == 403 and is_qstash(template):
            assert "may read but not change state" in error_text(body)
        elif expected == 403:
            assert body["error"]["code"] == "FORBIDDEN"
