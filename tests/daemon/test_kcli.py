"""KumoMTA's kcli against sluice: its requests byte for byte, its answers read by its rules.

kcli cannot be built here, so its requests are replayed as it writes them:
kcli's suspend, suspend-list and suspend-cancel build kumo-api-types'
``SuspendV1Request`` / ``SuspendV1CancelRequest`` and send them with
kumo-api-client's ``request_with_json_response``: reqwest's ``.json(body)``
(compact serde_json in field order, ``Option`` fields without
``skip_serializing_if`` written as ``null``; ``duration`` through
duration_serde, humantime's format; ``queue_names`` left out when empty),
also on the GET, whose body is ``()``, i.e. ``null``. kcli trusts the host
rather than sending a token. Answers are read as serde reads them into
``SuspendV1Response`` and ``Vec<SuspendV1ListEntry>``.
"""

import json
import socket
import uuid

import pytest

from humantime import parse_duration
from test_seeds_tcp import make


def kcli_request(port: int, method: str, body: bytes) -> tuple[int, bytes]:
    """One request as reqwest sends it, on a fresh connection; (status, body)."""
    head = (
        f"{method} /api/admin/suspend/v1 HTTP/1.1\r\n"
        "content-type: application/json\r\n"
        "accept: */*\r\n"
        f"host: 127.0.0.1:{port}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in headers.lower()  # a JSON answer has its length
    return int(status_line.split()[1]), payload


def suspend_v1_response(payload: bytes) -> uuid.UUID:
    """serde: ``SuspendV1Response { id: Uuid }``."""
    return uuid.UUID(json.loads(payload)["id"])


def suspend_v1_list(payload: bytes) -> list[dict]:
    """serde: ``Vec<SuspendV1ListEntry>``; raises where kcli's suspend-list would fail."""
    entries = json.loads(payload)
    assert isinstance(entries, list)
    for e in entries:
        uuid.UUID(e["id"])
        assert isinstance(e["reason"], str)
        for key in ("campaign", "tenant", "domain"):
            assert e.get(key) is None or isinstance(e[key], str)
        duration = e["duration"]  # required: Duration, not Option<Duration>
        if isinstance(duration, str):
            parse_duration(duration)
        else:
            assert isinstance(duration, (int, float)) and not isinstance(duration, bool)
    return entries


# kcli suspend's flags, and the body serde writes for them
SUSPENDS = [
    (["--domain", "gmail.com", "--reason", "r", "--duration", "30m"],
     b'{"campaign":null,"tenant":null,"domain":"gmail.com","reason":"r","duration":"30m"}'),
    (["--domain", "yahoo.com", "--reason", "421 deferrals"],
     b'{"campaign":null,"tenant":null,"domain":"yahoo.com","reason":"421 deferrals"}'),
    (["--tenant", "acme", "--reason", "r", "--duration", "1h 30m"],
     b'{"campaign":null,"tenant":"acme","domain":null,"reason":"r","duration":"1h 30m"}'),
    (["--campaign", "news", "--tenant", "acme", "--domain", "aol.com", "--reason", "r"],
     b'{"campaign":"news","tenant":"acme","domain":"aol.com","reason":"r"}'),
    (["--campaign", "news", "--reason", "r", "--duration", "2days"],
     b'{"campaign":"news","tenant":null,"domain":null,"reason":"r","duration":"2days"}'),
    (["--queue", "news:acme@gmail.com", "--queue", "acme@aol.com", "--reason", "r"],
     b'{"campaign":null,"tenant":null,"domain":null,"reason":"r",'
     b'"queue_names":["news:acme@gmail.com","acme@aol.com"]}'),
    (["--everything", "--reason", "all mail", "--duration", "10m"],
     b'{"campaign":null,"tenant":null,"domain":null,"reason":"all mail","duration":"10m"}'),
]

FILE_HOLD = """
[[suspension]]
domain = "forever.example"
reason = "written in a file, without an end"
"""


@pytest.fixture
def kumo(tmp_path):
    d = make(tmp_path, trusted='["127.0.0.0/8"]')
    (d.policy / "20-forever.toml").write_text(FILE_HOLD)
    d.start()
    yield d
    d.close()


def check(d, queue):
    return d.get("/api/check/v1", params={"queue": queue}).json()


@pytest.mark.parametrize("flags, body", SUSPENDS, ids=[" ".join(f) for f, _ in SUSPENDS])
def test_each_kcli_suspend_is_accepted_and_holds_what_it_names(kumo, flags, body):
    status, payload = kcli_request(kumo.port, "POST", body)
    assert status == 200, payload
    ident = str(suspend_v1_response(payload))
    listed = {e["id"]: e for e in suspend_v1_list(kcli_request(kumo.port, "GET", b"null")[1])}
    entry = listed[ident]
    sent = json.loads(body)
    expected = parse_duration(sent.get("duration", "5m"))  # kumod's default: 5 minutes
    assert expected - 2 <= parse_duration(entry["duration"]) <= expected
    if "--everything" in flags:
        assert entry["everything"] is True
        assert not check(kumo, "anything.example")["deliver"]
    elif "--queue" in flags:
        assert entry["queue_names"] == sent["queue_names"]
        assert not check(kumo, "news:acme@gmail.com")["deliver"]
        assert check(kumo, "other:acme@gmail.com")["deliver"]
    else:
        for key in ("campaign", "tenant", "domain"):
            assert entry[key] == sent[key]
        assert check(kumo, "unrelated.example")["deliver"]


def test_kcli_suspend_list_reads_every_entry_even_one_without_an_end(kumo):
    kcli_request(kumo.port, "POST", SUSPENDS[0][1])
    status, payload = kcli_request(kumo.port, "GET", b"null")
    assert status == 200
    entries = suspend_v1_list(payload)
    forever = [e for e in entries if e["domain"] == "forever.example"]
    assert len(forever) == 1 and forever[0]["expires"] is None
    assert parse_duration(forever[0]["duration"]) >= 100 * 365 * 86400


def test_kcli_suspend_cancel(kumo):
    _, payload = kcli_request(kumo.port, "POST", SUSPENDS[0][1])
    ident = suspend_v1_response(payload)
    status, text = kcli_request(kumo.port, "DELETE", json.dumps({"id": str(ident)}, separators=(",", ":")).encode())
    assert status == 200, text  # kcli prints the text, or OK
    assert check(kumo, "gmail.com")["deliver"]
    listed = suspend_v1_list(kcli_request(kumo.port, "GET", b"null")[1])
    assert str(ident) not in {e["id"] for e in listed}


@pytest.mark.parametrize(
    "body, says",
    [
        (b'{"reason":"r"}', "needs campaign, tenant, domain or queue_names"),
        (b'{"campaign":null,"reason":"r"}', "needs campaign, tenant, domain or queue_names"),
        (b'{"campaign":null,"tenant":null,"domian":null,"reason":"r"}', "did you mean 'domain'"),
        (b'{"campaign":null,"tenant":null,"domain":null,"reason":null}', "reason: is required"),
    ],
)
def test_a_typo_still_cannot_suspend_all_mail(kumo, body, says):
    status, payload = kcli_request(kumo.port, "POST", body)
    assert status == 400 and says in payload.decode()
    assert check(kumo, "anything.example")["deliver"]
