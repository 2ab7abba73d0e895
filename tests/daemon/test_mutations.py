"""Mutations: durable, serialised, with each seed's semantics; expiry on trio's clock."""

from datetime import datetime, timezone

import pytest
import trio

from sluice.policy.errors import Conflict, NotFound, ValidationError
from sluice.policy.fields import EntryInvalid
from sluice.policy.files import combine, parse_policy
from sluice.policy.snapshot import Snapshot
from sluice.daemon.current import Current
from sluice.daemon.events import Broadcaster
from sluice.daemon.mutations import Mutations
from sluice.daemon.state.files import FileStore

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc).timestamp()
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
"""


def clock():
    return T0 + trio.current_time()


def make(tmp_path, text=FILES):
    policy = combine([parse_policy(text, "10-a.toml")])
    store = FileStore(tmp_path)
    runtime, problems = store.load()
    assert not problems
    current = Current(Snapshot.build(policy, runtime))
    events = Broadcaster()
    return Mutations(current, store, events, clock=clock), events


async def test_suspend_is_durable_and_upserts_by_criteria(tmp_path):
    m, events = make(tmp_path)
    sub = events.subscribe()
    first, created = await m.suspend({"domain": "Gmail.com", "reason": "one"}, "alice")
    assert created and first.domain == "gmail.com" and first.created_by == "alice"
    assert first.expires.timestamp() == pytest.approx(clock() + 300)  # default 5 minutes
    again, created = await m.suspend({"domain": "gmail.com", "reason": "two", "duration": "1h"}, "bob")
    assert not created and again.id == first.id and again.reason == "two"
    assert again.created_by == "alice"  # who created it stays
    assert [p.name for p in (tmp_path / "runtime").iterdir()] == [f"suspension-{first.id}.toml"]
    # what is on disk is what a restart loads
    runtime, _ = FileStore(tmp_path).load()
    assert runtime.suspensions[first.id].reason == "two"
    assert [sub.receive.receive_nowait()["event"] for _ in range(2)] == [
        "suspension_added",
        "suspension_updated",
    ]
    assert m.current.snapshot.generation == 3


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"domian": "x.com", "reason": "r"}, "did you mean 'domain'"),
        ({"reason": "r"}, "needs campaign, tenant, domain"),
        ({"domain": "x.com", "reason": "r", "duration": "5m", "expires": "2030-01-01T00:00:00Z"}, "not both"),
        ({"domain": "x.com", "reason": "r", "expires": "2020-01-01T00:00:00Z"}, "in the past"),
        ({"domain": "x.com", "reason": "r", "duration": 0}, "greater than zero"),
        ({"domain": "x.com", "reason": "r", "duration": "-5m"}, "expected a number and a unit"),
        ({"domain": "x.com"}, "reason: is required"),
        (["x.com"], "expected a suspension (a JSON object or TOML table), got an array"),
    ],
)
async def test_suspend_strictness(tmp_path, body, fragment):
    m, _ = make(tmp_path)
    with pytest.raises(EntryInvalid) as info:
        await m.suspend(body, "alice")
    assert fragment in info.value.message
    assert m.current.snapshot.generation == 1
    assert not list((tmp_path / "runtime").iterdir())


async def test_cancel(tmp_path):
    m, _ = make(tmp_path)
    s, _ = await m.suspend({"tenant": "acme", "reason": "r"}, "alice")
    await m.cancel_suspension(s.id, "bob")
    assert s.id not in m.current.snapshot.suspensions
    assert not list((tmp_path / "runtime").iterdir())
    with pytest.raises(NotFound) as info:
        await m.cancel_suspension(s.id, "bob")
    assert info.value.code == "SUSPENSION_NOT_FOUND"
    file_id = next(iter(m.current.snapshot.suspensions))
    with pytest.raises(Conflict) as info:
        await m.cancel_suspension(file_id, "bob")
    assert info.value.code == "DEFINED_IN_FILE"
    assert "10-a.toml line 2" in info.value.message


async def test_expired_suspension_is_swept_at_its_expiry(tmp_path, autojump_clock):
    m, events = make(tmp_path)
    sub = events.subscribe()
    s, _ = await m.suspend({"domain": "x.com", "reason": "r", "duration": "90s"}, "alice")
    sub.receive.receive_nowait()
    from sluice.daemon.main import _sweeper

    async with trio.open_nursery() as nursery:
        await nursery.start(_sweeper, m, clock)
        assert not m.current.snapshot.decide("x.com", clock()).deliver
        event = await sub.receive.receive()
        assert event["event"] == "suspension_expired" and event["id"] == s.id
        assert clock() == pytest.approx(T0 + 90, abs=0.5)
        assert not list((tmp_path / "runtime").iterdir())
        # an expired id is unknown, as KumoMTA has it
        with pytest.raises(NotFound):
            await m.cancel_suspension(s.id, "alice")
        nursery.cancel_scope.cancel()


async def test_expired_never_matches_even_before_the_sweep(tmp_path, autojump_clock):
    m, _ = make(tmp_path)
    await m.suspend({"domain": "x.com", "reason": "r", "duration": "10s"}, "alice")
    await trio.sleep(10.5)
    assert m.current.snapshot.decide("x.com", clock()).deliver
    # and posting the same criteria again creates a fresh suspension
    s, created = await m.suspend({"domain": "x.com", "reason": "again"}, "alice")
    assert created


async def test_queue_pause_is_idempotent_and_file_pause_is_not_ours(tmp_path):
    m, events = make(tmp_path)
    sub = events.subscribe()
    await m.pause("queue", "acme@Example.COM", "alice", reason="ops")
    generation = m.current.snapshot.generation
    await m.pause("queue", "acme@example.com", "alice")  # again: nothing changes
    assert m.current.snapshot.generation == generation
    assert not m.current.snapshot.decide("acme@example.com", clock()).deliver
    await m.resume("queue", "acme@example.com", "alice")
    await m.resume("queue", "acme@example.com", "alice")  # again: nothing changes
    assert m.current.snapshot.decide("acme@example.com", clock()).deliver
    assert [sub.receive.receive_nowait()["event"] for _ in range(2)] == ["queue_paused", "queue_resumed"]
    with pytest.raises(Conflict) as info:
        await m.resume("queue", "held.example", "alice")
    assert info.value.code == "DEFINED_IN_FILE" and "10-a.toml line 6" in info.value.message
    with pytest.raises(ValidationError) as info:
        await m.pause("queue", "bad name", "alice")
    assert info.value.code == "INVALID_QUEUE_NAME"


async def test_schedule_pause(tmp_path):
    m, _ = make(tmp_path)
    assert not (await m.pause("schedule", "digest", "alice", reason="incident")).empty
    assert (await m.pause("schedule", "digest", "alice")).empty
    assert not m.current.snapshot.decide_schedule("digest").run
    assert not (await m.resume("schedule", "digest", "alice")).empty
    assert (await m.resume("schedule", "digest", "alice")).empty
    with pytest.raises(NotFound) as info:
        await m.pause("schedule", "nope", "alice")
    assert info.value.code == "SCHEDULE_NOT_FOUND"
    with pytest.raises(Conflict) as info:
        await m.resume("schedule", "held", "alice")
    assert info.value.code == "DEFINED_IN_FILE"


async def test_endpoint_pause_has_hookbridge_semantics(tmp_path):
    m, _ = make(tmp_path)
    await m.pause("endpoint", EP, "alice")
    with pytest.raises(Conflict) as info:
        await m.pause("endpoint", EP, "alice")
    assert info.value.code == "ALREADY_PAUSED"
    await m.resume("endpoint", EP, "alice")
    with pytest.raises(Conflict) as info:
        await m.resume("endpoint", EP, "alice")
    assert info.value.code == "NOT_PAUSED"
    with pytest.raises(ValidationError, match="endpoint_id must be in format ep_xxx"):
        await m.pause("endpoint", "ep_123", "alice")
    with pytest.raises(NotFound) as info:
        await m.pause("endpoint", "ep_" + "0" * 32, "alice")
    assert info.value.code == "ENDPOINT_NOT_FOUND"
    with pytest.raises(Conflict) as info:
        await m.resume("endpoint", EP2, "alice")
    assert info.value.code == "DEFINED_IN_FILE"


async def test_concurrent_changes_are_serialised_and_none_is_lost(tmp_path):
    m, _ = make(tmp_path)
    ids = []

    async def one(i):
        s, _ = await m.suspend({"domain": f"d{i}.example", "reason": "r"}, "alice")
        ids.append(s.id)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)
    assert len(set(ids)) == 50
    assert m.current.snapshot.generation == 51
    runtime, _ = FileStore(tmp_path).load()
    assert set(runtime.suspensions) == set(ids)


async def test_hand_edits_are_taken_in_and_own_writes_are_not(tmp_path):
    m, events = make(tmp_path)
    s, _ = await m.suspend({"domain": "x.com", "reason": "r"}, "alice")
    name = f"suspension-{s.id}.toml"
    generation = m.current.snapshot.generation
    def hand_edited():  # what FileStore.follow does for a change in the runtime directory
        return m.apply_changes(m.store.hand_edits({name}), announce="summary")

    assert await hand_edited() == 0  # our own write
    assert m.current.snapshot.generation == generation
    path = tmp_path / "runtime" / name
    path.write_text(path.read_text().replace('reason = "r"', 'reason = "edited by hand"'))
    assert await hand_edited() == 1
    assert m.current.snapshot.suspensions[s.id].reason == "edited by hand"
    reported = []
    m.store.on_invalid = reported.append
    path.write_text("garbage = [")  # a broken edit keeps the hold, and is reported
    assert await hand_edited() == 0
    assert not m.current.snapshot.decide("x.com", clock()).deliver
    assert list(reported[-1]) == [name] and "TOML syntax error" in reported[-1][name]
    path.unlink()
    assert await hand_edited() == 1
    assert m.current.snapshot.decide("x.com", clock()).deliver
    assert reported[-1] == {}  # gone, so no longer broken


async def test_added_and_updated_suspension_events_say_when_the_hold_ends(tmp_path, autojump_clock):
    m, events = make(tmp_path)
    sub = events.subscribe()
    await m.suspend({"domain": "x.com", "reason": "one", "duration": "1h"}, "alice")
    await m.suspend({"domain": "x.com", "reason": "two", "duration": "2h"}, "alice")
    added, updated = sub.receive.receive_nowait(), sub.receive.receive_nowait()
    assert (added["reason"], updated["reason"]) == ("one", "two")
    assert added["expires"] == datetime.fromtimestamp(T0 + 3600, timezone.utc).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    assert updated["expires"] > added["expires"]


async def test_resuming_a_queue_that_keeps_its_parallelism_forgets_the_pause_reason(tmp_path):
    m, _ = make(tmp_path)
    await m.upsert_queue("q.example", parallelism=4, paused=False, actor="alice")
    await m.pause("queue", "q.example", "alice", reason="ops")
    entry = (await m.resume("queue", "q.example", "alice")).entry
    assert entry.parallelism == 4 and entry.reason is None and not entry.paused
    await m.upsert_queue("q.example", parallelism=None, paused=True, actor="alice")
    assert m.current.snapshot.queues["q.example"].parallelism == 4  # kept, not cleared


async def test_a_failed_sweep_is_retried_until_the_expiry_is_removed_and_announced_once(tmp_path, autojump_clock):
    from sluice.daemon.main import _sweeper

    m, events = make(tmp_path)
    sub = events.subscribe()
    s, _ = await m.suspend({"domain": "x.com", "reason": "r", "duration": "10s"}, "alice")
    sub.receive.receive_nowait()  # suspension_added
    remove, failures = m.store.remove_expired, []

    async def full_disk(suspension):
        if len(failures) < 3:
            failures.append(trio.current_time())
            raise OSError(28, "No space left on device")
        await remove(suspension)

    m.store.remove_expired = full_disk
    async with trio.open_nursery() as nursery:
        await nursery.start(_sweeper, m, clock)
        expired = await sub.receive.receive()
        nursery.cancel_scope.cancel()
    assert expired["event"] == "suspension_expired" and expired["id"] == s.id
    assert [round(b - a) for a, b in zip(failures, failures[1:])] == [1, 2]  # backoff
    assert not (tmp_path / "runtime" / f"suspension-{s.id}.toml").exists()
    with pytest.raises(trio.WouldBlock):
        sub.receive.receive_nowait()  # announced once


async def test_a_full_disk_is_503_naming_the_cause_and_the_next_write_after_recovery_succeeds(tmp_path, monkeypatch):
    from sluice.daemon.state import files
    from sluice.daemon.state.base import StateUnavailable

    m, _ = make(tmp_path)
    flips = []
    m.store.on_degraded = lambda degraded, reason: flips.append((degraded, reason))
    write = files.write_files

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_files", full)
    with pytest.raises(StateUnavailable) as info:
        await m.suspend({"domain": "x.com", "reason": "r"}, "alice")
    assert info.value.code == "STATE_UNAVAILABLE" and info.value.status_hint == 503
    assert "No space left on device" in info.value.message and str(tmp_path) in info.value.message
    assert m.current.snapshot.decide("x.com", clock()).deliver  # nothing acknowledged, nothing held
    assert m.store.degraded and flips[-1][0] is True

    monkeypatch.setattr(files, "write_files", write)
    s, _ = await m.suspend({"domain": "x.com", "reason": "r"}, "alice")
    assert not m.store.degraded and flips[-1] == (False, "")
    runtime, _ = FileStore(tmp_path).load()
    assert list(runtime.suspensions) == [s.id]


class CountingStore(FileStore):
    """The files backend, counting the batches it is asked to store."""

    batches: list[int]

    async def claim_all(self, claims):
        self.batches.append(len(claims))
        return await super().claim_all(claims)


async def test_suspensions_made_at_once_are_stored_in_batches_each_announced_with_its_own_generation(tmp_path):
    m, events = make(tmp_path)
    m.store.__class__ = CountingStore
    m.store.batches = []
    sub = events.subscribe()
    made = {}

    async def client(i):
        made[i] = await m.suspend({"domain": f"c{i}.example", "reason": f"load {i}"}, "alice")

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(client, i)
    assert sum(m.store.batches) == 50 and len(m.store.batches) < 50  # group commit
    assert all(created for _s, created in made.values())
    announced = [sub.receive.receive_nowait() for _ in range(50)]
    generations = [e["generation"] for e in announced]
    assert generations == sorted(generations) and len(set(generations)) == 50
    assert m.current.snapshot.generation == generations[-1]
    assert {e["id"] for e in announced} == {s.id for s, _c in made.values()}
    runtime, _ = FileStore(tmp_path).load()
    assert set(runtime.suspensions) == {s.id for s, _c in made.values()}


async def test_the_same_criteria_twice_in_one_batch_is_one_suspension_created_then_updated(tmp_path):
    m, events = make(tmp_path)
    sub = events.subscribe()
    made = []

    async def client(reason):
        made.append(await m.suspend({"domain": "twice.example", "reason": reason}, "alice"))

    async with trio.open_nursery() as nursery:
        for reason in ("first", "second", "third"):
            nursery.start_soon(client, reason)
    assert [created for _s, created in made] == [True, False, False]
    assert len({s.id for s, _c in made}) == 1
    assert [sub.receive.receive_nowait()["event"] for _ in range(3)] == [
        "suspension_added", "suspension_updated", "suspension_updated",
    ]
    runtime, _ = FileStore(tmp_path).load()
    assert [s.reason for s in runtime.suspensions.values()] == [made[-1][0].reason]


async def test_a_suspension_cancelled_before_its_batch_is_never_stored(tmp_path):
    m, events = make(tmp_path)
    sub = events.subscribe()
    done = trio.Event()

    async def busy(task_status=trio.TASK_STATUS_IGNORED):
        async with m.lock:  # a change in progress: the suspension queues behind it
            task_status.started()
            await done.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(busy)
        with trio.move_on_after(1):
            await m.suspend({"domain": "gone.example", "reason": "cancelled"}, "alice")
        done.set()
    s, _ = await m.suspend({"domain": "kept.example", "reason": "after"}, "alice")
    runtime, _ = FileStore(tmp_path).load()
    assert [x.domain for x in runtime.suspensions.values()] == ["kept.example"]
    assert m.current.snapshot.decide("gone.example", clock()).deliver
    assert [sub.receive.receive_nowait()["id"] for _ in range(1)] == [s.id]
    with pytest.raises(trio.WouldBlock):
        sub.receive.receive_nowait()


async def test_a_store_that_raises_fails_every_suspension_of_its_batch(tmp_path):
    m, _ = make(tmp_path)

    works = m.store.claim_all
    calls = []

    async def broken(claims):  # once: the claims of the batch it took must not be retried
        calls.append(len(claims))
        if len(calls) == 1:
            raise RuntimeError("a bug in the store")
        return await works(claims)

    m.store.claim_all = broken
    failed = []

    async def client(i):
        try:
            await m.suspend({"domain": f"c{i}.example", "reason": "r"}, "alice")
        except RuntimeError as exc:
            failed.append(str(exc))

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(client, i)
    assert failed == ["a bug in the store"] * 5 and calls == [5]
    assert len(m.current.snapshot.runtime.suspensions) == 0
