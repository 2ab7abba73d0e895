"""Automation against the real sluiced: kumod's log records in, holds out at every front door.

Records are built as kumod writes them (tests/parts/kumod_log.py: every field
of kumo-log-types' JsonLogRecord) and posted to ``/publish_log_v1`` as kumod's
log hook posts them. The holds they make are then asked of the check API, the
Postfix policy socket, the KumoMTA list route as kcli reads it, and sluicectl.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from harness import ROOT, TIMEOUT, Daemon, policy_request
from kumod_log import body, record
from test_fleet import Events
from test_kcli import suspend_v1_list

RULES = """
# Gmail's rate limit: hold the tenant for three hours
[[automation]]
domain = "gmail.com"
regex = "4\\\\.7\\\\.28"
action = "SuspendTenant"
duration = "3 hours"

[[automation]]
domain = "yahoo.com"
regex = ["\\\\[TS04\\\\]", "\\\\[TS03\\\\]"]
action = "Suspend"
duration = "2 hours"
trigger = { Threshold = "3/hr" }
"""

POSTFIX = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username={tenant}\n"
    "recipient=user@{domain}\n\n"
)


def daemon_with(tmp_path, files=None, extra="") -> Daemon:
    d = Daemon(tmp_path, files={"50-auto.toml": RULES} if files is None else files, config_extra=extra)
    text = d.config.read_text()
    d.config.write_text(text.replace('[postfix]\nsocket = ""\n', '[postfix]\nsocket = "run/policy.sock"\n'))
    return d.start()


@pytest.fixture
def d(tmp_path):
    daemon = daemon_with(tmp_path)
    yield daemon
    daemon.close()


def publish(d: Daemon, *records: dict, array: bool = False, **headers):
    headers = {"content-type": "application/json", **headers}
    return d.post("/publish_log_v1", content=body(*records, array=array), headers=headers)


def decision(d: Daemon, queue: str) -> dict:
    response = d.get("/api/check/v1", params={"queue": queue})
    assert response.status_code == 200, response.text
    return response.json()


def postfix(d: Daemon, tenant: str, domain: str) -> str:
    """The Postfix policy server's action for ``tenant``'s mail to a recipient at ``domain``."""
    return policy_request(d.dir / "run" / "policy.sock", POSTFIX.format(tenant=tenant, domain=domain)).decode().strip()


def sluicectl(d: Daemon, *args: str):
    return subprocess.run(
        [sys.executable, "-m", "sluice.daemon.ctl", "--socket", str(d.admin), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
    )


def listed(d: Daemon) -> list[dict]:
    response = d.get("/api/admin/suspend/v1")
    assert response.status_code == 200
    return suspend_v1_list(response.content)  # as kcli suspend-list reads it


def test_a_gmail_4_7_28_holds_the_tenant_at_every_front_door(d):
    events = Events(d)
    at = time.time()
    response = publish(d, record(queue="acme@gmail.com", at=at))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["records"] == 1 and answer["failures"] == 1 and answer["matched"] == 1
    (held,) = answer["holds"]
    assert held["change"] == "added" and held["rule"] == "50-auto.toml:2"
    assert (held["domain"], held["tenant"], held["campaign"]) == ("gmail.com", "acme", None)

    # the hold is in force once the answer has come: the check API ...
    checked = decision(d, "acme@gmail.com")
    assert not checked["deliver"]
    (hold,) = checked["holds"]
    assert hold["id"] == held["id"]
    assert hold["reason"].startswith("automation rule: 4\\.7\\.28 tenant=acme domain=gmail.com (50-auto.toml:2)")
    assert 'response: "421 4.7.28 [192.0.2.1] Our system has detected' in hold["reason"]
    assert decision(d, "news:acme@gmail.com")["deliver"] is False
    assert decision(d, "beta@gmail.com")["deliver"] is True  # another tenant
    assert decision(d, "acme@yahoo.com")["deliver"] is True  # another domain
    # ... the Postfix policy socket ...
    assert postfix(d, "acme", "gmail.com").startswith("action=DEFER_IF_PERMIT 4.7.1 ")
    assert postfix(d, "beta", "gmail.com") == "action=DUNNO"
    # ... the KumoMTA list route, as kcli reads it, and sluicectl
    (entry,) = listed(d)
    assert entry["id"] == held["id"]
    assert (entry["tenant"], entry["domain"], entry["campaign"]) == ("acme", "gmail.com", None)
    assert entry["created_by"] == "automation 50-auto.toml:2"
    assert entry["source"] == "runtime"
    expires = entry["expires"]
    assert abs(_seconds(expires) - (at + 3 * 3600)) < 1.5  # the record's time plus the duration
    out = sluicectl(d, "suspend-list")
    assert out.returncode == 0, out.stderr
    assert held["id"] in out.stdout and "automation rule: 4\\.7\\.28" in out.stdout
    # on the events stream, by the rule
    added = events.until("suspension_added", id=held["id"])
    assert added["by"] == "automation 50-auto.toml:2" and added["tenant"] == "acme"
    events.client.close()

    # lifted like any other
    out = sluicectl(d, "suspend-cancel", held["id"])
    assert out.returncode == 0, out.stderr
    assert decision(d, "acme@gmail.com")["deliver"] is True


def _seconds(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    "queue, held",
    [
        ("news:acme@gmail.com", [("acme", "news")]),
        ("acme@gmail.com", [("acme", None)]),
        ("gmail.com", []),  # no tenant: SuspendCampaign holds nothing, as in KumoMTA
    ],
)
def test_tenant_and_campaign_come_from_the_queue_name(tmp_path, queue, held):
    d = daemon_with(tmp_path, files={"50-auto.toml": RULES.replace('"SuspendTenant"', '"SuspendCampaign"')})
    try:
        answer = publish(d, record(queue=queue)).json()
        assert [(h["tenant"], h["campaign"]) for h in answer["holds"]] == held
        assert [(s["tenant"], s["campaign"]) for s in listed(d)] == held
    finally:
        d.close()


def test_a_second_match_extends_the_hold_rather_than_making_another(d):
    events = Events(d)
    now = time.time()
    first = publish(d, record(at=now - 10)).json()["holds"][0]
    again = publish(d, record(at=now)).json()["holds"][0]
    assert again["id"] == first["id"] and again["change"] == "extended"
    assert _seconds(again["expires"]) - _seconds(first["expires"]) == 10
    # an older record would shorten it: it does not
    older = publish(d, record(at=now - 5)).json()["holds"][0]
    assert older["change"] == "unchanged" and older["expires"] == again["expires"]
    (entry,) = listed(d)
    assert entry["id"] == first["id"] and entry["expires"].startswith(again["expires"][:19])
    events.until("suspension_added", id=first["id"])
    updated = events.until("suspension_updated", id=first["id"])
    assert updated["by"] == "automation 50-auto.toml:2"
    events.client.close()
    # a batch of many matches is one hold too
    answer = publish(d, *(record(at=now + i % 3) for i in range(50))).json()
    assert answer["matched"] == 50 and len(answer["holds"]) == 1
    assert len(listed(d)) == 1


def test_an_operators_longer_hold_is_not_shortened(d):
    response = d.post(
        "/api/admin/suspend/v1", json={"tenant": "acme", "domain": "gmail.com", "reason": "by hand", "duration": "1 day"}
    )
    ident = response.json()["id"]
    (held,) = publish(d, record()).json()["holds"]
    assert held == {**held, "id": ident, "change": "unchanged"}
    (entry,) = listed(d)
    assert entry["reason"] == "by hand" and entry["created_by"] != "automation 50-auto.toml:2"


def test_a_threshold_counts_per_rule_and_scope_and_survives_a_restart(tmp_path):
    d = daemon_with(tmp_path)
    try:
        yahoo = lambda **kw: record(  # noqa: E731
            queue="acme@yahoo.com", recipient="x@yahoo.com", enhanced=(4, 7, 0),
            content="[TS04] Messages from 192.0.2.1 temporarily deferred", **kw,
        )
        assert publish(d, yahoo()).json()["holds"] == []
        assert publish(d, yahoo()).json()["holds"] == []
        assert decision(d, "acme@yahoo.com")["deliver"] is True
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL  # no clean shutdown: the counts were already stored
        d.start()
        (held,) = publish(d, yahoo()).json()["holds"]  # the third within the hour
        assert (held["domain"], held["tenant"]) == ("yahoo.com", None)
        assert decision(d, "beta@yahoo.com")["deliver"] is False  # Suspend holds the whole domain
        assert postfix(d, "beta", "yahoo.com").startswith("action=DEFER_IF_PERMIT")
    finally:
        d.close()


def test_records_that_do_not_count(d):
    old = time.time() - 3 * 3600 - 5
    answer = publish(
        d,
        record(kind="Delivery", code=250, enhanced=(2, 0, 0), content="OK"),
        record(kind="Reception"),
        record(at=old),  # older than the rule's duration
        record(content="KumoMTA internal: suspended by automation rule 4.7.28"),  # kumod's own
        record(recipient="someone@googlemail.com", queue="acme@googlemail.com"),  # no rule for it
        record(code=550, enhanced=(5, 1, 1), content="no such user"),  # the regex does not match
    ).json()
    assert answer == {"records": 6, "failures": 4, "matched": 0, "holds": []}
    assert listed(d) == []


def test_bounces_count_too(d):
    (held,) = publish(d, record(kind="Bounce", code=550, enhanced=(5, 7, 1), content="rejected, as 4.7.28 said before")).json()["holds"]
    assert held["tenant"] == "acme"


BAD = [
    (b'{"type": "TransientFailure"', 400, "INVALID_JSON", "not valid JSON"),
    (b"[" * 100_000, 400, "INVALID_REQUEST", "not a KumoMTA log record"),
    (b"", 400, "INVALID_REQUEST", "a JSON body is required"),
    (b'"hello"', 400, "INVALID_REQUEST", "not a KumoMTA log record"),
]


@pytest.mark.parametrize("raw, status, code, says", BAD)
def test_a_body_that_is_no_record_is_refused(d, raw, status, code, says):
    response = d.post("/publish_log_v1", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"]


@pytest.mark.parametrize(
    "change, says",
    [
        ({"queue": 5}, "[1].queue: Expected `str`, got `int`"),
        ({"queue": "acme@bad domain"}, "[1].queue: domain 'bad domain' contains a space"),
        ({"recipient": "nobody"}, "[1].recipient: 'nobody' is not an address"),
        ({"timestamp": "now"}, "[1].timestamp: Expected `int | float`, got `str`"),
        ({"event_time": "yesterday"}, "[1].event_time"),
        ({"response": {"code": "421", "content": "x"}}, "[1].response.code: Expected `int`, got `str`"),
        ({"response": {"content": "x"}}, "at [1].response: Object missing required field `code`"),
    ],
)
def test_a_bad_value_in_a_field_sluice_uses_is_400_naming_it_and_counts_nothing(tmp_path, change, says):
    d = daemon_with(tmp_path)
    try:
        yahoo = dict(queue="acme@yahoo.com", recipient="x@yahoo.com", content="[TS04] deferred")
        bad = record(**yahoo)
        bad.update(change)
        # a good record before the bad one: the whole body is refused, none counted
        response = publish(d, record(**yahoo), bad)
        assert response.status_code == 400, response.text
        assert says in response.json()["error"]["message"]
        assert publish(d, record(**yahoo)).json()["holds"] == []
        assert publish(d, record(**yahoo)).json()["holds"] == []
        assert len(publish(d, record(**yahoo)).json()["holds"]) == 1  # the third counted
    finally:
        d.close()


def test_other_content_types_are_415(d):
    response = d.post("/publish_log_v1", content=body(record()), headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_rules_hot_reload_and_a_bad_rule_is_refused_naming_file_line_and_key(d):
    assert d.status()["counts"]["automation_rules"] == 2
    d.write("60-more.toml", '[[automation]]\ndomain = "aol.com"\nregex = "421"\naction = "Suspend"\nduration = "1h"\n')
    d.notify.wait_for("READY=1")
    assert d.status()["counts"]["automation_rules"] == 3
    aol = record(recipient="x@aol.com", queue="acme@aol.com")
    assert len(publish(d, aol).json()["holds"]) == 1
    d.write("60-more.toml", '[[automation]]\ndomain = "aol.com"\nregex = "("\naction = "Suspnd"\nduration = "1h"\n')
    d.notify.wait_for("READY=1")
    last = d.status()["last_reload"]
    assert not last["ok"]
    assert "60-more.toml:3: automation[0].regex: is not a valid regex" in last["errors"][0]
    assert any("60-more.toml:4: automation[0].action: unknown action 'Suspnd' (did you mean 'Suspend'?)" in e for e in last["errors"])
    (d.policy / "60-more.toml").unlink()
    d.notify.wait_for("READY=1")
    other = record(recipient="x@aol.com", queue="beta@aol.com")
    assert publish(d, other).json()["holds"] == []  # the rule is gone


def test_publishing_needs_the_right_to_change(tmp_path):
    from test_seeds_tcp import ADMIN_TOKEN, READ_TOKEN, make

    d = make(tmp_path)
    d.write("50-auto.toml", RULES)
    d.start()
    try:
        url = f"{d.base}/publish_log_v1"
        read = httpx.post(url, content=body(record()), headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert read.status_code == 403
        admin = httpx.post(url, content=body(record()), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert admin.status_code == 200, admin.text
        assert admin.json()["holds"][0]["tenant"] == "acme"
    finally:
        d.close()


def test_metrics_count_records_matches_and_holds_per_rule(d):
    publish(d, record(), record(kind="Delivery"), record(at=time.time() + 1))
    text = d.get("/metrics").text
    assert 'sluice_automation_records_total{kind="received"} 3.0' in text
    assert 'sluice_automation_records_total{kind="failure"} 2.0' in text
    assert 'sluice_automation_matched_total{rule="50-auto.toml:2"} 2.0' in text
    assert 'sluice_automation_holds_total{change="added",rule="50-auto.toml:2"} 1.0' in text


def test_a_windows_file_that_cannot_be_read_is_logged_and_counting_starts_afresh(tmp_path):
    d = Daemon(tmp_path, files={"50-auto.toml": RULES})
    d.state.mkdir()
    (d.state / "automation-windows.json").write_text("not json")
    d.start()
    try:
        lines = [json.loads(line) for line in d.log_lines().splitlines() if line.startswith("{")]
        assert any(line.get("event") == "automation_windows_unreadable" for line in lines)
        assert d.status()["generation"] == 1
    finally:
        d.close()


def test_a_hand_written_endless_hold_is_kept_as_it_is(tmp_path):
    """A runtime suspension without an end (only a hand edit makes one) already lasts longer."""
    ident = "0b9a7c1e-6f43-4d2a-9a51-0c3d5e7f9a11"
    runtime = tmp_path / "state" / "runtime"
    runtime.mkdir(parents=True)
    (runtime / f"suspension-{ident}.toml").write_text(
        f'[[suspension]]\nid = "{ident}"\ntenant = "acme"\ndomain = "gmail.com"\nreason = "by hand"\n'
    )
    d = daemon_with(tmp_path)
    try:
        response = publish(d, record())
        assert response.status_code == 200, response.text
        (held,) = response.json()["holds"]
        assert (held["id"], held["change"], held["expires"]) == (ident, "unchanged", None)
    finally:
        d.close()
