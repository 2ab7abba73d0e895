"""Decisions: every matching hold, in a stable order, found by hash lookups."""

import math
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.policy import diff as diff_module
from sluice.policy.files import PolicySet, combine, parse_policy
from sluice.policy.model import Pause, QueuePolicy, Schedule, Endpoint, Suspension
from sluice.policy.queue_name import parse
from sluice.policy.snapshot import Runtime, Snapshot

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
NOW = T0.timestamp()


def susp(ident, **kw):
    kw.setdefault("reason", f"reason {ident}")
    return Suspension(id=f"00000000-0000-4000-8000-{ident:012d}", **kw)


def snapshot(*suspensions, queues=(), runtime=None, generation=7):
    return Snapshot.build(
        PolicySet(suspensions=tuple(suspensions), queues=tuple(queues)), runtime, generation
    )


def test_no_hold_delivers():
    d = snapshot(susp(1, domain="gmail.com")).decide("yahoo.com", NOW)
    assert d.deliver and d.holds == () and d.retry_after is None and d.generation == 7


def test_each_shape_matches_its_queues_only():
    s = snapshot(
        susp(1, domain="gmail.com"),
        susp(2, tenant="acme"),
        susp(3, campaign="news"),
        susp(4, campaign="news", tenant="acme"),
        susp(5, tenant="acme", domain="gmail.com"),
        susp(6, campaign="news", domain="gmail.com"),
        susp(7, campaign="news", tenant="acme", domain="gmail.com"),
        susp(8, queue_names=("beta@yahoo.com",)),
    )

    def ids(name):
        return [int(h.id[-3:]) for h in s.decide(name, NOW).holds]

    assert ids("news:acme@gmail.com") == [1, 2, 3, 4, 5, 6, 7]
    assert ids("acme@Gmail.com.") == [1, 2, 5]
    assert ids("gmail.com") == [1]  # no tenant: tenant rules do not match
    assert ids("news:beta@yahoo.com") == [3]
    assert ids("beta@yahoo.com") == [8]
    assert ids("beta@yahoo.com!relay.net") == []  # queue_names are exact names
    assert ids("acme@gmail.com!relay.net") == [1, 2, 5]  # routing domain ignored


def test_everything_matches_all_queues():
    s = snapshot(susp(1, everything=True))
    assert not s.decide("anything.example", NOW).deliver
    assert not s.decide("c:t@x.com!r.net", NOW).deliver


def test_expired_never_matches_and_retry_after_counts_to_the_last_expiry():
    s = snapshot(
        susp(1, domain="x.com", expires=T0 - timedelta(seconds=1)),
        susp(2, domain="x.com", expires=T0 + timedelta(seconds=90)),
        susp(3, tenant="t", expires=T0 + timedelta(seconds=30)),
    )
    d = s.decide("t@x.com", NOW)
    assert [h.id[-1] for h in d.holds] == ["2", "3"]
    assert d.retry_after == 90
    assert s.decide("t@x.com", NOW + 91).deliver
    assert s.decide("x.com", T0.timestamp() + 89.5).retry_after == 1


def test_a_hold_without_end_makes_retry_after_null():
    s = snapshot(susp(1, domain="x.com", expires=T0 + timedelta(hours=1)), susp(2, tenant="t"))
    assert s.decide("t@x.com", NOW).retry_after is None


def test_queue_pause_from_file_and_runtime():
    runtime = Runtime(
        queues={
            "b.com": QueuePolicy(name="b.com", paused=True, reason="ops", parallelism=2),
            "c.com": QueuePolicy(name="c.com", paused=False, parallelism=5),
        }
    )
    s = snapshot(
        susp(1, domain="a.com"),
        queues=[QueuePolicy(name="a.com", paused=True, reason="warm-up", source="f.toml:3")],
        runtime=runtime,
    )
    a = s.decide("a.com", NOW)
    assert [(h.kind, h.reason, h.source) for h in a.holds] == [
        ("suspension", "reason 1", "runtime"),
        ("queue_pause", "warm-up", "f.toml:3"),
    ]
    assert a.retry_after is None
    b = s.decide("B.com", NOW)
    assert not b.deliver and b.parallelism == 2 and b.holds[0].queue == "b.com"
    c = s.decide("c.com", NOW)
    assert c.deliver and c.parallelism == 5
    assert [h.kind for h in s.decide("t@a.com", NOW).holds] == ["suspension"]  # pauses are exact


def test_schedule_and_endpoint_decisions():
    ep = "ep_" + "a" * 32
    policy = PolicySet(
        schedules=(Schedule(id="digest", cron="0 9 * * MON"), Schedule(id="held", paused=True, reason="r", source="f:2")),
        endpoints=(Endpoint(id=ep, url="https://x.com"),),
    )
    runtime = Runtime(endpoint_pauses={ep: Pause(kind="endpoint", id=ep, reason="incident")})
    s = Snapshot.build(policy, runtime)
    assert s.decide_schedule("digest").run
    held = s.decide_schedule("held")
    assert not held.run and held.holds[0].source == "f:2"
    assert s.decide_schedule("nope") is None
    e = s.decide_endpoint(ep)
    assert not e.deliver and e.holds[0].reason == "incident"
    assert s.decide_endpoint("ep_" + "b" * 32) is None
    assert s.schedules["digest"].next_fire(T0) == datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)


def test_file_wins_over_runtime_on_the_same_id():
    file_entry = susp(1, domain="x.com", source="f.toml:1")
    runtime_entry = susp(1, domain="y.com")
    s = snapshot(file_entry, runtime=Runtime(suspensions={runtime_entry.id: runtime_entry}))
    assert s.suspensions[file_entry.id] is file_entry
    assert s.decide("y.com", NOW).deliver


def test_with_runtime_evolves_the_index():
    a = susp(1, domain="x.com")
    s = snapshot(runtime=Runtime(suspensions={a.id: a}))
    b = susp(2, tenant="t")
    a2 = susp(1, domain="x.com", reason="updated")
    s2 = s.with_runtime(Runtime(suspensions={a.id: a2, b.id: b}), 8, put=[a2, b], drop=[a])
    d = s2.decide("t@x.com", NOW)
    assert [h.reason for h in d.holds] == ["updated", "reason 2"]
    assert d.generation == 8
    s3 = s2.with_runtime(Runtime(suspensions={b.id: b}), 9, drop=[a2])
    assert [h.reason for h in s3.decide("t@x.com", NOW).holds] == ["reason 2"]
    assert [h.reason for h in s.decide("t@x.com", NOW).holds] == ["reason 1"]  # old one intact


# --- the index against a naive linear scan ---------------------------------

campaigns = st.sampled_from(["c1", "c2"])
tenants = st.sampled_from(["t1", "t2", "T1"])
domains = st.sampled_from(["a.com", "b.com", "c.org"])
offsets = st.one_of(st.none(), st.integers(min_value=-100, max_value=100))


@st.composite
def suspensions(draw):
    shape = draw(st.integers(min_value=0, max_value=8))
    kw = {}
    if shape == 7:
        kw["everything"] = True
    elif shape == 8:
        names = draw(st.lists(queues(), min_size=1, max_size=3))
        kw["queue_names"] = tuple(dict.fromkeys(parse(n).name for n in names))
    else:
        shape += 1
        if shape & 1:
            kw["campaign"] = draw(campaigns)
        if shape & 2:
            kw["tenant"] = draw(tenants)
        if shape & 4:
            kw["domain"] = draw(domains)
    offset = draw(offsets)
    if offset is not None:
        kw["expires"] = T0 + timedelta(seconds=offset)
    kw["source"] = draw(st.sampled_from(["runtime", "f.toml:1"]))
    return kw


@st.composite
def queues(draw):
    domain = draw(domains)
    form = draw(st.integers(min_value=0, max_value=2))
    name = domain
    if form >= 1:
        name = f"{draw(tenants)}@{name}"
    if form == 2:
        name = f"{draw(campaigns)}:{name}"
    if draw(st.booleans()):
        name += "!relay.net"
    return name


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(suspensions(), max_size=25),
    names=st.lists(queues(), min_size=1, max_size=10),
    whens=st.lists(
        st.one_of(
            st.integers(min_value=-120, max_value=120),
            st.floats(min_value=-120, max_value=120, allow_nan=False),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_decide_equals_a_linear_scan(rules, names, whens):
    entries = [
        Suspension(id=f"00000000-0000-4000-8000-{i:012d}", reason=f"r{i}", **kw)
        for i, kw in enumerate(rules)
    ]
    files = tuple(s for s in entries if s.source != "runtime")
    runtime = Runtime(suspensions={s.id: s for s in entries if s.source == "runtime"})
    s = Snapshot.build(PolicySet(suspensions=files), runtime)
    # One snapshot asked at several times, forward and back: what it
    # remembers must never outlive an expiry or a retry_after second.
    for when in whens:
        now = NOW + when
        for name in names:
            q = parse(name)
            expected = [e for e in entries if e.is_active(now) and e.matches(q)]
            decision = s.decide(name, now)
            assert {h.id for h in decision.holds} == {e.id for e in expected}
            assert len(decision.holds) == len(expected)
            assert decision.deliver == (not expected)
            if expected and all(e.expires is not None for e in expected):
                latest = max(e.expires.timestamp() for e in expected)
                assert decision.retry_after == max(1, math.ceil(latest - now))
            else:
                assert decision.retry_after is None
            # stable order: file entries first (as written), then runtime ones
            sources = [s.suspensions[h.id].source == "runtime" for h in decision.holds]
            assert sources == sorted(sources)


def test_stable_order_follows_files_then_runtime_creation():
    f = parse_policy(
        '[[suspension]]\ndomain = "x.com"\nreason = "second in file"\n'
        '[[suspension]]\ntenant = "t"\nreason = "first"\n',
        "a.toml",
    )
    early = susp(9, domain="x.com", created_at=T0 - timedelta(hours=1))
    late = susp(3, tenant="t", created_at=T0)
    s = Snapshot.build(combine([f]), Runtime(suspensions={late.id: late, early.id: early}))
    assert [h.reason for h in s.decide("t@x.com", NOW).holds] == [
        "second in file",
        "first",
        "reason 9",
        "reason 3",
    ]


def test_remembered_decisions_follow_time():
    s = snapshot(
        susp(1, domain="x.com", expires=T0 + timedelta(seconds=30)),
        susp(2, tenant="t", expires=T0 + timedelta(seconds=90)),
    )
    first = s.decide("t@x.com", NOW)
    assert len(first.holds) == 2 and first.retry_after == 90
    assert s.decide("t@x.com", NOW + 10).retry_after == 80  # counted afresh
    later = s.decide("t@x.com", NOW + 31)  # the first hold has expired
    assert [h.id[-1] for h in later.holds] == ["2"] and later.retry_after == 59
    assert s.decide("t@x.com", NOW + 91).deliver
    again = s.decide("t@x.com", NOW)  # an earlier now is decided afresh, not from memory
    assert len(again.holds) == 2


def test_active_count_follows_time():
    s = snapshot(
        susp(1, domain="a.com", expires=T0 + timedelta(seconds=10)),
        susp(2, domain="b.com", expires=T0 + timedelta(seconds=20)),
        susp(3, domain="c.com"),
    )
    assert [s.active_count(NOW + dt) for dt in (0, 10, 15, 20, 0)] == [3, 2, 2, 1, 3]
    assert s.counts(NOW + 15)["suspensions"] == 2


# -- reloads that index again only the files that changed ------------------------

_RULES = [
    'domain = "a.com"', 'domain = "b.com"', 'tenant = "t"\ndomain = "a.com"', 'tenant = "t"',
    'campaign = "c"\ntenant = "t"', 'queue_names = ["t@b.com"]', 'domain = "c.com"',
]
_FILE = st.lists(st.tuples(st.sampled_from(range(len(_RULES))), st.sampled_from(["x", "y"])), max_size=4)


def _text(rules):
    seen = set()
    tables = []
    for rule, reason in rules:
        if rule in seen:
            continue  # one file may not hold the same criteria twice
        seen.add(rule)
        tables.append(f'[[suspension]]\n{_RULES[rule]}\nreason = "{reason}"\n')
    return "\n".join(tables)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["10-a.toml", "20-b.toml", "30-c.toml"]), st.none() | _FILE), min_size=1, max_size=8))
def test_a_reload_of_changed_files_equals_a_snapshot_built_afresh(edits):
    """Each edit replaces (or, with None, removes) one file; unchanged files keep their parsed object."""
    texts: dict[str, str] = {}
    parsed: dict[str, object] = {}
    live = Snapshot.build(combine([]))
    policy = live.policy
    for name, rules in edits:
        if rules is None:
            texts.pop(name, None)
            parsed.pop(name, None)
        else:
            texts[name] = _text(rules)
            parsed[name] = parse_policy(texts[name], name)
        files = [parsed[n] for n in sorted(parsed)]
        try:
            policy = combine(files, policy)
        except Exception:
            continue  # the same id in two files (file ids hash file and criteria, so never here)
        before = live
        live = live.with_policy(policy, live.generation + 1)
        fresh = Snapshot.build(combine(files), generation=live.generation)
        assert dict(live.suspensions) == dict(fresh.suspensions)
        assert live.active_suspensions(NOW) == fresh.active_suspensions(NOW)
        assert live.active_count(NOW) == fresh.active_count(NOW)
        for queue in ("a.com", "t@a.com", "c:t@a.com", "t@b.com", "b.com", "c.com", "u@c.com"):
            assert live.decide(queue, NOW) == fresh.decide(queue, NOW)
        full = diff_module._compare("suspension", before.suspensions, live.suspensions)
        assert sorted(map(repr, diff_module._compare_suspensions(before, live))) == sorted(map(repr, full))


def test_the_active_count_evolves_with_each_change_and_equals_a_fresh_count():
    s = Snapshot.build(combine([parse_policy('[[suspension]]\ndomain = "f.com"\nreason = "r"\nexpires = 2027-01-15T09:00:00Z\n', "10-a.toml")]))
    assert s.active_count(NOW) == 1  # made once ...
    short = Suspension(id="00000000-0000-4000-8000-000000000001", reason="r", domain="a.com",
                       expires=T0 + timedelta(minutes=5))
    endless = Suspension(id="00000000-0000-4000-8000-000000000002", reason="r", domain="b.com")
    s2 = s.with_runtime(Runtime(suspensions={short.id: short, endless.id: endless}), 2, put=[short, endless])
    for at in (NOW, NOW + 600):
        assert s2.active_count(at) == len(s2.active_suspensions(at))  # ... and evolved
    s3 = s2.with_runtime(Runtime(suspensions={endless.id: endless}), 3, drop=[short])
    assert s3.active_count(NOW) == len(s3.active_suspensions(NOW)) == 2
    s4 = s3.with_policy(combine([parse_policy('[[suspension]]\ndomain = "g.com"\nreason = "r"\n', "10-a.toml")], s3.policy), 4)
    assert s4.active_count(NOW + 10**8) == len(s4.active_suspensions(NOW + 10**8)) == 2


def test_a_snapshot_built_at_start_derives_its_indexes_so_the_first_change_walks_nothing(monkeypatch):
    """Who holds each criteria, the next expiry and the in-force count are
    made when the start's snapshot is built: the first change next to many
    runtime suspensions (or the first status line) does not walk them all on
    the event loop."""
    from sluice.policy import changes

    runtime = Runtime(suspensions={
        s.id: s for s in (
            susp(i, domain=f"d{i}.example", source="runtime", expires=T0 + timedelta(minutes=i % 50 + 1))
            for i in range(1, 2001)
        )
    })
    built = snapshot(runtime=runtime)
    walked = []
    key = Suspension.criteria_key
    monkeypatch.setattr(Suspension, "criteria_key", property(lambda s: walked.append(s) or key.fget(s)))
    monkeypatch.setattr(Suspension, "is_active", lambda s, now: walked.append(s) or (
        s.expires is None or s.expires.timestamp() > now))
    new = susp(5000, domain="new.example", source="runtime", expires=T0 + timedelta(hours=1))
    assert built.runtime_holder(new.criteria_key) is None
    plan = changes.suspended(built.runtime, new, None, actor="test")
    after = built.with_runtime(changes.apply(built.runtime, plan), 8, put=plan.put, drop=plan.drop)
    assert after.runtime_holder(new.criteria_key) == new
    assert after.next_runtime_expiry() == (T0 + timedelta(minutes=1)).timestamp()
    assert after.active_count(NOW) == 2001
    assert built.active_count(NOW) == 2000
    assert len(walked) < 20
