"""kumod's TSA subscription, against the real daemon with a real websocket client (``websockets``).

The frames are checked against kumo-api-types' serde shapes
(``SubscriptionItem::SchedQSuspension``, and ``SuspensionEntry::SchedQ`` on
the legacy route): externally tagged, every field of the struct present,
``campaign`` null when there is none, ``expires`` RFC 3339 UTC.
"""

from __future__ import annotations

import hashlib
import json
import signal
import textwrap
import time
import tomllib
from datetime import datetime, timezone

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect, unix_connect

from harness import TIMEOUT, Daemon
from kumod_log import record
from openapi_support import free_port
from test_automated_holds import RULES, publish

TOKEN = "sl_subscribe-read-token"

FILES = {
    "10-holds.toml": """
        [[suspension]]
        tenant = "acme"
        domain = "gmail.com"
        reason = "file hold: acme at gmail"

        [[suspension]]
        domain = "yahoo.com"
        reason = "a domain alone: kumod has no form for it"

        [[suspension]]
        queue_names = ["promo:shop@example.net"]
        reason = "exact names: left out too"
        """
}

FIELDS = ["rule_hash", "tenant", "domain", "campaign", "reason", "expires"]


def item(text: str, tag: str = "SchedQSuspension") -> dict:
    """One frame, checked against serde's shape of ``tag``; its fields."""
    data = json.loads(text)
    assert list(data) == [tag], data
    fields = data[tag]
    assert list(fields) == FIELDS, fields
    for name in ("rule_hash", "tenant", "domain", "reason", "expires"):
        assert isinstance(fields[name], str) and fields[name], (name, fields)
    assert fields["campaign"] is None or isinstance(fields["campaign"], str)
    assert fields["expires"].endswith("Z")
    datetime.fromisoformat(fields["expires"])
    return fields


def recv(ws: ClientConnection, tag: str = "SchedQSuspension") -> dict:
    return item(ws.recv(timeout=TIMEOUT), tag)


def expires(fields: dict) -> float:
    return datetime.fromisoformat(fields["expires"]).timestamp()


@pytest.fixture
def d(tmp_path):
    daemon = Daemon(tmp_path, files=FILES)
    daemon.start()
    yield daemon
    daemon.close()


def unix(d: Daemon, path: str = "/subscribe_event_v1") -> ClientConnection:
    return unix_connect(str(d.admin), f"ws://sluice{path}", open_timeout=TIMEOUT, proxy=None)


def suspend(d: Daemon, **body) -> str:
    response = d.post("/api/admin/suspend/v1", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_the_current_set_first_then_new_extended_and_lifted_holds(d):
    """What kumod is sent over the unix socket: the set, then each change as it is made."""
    runtime = suspend(d, tenant="shop", domain="outlook.com", campaign="promo", reason="421 4.7.0",
                      duration="2h")
    listed = {s["tenant"]: s for s in d.get("/api/admin/suspend/v1").json()}
    with unix(d) as ws:
        first, second = recv(ws), recv(ws)
        assert first == {
            "rule_hash": runtime, "tenant": "shop", "domain": "outlook.com", "campaign": "promo",
            "reason": "421 4.7.0", "expires": first["expires"],
        }
        assert abs(expires(first) - datetime.fromisoformat(listed["shop"]["expires"]).timestamp()) < 1
        # a hold without an end: the documented stand-in, last in TSA's order (by expiry)
        assert second == {
            "rule_hash": listed["acme"]["id"], "tenant": "acme", "domain": "gmail.com", "campaign": None,
            "reason": "file hold: acme at gmail", "expires": "9999-12-31T23:59:59Z",
        }

        made = suspend(d, tenant="acme", domain="aol.com", reason="[TS04] deferred", duration="1h")
        new = recv(ws)
        assert (new["rule_hash"], new["tenant"], new["domain"], new["reason"]) == (
            made, "acme", "aol.com", "[TS04] deferred"
        )

        # left out: nothing is sent for it, so the next frame is the next hold kumod can take
        suspend(d, domain="hotmail.com", reason="a domain alone")
        suspend(d, campaign="promo", reason="a campaign without tenant or domain")
        again = suspend(d, tenant="acme", domain="aol.com", reason="[TS04] still deferred", duration="3h")
        extended = recv(ws)
        assert extended["rule_hash"] == made == again
        assert extended["reason"] == "[TS04] still deferred"
        assert expires(extended) > expires(new) + 3600

        before = datetime.now(timezone.utc).timestamp()
        with d.client() as client:
            assert client.request("DELETE", "/api/admin/suspend/v1", json={"id": made}).status_code == 200
        lifted = recv(ws)
        assert lifted["rule_hash"] == made and lifted["tenant"] == "acme" and lifted["domain"] == "aol.com"
        assert before - 1 <= expires(lifted) <= datetime.now(timezone.utc).timestamp() + 1

    status = d.status()["subscription"]
    assert status == {"subscribers": 0, "streamed": 2, "left_out": 4}


def test_get_suspension_answers_the_same_set_as_json(d):
    suspend(d, tenant="shop", domain="outlook.com", reason="r", duration="1h")
    with unix(d) as ws:
        streamed = [recv(ws), recv(ws)]
    for path in ("/get_suspension_v1", "/get_suspension_v1/suspended.json"):
        answer = d.get(path)
        assert answer.status_code == 200
        assert answer.json() == {"ready_q": [], "sched_q": streamed}


def test_the_shaping_overlay_kumod_loads_is_empty_toml(d):
    """kumod's shaping loader fetches <subscribe url>/get_config_v1/shaping.toml and parses it as
    TOML; sluice sets no shaping options, so it is an empty document, whatever is held."""
    suspend(d, tenant="shop", domain="outlook.com", reason="r", duration="1h")
    answer = d.get("/get_config_v1/shaping.toml")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert tomllib.loads(answer.text) == {}
    assert "Number of entries: 0" in answer.text


def test_the_legacy_route_sends_suspension_entries(d):
    """/subscribe_suspension_v1, kumod's fallback: ``{"SchedQ": ...}``, as TSA's SuspensionEntry."""
    with unix(d, "/subscribe_suspension_v1") as ws:
        assert recv(ws, "SchedQ")["tenant"] == "acme"
        suspend(d, tenant="shop", domain="outlook.com", reason="r", duration="1h")
        assert recv(ws, "SchedQ")["tenant"] == "shop"


def test_pings_are_answered_and_a_close_is_closed_back(d):
    with unix(d) as ws:
        recv(ws)
        assert ws.ping(b"are you there").wait(TIMEOUT)
        ws.close()
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
    assert d.status()["subscription"]["subscribers"] == 0


def test_shutdown_closes_subscribers_with_going_away(d):
    with unix(d) as ws:
        recv(ws)
        assert d.status()["subscription"]["subscribers"] == 1
        d.send(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert d.stop(None) == 0


def test_a_plain_get_is_told_to_upgrade(d):
    answer = d.get("/subscribe_event_v1")
    assert answer.status_code == 426 and answer.headers["upgrade"] == "websocket"
    assert answer.json()["error"]["code"] == "UPGRADE_REQUIRED"
    bad = d.get("/subscribe_event_v1", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert bad.status_code in (400, 426) and bad.json()["error"]["code"] == "BAD_WEBSOCKET_HANDSHAKE"
    assert "Sec-WebSocket" in bad.json()["error"]["message"]


def tcp(tmp_path, trusted: str) -> Daemon:
    """sluiced on FILES with a TCP listener, ``trusted`` hosts, and one read token."""
    port = free_port()
    daemon = Daemon(tmp_path, files=FILES)
    (tmp_path / "tokens.toml").write_text(
        f'[[token]]\nname = "subscriber"\nsha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
        'role = "read"\n'
    )
    http = textwrap.dedent(
        f"""
        [http]
        listen = "127.0.0.1:{port}"
        tokens_file = "tokens.toml"
        trusted_hosts = {trusted}
        """
    )
    daemon.config.write_text(daemon.config.read_text() + http)
    daemon.base = f"http://127.0.0.1:{port}"
    return daemon.start()


def test_over_tcp_from_a_trusted_host_no_token_is_needed(tmp_path):
    """As kumod's ``subscribe = { "http://<sluice>:8025" }`` connects: ws:// on the TCP listener."""
    d = tcp(tmp_path, '["127.0.0.1"]')
    try:
        url = d.base.replace("http://", "ws://") + "/subscribe_event_v1"
        with connect(url, open_timeout=TIMEOUT, proxy=None) as ws:
            assert recv(ws)["tenant"] == "acme"
            made = suspend(d, tenant="shop", domain="outlook.com", reason="r", duration="1h")
            assert recv(ws)["rule_hash"] == made
    finally:
        d.close()


def test_over_tcp_a_token_is_needed_elsewhere(tmp_path):
    d = tcp(tmp_path, "[]")
    try:
        url = d.base.replace("http://", "ws://") + "/subscribe_event_v1"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, open_timeout=TIMEOUT, proxy=None)
        assert refused.value.response.status_code == 401
        with connect(url, open_timeout=TIMEOUT, proxy=None,
                     additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            assert recv(ws)["tenant"] == "acme"
    finally:
        d.close()


def test_an_automation_hold_reaches_kumod_as_its_tsa_daemons_would(tmp_path):
    """kumod's log records in through /publish_log_v1; the tenant hold out as a frame, the domain hold counted."""
    d = Daemon(tmp_path, files={"50-auto.toml": RULES}).start()
    try:
        with unix(d) as ws:
            at = time.time() - 60
            published = publish(d, record(queue="acme@gmail.com", at=at))
            assert published.status_code == 200, published.text
            (held,) = published.json()["holds"]
            # Yahoo's [TS04] (three an hour) holds the whole domain: no SchedQSuspension form, nothing sent
            yahoo = record(queue="acme@yahoo.com", recipient="someone@yahoo.com", code=421,
                           enhanced=None, content="[TS04] Messages from 192.0.2.1 temporarily deferred")
            assert publish(d, yahoo, yahoo, yahoo, array=True).json()["holds"]
            later = publish(d, record(queue="acme@gmail.com", at=at + 60))
            first, extended = recv(ws), recv(ws)
            assert first["rule_hash"] == held["id"] == extended["rule_hash"] == later.json()["holds"][0]["id"]
            assert (first["tenant"], first["domain"], first["campaign"]) == ("acme", "gmail.com", None)
            assert first["reason"].startswith("automation rule: 4\\.7\\.28 tenant=acme domain=gmail.com")
            assert abs(expires(first) - (int(at) + 3 * 3600)) < 1.5
            assert expires(extended) - expires(first) == 60
        assert d.status()["subscription"] == {"subscribers": 0, "streamed": 1, "left_out": 1}
    finally:
        d.close()
