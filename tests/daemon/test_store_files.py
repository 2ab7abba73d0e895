"""The files backend through the RuntimeStore interface: claim, expiry removal, follow, open."""

from __future__ import annotations

import errno
import os
from datetime import datetime, timedelta, timezone

import pytest
import trio

from sluice.daemon.state.encoding import render
from sluice.daemon.state.files import FileStore
from sluice.daemon.reload import Watcher, debounced
from sluice.daemon.state import open_store
from sluice.daemon.state import atomic
from sluice.daemon.state.base import Claim, Loaded, RuntimeStore, StateUnavailable
from sluice.policy.model import QueuePolicy, Suspension

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
ID1 = "3b0b9a8e-6a52-4bd8-9d1c-5f1a0c1b2d3e"
ID2 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
ID3 = "0f8fad5b-d9cb-469f-a165-70867728950e"


def suspension(ident: str, reason: str = "r", domain: str = "x.example", **kw) -> Suspension:
    return Suspension(id=ident, domain=domain, reason=reason, **kw)


def test_the_files_backend_is_a_runtime_store(tmp_path):
    store: RuntimeStore = FileStore(tmp_path)
    assert store.degraded is False and store.where == str(tmp_path / "runtime")


async def test_open_reads_what_put_wrote(tmp_path):
    store = FileStore(tmp_path)
    await store.put(QueuePolicy(name="q.example", paused=True))
    loaded = await FileStore(tmp_path).open()
    assert isinstance(loaded, Loaded) and not loaded.problems and loaded.revision is None
    assert loaded.runtime.queues["q.example"].paused


async def claim(store, criteria_key, known, build):
    [result] = await store.claim_all([Claim(criteria_key, known, build)])
    return result.unwrap()


async def test_claim_updates_the_holder_or_replaces_an_expired_one(tmp_path):
    store = FileStore(tmp_path)
    first = suspension(ID1)
    stored, replaced = await claim(store, first.criteria_key, None, lambda holder: first)
    assert stored == first and replaced is None
    updated, replaced = await claim(
        store, first.criteria_key, first, lambda holder: Suspension(id=holder.id, domain="x.example", reason="new")
    )
    assert replaced == first and updated.id == ID1
    assert (tmp_path / "runtime" / f"suspension-{ID1}.toml").read_bytes() == render(updated)
    fresh = suspension(ID2, expires=NOW + timedelta(hours=1))
    stored, replaced = await claim(store, first.criteria_key, updated, lambda holder: fresh)
    assert [p.name for p in (tmp_path / "runtime").iterdir()] == [f"suspension-{ID2}.toml"]
    await store.remove_expired(fresh)
    assert list((tmp_path / "runtime").iterdir()) == []


async def test_a_batch_of_claims_sees_its_own_earlier_claims(tmp_path):
    store = FileStore(tmp_path)
    first, other, fresh = suspension(ID1), suspension(ID2, domain="y.example"), suspension(ID3)

    def renamed(holder):
        assert holder == first  # the batch's own first claim, not the None this node knew
        return Suspension(id=holder.id, domain="x.example", reason="renamed")

    def replacing(holder):
        assert holder.reason == "renamed"
        return fresh

    def broken(holder):
        raise ValueError("a build that fails")

    results = await store.claim_all([
        Claim(first.criteria_key, None, lambda holder: first),
        Claim(other.criteria_key, None, lambda holder: other),
        Claim(first.criteria_key, None, renamed),
        Claim(other.criteria_key, other, broken),
        Claim(first.criteria_key, None, replacing),
    ])
    assert [r.unwrap()[0].id for r in results[:3]] == [ID1, ID2, ID1]
    with pytest.raises(ValueError, match="a build that fails"):
        results[3].unwrap()
    assert results[4].unwrap() == (fresh, Suspension(id=ID1, domain="x.example", reason="renamed"))
    # the batch's net effect on disk: first came and went within it
    names = sorted(p.name for p in (tmp_path / "runtime").iterdir())
    assert names == sorted([f"suspension-{ID2}.toml", f"suspension-{ID3}.toml"])


async def test_a_batch_the_disk_refuses_stores_nothing(tmp_path, monkeypatch):
    store = FileStore(tmp_path)
    await store.put(suspension(ID1))
    real, calls = os.write, []

    def fills_up(fd, data):  # the disk is full after the batch's first file
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(atomic.os, "write", fills_up)
    results = await store.claim_all([
        Claim(f"domain={d}", None, lambda holder, i=i, d=d: suspension(i, domain=d))
        for i, d in ((ID2, "a.example"), (ID3, "b.example"))
    ])
    for result in results:
        with pytest.raises(StateUnavailable, match="No space left on device"):
            result.unwrap()
    assert store.degraded
    assert [p.name for p in (tmp_path / "runtime").iterdir()] == [f"suspension-{ID1}.toml"]


async def test_follow_hands_hand_edits_to_apply_and_skips_own_writes(tmp_path):
    stop = trio.Event()
    watcher = Watcher(stop)  # as sluiced does: its one watcher's tree of the directory, debounced
    store = FileStore(tmp_path, changes=lambda directory: debounced(watcher.tree(directory), 0.01))
    await store.put(QueuePolicy(name="q.example", paused=True))
    batches = []
    got = trio.Event()

    async def apply(read, *, announce):
        updates = await read()
        batches.append((announce, updates))
        got.set()
        return len(updates)

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: store.follow(apply, stop=stop, task_status=task_status))
        await nursery.start(watcher.run)
        await store.put(QueuePolicy(name="own.example", paused=True))  # our own: never reported
        path = tmp_path / "runtime" / "queue-q.example.toml"
        edited = tmp_path / "edited"
        edited.write_text('[[queue]]\nname = "q.example"\npaused = true\nreason = "by hand"\n')
        edited.replace(path)  # whole, as editors save
        with trio.fail_after(10):
            while not any(updates for _, updates in batches):
                await got.wait()
                got = trio.Event()
        stop.set()
    reported = {k: v for _, updates in batches for k, v in updates.items()}
    assert list(reported) == [("queue", "q.example")]
    assert reported[("queue", "q.example")].reason == "by hand"
    assert {announce for announce, _ in batches} == {"summary"}


def test_open_store_picks_the_backend_from_the_config(tmp_path):
    from sluice.daemon.config import load_config

    path = tmp_path / "sluiced.toml"
    path.write_text('state_dir = "s"\n')
    changes = lambda directory: None  # noqa: E731
    store = open_store(load_config(path).store_settings(), changes=changes)
    assert isinstance(store, FileStore) and store.changes is changes
    assert store.where == str(tmp_path / "s" / "runtime")
    path.write_text('state_dir = "s"\n[state]\nbackend = "etcd"\n[state.etcd]\nendpoints = ["http://127.0.0.1:1"]\n')
    store = open_store(load_config(path).store_settings())
    assert type(store).__name__ == "EtcdStore" and store.where == "etcd http://127.0.0.1:1 under /sluice/"


async def test_follow_takes_its_changes_from_what_the_store_was_built_with(tmp_path):
    """A scripted ``changes``: paths outside the runtime directory are left out, a bad batch is survived."""
    runtime = tmp_path / "runtime"
    asked = []

    async def changes(directory):
        asked.append(directory)
        yield {("added", str(tmp_path / "elsewhere.toml"))}
        yield {("added", str(runtime / "queue-broken.toml"))}
        yield {("added", str(runtime / "queue-q.example.toml"))}

    store = FileStore(tmp_path, changes=changes)
    calls = []

    async def apply(read, *, announce):
        updates = await read()
        calls.append(updates)
        if ("queue", "broken") in updates:
            raise RuntimeError("this batch fails")
        return len(updates)

    runtime.mkdir()
    (runtime / "queue-broken.toml").write_text('[[queue]]\nname = "broken"\npaused = true\n')
    (runtime / "queue-q.example.toml").write_text('[[queue]]\nname = "q.example"\npaused = true\n')
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: store.follow(apply, stop=trio.Event(), task_status=task_status))
    assert asked == [runtime]
    assert [list(updates) for updates in calls] == [[("queue", "broken")], [("queue", "q.example")]]


async def test_follow_without_changes_is_ready_and_follows_nothing(tmp_path):
    store = FileStore(tmp_path)
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: store.follow(None, stop=trio.Event(), task_status=task_status))
    assert (tmp_path / "runtime").is_dir()


def test_a_leftover_temporary_file_that_cannot_be_removed_does_not_stop_a_start(tmp_path, monkeypatch):
    import errno
    import os

    from sluice.daemon.state import files

    store = FileStore(tmp_path)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "suspension-x.toml.tmp").write_text("half written")
    unlink = os.unlink

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, "Read-only file system")
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "unlink", read_only)
    runtime, problems = store.load()
    assert problems == [] and not runtime.suspensions
