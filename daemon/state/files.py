"""Runtime state on local disk: one small TOML file per runtime object.

How this works
--------------
``<state_dir>/runtime/`` holds one file per object, named after it:
``suspension-<id>.toml``, ``queue-<quoted name>.toml``, ``schedule-<id>.toml``,
``endpoint-<id>.toml``. Each holds the object's table in the policy-file
format plus ``created_at`` and ``created_by``, written with tomli-w.

A write is durable before it returns: the text goes to a temporary file in
the same directory, which is fsynced, renamed over the object's file, and the
directory is fsynced. A crash at any instant leaves the old file or the new
one, never a torn one; a leftover temporary file is ignored and cleaned up.
One change writes one small file, whatever the number of objects.

The store remembers the digest of what it last wrote to each file, so the
daemon's own writes are not mistaken for hand edits by the watcher.
``follow`` is that watcher: it watches the directory (watchfiles, debounced)
and hands hand-edited files to ``Mutations`` as updates. This backend is the
``RuntimeStore`` of ``store.py`` that is never degraded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import msgspec
import structlog
import tomli_w
import trio

from sluice.policy.errors import FileProblem
from sluice.policy.files import ParsedFile, is_policy_file, parse_runtime
from sluice.policy.model import Entry, Pause, QueuePolicy, Suspension
from sluice.policy.snapshot import Runtime

from .store import Apply, Loaded, ReadUpdates, Updates, _ignore

if TYPE_CHECKING:
    from ..reload import Watcher

log = structlog.get_logger("sluice.state")

TMP_SUFFIX = ".tmp"


def file_name(entry: Entry) -> str:
    """The file that holds ``entry``."""
    kind, key = entry_key(entry)
    return f"{kind}-{quote(key, safe='')}.toml"


def entry_key(entry: Entry) -> tuple[str, str]:
    if isinstance(entry, Suspension):
        return "suspension", entry.id
    if isinstance(entry, QueuePolicy):
        return "queue", entry.name
    if isinstance(entry, Pause):
        return entry.kind, entry.id
    raise TypeError(f"not a runtime entry: {entry!r}")


def name_for(kind: str, key: str) -> str:
    return f"{kind}-{quote(key, safe='')}.toml"


def to_table(entry: Entry) -> tuple[str, dict[str, Any]]:
    """The TOML table of a runtime entry: its fields, without defaults or source."""
    kind, _ = entry_key(entry)
    table = {}
    for field, value in msgspec.structs.asdict(entry).items():
        if field in ("source", "kind") or value is None or value == () or value is False:
            continue
        table[field] = list(value) if isinstance(value, tuple) else value
    if isinstance(entry, Pause):
        table["paused"] = True
    if isinstance(entry, QueuePolicy):
        table["paused"] = entry.paused
    return kind, table


def render(entry: Entry) -> bytes:
    kind, table = to_table(entry)
    return tomli_w.dumps({kind: [table]}).encode()


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_entry(data: bytes, name: str, where: str | None = None) -> ParsedFile:
    """Parse the text of one runtime object, which must be named ``name``.

    ``where`` names it in problems (default: ``name``); the etcd backend
    passes the key.
    """
    where = where or name
    try:
        parsed = parse_runtime(data.decode("utf-8"), where)
    except UnicodeDecodeError:
        return ParsedFile(name=where, problems=(FileProblem(where, None, "", "not valid UTF-8"),))
    if parsed.ok:
        entries = [*parsed.suspensions, *parsed.queues, *parsed.pauses]
        if len(entries) != 1 or file_name(entries[0]) != name:
            expected = ", ".join(file_name(e) for e in entries) or "nothing"
            return ParsedFile(
                name=where,
                problems=(
                    FileProblem(
                        where,
                        None,
                        "",
                        "a runtime file holds exactly one entry, named after it "
                        f"(this one holds {expected})",
                    ),
                ),
            )
    return parsed


def only_entry(parsed: ParsedFile) -> Entry:
    [entry] = [*parsed.suspensions, *parsed.queues, *parsed.pauses]
    return entry


class FileStore:
    """The embedded runtime-state backend (the default)."""

    degraded = False

    def __init__(self, state_dir: Path, *, debounce: float = 0.05) -> None:
        self.directory = state_dir / "runtime"
        self.debounce = debounce
        self.on_degraded: Callable[[bool, str], None] = _ignore
        self._written: dict[str, bytes | None] = {}

    @property
    def where(self) -> str:
        return str(self.directory)

    # -- reading -----------------------------------------------------------

    def _parse(self, name: str) -> ParsedFile | None:
        """Parse one runtime file; None if it is gone."""
        try:
            data = (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None
        return parse_entry(data, name)

    def load(self) -> tuple[Runtime, list[FileProblem]]:
        """Read every runtime file. Blocking; run it in a thread.

        Returns the runtime state and the problems of files that could not be
        read (their entries are left out; the caller decides what that means).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        entries: list[Entry] = []
        problems: list[FileProblem] = []
        for item in os.scandir(self.directory):
            if item.name.endswith(TMP_SUFFIX):
                os.unlink(item.path)  # a write that never completed
                continue
            if not is_policy_file(item.name):
                continue
            parsed = self._parse(item.name)
            if parsed is None:
                continue
            problems.extend(parsed.problems)
            entries.extend([*parsed.suspensions, *parsed.queues, *parsed.pauses])
        return runtime_from(entries), problems

    async def open(self) -> Loaded:
        runtime, problems = await trio.to_thread.run_sync(self.load)
        return Loaded(runtime=runtime, problems=problems)

    def read_raw(self) -> dict[str, bytes]:
        """Every runtime file's bytes by name (leftover temporary files skipped)."""
        raw: dict[str, bytes] = {}
        try:
            items = list(os.scandir(self.directory))
        except FileNotFoundError:
            return raw
        for item in items:
            if is_policy_file(item.name) and not item.name.endswith(TMP_SUFFIX):
                try:
                    raw[item.name] = (self.directory / item.name).read_bytes()
                except FileNotFoundError:
                    continue
        return raw

    def changed_on_disk(self, names: set[str]) -> set[str]:
        """Of ``names``, those whose content is not what this store last wrote."""
        changed = set()
        for name in names:
            if not is_policy_file(name):
                continue
            try:
                current = _digest((self.directory / name).read_bytes())
            except FileNotFoundError:
                current = None
            if name not in self._written or self._written[name] != current:
                changed.add(name)
        return changed

    def reread(self, names: set[str]) -> tuple[dict[str, Entry | None], list[FileProblem]]:
        """Re-read hand-edited files: name -> entry (None if removed), and problems.

        A file with problems is left out of the result, so the caller keeps
        the entry it had: a broken edit never drops a hold.
        """
        result: dict[str, Entry | None] = {}
        problems: list[FileProblem] = []
        for name in names:
            parsed = self._parse(name)
            if parsed is None:
                result[name] = None
            elif parsed.problems:
                problems.extend(parsed.problems)
            else:
                result[name] = only_entry(parsed)
        return result, problems

    def hand_edits(self, names: set[str]) -> ReadUpdates:
        """``read`` for ``Mutations.apply_changes``: the files among ``names`` edited by hand."""

        async def read() -> Updates:
            changed = await trio.to_thread.run_sync(self.changed_on_disk, names)
            if not changed:
                return {}
            entries, problems = await trio.to_thread.run_sync(self.reread, changed)
            for problem in problems:
                log.error("runtime_file_invalid", problem=str(problem))
            updates: Updates = {}
            for name, entry in entries.items():
                kind_key = key_of(name)
                if kind_key is not None:
                    updates[kind_key] = entry
            return updates

        return read

    async def follow(
        self,
        apply: Apply,
        *,
        stop: trio.Event,
        watcher: Watcher | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch the runtime directory and take in hand edits, until ``stop`` is set.

        The directory becomes a tree of ``watcher`` (which the caller runs),
        or of a watcher of its own.
        """
        from ..reload import Watcher, debounced, follow

        self.directory.mkdir(parents=True, exist_ok=True)

        async def on_change(batch) -> None:
            names = {Path(path).name for _change, path in batch if Path(path).parent == self.directory}
            if names:
                await apply(self.hand_edits(names), announce="summary")

        own = watcher is None
        if own:
            watcher = Watcher(stop)
        changes = debounced(watcher.tree(self.directory), self.debounce)
        async with trio.open_nursery() as nursery:
            if own:
                await nursery.start(watcher.run)
            await nursery.start(follow, changes, on_change)
            task_status.started()

    # -- writing -----------------------------------------------------------

    def _write_sync(self, name: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / name
        tmp = self.directory / (name + TMP_SUFFIX)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
        _fsync_dir(self.directory)

    def _remove_sync(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except FileNotFoundError:
            return
        _fsync_dir(self.directory)

    async def put(self, entry: Entry) -> None:
        """Store ``entry`` durably (returns once it is on disk)."""
        name, data = file_name(entry), render(entry)
        self._written[name] = _digest(data)
        await trio.to_thread.run_sync(self._write_sync, name, data)

    async def remove(self, kind: str, key: str) -> None:
        """Remove an entry durably; removing a missing one is not an error."""
        name = name_for(kind, key)
        self._written[name] = None
        await trio.to_thread.run_sync(self._remove_sync, name)

    async def delete(self, entry: Entry) -> None:
        """Remove ``entry`` durably."""
        await self.remove(*entry_key(entry))

    async def claim(
        self,
        criteria_key: str,
        known: Suspension | None,
        build: Callable[[Suspension | None], Suspension],
    ) -> tuple[Suspension, Suspension | None]:
        """Upsert by criteria: on one host the mutations lock already makes it race-free."""
        stored = build(known)
        await self.put(stored)
        if known is not None and known.id != stored.id:
            await self.remove("suspension", known.id)
        return stored, known

    async def remove_expired(self, suspension: Suspension) -> None:
        await self.remove("suspension", suspension.id)

    async def aclose(self) -> None:
        pass

    # -- the local copy kept by the etcd backend ------------------------------

    def write_raw(self, changes: dict[str, bytes | None], *, fsync: bool = True) -> None:
        """Write or remove runtime files by name, atomically; blocking (see ``write_files``)."""
        write_files(self.directory, changes, fsync=fsync)


def write_files(directory: Path, changes: dict[str, bytes | None], *, fsync: bool = True) -> None:
    """Write (bytes) or remove (None) files in ``directory`` by name, each atomically.

    With ``fsync=False`` only the directory is synced, once, at the end: for
    a best-effort copy whose torn files are skipped when read.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in changes.items():
        if data is None:
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass
            continue
        tmp = directory / (name + TMP_SUFFIX)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, directory / name)
    if changes:
        _fsync_dir(directory)


def runtime_from(entries: list[Entry]) -> Runtime:
    return Runtime(
        suspensions={e.id: e for e in entries if isinstance(e, Suspension)},
        queues={e.name: e for e in entries if isinstance(e, QueuePolicy)},
        schedule_pauses={
            e.id: e for e in entries if isinstance(e, Pause) and e.kind == "schedule"
        },
        endpoint_pauses={
            e.id: e for e in entries if isinstance(e, Pause) and e.kind == "endpoint"
        },
    )


def key_of(name: str) -> tuple[str, str] | None:
    """(kind, key) from a runtime file name, or None if it is not one."""
    stem = name[: -len(".toml")] if name.endswith(".toml") else None
    if stem is None or "-" not in stem:
        return None
    kind, _, key = stem.partition("-")
    return kind, unquote(key)
