"""The one way to change runtime state: validate, store durably, swap, announce.

How this works
--------------
Every change, from any route, comes here. Under one lock a change is checked
against the snapshot in force, written to the store (durable before the
call returns), applied to a new snapshot that is swapped in, and published
on the events stream. Changes are serialised, so none is lost and each gets
its own generation.

Holds written in policy files are not the runtime's to lift: lifting one is
``Conflict(DEFINED_IN_FILE)`` naming the file and line.

The store is a ``RuntimeStore`` (state/base.py): files on this host or etcd
shared by a fleet. A store that cannot take a change raises
``StateUnavailable`` (503) before anything is swapped. Changes made elsewhere
(hand edits of the files, other nodes through etcd) come in through
``apply_changes`` under the same lock, and are announced like local ones.

``clock`` gives wall-clock seconds since the epoch; tests pass their own.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec
import structlog
import trio

from sluice.policy.errors import Conflict, NotFound, ValidationError
from sluice.policy.fields import check_endpoint_id, check_schedule_id, queue_from, suspension_from
from sluice.policy.model import Entry, Pause, QueuePolicy, Suspension
from sluice.policy.snapshot import EndpointView, Runtime, ScheduleView, Snapshot

from .current import Current
from .events import Broadcaster, rfc3339
from .state.base import Announce, ReadUpdates, RuntimeStore
from .state.encoding import entry_key, name_for

log = structlog.get_logger("sluice.mutations")


def _where(source: str) -> str:
    path, _, line = source.rpartition(":")
    return f"{path} line {line}" if line.isdigit() else source


def defined_in_file(what: str, source: str) -> Conflict:
    return Conflict(
        f"{what} is defined in {_where(source)}; edit that file to lift it",
        code="DEFINED_IN_FILE",
    )


def _without(mapping: Any, key: str) -> dict:
    copy = dict(mapping)
    copy.pop(key, None)
    return copy


def _with(mapping: Any, key: str, value: Any) -> dict:
    copy = dict(mapping)
    copy[key] = value
    return copy


class Mutations:
    def __init__(
        self,
        current: Current,
        store: RuntimeStore,
        events: Broadcaster,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.current = current
        self.store = store
        self.events = events
        self.clock = clock
        self.lock = trio.Lock()
        self.expiry_changed = trio.Event()
        self._expiries: list[tuple[float, str]] = []
        self._by_criteria: dict[str, str] = {}
        self._index_runtime(current.snapshot.runtime)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _index_runtime(self, runtime: Runtime) -> None:
        self._by_criteria = {s.criteria_key: s.id for s in runtime.suspensions.values()}
        self._expiries = [
            (s.expires.timestamp(), s.id)
            for s in runtime.suspensions.values()
            if s.expires is not None
        ]
        heapq.heapify(self._expiries)
        self._wake_sweeper()

    def _wake_sweeper(self) -> None:
        self.expiry_changed.set()
        self.expiry_changed = trio.Event()

    def _apply(
        self,
        runtime: Runtime,
        event: str,
        *,
        put: tuple[Suspension, ...] = (),
        drop: tuple[Suspension, ...] = (),
        **fields: Any,
    ) -> int:
        generation = self.current.next_generation()
        self.current.swap(
            self.current.snapshot.with_runtime(runtime, generation, put=put, drop=drop)
        )
        for s in drop:
            if self._by_criteria.get(s.criteria_key) == s.id:
                del self._by_criteria[s.criteria_key]
        for s in put:
            self._by_criteria[s.criteria_key] = s.id
            if s.expires is not None:
                heapq.heappush(self._expiries, (s.expires.timestamp(), s.id))
                self._wake_sweeper()
        self.events.publish(event, generation, **fields)
        log.info(event, generation=generation, **fields)
        return generation

    # -- suspensions -------------------------------------------------------

    async def suspend(self, body: Any, actor: str) -> tuple[Suspension, bool]:
        """Create a suspension, or update the active runtime one with equal criteria.

        Returns the stored suspension and whether it is new.
        """
        now = self._now()
        async with self.lock:
            new = suspension_from(body, mode="api", now=now)
            runtime = self.current.snapshot.runtime
            existing_id = self._by_criteria.get(new.criteria_key)
            known = runtime.suspensions.get(existing_id) if existing_id else None

            def build(existing: Suspension | None) -> Suspension:
                """What to store, given the suspension holding these criteria in the store."""
                if existing is not None and existing.is_active(now.timestamp()):
                    return msgspec.structs.replace(existing, reason=new.reason, expires=new.expires)
                return msgspec.structs.replace(new, created_at=now, created_by=actor)

            stored, replaced = await self.store.claim(new.criteria_key, known, build)
            event = (
                "suspension_updated"
                if replaced is not None and replaced.id == stored.id
                else "suspension_added"
            )
            # what this node held under the ids concerned (the store may know
            # more than this node has heard yet)
            gone = {stored.id} | ({replaced.id} if replaced is not None else set())
            drop = tuple(runtime.suspensions[i] for i in gone if i in runtime.suspensions)
            suspensions = dict(runtime.suspensions)
            for s in drop:
                del suspensions[s.id]
            suspensions[stored.id] = stored
            runtime = msgspec.structs.replace(runtime, suspensions=suspensions)
            self._apply(
                runtime, event, put=(stored,), drop=drop, id=stored.id, by=actor,
                **_described(stored),
            )
            return stored, event == "suspension_added"

    async def cancel_suspension(self, ident: Any, actor: str) -> Suspension:
        """Remove a runtime suspension; 404 for unknown or expired, 409 for a file's."""
        if not isinstance(ident, str):
            raise ValidationError("id must be a string", field="id")
        async with self.lock:
            snapshot = self.current.snapshot
            found = snapshot.suspensions.get(ident)
            if found is None or not found.is_active(self.clock()):
                raise NotFound(
                    f"no active suspension with id {ident!r}", code="SUSPENSION_NOT_FOUND"
                )
            if found.source != "runtime":
                raise defined_in_file(f"suspension {ident}", found.source)
            await self.store.delete(snapshot.runtime.suspensions.get(ident, found))
            runtime = msgspec.structs.replace(
                snapshot.runtime, suspensions=_without(snapshot.runtime.suspensions, ident)
            )
            self._apply(
                runtime, "suspension_removed", drop=(found,), id=ident, by=actor,
                **_criteria(found),
            )
            return found

    def next_expiry(self) -> float | None:
        """When the earliest runtime suspension expires (None if none will)."""
        runtime = self.current.snapshot.runtime
        while self._expiries:
            at, ident = self._expiries[0]
            s = runtime.suspensions.get(ident)
            if s is None or s.expires is None or s.expires.timestamp() != at:
                heapq.heappop(self._expiries)  # stale: removed or changed since
                continue
            return at
        return None

    async def sweep(self) -> int:
        """Remove expired runtime suspensions from the store; returns how many."""
        async with self.lock:
            now = self.clock()
            runtime = self.current.snapshot.runtime
            expired = []
            while (at := self.next_expiry()) is not None and at <= now:
                _, ident = heapq.heappop(self._expiries)
                expired.append(runtime.suspensions[ident])
            if not expired:
                return 0
            for s in expired:
                await self.store.remove_expired(s)
            suspensions = dict(runtime.suspensions)
            for s in expired:
                del suspensions[s.id]
            generation = self.current.next_generation()
            self.current.swap(
                self.current.snapshot.with_runtime(
                    msgspec.structs.replace(runtime, suspensions=suspensions),
                    generation,
                    drop=tuple(expired),
                )
            )
            for s in expired:
                if self._by_criteria.get(s.criteria_key) == s.id:
                    del self._by_criteria[s.criteria_key]
                self.events.publish("suspension_expired", generation, id=s.id, **_criteria(s))
                log.info("suspension_expired", id=s.id, generation=generation)
            return len(expired)

    # -- queues --------------------------------------------------------------

    async def pause_queue(self, name: str, body: Any, actor: str) -> QueuePolicy:
        """Pause a queue (idempotent). Returns the runtime entry, new or as it was."""
        async with self.lock:
            wanted = queue_from(body or {}, mode="api", name=name)
            snapshot = self.current.snapshot
            view = snapshot.queues.get(wanted.name)
            if view is not None and view.paused:
                return view.holder
            now = self._now()
            before = view.runtime if view is not None else None
            entry = QueuePolicy(
                name=wanted.name,
                paused=True,
                reason=wanted.reason,
                parallelism=wanted.parallelism
                if wanted.parallelism is not None
                else (before.parallelism if before else None),
                created_at=before.created_at if before and before.created_at else now,
                created_by=actor,
                updated_at=now,
            )
            await self._store_queue(entry, "queue_paused", actor)
            return entry

    async def resume_queue(self, name: str, actor: str) -> QueuePolicy | None:
        """Resume a queue (idempotent); 409 if a policy file pauses it."""
        async with self.lock:
            normal = queue_from({}, mode="api", name=name).name
            view = self.current.snapshot.queues.get(normal)
            if view is None or not view.paused:
                return None
            if view.file is not None and view.file.paused:
                raise defined_in_file(f"the pause of queue {normal}", view.file.source)
            before = view.runtime
            if before.parallelism is not None:
                entry = msgspec.structs.replace(
                    before, paused=False, reason=None, updated_at=self._now()
                )
                await self._store_queue(entry, "queue_resumed", actor)
                return entry
            await self.store.delete(before)
            runtime = self.current.snapshot.runtime
            self._apply(
                msgspec.structs.replace(runtime, queues=_without(runtime.queues, normal)),
                "queue_resumed",
                queue=normal,
                by=actor,
            )
            return None

    async def upsert_queue(
        self, name: str, *, parallelism: int | None, paused: bool, actor: str
    ) -> QueuePolicy:
        """QStash's upsert: set a queue's parallelism and pause state in one change."""
        async with self.lock:
            fields: dict[str, Any] = {}
            if parallelism is not None:
                fields["parallelism"] = parallelism
            wanted = queue_from(fields, mode="api", name=name)
            view = self.current.snapshot.queues.get(wanted.name)
            if not paused and view is not None and view.file is not None and view.file.paused:
                raise defined_in_file(f"the pause of queue {wanted.name}", view.file.source)
            before = view.runtime if view is not None else None
            now = self._now()
            entry = QueuePolicy(
                name=wanted.name,
                paused=paused,
                reason=before.reason if before is not None and paused else None,
                # QStash's upsert without parallelism keeps the one set before
                parallelism=wanted.parallelism
                if wanted.parallelism is not None
                else (before.parallelism if before is not None else None),
                created_at=before.created_at if before and before.created_at else now,
                created_by=before.created_by if before and before.created_by else actor,
                updated_at=now,
            )
            if entry == before:
                return entry
            event = "queue_paused" if paused and not (view and view.paused) else (
                "queue_resumed" if not paused and view is not None and view.paused else "queue_updated"
            )
            await self._store_queue(entry, event, actor)
            return entry

    async def delete_queue(self, name: str, actor: str) -> None:
        """Drop a queue's runtime entry; 404 if it has none, 409 if a file owns it."""
        async with self.lock:
            normal = queue_from({}, mode="api", name=name).name
            view = self.current.snapshot.queues.get(normal)
            if view is None:
                raise NotFound(f"queue {normal} not found", code="QUEUE_NOT_FOUND")
            if view.runtime is None:
                raise defined_in_file(f"queue {normal}", view.file.source)
            await self.store.delete(view.runtime)
            runtime = self.current.snapshot.runtime
            self._apply(
                msgspec.structs.replace(runtime, queues=_without(runtime.queues, normal)),
                "queue_deleted" if not view.runtime.paused or (view.file and view.file.paused) else "queue_resumed",
                queue=normal,
                by=actor,
            )

    async def _store_queue(self, entry: QueuePolicy, event: str, actor: str) -> None:
        await self.store.put(entry)
        runtime = self.current.snapshot.runtime
        self._apply(
            msgspec.structs.replace(runtime, queues=_with(runtime.queues, entry.name, entry)),
            event,
            queue=entry.name,
            reason=entry.reason,
            by=actor,
        )

    # -- schedules and endpoints ------------------------------------------------

    def _schedule(self, ident: str) -> ScheduleView:
        view = self.current.snapshot.schedules.get(ident)
        if view is None:
            raise NotFound(f"schedule {ident!r} not found", code="SCHEDULE_NOT_FOUND")
        return view

    def _endpoint(self, ident: str) -> EndpointView:
        view = self.current.snapshot.endpoints.get(ident)
        if view is None:
            raise NotFound(f"endpoint {ident} not found", code="ENDPOINT_NOT_FOUND")
        return view

    async def pause_schedule(self, ident: str, reason: str | None, actor: str) -> bool:
        """Pause a schedule (idempotent); returns whether anything changed."""
        check_schedule_id(ident)
        async with self.lock:
            view = self._schedule(ident)
            if view.paused:
                return False
            await self._store_pause("schedule", ident, reason, actor)
            return True

    async def resume_schedule(self, ident: str, actor: str) -> bool:
        check_schedule_id(ident)
        async with self.lock:
            view = self._schedule(ident)
            if view.schedule.paused:
                raise defined_in_file(f"the pause of schedule {ident}", view.schedule.source)
            if view.pause is None:
                return False
            await self._remove_pause("schedule", ident, actor)
            return True

    async def pause_endpoint(self, ident: str, reason: str | None, actor: str) -> None:
        """Pause an endpoint; 409 ALREADY_PAUSED if it is (HookBridge semantics)."""
        check_endpoint_id(ident)
        async with self.lock:
            view = self._endpoint(ident)
            if view.paused:
                raise Conflict(f"endpoint {ident} is already paused", code="ALREADY_PAUSED")
            await self._store_pause("endpoint", ident, reason, actor)

    async def resume_endpoint(self, ident: str, actor: str) -> None:
        """Resume an endpoint; 409 NOT_PAUSED if it is not, DEFINED_IN_FILE if a file pauses it."""
        check_endpoint_id(ident)
        async with self.lock:
            view = self._endpoint(ident)
            if not view.paused:
                raise Conflict(f"endpoint {ident} is not paused", code="NOT_PAUSED")
            if view.endpoint.paused:
                raise defined_in_file(f"the pause of endpoint {ident}", view.endpoint.source)
            await self._remove_pause("endpoint", ident, actor)

    async def _store_pause(self, kind: str, ident: str, reason: str | None, actor: str) -> None:
        entry = Pause(kind=kind, id=ident, reason=reason, created_at=self._now(), created_by=actor)
        await self.store.put(entry)
        runtime = self.current.snapshot.runtime
        field = f"{kind}_pauses"
        self._apply(
            msgspec.structs.replace(runtime, **{field: _with(getattr(runtime, field), ident, entry)}),
            f"{kind}_paused",
            id=ident,
            reason=reason,
            by=actor,
        )

    async def _remove_pause(self, kind: str, ident: str, actor: str) -> None:
        runtime = self.current.snapshot.runtime
        field = f"{kind}_pauses"
        await self.store.delete(getattr(runtime, field)[ident])
        self._apply(
            msgspec.structs.replace(runtime, **{field: _without(getattr(runtime, field), ident)}),
            f"{kind}_resumed",
            id=ident,
            by=actor,
        )

    # -- changes made elsewhere: hand edits, other nodes ----------------------

    async def apply_changes(self, read: ReadUpdates, *, announce: Announce = "each") -> int:
        """Apply changes the store reports; returns how many entries it reported.

        ``read`` is called under the lock (see state/base.py). With
        ``announce="summary"`` (hand edits of files) the batch is one
        ``runtime_reloaded`` event; with ``"each"`` (other nodes) every real
        change is announced under the event name a local change would have,
        and updates that change nothing are dropped silently.
        """
        async with self.lock:
            updates = await read()
            if not updates:
                return 0
            if announce == "summary":
                self._apply_summary(updates)
            else:
                self._apply_each(updates)
            return len(updates)

    def _maps(self, runtime: Runtime) -> dict[str, dict]:
        return {
            "suspension": dict(runtime.suspensions),
            "queue": dict(runtime.queues),
            "schedule": dict(runtime.schedule_pauses),
            "endpoint": dict(runtime.endpoint_pauses),
        }

    @staticmethod
    def _runtime(maps: dict[str, dict]) -> Runtime:
        return Runtime(
            suspensions=maps["suspension"],
            queues=maps["queue"],
            schedule_pauses=maps["schedule"],
            endpoint_pauses=maps["endpoint"],
        )

    def _apply_summary(self, updates: dict) -> None:
        maps = self._maps(self.current.snapshot.runtime)
        put, drop = [], []
        for (kind, key), entry in updates.items():
            if kind not in maps:
                continue
            old = maps[kind].pop(key, None)
            if entry is not None:
                maps[kind][entry_key(entry)[1]] = entry
            if kind == "suspension":
                if old is not None:
                    drop.append(old)
                if entry is not None:
                    put.append(entry)
        new_runtime = self._runtime(maps)
        self._apply(new_runtime, "runtime_reloaded", put=tuple(put), drop=tuple(drop),
                    files=sorted(name_for(kind, key) for kind, key in updates))
        self._index_runtime(new_runtime)

    def _apply_each(self, updates: dict) -> None:
        now = self.clock()
        before = self.current.snapshot
        maps = self._maps(before.runtime)
        put, drop, changes = [], [], []
        for (kind, key), entry in updates.items():
            if kind not in maps:
                continue
            old = maps[kind].get(key)
            if old == entry:
                continue
            if (
                kind == "suspension"
                and old is None
                and entry is not None
                and not entry.is_active(now)
            ):
                continue  # already over: nothing to hold, nothing to announce
            if entry is None:
                del maps[kind][key]
            else:
                maps[kind][key] = entry
            if kind == "suspension":
                if old is not None:
                    drop.append(old)
                if entry is not None:
                    put.append(entry)
            changes.append((kind, key, old, entry))
        if not changes:
            return
        runtime = self._runtime(maps)
        generation = self.current.next_generation()
        after = before.with_runtime(runtime, generation, put=put, drop=drop)
        self.current.swap(after)
        for s in drop:
            if self._by_criteria.get(s.criteria_key) == s.id:
                del self._by_criteria[s.criteria_key]
        for s in put:
            self._by_criteria[s.criteria_key] = s.id
            if s.expires is not None:
                heapq.heappush(self._expiries, (s.expires.timestamp(), s.id))
        if put:
            self._wake_sweeper()
        for kind, key, old, entry in changes:
            event, fields = _remote_event(kind, key, old, entry, before, after, now)
            self.events.publish(event, generation, **fields)
            log.info(event, generation=generation, origin="store", **fields)


def _remote_event(
    kind: str,
    key: str,
    old: Entry | None,
    new: Entry | None,
    before: Snapshot,
    after: Snapshot,
    now: float,
) -> tuple[str, dict[str, Any]]:
    """The event a change made elsewhere is announced as, with its fields.

    ``by`` is the entry's ``created_by`` where there is an entry, else
    ``"store"``: the store does not say who removed something.
    """
    by = (new.created_by if new is not None else None) or "store"
    if kind == "suspension":
        s = new if new is not None else old
        if new is None:
            if not old.is_active(now):
                return "suspension_expired", {"id": key, **_criteria(s)}
            return "suspension_removed", {"id": key, "by": by, **_criteria(s)}
        event = "suspension_added" if old is None else "suspension_updated"
        return event, {"id": key, "by": by, **_described(s)}
    if kind == "queue":
        was = before.queues.get(key)
        now_view = after.queues.get(key)
        was_paused = was is not None and was.paused
        is_paused = now_view is not None and now_view.paused
        if is_paused and not was_paused:
            event = "queue_paused"
        elif was_paused and not is_paused:
            event = "queue_resumed"
        elif new is None:
            event = "queue_deleted"
        else:
            event = "queue_updated"
        fields: dict[str, Any] = {"queue": key, "by": by}
        if new is not None:
            fields["reason"] = new.reason
        elif event == "queue_updated":
            fields["reason"] = None
        return event, fields
    if new is None:
        return f"{kind}_resumed", {"id": key, "by": by}
    return f"{kind}_paused", {"id": key, "reason": new.reason, "by": by}


def _described(s: Suspension) -> dict[str, Any]:
    """An added or updated suspension as events carry it: criteria, reason and expiry,
    so a sender knows when the hold ends without reading the list."""
    return {
        **_criteria(s),
        "reason": s.reason,
        "expires": None if s.expires is None else rfc3339(s.expires.timestamp()),
    }


def _criteria(s: Suspension) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in ("campaign", "tenant", "domain"):
        value = getattr(s, key)
        if value is not None:
            fields[key] = value
    if s.queue_names:
        fields["queue_names"] = list(s.queue_names)
    if s.everything:
        fields["everything"] = True
    return fields
