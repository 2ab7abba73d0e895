"""The change planner: every rule of a runtime change, checked without a daemon."""

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.policy import changes
from sluice.policy.errors import Conflict, NotFound, ValidationError
from sluice.policy.fields import suspension_from
from sluice.policy.files import combine, parse_policy
from sluice.policy.model import Endpoint, Pause, Schedule, Suspension
from sluice.policy.snapshot import Runtime, Snapshot

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
EP = "ep_550e8400e29b41d4a716446655440000"
EP2 = "ep_6ba7b8109dad11d180b400c04fd430c8"

FILES = f"""
[[suspension]]
domain = "file.example"
reason = "from a file"

[[queue]]
name = "held.example"
paused = true
reason = "file pause"

[[queue]]
name = "wide.example"
paused = false
parallelism = 8

[[schedule]]
id = "digest"
cron = "0 9 * * MON"

[[schedule]]
id = "held"
paused = true

[[endpoint]]
id = "{EP}"
url = "https://hooks.example.com"

[[endpoint]]
id = "{EP2}"
url = "https://hooks2.example.com"
paused = true

[[flow_control]]
key = "Held-Key"
paused = true
rate = 3
"""
POLICY = combine([parse_policy(FILES, "10-a.toml")])


def snapshot(runtime=None):
    return Snapshot.build(POLICY, runtime)


def carried_out(snap, plan):
    return snap.with_runtime(
        changes.apply(snap.runtime, plan),
        snap.generation + 1,
        put=changes.suspensions_of(plan.put),
        drop=changes.suspensions_of(plan.drop),
    )


# -- one path for every kind ---------------------------------------------------

IDS = {"queue": "acme@example.com", "schedule": "digest", "endpoint": EP, "flow_control": "Orders-EU"}


@pytest.mark.parametrize("kind", ["queue", "schedule", "endpoint", "flow_control"])
def test_pause_then_resume_round_trips_each_kind(kind):
    before = snapshot()
    plan = changes.pause(before, kind, IDS[kind], now=NOW, actor="alice", reason="ops")
    assert [e.name for e in plan.events] == [f"{kind}_paused"]
    assert plan.events[0].fields["reason"] == "ops" and plan.events[0].fields["by"] == "alice"
    paused = carried_out(before, plan)
    assert changes.entry_key(plan.put[0]) == (kind, IDS[kind])
    resumed = changes.resume(paused, kind, IDS[kind], now=NOW, actor="bob")
    assert [e.name for e in resumed.events] == [f"{kind}_resumed"]
    assert changes.apply(paused.runtime, resumed) == before.runtime


@pytest.mark.parametrize("kind", ["queue", "schedule", "flow_control"])
def test_queues_and_schedules_are_idempotent(kind):
    paused = carried_out(snapshot(), changes.pause(snapshot(), kind, IDS[kind], now=NOW, actor="a"))
    assert changes.pause(paused, kind, IDS[kind], now=NOW, actor="a").empty
    assert changes.resume(snapshot(), kind, IDS[kind], now=NOW, actor="a").empty


def test_endpoints_answer_hookbridges_conflicts():
    paused = carried_out(snapshot(), changes.pause(snapshot(), "endpoint", EP, now=NOW, actor="a"))
    with pytest.raises(Conflict) as info:
        changes.pause(paused, "endpoint", EP, now=NOW, actor="a")
    assert info.value.code == "ALREADY_PAUSED"
    with pytest.raises(Conflict) as info:
        changes.resume(snapshot(), "endpoint", EP, now=NOW, actor="a")
    assert info.value.code == "NOT_PAUSED"


@pytest.mark.parametrize(
    "kind, ident, where",
    [("queue", "held.example", "10-a.toml line 6"), ("schedule", "held", "10-a.toml line 20"),
     ("endpoint", EP2, "10-a.toml line 28"), ("flow_control", "Held-Key", "10-a.toml line 33")],
)
def test_a_pause_written_in_a_file_is_not_the_runtimes_to_lift(kind, ident, where):
    with pytest.raises(Conflict) as info:
        changes.resume(snapshot(), kind, ident, now=NOW, actor="a")
    assert info.value.code == "DEFINED_IN_FILE" and where in info.value.message


def test_unknown_schedules_and_endpoints_are_not_found_but_any_queue_can_be_paused():
    with pytest.raises(NotFound) as info:
        changes.pause(snapshot(), "schedule", "nope", now=NOW, actor="a")
    assert info.value.code == "SCHEDULE_NOT_FOUND"
    with pytest.raises(NotFound) as info:
        changes.pause(snapshot(), "endpoint", "ep_" + "0" * 32, now=NOW, actor="a")
    assert info.value.code == "ENDPOINT_NOT_FOUND"
    plan = changes.pause(snapshot(), "queue", "Never.Seen.EXAMPLE", now=NOW, actor="a")
    assert plan.put[0].name == "never.seen.example"
    with pytest.raises(ValidationError):
        changes.pause(snapshot(), "queue", "bad name", now=NOW, actor="a")


def test_pausing_a_queue_keeps_its_parallelism_and_resuming_keeps_the_entry():
    set_up = changes.upsert_queue(snapshot(), "q.example", parallelism=4, paused=False, now=NOW, actor="a")
    s = carried_out(snapshot(), set_up)
    s = carried_out(s, changes.pause(s, "queue", "q.example", now=NOW, actor="b", reason="ops"))
    assert s.queues["q.example"].paused and s.queues["q.example"].parallelism == 4
    resumed = changes.resume(s, "queue", "q.example", now=NOW, actor="b")
    kept = resumed.entry
    assert kept.parallelism == 4 and not kept.paused and kept.reason is None
    assert resumed.events[0].fields == {"queue": "q.example", "reason": None, "by": "b"}


def test_qstash_upsert_rules():
    s = snapshot()
    with pytest.raises(Conflict) as info:
        changes.upsert_queue(s, "held.example", parallelism=2, paused=False, now=NOW, actor="a")
    assert info.value.code == "DEFINED_IN_FILE"
    first = changes.upsert_queue(s, "q.example", parallelism=3, paused=True, now=NOW, actor="a")
    assert first.events[0].name == "queue_paused"
    s = carried_out(s, first)
    later = NOW + timedelta(minutes=5)  # an upsert that changes nothing but the time is no change
    again = changes.upsert_queue(s, "q.example", parallelism=None, paused=True, now=later, actor="b")
    assert again.empty and again.entry.parallelism == 3
    with pytest.raises(NotFound):
        changes.delete_queue(s, "other.example", actor="a")
    with pytest.raises(Conflict):
        changes.delete_queue(s, "wide.example", actor="a")
    assert changes.delete_queue(s, "q.example", actor="a").events[0].name == "queue_resumed"


# -- suspensions ---------------------------------------------------------------


def test_an_upsert_of_active_criteria_keeps_the_id_and_takes_the_new_reason():
    old = suspension_from({"domain": "x.com", "reason": "one"}, mode="api", now=NOW)
    held = changes.upserted(old, None, now=NOW, actor="alice")
    new = suspension_from({"domain": "x.com", "reason": "two", "duration": "1h"}, mode="api", now=NOW)
    updated = changes.upserted(new, held, now=NOW + timedelta(minutes=1), actor="bob")
    assert (updated.id, updated.created_by, updated.reason) == (held.id, "alice", "two")
    plan = changes.suspended(Runtime(suspensions={held.id: held}), updated, held, actor="bob")
    assert plan.events[0].name == "suspension_updated"
    assert plan.events[0].fields["expires"] == "2026-11-23T13:00:00.000Z"


def test_cancelling_needs_an_active_runtime_suspension():
    s = snapshot()
    file_id = next(iter(s.suspensions))
    with pytest.raises(Conflict) as info:
        changes.cancel(s, file_id, now=NOW.timestamp(), actor="a")
    assert info.value.code == "DEFINED_IN_FILE"
    with pytest.raises(NotFound):
        changes.cancel(s, "no-such-id", now=NOW.timestamp(), actor="a")
    with pytest.raises(ValidationError):
        changes.cancel(s, 42, now=NOW.timestamp(), actor="a")


@pytest.mark.parametrize(
    ("pins", "field"),
    [
        ({"parallelism": 0}, "parallelism"),
        ({"rate": 1_000_001}, "rate"),
        ({"period": 0}, "period"),
        ({"rate": 5, "period": 8 * 24 * 3600}, "period"),
    ],
)
def test_a_pin_out_of_bounds_is_refused(pins, field):
    """A pin the runtime state could not be read back with (the daemon would
    not start again) is refused when asked, naming the field."""
    with pytest.raises(ValidationError) as info:
        changes.pin(snapshot(), "Orders-EU", now=NOW, actor="a", **pins)
    assert info.value.field == field and "must be from 1 to" in info.value.message


def test_the_sweep_takes_exactly_the_suspensions_that_are_over():
    def held(domain, minutes):
        body = {"domain": domain, "reason": "r", "duration": f"{minutes}m"}
        return changes.upserted(suspension_from(body, mode="api", now=NOW), None, now=NOW, actor="a")

    short, long = held("a.com", 5), held("b.com", 60)
    s = snapshot(Runtime(suspensions={short.id: short, long.id: long}))
    assert s.next_runtime_expiry() == short.expires.timestamp()
    assert changes.expired(s, short.expires.timestamp() - 1).empty
    plan = changes.expired(s, short.expires.timestamp())
    assert plan.drop == (short,) and plan.expiry
    assert [e.name for e in plan.events] == ["suspension_expired"]
    assert carried_out(s, plan).next_runtime_expiry() == long.expires.timestamp()


def test_changes_from_the_store_that_change_nothing_are_left_out():
    pause = Pause(kind="schedule", id="digest", reason="r", created_by="n2")
    s = snapshot(Runtime(schedule_pauses={"digest": pause}))
    assert changes.from_store(s, {("schedule", "digest"): pause}, now=NOW.timestamp()).empty
    over = Suspension(
        id="5a1e0000-0000-4000-8000-000000000001", domain="x.com", reason="r",
        expires=NOW - timedelta(seconds=1),
    )
    assert changes.from_store(s, {("suspension", over.id): over}, now=NOW.timestamp()).empty
    gone = changes.from_store(s, {("schedule", "digest"): None}, now=NOW.timestamp())
    assert [e.name for e in gone.events] == ["schedule_resumed"]
    assert gone.events[0].fields["by"] == "store"
    summary = changes.from_store(s, {("schedule", "digest"): None}, now=NOW.timestamp(), summary=["x.toml"])
    assert [(e.name, e.fields) for e in summary.events] == [("runtime_reloaded", {"files": ["x.toml"]})]


def schedule(ident="report", **fields):
    return Schedule(id=ident, cron="*/5 * * * *", destination="https://app.example.com/r", **fields)


def test_a_schedule_made_through_qstash_is_replaced_by_id_and_keeps_its_pause():
    made = changes.put_schedule(snapshot(), schedule(label="one"), now=NOW, actor="alice")
    assert [e.name for e in made.events] == ["schedule_created"]
    s = carried_out(snapshot(), made)
    assert s.schedules["report"].schedule.created_by == "alice" and s.decide_schedule("report").run
    s = carried_out(s, changes.pause(s, "schedule", "report", now=NOW, actor="bob", reason="quiet"))
    assert s.schedules["report"].paused and s.runtime.schedule_pauses["report"].paused
    later = NOW + timedelta(hours=1)
    replaced = changes.put_schedule(s, schedule(label="two"), now=later, actor="carol")
    assert [e.name for e in replaced.events] == ["schedule_updated"]
    s = carried_out(s, replaced)
    view = s.schedules["report"]
    assert view.schedule.label == "two" and view.paused and view.schedule.created_at == NOW
    assert changes.put_schedule(s, schedule(label="two"), now=later, actor="carol").empty
    s = carried_out(s, changes.resume(s, "schedule", "report", now=later, actor="bob"))
    assert not s.schedules["report"].paused and "report" in s.runtime.schedule_pauses  # kept, running
    gone = changes.delete_made(s, "schedule", "report", actor="dave")
    assert [e.name for e in gone.events] == ["schedule_deleted"]
    assert "report" not in carried_out(s, gone).schedules
    with pytest.raises(Conflict) as info:
        changes.put_schedule(s, schedule("digest"), now=NOW, actor="a")
    assert info.value.code == "DEFINED_IN_FILE"
    with pytest.raises(Conflict):
        changes.delete_made(s, "schedule", "digest", actor="a")
    with pytest.raises(NotFound):
        changes.delete_made(s, "schedule", "nope", actor="a")


def test_an_endpoint_made_through_hookbridge_is_updated_paused_and_deleted_in_place():
    ep = "ep_" + "a" * 32
    made = changes.create_endpoint(snapshot(), Endpoint(id=ep, url="https://h.example/1"), now=NOW, actor="alice")
    assert [e.name for e in made.events] == ["endpoint_created"]
    s = carried_out(snapshot(), made)
    assert s.decide_endpoint(ep).deliver and s.endpoints[ep].endpoint.created_by == "alice"
    with pytest.raises(Conflict):
        changes.create_endpoint(s, Endpoint(id=ep, url="https://h.example/2"), now=NOW, actor="a")
    s = carried_out(s, changes.pause(s, "endpoint", ep, now=NOW, actor="bob", reason="deploy"))
    assert not s.decide_endpoint(ep).deliver
    later = NOW + timedelta(minutes=5)
    updated = changes.update_endpoint(s, ep, {"url": "https://h.example/2"}, now=later, actor="carol")
    assert [e.name for e in updated.events] == ["endpoint_updated"]
    s = carried_out(s, updated)
    view = s.endpoints[ep]
    assert view.endpoint.url == "https://h.example/2" and view.paused and view.endpoint.created_at == NOW
    assert changes.update_endpoint(s, ep, {"url": "https://h.example/2"}, now=later, actor="c").empty
    s = carried_out(s, changes.resume(s, "endpoint", ep, now=later, actor="bob"))
    assert s.decide_endpoint(ep).deliver and ep in s.runtime.endpoint_pauses  # kept, active
    gone = changes.delete_made(s, "endpoint", ep, actor="dave")
    assert [e.name for e in gone.events] == ["endpoint_deleted"]
    assert ep not in carried_out(s, gone).endpoints
    for change in (lambda: changes.update_endpoint(s, EP, {"description": "x"}, now=NOW, actor="a"),
                   lambda: changes.delete_made(s, "endpoint", EP, actor="a")):
        with pytest.raises(Conflict) as info:
            change()
        assert info.value.code == "DEFINED_IN_FILE"
    with pytest.raises(NotFound):
        changes.delete_made(s, "endpoint", "ep_" + "b" * 32, actor="a")


def test_flow_control_pins_are_kept_by_a_resume_and_a_bare_key_is_forgotten():
    s = carried_out(snapshot(), changes.pin(snapshot(), "k", rate=10, period=60, now=NOW, actor="a"))
    assert s.decide_flow_control("k").deliver and s.decide_flow_control("k").rate == 10
    s = carried_out(s, changes.pause(s, "flow_control", "k", now=NOW, actor="a"))
    held = s.decide_flow_control("k")
    assert not held.deliver and (held.rate, held.period) == (10, 60)
    s = carried_out(s, changes.resume(s, "flow_control", "k", now=NOW, actor="a"))
    assert s.decide_flow_control("k").deliver and s.flow_controls["k"].rate == 10
    assert changes.unpin(s, "k", parallelism=True, rate=False, now=NOW, actor="a").empty
    gone = changes.unpin(s, "k", parallelism=False, rate=True, now=NOW, actor="a")
    assert not gone.put and "k" not in carried_out(s, gone).flow_controls
    with pytest.raises(ValidationError):
        changes.pin(s, "k", now=NOW, actor="a")
    assert not snapshot().decide_flow_control("Held-Key").deliver  # the file's pause
    assert snapshot().decide_flow_control("anything").deliver


def test_qstash_names_are_verbatim_and_found_as_given_elsewhere():
    s = carried_out(snapshot(), changes.pause(snapshot(), "queue", "MyQueue", now=NOW, actor="a", qstash=True))
    assert "MyQueue" in s.queues and "myqueue" not in s.queues
    assert changes.queue_key(s, "MyQueue") == "MyQueue"  # the admin API finds it
    assert changes.queue_key(s, "Other.Example") == "other.example"  # a mail name otherwise
    assert not s.decide("MyQueue", NOW.timestamp()).deliver and s.decide("myqueue", NOW.timestamp()).deliver
    with pytest.raises(ValidationError):
        changes.pause(s, "queue", "acme@example.com", now=NOW, actor="a", qstash=True)


# -- properties ------------------------------------------------------------------

DOMAINS = st.sampled_from(["a.com", "b.com", "c.com"])
QUEUES = st.sampled_from(["q1.example", "q2.example", "held.example", "wide.example"])

requests = st.one_of(
    st.tuples(st.just("suspend"), DOMAINS, st.sampled_from([None, "5m", "1h"])),
    st.tuples(st.just("pause"), st.sampled_from(["queue", "schedule", "endpoint", "flow_control"]), QUEUES),
    st.tuples(st.just("resume"), st.sampled_from(["queue", "schedule", "endpoint", "flow_control"]), QUEUES),
    st.tuples(st.just("put_schedule"), st.sampled_from(["report", "digest"]), st.sampled_from([None, "x"])),
    st.tuples(st.just("delete_schedule"), st.sampled_from(["report", "digest"])),
    st.tuples(st.just("pin"), QUEUES, st.sampled_from([None, 2]), st.sampled_from([None, 7])),
    st.tuples(st.just("unpin"), QUEUES, st.booleans(), st.booleans()),
    st.tuples(st.just("upsert"), QUEUES, st.sampled_from([None, 2, 5]), st.booleans()),
    st.tuples(st.just("delete"), QUEUES),
    st.tuples(st.just("cancel"), DOMAINS),
    st.tuples(st.just("sweep"), st.integers(min_value=0, max_value=7200)),
)


def plan_for(s: Snapshot, request, now: datetime) -> changes.Plan:
    """Plan ``request`` as the shell does; the store's claim is the snapshot's holder."""
    what, *args = request
    if what == "suspend":
        domain, duration = args
        body = {"domain": domain, "reason": "r", **({"duration": duration} if duration else {})}
        new = suspension_from(body, mode="api", now=now)
        holder = s.runtime_holder(new.criteria_key)
        stored = changes.upserted(new, holder, now=now, actor="a")
        return changes.suspended(s.runtime, stored, holder, actor="a")
    if what in ("pause", "resume"):
        kind, ident = args
        ident = {"schedule": "digest", "endpoint": EP}.get(kind, ident)
        act = changes.pause if what == "pause" else changes.resume
        return act(s, kind, ident, now=now, actor="a")
    if what == "put_schedule":
        return changes.put_schedule(s, schedule(args[0], label=args[1]), now=now, actor="a")
    if what == "delete_schedule":
        return changes.delete_made(s, "schedule", args[0], actor="a")
    if what == "pin":
        key, parallelism, rate = args
        if parallelism is None and rate is None:
            return changes.NOTHING
        return changes.pin(s, key, parallelism=parallelism, rate=rate, now=now, actor="a")
    if what == "unpin":
        return changes.unpin(s, args[0], parallelism=args[1], rate=args[2], now=now, actor="a")
    if what == "upsert":
        name, parallelism, paused = args
        return changes.upsert_queue(s, name, parallelism=parallelism, paused=paused, now=now, actor="a")
    if what == "delete":
        return changes.delete_queue(s, args[0], actor="a")
    if what == "cancel":
        holder = s.runtime_holder(suspension_from({"domain": args[0], "reason": "r"}, mode="api", now=now).criteria_key)
        return changes.cancel(s, holder.id if holder else "none", now=now.timestamp(), actor="a")
    return changes.expired(s, now.timestamp() + args[0])


def run(sequence):
    """Carry out each request that is not refused; yields (before, plan, after, now)."""
    s = snapshot()
    for step, request in enumerate(sequence):
        now = NOW + timedelta(minutes=10 * step)
        try:
            plan = plan_for(s, request, now)
        except (NotFound, Conflict):
            continue
        after = carried_out(s, plan)
        yield s, plan, after, now
        s = after


@settings(max_examples=200, deadline=None)
@given(st.lists(requests, max_size=25))
def test_a_plan_then_its_inverse_gives_the_runtime_back(sequence):
    for before, plan, after, _ in run(sequence):
        assert changes.apply(after.runtime, changes.inverse(before.runtime, plan)) == before.runtime


@settings(max_examples=200, deadline=None)
@given(st.lists(requests, max_size=25))
def test_an_upsert_never_makes_a_second_entry_with_the_same_criteria(sequence):
    for _, _, after, _ in run(sequence):
        held = [s.criteria_key for s in after.runtime.suspensions.values()]
        assert len(held) == len(set(held))


@settings(max_examples=200, deadline=None)
@given(st.lists(requests, max_size=25))
def test_what_a_plan_announces_matches_what_it_does(sequence):
    for before, plan, after, _ in run(sequence):
        assert bool(plan.events) == (not plan.empty)
        for entry in (*plan.put, *plan.drop):
            assert entry.source == "runtime"  # nothing a file holds is put or dropped
        assert after.queues["held.example"].paused  # whatever the runtime does
        for name, view in after.queues.items():  # pause and resume keep parallelism
            was = before.queues.get(name)
            touched = any(changes.entry_key(e) == ("queue", name) for e in plan.put)
            if touched and was is not None and was.parallelism and view.runtime is not None:
                assert view.parallelism is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(requests, max_size=25))
def test_a_snapshot_evolved_change_by_change_equals_one_built_afresh(sequence):
    """The indexes a change evolves (suspensions by id and criteria, the next
    expiry, the lookup tables) never drift from what the runtime says."""
    for _, _, after, now in run(sequence):
        fresh = Snapshot.build(POLICY, after.runtime, after.generation)
        at = now.timestamp()
        assert after.next_runtime_expiry() == fresh.next_runtime_expiry()
        assert dict(after.suspensions) == dict(fresh.suspensions)
        assert after.active_suspensions(at) == fresh.active_suspensions(at)
        assert after.active_count(at) == fresh.active_count(at) == len(fresh.active_suspensions(at))
        for s in after.runtime.suspensions.values():
            assert after.runtime_holder(s.criteria_key) == fresh.runtime_holder(s.criteria_key)
        for queue in ("a.com", "t@b.com", "c.com", "q1.example", "held.example"):
            assert after.decide(queue, at) == fresh.decide(queue, at)


def test_a_schedule_made_elsewhere_under_a_paused_file_schedule_id_is_announced():
    """Policy files differ between nodes: one may make a schedule at runtime under
    an id another node's file declares and pauses. The store's change from that
    pause to the schedule (and back) is announced; reading it used to raise."""
    pause = Pause(kind="schedule", id="digest", reason="r")
    made = Schedule(id="digest", cron="* * * * *", destination="https://app.example.com/")
    paused = snapshot(Runtime(schedule_pauses={"digest": pause}))
    plan = changes.from_store(paused, {("schedule", "digest"): made}, now=NOW.timestamp())
    assert [(e.name, e.fields["id"]) for e in plan.events] == [("schedule_resumed", "digest")]
    holding = snapshot(Runtime(schedule_pauses={"digest": made}))
    plan = changes.from_store(holding, {("schedule", "digest"): pause}, now=NOW.timestamp())
    assert [(e.name, e.fields["reason"]) for e in plan.events] == [("schedule_paused", "r")]
