"""Reloads: watcher and SIGHUP and the API -> parse off the loop -> swap whole.

How this works
--------------
``Reloader.reload`` is the one reload function. Under a lock it tells
systemd RELOADING=1, reads the policy directory in a worker thread (only
changed files are parsed again), and either swaps in a new snapshot with the
next generation and logs the diff, or keeps the snapshot in force and
records the errors. Either way systemd then hears READY=1 and a STATUS=.

Change sets come from an async iterator: a ``Watcher`` tree (watchfiles on
the directory that holds the watched one, so deleting and recreating the
directory itself is seen; one watcher for all the daemon's trees) in
production, a scripted fake in tests.
``debounced`` groups change sets that arrive within the debounce window,
measured on trio's clock.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple
from pathlib import Path

import structlog
import trio

from sluice.policy.bulk import collector_paused
from sluice.policy.diff import Change, diff
from sluice.policy.errors import PolicyLoadError
from sluice.policy.files import PolicySet
from sluice.policy.snapshot import Snapshot

from .current import Current, ReloadResult
from .events import Broadcaster
from .http.auth import TokenFile
from .memory import release
from .parsing import Parser, load
from .policy_dir import PolicyReader
from .systemd import Notifier

log = structlog.get_logger("sluice.reload")

ChangeSet = set[tuple[object, str]]
WATCH_RETRY = 1.0
MAX_LISTED = 100  # keys of each kind named in a reload's log line and event
RELEASE_FROM = 5_000  # entries replaced from which the old policy is freed a part at a time
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
        parser: Parser | None = None,
    ) -> None:
        self.tokens = tokens
        self.reader = reader
        self.parser = parser if parser is not None else Parser()
        self.current = current
        self.events = events
        self.notifier = notifier
        self.clock = clock
        self.lock = trio.Lock()

    async def _rebuild(self, policy: PolicySet) -> Built:
        """The snapshot in force, the one ``policy`` makes of it, what differs.

        Building and diffing 100,000 entries takes long enough to matter, so
        it happens in a worker thread. A runtime change swapped in meanwhile
        would be lost by the result, so it is then built again from the
        newer snapshot (on the loop, after a few tries, to be sure to end).
        """
        old = self.current.snapshot
        if self.reader.parsed_last == 0 and policy.files == old.policy.files:
            return Built(old, old, [], _summary([]), [], [])  # no file changed: nothing to build
        for _ in range(3):
            # Taken out of the list the thread hands back: trio holds what a
            # thread returned until the task next waits, and that must not
            # be the last reference to the old snapshot once its parts are
            # being freed (it then went in one cascade, 50 ms of the loop).
            built = (await trio.to_thread.run_sync(_build_and_diff_in_list, old, policy)).pop()
            if self.current.snapshot is old:
                return built
            # This build goes. It holds an index of every entry: freed in
            # one go, that too would hold the loop.
            values, containers = _discarded_parts(built)
            del built
            await release(values, containers)
            old = self.current.snapshot
        return _build_and_diff(old, policy)

    async def reload(self, trigger: str) -> ReloadResult:
        """Reload the policy files now; returns how it went."""
        async with self.lock:
            self.notifier.reloading()
            with _short_switches():
                result, values, containers = await self._reload(trigger)
            # Freeing 100,000 entries in one go would hold the loop: the old
            # policy is freed a part at a time, and the memory handed back.
            await release(values, containers)
            await trio.sleep(0)  # a pass of the loop: the reload's log line is out before READY=1
            self.notifier.ready(self.current.status_line(self.clock()))
            return result

    async def _reload(self, trigger: str) -> tuple[ReloadResult, list[object], list[object]]:
        """How the reload went, and the parts of what it replaced (see ``release``)."""
        started = time.perf_counter()
        problems = []
        try:
            policy = await load(self.reader, self.parser)
        except PolicyLoadError as exc:
            problems.extend(exc.problems)
        loaded = time.perf_counter()
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
            built = await self._rebuild(policy)
            built_at = time.perf_counter()
            new, changes = built.new, built.changes
            if new is not built.old:
                self.current.swap(new)
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
                read_ms=round((loaded - started) * 1000, 1),  # read, parsed, checked
                build_ms=round((built_at - loaded) * 1000, 1),  # indexed, diffed
                **built.summary,
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
            return result, built.values, built.containers
        return result, [], []


class Built(NamedTuple):
    old: Snapshot  # the snapshot in force when the reload began
    new: Snapshot  # the one to swap in; ``old`` itself when nothing changed
    changes: list[Change]
    summary: dict[str, object]  # for the log line
    # the parts of the snapshot that goes, for ``release`` (none when it
    # holds little the other does not)
    values: list[object]
    containers: list[object]


@contextlib.contextmanager
def _short_switches() -> Iterator[None]:
    """While a reload's worker threads compute, the event loop's thread waits
    for the interpreter at most 1 ms (CPython's default: 5 ms at each turn)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _build_and_diff_in_list(old: Snapshot, policy: PolicySet) -> list[Built]:
    return [_build_and_diff(old, policy)]


def _build_and_diff(old: Snapshot, policy: PolicySet) -> Built:
    """The new snapshot, what changed, and the parts of the one that goes: in a
    worker thread, all of it, so that the loop has only the swap to do."""
    # the policy lives until the next reload and holds no cycles: out of the
    # collector's sight (see collector_paused)
    with collector_paused():
        new = old.with_policy(policy, old.generation + 1)
        new.active_count(0.0)  # its sorted ends made here: STATUS= would sort 100,000 on the loop
        changes = diff(old, new)
    gone, came = policy.changed_since(old.policy)
    if changes or policy.files != old.policy.files:
        going, replaced = old, gone
    else:  # nothing changed: the generation stays, and the one just built goes
        going, new, replaced = new, old, came
    values: list[object] = []
    containers: list[object] = []
    if sum(len(f.suspensions) for f in replaced) >= RELEASE_FROM:  # worth freeing a part at a time
        values, containers = going.parts()
        values += changes
    return Built(old, new, changes, _summary(changes), values, containers)


def _discarded_parts(built: Built) -> tuple[list[object], list[object]]:
    """What freeing ``built``, a build that is not swapped in, frees (see ``release``)."""
    if built.new is built.old:  # nothing changed: what it built was to be freed anyway
        return built.values, built.containers
    values, containers = built.new.parts()
    return values + built.changes, containers


def _summary(changes: list[Change]) -> dict[str, object]:
    """What a reload changed, for its log line: counts, and the first keys of each kind."""
    listed: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
    counts = dict.fromkeys(listed, 0)
    for c in changes:
        counts[c.action] += 1
        keys = listed[c.action]
        if len(keys) < MAX_LISTED:
            keys.append(f"{c.kind} {c.key}")
    summary: dict[str, object] = {}
    for action, keys in listed.items():
        summary[action] = keys
        if counts[action] > MAX_LISTED:
            summary[f"{action}_more"] = counts[action] - MAX_LISTED
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


WATCH_STEP_MS = 20


class _Tree:
    """One followed tree: a directory (maybe a symlink, or under one) and an extra file.

    Paths are kept as given and as they resolve now: a deploy that flips a
    symlink to a new release (``ln -sfn``) changes what the directory is,
    and ``refresh`` notices.
    """

    def __init__(self, directory: Path, also: Path | None, send: trio.MemorySendChannel[ChangeSet]) -> None:
        self.given = [Path(os.path.abspath(p)) for p in (directory, also) if p is not None]
        self.send = send
        self.resolved: list[Path] = []
        self.refresh()

    def refresh(self) -> bool:
        """Resolve the paths again; True if one now leads elsewhere."""
        resolved = [p.resolve() for p in self.given]
        changed = resolved != self.resolved
        self.resolved = resolved
        self._directories = {str(self.given[0]), str(resolved[0])}
        self._files = {str(p) for p in (*self.given[1:], *resolved[1:])}
        return changed

    @property
    def prefix(self) -> str:
        return str(self.given[0])

    def paths(self) -> set[Path]:
        return {*self.given, *self.resolved}

    def holds(self, path: str) -> bool:
        """Whether a changed ``path`` concerns this tree (the directory, inside it, or the file)."""
        return path in self._files or any(
            path == d or path.startswith(d + "/") for d in self._directories
        )


class Watcher:
    """One watchfiles watcher for every tree the daemon follows.

    watchfiles' loop runs in a worker thread that takes the interpreter lock
    every ``step`` to look for changes; the event loop's thread then has to
    give it up, which under load costs requests their time. So the daemon
    runs one watcher, at a 20 ms step, for the policy directory and the
    runtime state alike, and hands each tree the changes inside it.

    A tree is watched through its parent directory, recursively, so deleting
    and recreating the directory itself is seen; only paths inside the
    directory (or the directory itself, or the file ``also``) reach it. A
    directory that is a symlink is watched both where the link is and where
    it leads; when a change makes it lead elsewhere, the tree is told to
    rescan and the watch moves to the new target. Trees are added with
    ``tree`` before ``run`` starts.
    """

    def __init__(self, stop: trio.Event) -> None:
        self._stop = stop
        self._trees: list[_Tree] = []
        self._running = False

    def tree(self, directory: Path, also: Path | None = None) -> AsyncIterator[ChangeSet]:
        """Change sets for ``directory`` and anything in it (and the file ``also``)."""
        if self._running:
            raise RuntimeError("trees are added before the watcher runs")
        send, receive = trio.open_memory_channel[ChangeSet](math.inf)
        self._trees.append(_Tree(directory, also, send))
        return _drain(receive)

    def _paths(self) -> list[Path]:
        """The parents of the trees' paths, none inside another (watched recursively)."""
        parents = {path.parent for tree in self._trees for path in tree.paths()}
        roots = sorted(parents, key=lambda p: (len(p.parts), str(p)))
        kept: list[Path] = []
        for root in roots:
            if not any(root == k or k in root.parents for k in kept):
                kept.append(root)
        return kept

    def _dispatch(self, changes: set[tuple[Any, str]]) -> bool:
        """Hand each tree its changes; True if a symlink now leads elsewhere."""
        moved = False
        for tree in self._trees:
            if tree.refresh():
                moved = True
                tree.send.send_nowait({("rescan", tree.prefix)})
            mine = {(c, p) for c, p in changes if tree.holds(p)}
            if mine:
                tree.send.send_nowait(mine)
        return moved

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until ``stop`` is set; a watcher that fails is started again, with backoff."""
        import watchfiles

        self._running = True
        trees = self._trees

        def wanted(_change: object, path: str) -> bool:
            return any(tree.holds(path) for tree in trees)

        task_status.started()
        backoff = WATCH_RETRY
        try:
            while not self._stop.is_set():
                paths = self._paths()
                try:
                    async for changes in watchfiles.awatch(
                        *paths,
                        stop_event=self._stop,
                        debounce=50,
                        step=WATCH_STEP_MS,
                        recursive=True,
                        watch_filter=wanted,
                        rust_timeout=1000,
                        yield_on_timeout=False,
                    ):
                        backoff = WATCH_RETRY
                        if self._dispatch(changes) and self._paths() != paths:
                            break  # watch where the links lead now
                    else:
                        return
                except (OSError, RuntimeError) as exc:
                    # e.g. no inotify instance left: reloads still come by SIGHUP
                    # and the API meanwhile, and the watcher is tried again
                    log.error("watcher_failed", paths=[str(p) for p in paths], error=str(exc),
                              retry_in=backoff)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, WATCH_RETRY_MAX)
                    for tree in trees:
                        tree.refresh()
                        tree.send.send_nowait({("rescan", tree.prefix)})  # catch up on what was missed
        finally:
            for tree in trees:
                tree.send.close()


async def _drain(receive: trio.MemoryReceiveChannel[ChangeSet]) -> AsyncIterator[ChangeSet]:
    async with receive:
        async for changes in receive:
            yield changes


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
