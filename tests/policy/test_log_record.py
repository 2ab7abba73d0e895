"""kumod's JSON log records, read for automation: every field kumod sends is taken, the used ones checked."""

from __future__ import annotations

import json

import msgspec
import pytest

from kumod_log import body, record
from sluice.policy.errors import ValidationError
from sluice.policy.log_record import MAX_RECORDS, decode

AT = 1_800_000_000.25


def test_a_record_as_kumod_writes_it_is_one_outcome():
    batch = decode(body(record(recipient="Someone@GMail.com", queue="news:acme@gmail.com", at=AT)))
    assert batch.records == 1
    (o,) = batch.outcomes
    assert o.domains == ("gmail.com",)
    assert (o.queue.campaign, o.queue.tenant, o.queue.domain) == ("news", "acme", "gmail.com")
    assert o.response.startswith("421 4.7.28 [192.0.2.1] Our system has detected")
    assert o.at == pytest.approx(AT, abs=1e-6)  # event_time, with its fraction
    assert not o.internal


def test_an_array_is_many_records_and_only_failures_are_outcomes():
    kinds = ["TransientFailure", "Bounce", "Delivery", "Reception", "Expiration", "SomethingNewer"]
    batch = decode(body(*(record(kind=k, at=AT) for k in kinds)))
    assert batch.records == 6 and len(batch.outcomes) == 2
    assert decode(body(record(at=AT), array=True)).records == 1


def test_without_event_time_the_integer_timestamp_is_used():
    r = record(at=AT)
    del r["event_time"]
    (o,) = decode(body(r)).outcomes
    assert o.at == int(AT)


@pytest.mark.parametrize(
    "content, enhanced, line, internal",
    [
        ("rate limited\r\nsecond line", (4, 7, 28), "421 4.7.28 rate limited second line", False),
        ("try later", None, "421 try later", False),
        ("KumoMTA internal: ready queue suspended", None, "421 KumoMTA internal: ready queue suspended", True),
    ],
)
def test_the_response_line_is_kumods(content, enhanced, line, internal):
    (o,) = decode(body(record(content=content, enhanced=enhanced, at=AT))).outcomes
    assert (o.response, o.internal) == (line, internal)


def test_several_recipients_give_their_domains_once_and_postmaster_none():
    r = record(recipient=["a@gmail.com", "b@GMAIL.com", "c@googlemail.com", "postmaster", "<d@x.example>"], at=AT)
    (o,) = decode(body(r)).outcomes
    assert o.domains == ("gmail.com", "googlemail.com", "x.example")


@pytest.mark.parametrize(
    "change, field, says",
    [
        ({"type": 7}, "type", "Expected `str`, got `int`"),
        ({"queue": None}, "queue", "Expected `str`, got `null`"),
        ({"queue": "acme@bad domain"}, "queue", "contains a space"),
        ({"recipient": "nobody"}, "recipient", "is not an address"),
        ({"recipient": []}, "recipient", "holds no address"),
        ({"recipient": ["a@gmail.com", "b@exa mple.com"]}, "recipient[1]", "contains a space"),
        ({"timestamp": "yesterday"}, "timestamp", "Expected `int | float`, got `str`"),
        ({"event_time": "yesterday"}, "event_time", "Invalid RFC3339"),
        ({"event_time": "2026-01-01T00:00:00"}, "event_time", "has no UTC offset"),
        ({"event_time": None, "timestamp": 12}, "timestamp", "not a time from 2000 to 2100"),
        ({"response": {"code": 421}}, "response", "missing required field `content`"),
        ({"response": {"code": "421", "content": "x"}}, "response.code", "Expected `int`, got `str`"),
        ({"response": {"code": 42, "content": "x"}}, "response.code", "not an SMTP reply code"),
        ({"response": {"code": 421, "content": "x", "enhanced_code": {"class": 4}}}, "response.enhanced_code", "missing required field `subject`"),
    ],
)
def test_a_bad_value_in_a_used_field_names_the_field(change, field, says):
    r = record(at=AT)
    r.update(change)
    with pytest.raises(ValidationError) as caught:
        decode(body(record(at=AT), r))
    assert caught.value.field == f"[1].{field}"
    assert says in caught.value.message
    with pytest.raises(ValidationError) as alone:
        decode(body(r))
    assert alone.value.field == field


def test_records_of_other_types_are_checked_for_shape_only():
    delivered = record(kind="Delivery", recipient="nobody", queue="acme@bad domain", at=AT)
    assert decode(body(delivered)).outcomes == ()


def test_a_body_that_is_not_json_is_a_decode_error():
    with pytest.raises(msgspec.DecodeError):
        decode(b'{"type": ')


def test_a_body_of_too_many_records_is_refused():
    with pytest.raises(ValidationError, match=f"at most {MAX_RECORDS}"):
        decode(json.dumps([record(kind="Delivery", at=AT)] * (MAX_RECORDS + 1)).encode())


def test_a_json_value_that_is_no_record_says_so():
    for value in (b"3", b'"x"', b"[[1]]", b"null"):
        with pytest.raises(ValidationError, match="not a KumoMTA log record"):
            decode(value)
