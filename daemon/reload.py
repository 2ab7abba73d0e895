"""Reloads: watcher and SIGHUP and the API -> parse off the loop -> swap whole.

How this works
--------------
``Reloader.reload`` is the one reload function. Under a lock it tells
systemd RELOADING=1, reads the policy directory in a worker thread (only
changed files are parsed again), and either swaps in a new snapshot with the
next generation and logs the diff, or keeps the snapshot in force and
records the errors. Either way systemd then hears READY=1 and a STATUS=.

Change sets come from an async iterator: ``watch_tree`` (watchfiles on the
directory that holds the watched one, so deleting and recreating the
directory itself is seen) in production, a scripted fake in tests.
``debounced`` groups change sets that arrive within the debounce window,
measured on trio's clock.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
import trio

from policy.bulk import collector_paused
from policy.diff import Change, diff
from policy.errors import PolicyLoadError
from policy.files import PolicySet
from policy.snapshot import Snapshot

from .current import Current, ReloadResult
from .events import Broadcaster
from .http.auth import TokenFile
from .policy_dir import PolicyReader
from .systemd import Notifier

log = structlog.get_logger("sluice.reload")

ChangeSet = set[tuple[object, str]]
WATCH_RETRY = 1.0
MAX_LISTED = 100  # keys of each kind named in a reload's log line and event
WATCH_RETRY_MAX = 30.0


class Reloader:
    def __init__(
        self,
        reader: PolicyReader,
        current: Current,
        events: Broadcaster,
        notifier: Notifier,
        clock: Callable[[], float] = time.time,
        tokens: TokenFile | None = None,
    ) -> None:
        self.tokens = tokens
        self.reader = reader
        self.current = current
        self.events = events
        self.notifier = notifier
        self.clock = clock
        self.lock = trio.Lock()

    async def _rebuild(self, policy: PolicySet) -> tuple[Snapshot, Snapshot, list[Change]]:
        """The snapshot in force, the one ``policy`` makes of it, and what differs.

        Building and diffing 100,000 entries takes long enough to matter, so
        it happens in a worker thread. A runtime change swapped in meanwhile
        would be lost by the result, so it is then built again from the
        newer snapshot (on the loop, after a few tries, to be sure to end).
        """
        old = self.current.snapshot
        if self.reader.parsed_last == 0 and policy.files == old.policy.files:
            return old, old, []  # no file changed: nothing to build
        for _ in range(3):
            new, changes = await trio.to_thread.run_sync(_build_and_diff, old, policy)
            if self.current.snapshot is old:
                return old, new, changes
            old = self.current.snapshot
        return (old, *_build_and_diff(old, policy))

    async def reload(self, trigger: str) -> ReloadResult:
        """Reload the policy files now; returns how it went."""
        async with self.lock:
            self.notifier.reloading()
            started = time.perf_counter()
            problems = []
            try:
                policy = await trio.to_thread.run_sync(self.reader.load)
            except PolicyLoadError as exc:
                problems.extend(exc.problems)
            if self.tokens is not None:
                try:
                    tokens = await trio.to_thread.run_sync(self.tokens.read)
                except PolicyLoadError as exc:
                    problems.extend(exc.problems)
            if problems:
                errors = tuple(str(p) for p in problems)
                result = ReloadResult(
                    ok=False,
                    at=self.clock(),
                    generation=self.current.snapshot.generation,
                    errors=errors,
                    files=self.current.snapshot.policy.files,
                )
                self.current.last_reload = result
                log.error("reload_failed", trigger=trigger, errors=list(errors))
                self.events.publish(
                    "reload_failed", result.generation, errors=list(errors), trigger=trigger
                )
            else:
                old, new, changes = await self._rebuild(policy)
                if changes or policy.files != old.policy.files:
                    self.current.swap(new)
                else:
                    new = old  # nothing changed: the generation stays
                if self.tokens is not None:
                    self.tokens.current = tokens
                result = ReloadResult(
                    ok=True,
                    at=self.clock(),
                    generation=new.generation,
                    changes=len(changes),
                    files=policy.files,
                )
                self.current.last_reload = result
                log.info(
                    "reload_applied",
                    trigger=trigger,
                    generation=new.generation,
                    parsed=self.reader.parsed_last,
                    files=len(policy.files),
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                    **_summary(changes),
                )
                self.events.publish(
                    "reload_applied",
                    new.generation,
                    trigger=trigger,
                    changes=[
                        {"kind": c.kind, "action": c.action, "key": c.key}
                        for c in changes[:MAX_LISTED]
                    ],
                    **({"more_changes": len(changes) - MAX_LISTED} if len(changes) > MAX_LISTED else {}),
                )
                # Freeing 100,000 entries takes a while: let a worker thread
                # drop the last references to the old policy, not the loop.
                garbage = [old, changes]
                del old, changes
                await trio.to_thread.run_sync(garbage.clear)
            self.notifier.ready(self.current.status_line(self.clock()))
            return result


def _build_and_diff(old: Snapshot, policy: PolicySet) -> tuple[Snapshot, list[Change]]:
    with collector_paused():
        new = old.with_policy(policy, old.generation + 1)
        changes = diff(old, new)
    # The policy lives until the next reload and holds no cycles: move it out
    # of the collector's sight, or a full collection (on whichever thread
    # allocates next, the event loop's too) would walk all of it.
    gc.freeze()
    return new, changes


def _summary(changes: list[Change]) -> dict[str, object]:
    """What a reload changed, for its log line: counts, and the first keys of each kind."""
    summary: dict[str, object] = {}
    for action in ("added", "removed", "changed"):
        keys = [f"{c.kind} {c.key}" for c in changes if c.action == action]
        summary[action] = keys[:MAX_LISTED]
        if len(keys) > MAX_LISTED:
            summary[f"{action}_more"] = len(keys) - MAX_LISTED
    return summary


async def debounced(
    changes: AsyncIterator[ChangeSet], delay: float
) -> AsyncIterator[ChangeSet]:
    """Group change sets that arrive less than ``delay`` seconds apart."""
    send, receive = trio.open_memory_channel[ChangeSet](0)

    async def pump() -> None:
        async with send:
            async for change in changes:
                await send.send(change)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        async with receive:
            while True:
                try:
                    batch = set(await receive.receive())
                except trio.EndOfChannel:
                    return
                ended = False
                while True:
                    with trio.move_on_after(delay) as quiet:
                        try:
                            batch |= await receive.receive()
                        except trio.EndOfChannel:
                            ended = True
                    if quiet.cancelled_caught or ended:
                        break
                yield batch
                if ended:
                    return


async def watch_tree(
    directory: Path, stop: trio.Event, also: Path | None = None
) -> AsyncIterator[ChangeSet]:
    """Change sets for ``directory`` and anything in it, surviving its deletion.

    watchfiles watches the parent directory, recursively, and only paths
    inside ``directory`` (or the directory itself, or the file ``also``) are
    passed on. ``also`` must live in the same parent directory tree.
    """
    import watchfiles

    directory = directory.resolve()
    parent = directory.parent
    prefix = str(directory)
    extra = str(also.resolve()) if also is not None else None
    paths = [parent]
    if also is not None and not str(also.resolve()).startswith(str(parent) + "/"):
        paths.append(also.resolve().parent)

    def wanted(_change: object, path: str) -> bool:
        return path == prefix or path.startswith(prefix + "/") or path == extra

    backoff = WATCH_RETRY
    while not stop.is_set():
        try:
            async for changes in watchfiles.awatch(
                *paths,
                stop_event=stop,
                debounce=50,
                step=10,
                recursive=True,
                watch_filter=wanted,
                rust_timeout=1000,
                yield_on_timeout=False,
            ):
                backoff = WATCH_RETRY
                yield {(change, path) for change, path in changes}
            return
        except (OSError, RuntimeError) as exc:
            # e.g. no inotify instance left: reloads still come by SIGHUP and
            # the API meanwhile, and the watcher is tried again
            log.error("watcher_failed", paths=[str(p) for p in paths], error=str(exc), retry_in=backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_RETRY_MAX)
            yield {("rescan", str(directory))}  # catch up on what the watcher missed


async def follow(
    changes: AsyncIterator[ChangeSet],
    apply: Callable[[ChangeSet], Awaitable[object]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``apply`` for every (debounced) change set, forever."""
    task_status.started()
    async for batch in changes:
        try:
            await apply(batch)
        except Exception:  # a watcher must outlive any one bad change
            log.exception("change_handling_failed")
