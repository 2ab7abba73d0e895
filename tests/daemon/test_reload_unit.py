"""Debounce and the reload function, on trio's clock with scripted change sets."""

import pytest
import trio

from sluice.daemon.reload import debounced


async def scripted(steps):
    for delay, change in steps:
        await trio.sleep(delay)
        yield {change}


async def test_changes_close_together_are_one_batch(autojump_clock):
    steps = [(0, ("m", "a")), (0.01, ("m", "b")), (0.01, ("m", "c")), (1.0, ("m", "d"))]
    batches = []
    times = []
    async for batch in debounced(scripted(steps), 0.05):
        batches.append(batch)
        times.append(trio.current_time())
    assert batches == [{("m", "a"), ("m", "b"), ("m", "c")}, {("m", "d")}]
    # the first batch is handed on once 50 ms passed without a change
    assert abs(times[0] - 0.07) < 1e-6


async def test_a_steady_stream_is_not_starved(autojump_clock):
    steps = [(0.02, ("m", str(i))) for i in range(5)]
    batches = [b async for b in debounced(scripted(steps), 0.05)]
    assert len(batches) == 1 and len(batches[0]) == 5


async def test_a_watcher_that_cannot_start_is_retried_and_says_so(tmp_path, autojump_clock, monkeypatch):
    import watchfiles
    from structlog.testing import capture_logs

    from sluice.daemon.reload import Watcher

    attempts = []

    async def failing_awatch(*paths, **kwargs):
        attempts.append(trio.current_time())
        raise RuntimeError("Too many open files (os error 24)")
        yield  # pragma: no cover - an async generator that fails at once

    monkeypatch.setattr(watchfiles, "awatch", failing_awatch)
    stop = trio.Event()
    watcher = Watcher(stop)
    changes = watcher.tree(tmp_path / "policy.d")
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            first = await changes.__anext__()  # after the first failure: a rescan, not a crash
            second = await changes.__anext__()
            stop.set()
            nursery.cancel_scope.cancel()
    assert first == second == {("rescan", str((tmp_path / "policy.d").resolve()))}
    assert attempts[:2] == [0, 1.0]  # backing off: tried again after 1 s, then after 2 s more
    assert attempts[2:] in ([], [3.0])
    assert logs[0]["event"] == "watcher_failed" and "Too many open files" in logs[0]["error"]


async def test_one_watcher_hands_each_tree_only_its_own_changes(tmp_path, monkeypatch):
    import watchfiles

    from sluice.daemon.reload import Watcher

    etc, state = (tmp_path / "etc").resolve(), (tmp_path / "state").resolve()
    policy, tokens, runtime = etc / "policy.d", etc / "tokens.toml", state / "runtime"
    watched: list[tuple] = []
    stop = trio.Event()

    async def scripted_awatch(*paths, watch_filter, **kwargs):
        watched.append(paths)
        changes = {
            ("modified", str(policy / "10-a.toml")),
            ("modified", str(tokens)),
            ("added", str(runtime / "queue-x.toml")),
            ("modified", str(etc / "sluiced.toml")),  # beside policy.d: no tree's
            ("modified", str(state / "other")),
        }
        yield {c for c in changes if watch_filter(*c)}
        await stop.wait()

    monkeypatch.setattr(watchfiles, "awatch", scripted_awatch)
    watcher = Watcher(stop)
    policy_changes = watcher.tree(policy, tokens)
    runtime_changes = watcher.tree(runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        with trio.fail_after(5):
            got_policy = await policy_changes.__anext__()
            got_runtime = await runtime_changes.__anext__()
        stop.set()
    assert watched == [(etc, state)]  # one watcher; tokens.toml's directory is etc/ already
    assert got_policy == {("modified", str(policy / "10-a.toml")), ("modified", str(tokens))}
    assert got_runtime == {("added", str(runtime / "queue-x.toml"))}
    with pytest.raises(RuntimeError, match="before the watcher runs"):
        watcher.tree(tmp_path / "late")


async def test_a_build_overtaken_by_a_runtime_change_keeps_the_change_and_is_freed_a_part_at_a_time(
    tmp_path, monkeypatch
):
    """A suspension created through the API while a reload builds is in the
    reload's result; the build it overtook goes to ``release``, not all at once."""
    from sluice.daemon import reload as reload_module
    from sluice.daemon.current import Current
    from sluice.daemon.events import Broadcaster
    from sluice.daemon.parsing import Parser, load
    from sluice.daemon.policy_dir import PolicyReader
    from sluice.daemon.systemd import Notifier
    from sluice.policy.model import Suspension
    from sluice.policy.snapshot import Runtime, Snapshot

    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "a.toml").write_text('[[suspension]]\ndomain = "old.example"\nreason = "old"\n')
    reader, parser = PolicyReader(policy_dir), Parser()
    current = Current(Snapshot.build(await load(reader, parser)))
    reloader = reload_module.Reloader(reader, current, Broadcaster(), Notifier(""), parser=parser)

    created = Suspension(id="7d1f5a3e-0000-4000-8000-000000000001", reason="incident", domain="api.example")
    real_build = reload_module._build_and_diff_in_list
    overtaken = []

    def build_while_the_api_writes(old, policy):
        result = real_build(old, policy)
        if not overtaken:  # the first build: an API write lands before it is done
            overtaken.append(result[0].new)
            snapshot = current.snapshot
            current.swap(snapshot.with_runtime(Runtime(suspensions={created.id: created}),
                                               snapshot.generation + 1, put=[created]))
        return result

    released = []
    real_release = reload_module.release

    async def recording_release(values, containers):
        released.append([id(c) for c in containers])
        await real_release(values, containers)

    monkeypatch.setattr(reload_module, "_build_and_diff_in_list", build_while_the_api_writes)
    monkeypatch.setattr(reload_module, "release", recording_release)
    (policy_dir / "a.toml").write_text('[[suspension]]\ndomain = "new.example"\nreason = "new"\n')
    result = await reloader.reload("test")

    assert result.ok
    now = 0.0
    assert not current.snapshot.decide("x@api.example", now).deliver  # the API's change is kept
    assert not current.snapshot.decide("x@new.example", now).deliver  # and the file's
    assert current.snapshot.decide("x@old.example", now).deliver
    # the overtaken build's index went to release, a part at a time
    assert any(id(overtaken[0].suspensions.files) in ids for ids in released)
