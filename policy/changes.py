"""Every rule of a runtime change, as pure functions: (snapshot, request, now) -> Plan.

How this works
--------------
A change asked through any API (sluice's own, KumoMTA's, QStash's,
HookBridge's, sluicectl) is planned here against the snapshot in force. The
plan says which runtime entries to write (``put``), which to remove
(``drop``), what to announce (``events``) and what the caller answers with
(``entry``). A change that may not be made raises a typed refusal instead:
``NotFound``, ``Conflict`` with ``DEFINED_IN_FILE`` (a policy file holds it;
the runtime cannot lift it), ``ALREADY_PAUSED`` or ``NOT_PAUSED`` (HookBridge's
endpoints, which answer 409 where the others are idempotent), or a
``ValidationError``. Nothing here does I/O or keeps a clock: the shell takes
its lock, plans, stores the plan durably, applies it with ``apply`` and
publishes the events.

An update is a drop of the old entry and a put of the new one. ``apply``
removes what ``drop`` names, then writes what ``put`` holds; ``inverse``
is the plan that undoes a plan applied to a given runtime.

Queues, schedules and endpoints are paused and resumed by one path, told
apart by the ``KINDS`` table. Suspensions are upserted by criteria: posting
the criteria of an active runtime suspension updates its reason and expiry
and keeps its id (KumoMTA's behaviour); the shell asks the store who holds
the criteria (across a fleet) and ``upserted``/``suspended`` say what
follows; ``extended`` is the upsert of an automated hold, which lengthens a
hold and never shortens one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import immutables
import msgspec

from .errors import Conflict, NotFound, ValidationError
from .fields import (
    check_endpoint_id,
    check_flow_control_key,
    check_qstash_name,
    check_schedule_id,
    queue_from,
)
from .model import RUNTIME, Endpoint, Entry, FlowControl, Pause, QueuePolicy, Schedule, Suspension
from .snapshot import QueueView, Runtime, Snapshot
from .times import rfc3339

KindName = Literal["queue", "schedule", "endpoint", "flow_control"]


class Event(msgspec.Struct, frozen=True):
    """One announcement on the events stream and in the log."""

    name: str
    fields: dict[str, Any]


class Plan(msgspec.Struct, frozen=True):
    """What a change does to the runtime. Empty: nothing to store, swap or announce."""

    put: tuple[Entry, ...] = ()
    drop: tuple[Entry, ...] = ()
    events: tuple[Event, ...] = ()
    entry: Entry | None = None  # what the caller answers with
    expiry: bool = False  # the drops expired: the store removes them as such

    @property
    def empty(self) -> bool:
        return not self.put and not self.drop


NOTHING = Plan()

# -- the runtime as maps of entries -----------------------------------------

_FIELDS = {
    "suspension": "suspensions",
    "queue": "queues",
    "schedule": "schedule_pauses",  # a file schedule's Pause, or a Schedule made at runtime
    "endpoint": "endpoint_pauses",
    "flow_control": "flow_controls",
}


def entry_key(entry: Entry) -> tuple[str, str]:
    """(kind, key) of a runtime entry: ("suspension", id), ("queue", name), ("endpoint", id) ..."""
    if isinstance(entry, Suspension):
        return "suspension", entry.id
    if isinstance(entry, QueuePolicy):
        return "queue", entry.name
    if isinstance(entry, Pause):
        return entry.kind, entry.id
    if isinstance(entry, Schedule):
        return "schedule", entry.id
    if isinstance(entry, Endpoint):
        return "endpoint", entry.id
    if isinstance(entry, FlowControl):
        return "flow_control", entry.key
    raise TypeError(f"not a runtime entry: {entry!r}")


def entries(runtime: Runtime) -> Iterable[Entry]:
    """Every runtime entry, of every kind."""
    for field in _FIELDS.values():
        yield from getattr(runtime, field).values()


def apply(runtime: Runtime, plan: Plan) -> Runtime:
    """``runtime`` with ``plan`` carried out: drops removed, then puts written."""
    if plan.empty:
        return runtime
    maps: dict[str, immutables.MapMutation] = {}
    for entry in plan.drop:
        kind, key = entry_key(entry)
        _map(maps, runtime, kind).pop(key, None)
    for entry in plan.put:
        kind, key = entry_key(entry)
        _map(maps, runtime, kind)[key] = entry
    return msgspec.structs.replace(runtime, **{_FIELDS[kind]: m.finish() for kind, m in maps.items()})


def _map(maps: dict[str, immutables.MapMutation], runtime: Runtime, kind: str) -> immutables.MapMutation:
    """The mutation of one of ``runtime``'s maps: O(log n) a change, the old map untouched."""
    if kind not in maps:
        current = getattr(runtime, _FIELDS[kind])
        if not isinstance(current, immutables.Map):
            current = immutables.Map(current)
        maps[kind] = current.mutate()
    return maps[kind]


def inverse(before: Runtime, plan: Plan) -> Plan:
    """The plan that takes ``apply(before, plan)`` back to ``before``."""
    touched = {entry_key(e) for e in (*plan.drop, *plan.put)}
    restore = []
    for kind, key in touched:
        old = getattr(before, _FIELDS[kind]).get(key)
        if old is not None:
            restore.append(old)
    return Plan(put=tuple(restore), drop=plan.put)


def suspensions_of(entries: Iterable[Entry]) -> tuple[Suspension, ...]:
    return tuple(e for e in entries if isinstance(e, Suspension))


# -- suspensions --------------------------------------------------------------


def upserted(new: Suspension, holder: Suspension | None, *, now: datetime, actor: str) -> Suspension:
    """What to store for ``new``, given the suspension holding its criteria (or None).

    An active holder keeps its id, creation and author and takes the new
    reason and expiry; otherwise ``new`` is stored as created now by ``actor``.
    """
    if holder is not None and holder.is_active(now.timestamp()):
        return msgspec.structs.replace(holder, reason=new.reason, expires=new.expires)
    return msgspec.structs.replace(new, created_at=now, created_by=actor)


def extended(new: Suspension, holder: Suspension | None, *, now: datetime, actor: str) -> Suspension:
    """What to store for an automated hold ``new``, given the suspension holding its criteria.

    An active holder is lengthened to ``new``'s expiry and takes its reason,
    keeping its id, creation and author; a holder that already lasts as long
    (an operator's longer hold, a later firing) is returned unchanged: an
    automated hold never shortens one. Otherwise ``new`` is stored as
    created now by ``actor``.
    """
    if holder is not None and holder.is_active(now.timestamp()):
        if holder.expires is None or (new.expires is not None and new.expires <= holder.expires):
            return holder
        return msgspec.structs.replace(holder, reason=new.reason, expires=new.expires)
    return msgspec.structs.replace(new, created_at=now, created_by=actor)


def suspended(
    runtime: Runtime, stored: Suspension, replaced: Suspension | None, *, actor: str
) -> Plan:
    """The plan once the store holds ``stored`` in place of ``replaced`` (or of nothing).

    Drops what this node held under either id: the store may know more than
    this node has heard yet.
    """
    updated = replaced is not None and replaced.id == stored.id
    ids = {stored.id} | ({replaced.id} if replaced is not None else set())
    drop = tuple(runtime.suspensions[i] for i in ids if i in runtime.suspensions)
    event = Event(
        "suspension_updated" if updated else "suspension_added",
        {"id": stored.id, "by": actor, **described(stored)},
    )
    return Plan(put=(stored,), drop=drop, events=(event,), entry=stored)


def cancel(snapshot: Snapshot, ident: object, *, now: float, actor: str) -> Plan:
    """Lift a runtime suspension; NotFound if none is active, DEFINED_IN_FILE for a file's."""
    if not isinstance(ident, str):
        raise ValidationError("id must be a string", field="id")
    found = snapshot.suspensions.get(ident)
    if found is None or not found.is_active(now):
        raise NotFound(f"no active suspension with id {ident!r}", code="SUSPENSION_NOT_FOUND")
    if found.source != "runtime":
        raise defined_in_file(f"suspension {ident}", found.source)
    stored = snapshot.runtime.suspensions.get(ident, found)
    event = Event("suspension_removed", {"id": ident, "by": actor, **criteria(found)})
    return Plan(drop=(stored,), events=(event,), entry=found)


def expired(snapshot: Snapshot, now: float) -> Plan:
    """Runtime suspensions whose expiry has passed, to be swept."""
    at = snapshot.next_runtime_expiry()
    if at is None or at > now:
        return NOTHING
    gone = tuple(
        s for s in snapshot.runtime.suspensions.values()
        if s.expires is not None and s.expires.timestamp() <= now
    )
    events = tuple(Event("suspension_expired", {"id": s.id, **criteria(s)}) for s in gone)
    return Plan(drop=gone, events=events, expiry=True)


# -- queues, schedules and endpoints: one path, told apart by KINDS ----------


@dataclass(frozen=True)
class Kind:
    """How one kind of pausable object differs from the others."""

    name: KindName
    check: Callable[[str], str]  # a valid, normal id, or ValidationError
    views: Callable[[Snapshot], Mapping[str, Any]]
    not_found: str | None  # the NotFound code; None: pausing an unknown one is allowed
    strict: bool  # pausing a paused one, resuming a running one: 409 (HookBridge)
    id_field: str  # what the events call the id

    def view(self, snapshot: Snapshot, ident: str) -> Any:
        found = self.views(snapshot).get(ident)
        if found is None and self.not_found is not None:
            raise NotFound(f"{self.name} {ident!r} not found", code=self.not_found)
        return found


def _queue_name(name: str) -> str:
    return queue_from({}, mode="api", name=name).name


def queue_key(snapshot: Snapshot, name: str, *, qstash: bool = False) -> str:
    """The key a queue is held under.

    On QStash's routes (``qstash``) a name is a QStash name, kept verbatim.
    Elsewhere a name a queue is held under is that queue (so ``MyQueue``,
    made through QStash, is found by sluicectl and the admin API too), and
    any other is a mail queue name in its normal form.
    """
    if qstash:
        return check_qstash_name(name)
    if isinstance(name, str) and name in snapshot.queues:
        return name
    return _queue_name(name)


def _key(k: Kind, snapshot: Snapshot, ident: str, qstash: bool) -> str:
    return queue_key(snapshot, ident, qstash=qstash) if k.name == "queue" else k.check(ident)


KINDS: dict[str, Kind] = {
    "queue": Kind("queue", _queue_name, lambda s: s.queues, None, False, "queue"),
    "schedule": Kind("schedule", check_schedule_id, lambda s: s.schedules, "SCHEDULE_NOT_FOUND", False, "id"),
    "endpoint": Kind("endpoint", check_endpoint_id, lambda s: s.endpoints, "ENDPOINT_NOT_FOUND", True, "id"),
    "flow_control": Kind("flow_control", check_flow_control_key, lambda s: s.flow_controls, None, False, "key"),
}


def pause(
    snapshot: Snapshot,
    kind: str,
    ident: str,
    *,
    now: datetime,
    actor: str,
    reason: str | None = None,
    parallelism: int | None = None,
    qstash: bool = False,
) -> Plan:
    """Pause a queue, schedule or endpoint. Idempotent but for endpoints (ALREADY_PAUSED).

    A pause already in force is answered with its holder and changes nothing.
    Pausing a queue keeps the parallelism set before unless one is given.
    ``qstash``: a queue's name is a QStash name (see ``queue_key``).
    """
    k = KINDS[kind]
    ident = _key(k, snapshot, ident, qstash)
    view = k.view(snapshot, ident)
    if view is not None and view.paused:
        if k.strict:
            raise Conflict(f"{kind} {ident} is already paused", code="ALREADY_PAUSED")
        return Plan(entry=view.holder if kind == "queue" else view.own)
    before = view.own if view is not None else None
    if kind == "queue":
        entry: Entry = _queue_entry(
            ident, before, paused=True, reason=reason, parallelism=parallelism, now=now, created_by=actor
        )
    elif before is not None and not isinstance(before, Pause):
        # the runtime's own object (a flow-control key's pins, a schedule made
        # through QStash): paused in place
        entry = msgspec.structs.replace(before, paused=True, reason=reason, updated_at=now)
    elif kind == "flow_control":
        entry = FlowControl(key=ident, paused=True, reason=reason, created_at=now, created_by=actor, updated_at=now)
    else:
        entry = Pause(kind=kind, id=ident, reason=reason, created_at=now, created_by=actor)
    return _written(k, entry, before, f"{kind}_paused", actor)


def resume(
    snapshot: Snapshot, kind: str, ident: str, *, now: datetime, actor: str, qstash: bool = False
) -> Plan:
    """Lift the runtime's pause. Idempotent but for endpoints (NOT_PAUSED);
    DEFINED_IN_FILE when a policy file pauses it.

    An entry that holds more than the pause (a queue's parallelism, a
    flow-control key's pins, a schedule made through QStash) is kept,
    unpaused and without the pause's reason.
    """
    k = KINDS[kind]
    ident = _key(k, snapshot, ident, qstash)
    view = k.view(snapshot, ident)
    if view is None or not view.paused:
        if k.strict:
            raise Conflict(f"{kind} {ident} is not paused", code="NOT_PAUSED")
        return NOTHING
    if view.file_pause is not None:
        raise defined_in_file(f"the pause of {kind} {ident}", view.file_pause)
    before = view.own
    if _only_a_pause(before):
        return _dropped(k, before, f"{kind}_resumed", actor)
    kept = msgspec.structs.replace(before, paused=False, reason=None, updated_at=now)
    return _written(k, kept, before, f"{kind}_resumed", actor)


def _only_a_pause(entry: Entry) -> bool:
    """Whether a runtime entry holds nothing but a pause (so resuming drops it)."""
    if isinstance(entry, QueuePolicy):
        return entry.parallelism is None
    if isinstance(entry, FlowControl):
        return entry.parallelism is None and entry.rate is None  # a period alone paces nothing
    return isinstance(entry, Pause)


def _queue_entry(
    name: str,
    before: QueuePolicy | None,
    *,
    paused: bool,
    reason: str | None,
    parallelism: int | None,
    now: datetime,
    created_by: str,
) -> QueuePolicy:
    """A queue's runtime entry after a change: the parallelism set before is
    kept unless one is given, and so is when the entry was first made."""
    if parallelism is None and before is not None:
        parallelism = before.parallelism
    return QueuePolicy(
        name=name,
        paused=paused,
        reason=reason,
        parallelism=parallelism,
        created_at=before.created_at if before is not None and before.created_at else now,
        created_by=created_by,
        updated_at=now,
    )


def _written(k: Kind, entry: Entry, before: Entry | None, event: str, actor: str) -> Plan:
    ident = entry_key(entry)[1]
    fields = {k.id_field: ident, "reason": entry.reason, "by": actor}
    drop = (before,) if before is not None else ()
    return Plan(put=(entry,), drop=drop, events=(Event(event, fields),), entry=entry)


def _dropped(k: Kind, before: Entry, event: str, actor: str) -> Plan:
    fields = {k.id_field: entry_key(before)[1], "by": actor}
    return Plan(drop=(before,), events=(Event(event, fields),))


def upsert_queue(
    snapshot: Snapshot,
    name: str,
    *,
    parallelism: int | None,
    paused: bool,
    now: datetime,
    actor: str,
) -> Plan:
    """QStash's upsert: a queue's parallelism and pause state in one change.

    The name is a QStash name, kept verbatim. Without parallelism the one set
    before is kept; unpausing a queue a file pauses is DEFINED_IN_FILE; an
    upsert that changes nothing is an empty plan.
    """
    wanted = queue_from(
        {} if parallelism is None else {"parallelism": parallelism}, mode="api", name=name, qstash=True
    )
    view = snapshot.queues.get(wanted.name)
    if not paused and view is not None and view.file_pause is not None:
        raise defined_in_file(f"the pause of queue {wanted.name}", view.file_pause)
    before = view.runtime if view is not None else None
    entry = _queue_entry(
        wanted.name,
        before,
        paused=paused,
        reason=before.reason if before is not None and paused else None,
        parallelism=wanted.parallelism,
        now=now,
        created_by=before.created_by if before and before.created_by else actor,
    )
    if before is not None and msgspec.structs.replace(entry, updated_at=before.updated_at) == before:
        return Plan(entry=before)  # only the time would differ: nothing to store or announce
    was_paused = view is not None and view.paused
    if paused and not was_paused:
        event = "queue_paused"
    elif not paused and was_paused:
        event = "queue_resumed"
    else:
        event = "queue_updated"
    return _written(KINDS["queue"], entry, before, event, actor)


def delete_queue(snapshot: Snapshot, name: str, *, actor: str) -> Plan:
    """Forget a queue's runtime entry (QStash's delete: ``name`` is a QStash name);
    NotFound without one, DEFINED_IN_FILE if a file owns it."""
    normal = check_qstash_name(name)
    view = snapshot.queues.get(normal)
    if view is None:
        raise NotFound(f"queue {normal} not found", code="QUEUE_NOT_FOUND")
    if view.runtime is None:
        raise defined_in_file(f"queue {normal}", view.file.source)
    # the queue stops being paused only if the runtime was what paused it
    resumed = view.runtime.paused and view.file_pause is None
    return _dropped(KINDS["queue"], view.runtime, "queue_resumed" if resumed else "queue_deleted", actor)


# -- schedules made through QStash's API -------------------------------------


def put_schedule(snapshot: Snapshot, schedule: Schedule, *, now: datetime, actor: str) -> Plan:
    """Create a schedule, or replace the runtime one with its id (QStash's
    ``Upstash-Schedule-Id``); a file's id is DEFINED_IN_FILE.

    A replaced schedule keeps its creation and its pause, as QStash keeps a
    schedule's state when its settings are posted again.
    """
    view = snapshot.schedules.get(schedule.id)
    before = view.own if view is not None else None
    if view is not None and view.schedule.source != RUNTIME:
        raise defined_in_file(f"schedule {schedule.id}", view.schedule.source)
    if isinstance(before, Schedule):
        entry = msgspec.structs.replace(
            schedule,
            paused=before.paused,
            reason=before.reason,
            created_at=before.created_at,
            created_by=before.created_by,
            updated_at=now,
        )
        if entry == msgspec.structs.replace(before, updated_at=now):
            return Plan(entry=before)
        event = "schedule_updated"
    else:
        entry = msgspec.structs.replace(schedule, created_at=now, created_by=actor, updated_at=now)
        event = "schedule_created"
    drop = (before,) if before is not None else ()
    return Plan(put=(entry,), drop=drop, events=(Event(event, _made_fields(entry, actor)),), entry=entry)


def delete_made(snapshot: Snapshot, kind: str, ident: str, *, actor: str) -> Plan:
    """Delete a schedule or endpoint made through its API; NotFound, or
    DEFINED_IN_FILE for one a policy file declares."""
    k = KINDS[kind]
    ident = k.check(ident)
    declared = _made(k, snapshot, ident)
    return _dropped(k, declared, f"{kind}_deleted", actor)


def _made(k: Kind, snapshot: Snapshot, ident: str) -> Schedule | Endpoint:
    """The runtime's own schedule or endpoint ``ident``; NotFound, or DEFINED_IN_FILE."""
    declared = k.view(snapshot, ident).declared
    if declared.source != RUNTIME:
        raise defined_in_file(f"{k.name} {ident}", declared.source)
    return declared


def _made_fields(entry: Schedule | Endpoint, actor: str) -> dict[str, Any]:
    """What the events say of a schedule or endpoint made or changed."""
    if isinstance(entry, Schedule):
        return {"id": entry.id, "cron": entry.cron, "destination": entry.destination, "by": actor}
    return {"id": entry.id, "url": entry.url, "by": actor}


# -- endpoints made through HookBridge's API ----------------------------------


def create_endpoint(snapshot: Snapshot, endpoint: Endpoint, *, now: datetime, actor: str) -> Plan:
    """Create an endpoint under a new id (the caller's; HookBridge makes ids)."""
    if endpoint.id in snapshot.endpoints:
        raise Conflict(f"endpoint {endpoint.id} exists", code="ENDPOINT_EXISTS")
    entry = msgspec.structs.replace(endpoint, created_at=now, created_by=actor, updated_at=now, source=RUNTIME)
    event = Event("endpoint_created", _made_fields(entry, actor))
    return Plan(put=(entry,), events=(event,), entry=entry)


def update_endpoint(
    snapshot: Snapshot, ident: str, changes: Mapping[str, Any], *, now: datetime, actor: str
) -> Plan:
    """Change what HookBridge's update gives (url, description, rate limit, burst,
    headers) of an endpoint made through the API; its pause and creation stay."""
    k = KINDS["endpoint"]
    ident = k.check(ident)
    before = _made(k, snapshot, ident)
    entry = msgspec.structs.replace(before, **changes)
    if entry == before:
        return Plan(entry=before)
    entry = msgspec.structs.replace(entry, updated_at=now)
    event = Event("endpoint_updated", _made_fields(entry, actor))
    return Plan(put=(entry,), drop=(before,), events=(event,), entry=entry)


# -- flow-control keys: pins ---------------------------------------------------


def pin(
    snapshot: Snapshot,
    key: str,
    *,
    parallelism: int | None = None,
    rate: int | None = None,
    period: int | None = None,
    now: datetime,
    actor: str,
) -> Plan:
    """Pin a flow-control key's parallelism and/or rate (per ``period`` seconds).

    What is not given stays as it was; pinning nothing is refused.
    """
    key = check_flow_control_key(key)
    if parallelism is None and rate is None and period is None:
        raise ValidationError("give parallelism, rate or period to pin", field="parallelism")
    view = snapshot.flow_controls.get(key)
    before = view.runtime if view is not None else None
    base = before or FlowControl(key=key, created_at=now, created_by=actor)
    entry = msgspec.structs.replace(
        base,
        parallelism=parallelism if parallelism is not None else base.parallelism,
        rate=rate if rate is not None else base.rate,
        period=period if period is not None else base.period,
        updated_at=now,
    )
    if before is not None and msgspec.structs.replace(entry, updated_at=before.updated_at) == before:
        return Plan(entry=before)
    fields = {"key": key, "parallelism": entry.parallelism, "rate": entry.rate, "period": entry.period, "by": actor}
    drop = (before,) if before is not None else ()
    return Plan(put=(entry,), drop=drop, events=(Event("flow_control_pinned", fields),), entry=entry)


def unpin(
    snapshot: Snapshot, key: str, *, parallelism: bool, rate: bool, now: datetime, actor: str
) -> Plan:
    """Unpin a key's parallelism and/or rate (the rate's period with it); a key
    left with neither a pin nor a pause is forgotten."""
    key = check_flow_control_key(key)
    view = snapshot.flow_controls.get(key)
    before = view.runtime if view is not None else None
    if before is None or not (parallelism or rate):
        return NOTHING
    entry = msgspec.structs.replace(
        before,
        parallelism=None if parallelism else before.parallelism,
        rate=None if rate else before.rate,
        period=None if rate or before.rate is None else before.period,
        updated_at=now,
    )
    if msgspec.structs.replace(entry, updated_at=before.updated_at) == before:
        return NOTHING
    fields = {"key": key, "parallelism": entry.parallelism, "rate": entry.rate, "period": entry.period, "by": actor}
    event = Event("flow_control_unpinned", fields)
    if not entry.paused and _only_a_pause(entry):
        return Plan(drop=(before,), events=(event,))
    return Plan(put=(entry,), drop=(before,), events=(event,), entry=entry)


# -- changes made elsewhere: hand edits, other nodes ------------------------

Updates = Mapping[tuple[str, str], Entry | None]


def from_store(
    snapshot: Snapshot, updates: Updates, *, now: float, summary: list[str] | None = None
) -> Plan:
    """The plan for changes the store reports, made by hand or by other nodes.

    With ``summary`` (the names of hand-edited files) every update is taken
    and announced as one ``runtime_reloaded``. Without, updates that change
    nothing are left out, a suspension that arrives already over is ignored,
    and each change is announced under the name a local change would have.
    """
    runtime = snapshot.runtime
    put: list[Entry] = []
    drop: list[Entry] = []
    events: list[Event] = []
    for (kind, key), entry in updates.items():
        if kind not in _FIELDS:
            continue
        old = getattr(runtime, _FIELDS[kind]).get(key)
        if summary is None:
            if old == entry:
                continue
            if kind == "suspension" and old is None and entry is not None and not entry.is_active(now):
                continue  # already over: nothing to hold, nothing to announce
            events.append(_remote_event(snapshot, kind, key, old, entry, now))
        if old is not None:
            drop.append(old)
        if entry is not None:
            put.append(entry)
    if summary is not None:
        events = [Event("runtime_reloaded", {"files": sorted(summary)})]
    if not put and not drop:
        return NOTHING
    return Plan(put=tuple(put), drop=tuple(drop), events=tuple(events))


def _remote_event(
    snapshot: Snapshot, kind: str, key: str, old: Entry | None, new: Entry | None, now: float
) -> Event:
    """The event a change made elsewhere is announced as.

    ``by`` is the entry's ``created_by`` where there is an entry, else
    ``"store"``: the store does not say who removed something.
    """
    by = (new.created_by if new is not None else None) or "store"
    if kind == "suspension":
        if new is None:
            if not old.is_active(now):
                return Event("suspension_expired", {"id": key, **criteria(old)})
            return Event("suspension_removed", {"id": key, "by": by, **criteria(old)})
        name = "suspension_added" if old is None else "suspension_updated"
        return Event(name, {"id": key, "by": by, **described(new)})
    if kind == "queue":
        was = snapshot.queues.get(key)
        file = was.file if was is not None else None
        after = QueueView(name=key, file=file, runtime=new)
        was_paused = was is not None and was.paused
        if after.paused and not was_paused:
            name = "queue_paused"
        elif was_paused and not after.paused:
            name = "queue_resumed"
        elif new is None:
            name = "queue_deleted"
        else:
            name = "queue_updated"
        fields: dict[str, Any] = {"queue": key, "by": by}
        if new is not None:
            fields["reason"] = new.reason
        elif name == "queue_updated":
            fields["reason"] = None
        return Event(name, fields)
    if isinstance(old, (Schedule, Endpoint)) or isinstance(new, (Schedule, Endpoint)):
        if new is None:
            return Event(f"{kind}_deleted", {"id": key, "by": by})
        if old is None or _made_paused(old) == _made_paused(new):
            name = f"{kind}_created" if old is None else f"{kind}_updated"
            return Event(name, _made_fields(new, by))
    if kind == "flow_control":
        was = old is not None and old.paused
        now_paused = new is not None and new.paused
        if was == now_paused:
            pins = {f: getattr(new, f) if new else None for f in ("parallelism", "rate", "period")}
            name = "flow_control_pinned" if new is not None else "flow_control_unpinned"
            return Event(name, {"key": key, **pins, "by": by})
        if now_paused:
            return Event("flow_control_paused", {"key": key, "reason": new.reason, "by": by})
        return Event("flow_control_resumed", {"key": key, "by": by})
    if new is None or not getattr(new, "paused", True):
        return Event(f"{kind}_resumed", {"id": key, "by": by})
    return Event(f"{kind}_paused", {"id": key, "reason": new.reason, "by": by})


def _made_paused(entry: Pause | Schedule | Endpoint) -> bool:
    """Whether a schedule's or endpoint's runtime entry pauses it: a Pause always
    does. (Nodes whose files differ may write a Pause and an object under one id.)"""
    return entry.paused if isinstance(entry, (Schedule, Endpoint)) else True


# -- how changes are described ------------------------------------------------


def defined_in_file(what: str, source: str) -> Conflict:
    path, _, line = source.rpartition(":")
    where = f"{path} line {line}" if line.isdigit() else source
    return Conflict(f"{what} is defined in {where}; edit that file to lift it", code="DEFINED_IN_FILE")


def described(s: Suspension) -> dict[str, Any]:
    """An added or updated suspension as events carry it: criteria, reason and expiry,
    so a sender knows when the hold ends without reading the list."""
    return {
        **criteria(s),
        "reason": s.reason,
        "expires": None if s.expires is None else rfc3339(s.expires),
    }


def criteria(s: Suspension) -> dict[str, Any]:
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
