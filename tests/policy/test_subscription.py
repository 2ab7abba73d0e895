"""What kumod is told over TSA's subscription, and when: per criteria, the longest hold."""

import json
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from sluice.policy.files import PolicySet
from sluice.policy.model import Suspension
from sluice.policy.snapshot import Runtime, Snapshot
from sluice.policy.subscription import (
    Follower,
    counts,
    current_set,
    frame,
    item_of,
    suspension_ids,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
NOW = T0.timestamp()


def susp(n, hours=1.0, **kw):
    kw.setdefault("reason", f"reason {n}")
    expires = None if hours is None else T0 + timedelta(hours=hours)
    return Suspension(id=f"00000000-0000-4000-8000-{n:012d}", expires=expires, **kw)


def snap(*suspensions, files=()):
    runtime = Runtime(suspensions={s.id: s for s in suspensions})
    return Snapshot.build(PolicySet(suspensions=tuple(files)), runtime)


@pytest.mark.parametrize(
    "criteria, streamed",
    [
        ({"tenant": "acme", "domain": "gmail.com"}, True),
        ({"campaign": "news", "tenant": "acme", "domain": "gmail.com"}, True),
        ({"domain": "gmail.com"}, False),  # TSA's ReadyQSuspension names a site, not a domain
        ({"tenant": "acme"}, False),
        ({"campaign": "news", "domain": "gmail.com"}, False),
        ({"campaign": "news", "tenant": "acme"}, False),
        ({"queue_names": ("acme@gmail.com",)}, False),
        ({"everything": True}, False),
    ],
)
def test_only_tenant_at_domain_holds_have_a_kumod_form(criteria, streamed):
    assert (item_of(susp(1, **criteria)) is not None) is streamed


def test_an_item_has_serdes_externally_tagged_shape():
    s = susp(1, hours=3, tenant="acme", domain="gmail.com", reason="421 4.7.28")
    assert json.loads(frame(item_of(s))) == {
        "SchedQSuspension": {
            "rule_hash": s.id,
            "tenant": "acme",
            "domain": "gmail.com",
            "campaign": None,
            "reason": "421 4.7.28",
            "expires": "2026-11-23T15:00:00Z",
        }
    }
    assert list(json.loads(frame(item_of(s)))["SchedQSuspension"]) == [
        "rule_hash", "tenant", "domain", "campaign", "reason", "expires"
    ]
    assert json.loads(frame(item_of(s), "SchedQ")).keys() == {"SchedQ"}


def test_a_hold_without_an_end_is_sent_with_the_documented_stand_in():
    assert item_of(susp(1, hours=None, tenant="a", domain="b.example")).expires == "9999-12-31T23:59:59Z"


def test_the_current_set_is_in_tsas_order_and_leaves_out_what_kumod_cannot_hold():
    s = snap(
        susp(1, hours=5, tenant="zeta", domain="a.example"),
        susp(2, hours=2, tenant="beta", domain="a.example"),
        susp(3, hours=2, tenant="alpha", domain="b.example", campaign="news"),
        susp(4, hours=1, domain="a.example"),
        susp(5, hours=-1, tenant="old", domain="a.example"),  # over
        files=[susp(6, hours=None, tenant="file", domain="c.example", source="10-a.toml:1")],
    )
    assert [i.tenant for i in current_set(s, NOW)] == ["alpha", "beta", "zeta", "file"]
    assert counts(s, NOW) == {"streamed": 4, "left_out": 1}


def test_holds_with_the_same_criteria_are_one_item_the_longest():
    short = susp(1, hours=1, tenant="acme", domain="gmail.com")
    long = susp(2, hours=4, tenant="acme", domain="gmail.com", source="10-a.toml:3")
    s = snap(short, files=[long])
    assert [i.rule_hash for i in current_set(s, NOW)] == [long.id]


def test_follow_sends_new_and_extended_holds_and_nothing_twice():
    f = Follower()
    assert f.resync(snap(), NOW) == []
    first = susp(1, hours=1, tenant="acme", domain="gmail.com")
    s = snap(first)
    assert f.follow(s, [first.id], NOW) == [item_of(first)]
    assert f.follow(s, [first.id], NOW) == []  # the same hold again: nothing new
    longer = msgspec.structs.replace(first, expires=T0 + timedelta(hours=5))
    assert [i.expires for i in f.follow(snap(longer), [first.id], NOW)] == ["2026-11-23T17:00:00Z"]
    assert f.resync(snap(longer), NOW) == []


def test_a_lifted_hold_is_sent_again_ending_now():
    f = Follower()
    hold = susp(1, hours=3, tenant="acme", domain="gmail.com")
    f.resync(snap(hold), NOW)
    later = NOW + 60
    (lift,) = f.follow(snap(), [hold.id], later)
    assert lift == msgspec.structs.replace(item_of(hold), expires="2026-11-23T12:01:00Z")
    assert f.follow(snap(), [hold.id], later) == []


def test_an_expired_hold_needs_no_frame():
    f = Follower()
    hold = susp(1, hours=1, tenant="acme", domain="gmail.com")
    f.resync(snap(hold), NOW)
    assert f.follow(snap(), [hold.id], NOW + 3600) == []
    assert f.sent == {}


def test_lifting_one_of_two_holds_with_one_criteria_sends_the_other():
    f = Follower()
    file_hold = susp(1, hours=1, tenant="acme", domain="gmail.com", source="10-a.toml:1")
    runtime = susp(2, hours=4, tenant="acme", domain="gmail.com")
    f.resync(snap(runtime, files=[file_hold]), NOW)
    assert f.follow(snap(files=[file_hold]), [runtime.id], NOW) == [item_of(file_hold)]


def test_a_hold_whose_criteria_change_ends_the_old_copy():
    f = Follower()
    before = susp(1, hours=2, tenant="acme", domain="gmail.com", source="10-a.toml:1")
    f.resync(snap(files=[before]), NOW)
    moved = msgspec.structs.replace(before, tenant="other")
    frames = f.follow(snap(files=[moved]), [before.id], NOW)
    assert [(i.tenant, i.expires) for i in frames] == [
        ("acme", "2026-11-23T12:00:00Z"), ("other", "2026-11-23T14:00:00Z")
    ]
    narrowed = msgspec.structs.replace(before, tenant=None)  # now a domain hold: left out
    assert [(i.tenant, i.expires) for i in f.follow(snap(files=[narrowed]), [before.id], NOW)] == [
        ("other", "2026-11-23T12:00:00Z")
    ]


@pytest.mark.parametrize(
    "event, ids",
    [
        ({"event": "suspension_added", "id": "a"}, ["a"]),
        ({"event": "suspension_expired", "id": "a"}, ["a"]),
        ({"event": "reload_applied", "changes": [{"kind": "suspension", "key": "a"},
                                                 {"kind": "queue", "key": "q"}]}, ["a"]),
        ({"event": "reload_applied", "changes": [], "more_changes": 3}, None),
        ({"event": "runtime_reloaded", "files": ["x"]}, None),
        ({"event": "queue_paused", "queue": "q"}, []),
    ],
)
def test_the_suspensions_an_event_names(event, ids):
    assert suspension_ids(event) == ids
