"""Runtime state on local disk: one small TOML file per runtime object.

How this works
--------------
``<state_dir>/runtime/`` holds one file per object, named after it:
``suspension-<id>.toml``, ``queue-<quoted name>.toml``, ``schedule-<id>.toml``,
``endpoint-<id>.toml``. Each holds the object's table in the policy-file
format plus ``created_at`` and ``created_by``.

The text is ``encoding.render``'s; a write is durable before it returns
(``atomic.write_files``: a temporary file in the same directory, fsynced,
renamed over the object's file, and the directory fsynced). A crash at any
instant leaves the old file or the new one, never a torn one; a leftover
temporary file is ignored and cleaned up.
One change writes one small file, whatever the number of objects. The
suspensions created while one batch is being written are written together
as the next (``claim_all``), with one directory fsync for the batch.

The store remembers the digest of what it last wrote to each file, so the
daemon's own writes are not mistaken for hand edits by the watcher.
``follow`` takes the batches of changed paths the store was built with
(``changes``: the daemon's one watcher, debounced, on this directory) and
hands hand-edited files to ``Mutations`` as updates. This backend is the
``RuntimeStore`` of ``base.py``; it is degraded while the disk refuses
writes (full, read-only), and each refused change is ``StateUnavailable``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import outcome
import structlog
import trio

from sluice.policy.errors import FileProblem
from sluice.policy.files import ParsedFile, is_policy_file
from sluice.policy.model import Entry, Suspension
from sluice.policy.snapshot import Runtime

from .atomic import TMP_SUFFIX, write_files
from .encoding import entry_key, file_name, key_of, name_for, only_entry, parse_entry, render, runtime_from
from .base import (
    Apply,
    Changes,
    Claim,
    Claimed,
    Loaded,
    ReadUpdates,
    StateUnavailable,
    Updates,
    ignore_degraded,
    ignore_invalid,
)

log = structlog.get_logger("sluice.state")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


_UNSET = object()


class FileStore:
    """The embedded runtime-state backend (the default)."""

    degraded = False

    def __init__(self, state_dir: Path, *, changes: Changes | None = None) -> None:
        """The store under ``state_dir``; ``follow`` hears of hand edits from ``changes``."""
        self.directory = state_dir / "runtime"
        self.changes = changes
        self.on_degraded: Callable[[bool, str], None] = ignore_degraded
        self.on_invalid: Callable[[dict[str, str]], None] = ignore_invalid
        self.invalid: dict[str, str] = {}  # hand-edited files that cannot be read: name -> problem
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
                try:
                    os.unlink(item.path)  # a write that never completed
                except OSError as exc:  # a read-only state dir: it is ignored all the same
                    log.warning("state_leftover_kept", file=item.name, error=exc.strerror or str(exc))
                continue
            if not is_policy_file(item.name):
                continue
            parsed = self._parse(item.name)
            if parsed is None:
                continue
            problems.extend(parsed.problems)
            entries.extend(parsed.entries())
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
            if name in self.invalid or name not in self._written or self._written[name] != current:
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

    def _note_invalid(self, names: set[str], problems: list[FileProblem]) -> None:
        """Record which of ``names`` are broken now, and report a change of that set."""
        broken = {p.path: str(p) for p in problems}
        invalid = {n: why for n, why in self.invalid.items() if n not in names}
        invalid.update({n: broken[n] for n in names if n in broken})
        if invalid != self.invalid:
            self.invalid = invalid
            self.on_invalid(dict(invalid))

    def hand_edits(self, names: set[str]) -> ReadUpdates:
        """``read`` for ``Mutations.apply_changes``: the files among ``names`` edited by hand."""

        async def read() -> Updates:
            changed = await trio.to_thread.run_sync(self.changed_on_disk, names)
            if not changed:
                return {}
            entries, problems = await trio.to_thread.run_sync(self.reread, changed)
            for problem in problems:
                log.error("runtime_file_invalid", problem=str(problem))
            self._note_invalid(changed, problems)
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
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take in hand edits of the runtime directory, until ``stop`` is set.

        They come from the ``changes`` the store was built with; without it
        there is nothing to follow (``state import`` and tests).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.changes is None:
            task_status.started()
            return
        batches = self.changes(self.directory)
        task_status.started()
        async with trio.open_nursery() as nursery:

            async def until_stopped() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stopped)
            async for batch in batches:
                names = {Path(path).name for _change, path in batch if Path(path).parent == self.directory}
                if not names:
                    continue
                try:
                    await apply(self.hand_edits(names), announce="summary")
                except Exception:  # following must outlive any one bad change
                    log.exception("change_handling_failed")
            nursery.cancel_scope.cancel()

    # -- writing -----------------------------------------------------------

    async def put(self, entry: Entry) -> None:
        """Store ``entry`` durably (returns once it is on disk)."""
        name, data = file_name(entry), render(entry)
        await self._durably({name: data})

    async def remove(self, kind: str, key: str) -> None:
        """Remove an entry durably; removing a missing one is not an error."""
        await self._durably({name_for(kind, key): None})

    async def _durably(self, changes: dict[str, bytes | None]) -> None:
        """Write and remove files by name in a worker thread (``atomic.write_files``).

        A full or read-only disk degrades the store (status and STATUS= say
        why) until the next write succeeds, and the change is StateUnavailable:
        nothing is acknowledged that is not on disk, and a refused batch
        leaves every file as it was.
        """
        before = {name: self._written.get(name, _UNSET) for name in changes}
        self._written.update({name: None if data is None else _digest(data) for name, data in changes.items()})
        try:
            await trio.to_thread.run_sync(write_files, self.directory, changes)
        except OSError as exc:
            for name, digest in before.items():
                if digest is _UNSET:
                    self._written.pop(name, None)
                else:
                    self._written[name] = digest
            reason = f"cannot write runtime state in {self.directory}: {exc.strerror or exc}"
            self.degraded = True
            self.on_degraded(True, reason)
            raise StateUnavailable(reason) from None
        if self.degraded:
            self.degraded = False
            self.on_degraded(False, "")

    async def delete(self, entry: Entry) -> None:
        """Remove ``entry`` durably."""
        await self.remove(*entry_key(entry))

    async def claim_all(self, claims: Sequence[Claim]) -> list[Claimed]:
        """Upsert by criteria, the whole batch in one write: all stored, or none.

        On one host the mutations lock already makes it race-free. A build
        that raises fails its own claim only.
        """
        holders: dict[str, Suspension] = {}
        results: list[Claimed] = []
        files: dict[str, bytes | None] = {}
        for criteria_key, known, build in claims:
            holder = holders.get(criteria_key, known)
            result = outcome.capture(build, holder)
            if isinstance(result, outcome.Value):
                stored = result.value
                holders[criteria_key] = stored
                if holder is not None and holder.id != stored.id:
                    files[name_for("suspension", holder.id)] = None
                files[file_name(stored)] = render(stored)
                result = outcome.Value((stored, holder))
            results.append(result)
        if files:
            try:
                await self._durably(files)
            except StateUnavailable as exc:
                return [outcome.Error(exc) if isinstance(r, outcome.Value) else r for r in results]
        return results

    async def remove_expired(self, suspension: Suspension) -> None:
        await self.remove("suspension", suspension.id)

    async def aclose(self) -> None:
        pass

    # -- bulk, for state export and import ---------------------------------------

    async def read_all(self) -> dict[str, bytes]:
        """Every runtime file's bytes by name."""
        return await trio.to_thread.run_sync(self.read_raw)

    async def write_all(self, puts: dict[str, tuple[Entry, bytes]], removes: dict[str, Entry]) -> None:
        """Write files (by name, with their exact bytes) and remove ``removes``, each atomically."""
        changes: dict[str, bytes | None] = {name: None for name in removes}
        changes.update({name: data for name, (_entry, data) in puts.items()})
        await trio.to_thread.run_sync(self.write_raw, changes)

    # -- the local copy kept by the etcd backend ------------------------------

    def write_raw(self, changes: dict[str, bytes | None], *, fsync: bool = True) -> None:
        """Write or remove runtime files by name, atomically; blocking (see ``atomic.write_files``)."""
        write_files(self.directory, changes, fsync_files=fsync)

