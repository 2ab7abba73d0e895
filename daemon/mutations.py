"""The one way to change runtime state: lock, plan, store, swap, announce.

How this works
--------------
Every change, from any route, comes here. Under one lock the core plans it
against the snapshot in force (``sluice.policy.changes``: every rule of a
change lives there), the store makes the plan durable (before the call
returns), one new snapshot is swapped in, and the plan's events are published.
Changes are serialised, so none is lost and each gets its own generation.

Suspensions (the admin API's, kcli's, automation's holds) are claimed by
criteria in a group commit: those that arrive while a batch is being
written wait together and are stored as the next batch, in one write, then
swapped in and announced one by one in the order they came (``_claim``).
So a hundred clients at once cost a few fsyncs, not a hundred.

The store is a ``RuntimeStore`` (state/base.py): files on this host or etcd shared by
a fleet. A store that cannot take a change raises ``StateUnavailable`` (503)
before anything is swapped. Changes made elsewhere (hand edits of the files,
other nodes through etcd) come in through ``apply_changes`` under the same
lock, and are announced like local ones.

The indexes a change needs (who holds a suspension's criteria, when the next
runtime suspension expires) are derived from the snapshot, never kept beside it.

``clock`` gives wall-clock seconds since the epoch; tests pass their own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import outcome
import structlog
import trio

from sluice.policy import changes
from sluice.policy.changes import Plan
from sluice.policy.fields import suspension_from
from sluice.policy.model import Endpoint, QueuePolicy, Schedule, Suspension
from sluice.policy.snapshot import Snapshot

from .current import Current
from .events import Broadcaster
from .state.base import Announce, Claim, ReadUpdates, RuntimeStore
from .state.encoding import name_for

log = structlog.get_logger("sluice.mutations")

Planner = Callable[[Snapshot, datetime], Plan]


@dataclass(eq=False)
class _Claim:
    """One upsert by criteria waiting for its batch (``Mutations._claim``)."""

    criteria_key: str
    build: Callable[[Suspension | None], Suspension]
    actor: str
    quiet_if_taken: bool = False  # a hold another node lengthened first is not announced
    result: outcome.Outcome | None = None  # of (stored, plan), once a batch has taken it


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
        self._claims: list[_Claim] = []  # waiting for their batch

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    async def change(self, planner: Planner) -> Plan:
        """Plan a change on the snapshot in force, store it, swap it in, announce it."""
        async with self.lock:
            plan = planner(self.current.snapshot, self._now())
            if not plan.empty:
                await self._commit(plan)
                self._swap(plan)
            return plan

    async def _commit(self, plan: Plan) -> None:
        if plan.expiry:
            for entry in plan.drop:
                await self.store.remove_expired(entry)
            return
        written = {changes.entry_key(e) for e in plan.put}
        for entry in plan.put:
            await self.store.put(entry)
        for entry in plan.drop:
            if changes.entry_key(entry) not in written:
                await self.store.delete(entry)

    def _swap(self, plan: Plan, **context: Any) -> int:
        """Swap in the snapshot ``plan`` makes and publish its events."""
        before = self.current.snapshot
        generation = self.current.next_generation()
        self.current.swap(
            before.with_runtime(
                changes.apply(before.runtime, plan),
                generation,
                put=changes.suspensions_of(plan.put),
                drop=changes.suspensions_of(plan.drop),
            )
        )
        if self.current.snapshot.next_runtime_expiry() != before.next_runtime_expiry():
            self.expiry_changed.set()
            self.expiry_changed = trio.Event()
        for event in plan.events:
            self.events.publish(event.name, generation, **event.fields)
            log.info(event.name, generation=generation, **context, **event.fields)
        return generation

    # -- suspensions -------------------------------------------------------

    async def suspend(self, body: Any, actor: str) -> tuple[Suspension, bool]:
        """Create a suspension, or update the active runtime one with equal criteria.

        Returns the stored suspension and whether it is new. The store decides
        who holds the criteria (across a fleet, etcd does), so the upsert is
        planned from its answer.
        """
        now = self._now()
        new = suspension_from(body, mode="api", now=now)
        build = functools.partial(changes.upserted, new, now=now, actor=actor)
        stored, plan = await self._claim(_Claim(new.criteria_key, build, actor))
        return stored, plan.events[0].name == "suspension_added"

    async def hold(self, wanted: Suspension, actor: str) -> tuple[Suspension, str | None]:
        """Make or extend an automated hold: the runtime suspension with ``wanted``'s
        criteria lasts at least until ``wanted`` expires (``changes.extended``).

        Returns the suspension in force and the event announced:
        ``suspension_added``, ``suspension_updated``, or None when a hold
        already lasted as long (then nothing is stored or announced).
        """
        now = self._now()
        build = functools.partial(changes.extended, wanted, now=now, actor=actor)
        known = self.current.snapshot.runtime_holder(wanted.criteria_key)
        if known is not None and build(known) is known:
            return known, None
        stored, plan = await self._claim(_Claim(wanted.criteria_key, build, actor, quiet_if_taken=True))
        return stored, plan.events[0].name if plan.events else None

    async def _claim(self, claim: _Claim) -> tuple[Suspension, Plan]:
        """Upsert by criteria, in a group commit with the others waiting.

        The claims made while a batch is being stored queue here; the first
        to get the lock takes every queued claim, stores them in one
        ``claim_all`` (one write for the files backend), then plans, swaps
        and announces each in order, as if each had had the lock alone. The
        others find their outcome when their turn at the lock comes. A batch
        taken is finished even if its taker is cancelled; a claim cancelled
        before any batch took it is never stored.
        """
        self._claims.append(claim)
        try:
            async with self.lock:
                if claim.result is None:
                    batch, self._claims = self._claims, []
                    with trio.CancelScope(shield=True):
                        try:
                            await self._store_claims(batch)
                        except Exception as exc:  # a bug: the batch's claims fail with it, not hang
                            for waiting in batch:
                                if waiting.result is None:
                                    waiting.result = outcome.Error(exc)
                            raise
        finally:
            if claim in self._claims:
                self._claims.remove(claim)
        assert claim.result is not None
        return claim.result.unwrap()

    async def _store_claims(self, batch: list[_Claim]) -> None:
        snapshot = self.current.snapshot
        results = await self.store.claim_all(
            [Claim(c.criteria_key, snapshot.runtime_holder(c.criteria_key), c.build) for c in batch]
        )
        for claim, result in zip(batch, results, strict=True):
            if isinstance(result, outcome.Value):
                stored, replaced = result.value
                plan = changes.suspended(self.current.snapshot.runtime, stored, replaced, actor=claim.actor)
                if claim.quiet_if_taken and stored is replaced:  # another node lengthened it first
                    plan = msgspec.structs.replace(plan, events=())
                self._swap(plan)
                result = outcome.Value((stored, plan))
            claim.result = result

    async def cancel_suspension(self, ident: Any, actor: str) -> Suspension:
        """Remove a runtime suspension; 404 for unknown or expired, 409 for a file's."""
        plan = await self.change(
            lambda snapshot, now: changes.cancel(snapshot, ident, now=now.timestamp(), actor=actor)
        )
        return plan.entry

    def next_expiry(self) -> float | None:
        """When the earliest runtime suspension expires (None if none will)."""
        return self.current.snapshot.next_runtime_expiry()

    async def sweep(self) -> int:
        """Remove expired runtime suspensions from the store; returns how many."""
        plan = await self.change(lambda snapshot, now: changes.expired(snapshot, now.timestamp()))
        return len(plan.drop)

    # -- queues, schedules and endpoints ----------------------------------------

    async def pause(self, kind: str, ident: str, actor: str, **request: Any) -> Plan:
        """Pause a queue, schedule or endpoint (``request``: reason, parallelism)."""
        return await self.change(
            lambda snapshot, now: changes.pause(snapshot, kind, ident, now=now, actor=actor, **request)
        )

    async def resume(self, kind: str, ident: str, actor: str, *, qstash: bool = False) -> Plan:
        return await self.change(
            lambda snapshot, now: changes.resume(snapshot, kind, ident, now=now, actor=actor, qstash=qstash)
        )

    async def upsert_queue(
        self, name: str, *, parallelism: int | None, paused: bool, actor: str
    ) -> QueuePolicy:
        """QStash's upsert: set a queue's parallelism and pause state in one change."""
        plan = await self.change(
            lambda snapshot, now: changes.upsert_queue(
                snapshot, name, parallelism=parallelism, paused=paused, now=now, actor=actor
            )
        )
        return plan.entry

    async def delete_queue(self, name: str, actor: str) -> None:
        """Drop a queue's runtime entry; 404 if it has none, 409 if a file owns it."""
        await self.change(lambda snapshot, now: changes.delete_queue(snapshot, name, actor=actor))

    async def put_schedule(self, schedule: Schedule, actor: str) -> Schedule:
        """Create a schedule (QStash's create), or replace the runtime one with its id."""
        plan = await self.change(
            lambda snapshot, now: changes.put_schedule(snapshot, schedule, now=now, actor=actor)
        )
        return plan.entry

    async def delete_made(self, kind: str, ident: str, actor: str) -> None:
        """Delete a schedule or endpoint made through its API (404, or 409 for a file's)."""
        await self.change(lambda snapshot, now: changes.delete_made(snapshot, kind, ident, actor=actor))

    async def create_endpoint(self, endpoint: Endpoint, actor: str) -> Endpoint:
        plan = await self.change(
            lambda snapshot, now: changes.create_endpoint(snapshot, endpoint, now=now, actor=actor)
        )
        return plan.entry

    async def update_endpoint(self, ident: str, fields: dict[str, Any], actor: str) -> Endpoint:
        plan = await self.change(
            lambda snapshot, now: changes.update_endpoint(snapshot, ident, fields, now=now, actor=actor)
        )
        return plan.entry

    async def pin(self, key: str, actor: str, **pins: int | None) -> None:
        """Pin a flow-control key's ``parallelism``, ``rate`` and ``period``."""
        await self.change(lambda snapshot, now: changes.pin(snapshot, key, now=now, actor=actor, **pins))

    async def unpin(self, key: str, actor: str, *, parallelism: bool, rate: bool) -> None:
        await self.change(
            lambda snapshot, now: changes.unpin(
                snapshot, key, parallelism=parallelism, rate=rate, now=now, actor=actor
            )
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
            summary = [name_for(kind, key) for kind, key in updates] if announce == "summary" else None
            plan = changes.from_store(self.current.snapshot, updates, now=self.clock(), summary=summary)
            if not plan.empty:
                self._swap(plan, origin="store")
            return len(updates)
