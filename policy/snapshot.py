"""The effective policy: files and runtime state merged into one immutable value.

How this works
--------------
A Snapshot is built from a PolicySet (what the files say) and a Runtime (what
the daemon was told through its API), and carries a generation number. It is
never changed: a reload or a runtime change builds a new snapshot and the
daemon swaps it in with one assignment, so a reader always sees one whole
policy.

Where both sources speak of one thing:
- suspensions are a union; an id in both (only possible by a hand edit of the
  runtime state) is the file's;
- a queue is paused if either source pauses it; the file's pause is listed as
  the hold (lifting it means editing the file); a runtime ``parallelism``
  overrides the file's;
- schedules and endpoints exist only in files; the runtime only pauses them.

``decide`` takes ``now`` in seconds since the epoch: the core owns no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import immutables
import msgspec
from croniter import croniter

from . import queue_name
from .ends import Ends
from .files import PolicySet
from .index import SuspensionIndex, order_key
from .model import RUNTIME, Endpoint, FlowControl, Pause, QueuePolicy, Schedule, Suspension


MEMO_SIZE = 65536


class Runtime(msgspec.Struct, frozen=True):
    """The daemon's own entries, keyed by id or name.

    Each map is persistent (``immutables.Map``, a hash array mapped trie):
    a change makes a new map sharing all but a path of the old one, so one
    change at 100,000 runtime suspensions costs O(log n), not a copy.
    (Plain dicts are taken too, and become maps on their first change.)
    """

    suspensions: Mapping[str, Suspension] = msgspec.field(default_factory=immutables.Map)
    queues: Mapping[str, QueuePolicy] = msgspec.field(default_factory=immutables.Map)
    # a file schedule's pause, or a schedule made through QStash's API
    schedule_pauses: Mapping[str, Pause | Schedule] = msgspec.field(default_factory=immutables.Map)
    # a file endpoint's pause, or an endpoint made through HookBridge's API
    endpoint_pauses: Mapping[str, Pause | Endpoint] = msgspec.field(default_factory=immutables.Map)
    flow_controls: Mapping[str, FlowControl] = msgspec.field(default_factory=immutables.Map)


class _BothSources(msgspec.Struct, frozen=True):
    """What a queue and a flow-control key share: a policy file's entry and the
    runtime's (``file`` and ``runtime``, in the subclass), either of which may
    pause it; the file's pause is the one listed, and lifting it is the file's."""

    @property
    def holder(self) -> Any:
        """The entry that pauses it (the file's first), or None if it runs."""
        if self.file is not None and self.file.paused:
            return self.file
        if self.runtime is not None and self.runtime.paused:
            return self.runtime
        return None

    @property
    def paused(self) -> bool:
        return self.holder is not None

    @property
    def file_pause(self) -> str | None:
        """Where a policy file pauses it, or None."""
        return self.file.source if self.file is not None and self.file.paused else None

    @property
    def own(self) -> Any:
        """The runtime's entry, if any."""
        return self.runtime


class QueueView(_BothSources, frozen=True):
    """A queue as both sources describe it."""

    name: str
    file: QueuePolicy | None = None
    runtime: QueuePolicy | None = None

    @property
    def parallelism(self) -> int | None:
        if self.runtime is not None and self.runtime.parallelism is not None:
            return self.runtime.parallelism
        return self.file.parallelism if self.file is not None else None


class ScheduleView(msgspec.Struct, frozen=True):
    """A schedule: a file's, with the runtime's pause of it, or one made at runtime
    (whose own ``paused`` is its pause)."""

    schedule: Schedule
    pause: Pause | None = None

    @property
    def declared(self) -> Schedule:
        return self.schedule

    @property
    def paused(self) -> bool:
        return self.schedule.paused or self.pause is not None

    @property
    def file_pause(self) -> str | None:
        """Where a policy file pauses this schedule, or None."""
        s = self.schedule
        return s.source if s.paused and s.source != RUNTIME else None

    @property
    def own(self) -> Pause | Schedule | None:
        """The runtime's entry: its pause of a file's schedule, or the schedule it made."""
        return self.schedule if self.schedule.source == RUNTIME else self.pause

    @property
    def holder_source(self) -> str | None:
        if self.schedule.paused:
            return self.schedule.source
        return None if self.pause is None else self.pause.source

    def next_fire(self, now: datetime) -> datetime | None:
        """The next time the cron fires after ``now`` (None without a cron)."""
        if self.schedule.cron is None:
            return None
        return croniter(self.schedule.cron, now).get_next(datetime)


class EndpointView(msgspec.Struct, frozen=True):
    """An endpoint: a file's, with the runtime's pause of it, or one made at runtime
    (whose own ``paused`` is its pause)."""

    endpoint: Endpoint
    pause: Pause | None = None

    @property
    def declared(self) -> Endpoint:
        return self.endpoint

    @property
    def paused(self) -> bool:
        return self.endpoint.paused or self.pause is not None

    @property
    def file_pause(self) -> str | None:
        """Where a policy file pauses this endpoint, or None."""
        e = self.endpoint
        return e.source if e.paused and e.source != RUNTIME else None

    @property
    def own(self) -> Pause | Endpoint | None:
        """The runtime's entry: its pause of a file's endpoint, or the endpoint it made."""
        return self.endpoint if self.endpoint.source == RUNTIME else self.pause

    @property
    def holder_source(self) -> str | None:
        if self.endpoint.paused:
            return self.endpoint.source
        return None if self.pause is None else self.pause.source


class FlowControlView(_BothSources, frozen=True):
    """A flow-control key as both sources describe it; the runtime's pins win."""

    key: str
    file: FlowControl | None = None
    runtime: FlowControl | None = None

    def _pinned(self, field: str) -> int | None:
        for entry in (self.runtime, self.file):
            if entry is not None and getattr(entry, field) is not None:
                return getattr(entry, field)
        return None

    @property
    def parallelism(self) -> int | None:
        return self._pinned("parallelism")

    @property
    def rate(self) -> int | None:
        return self._pinned("rate")

    @property
    def period(self) -> int | None:
        """The rate's period in seconds: pinned, else 1 once a rate is pinned."""
        return self._pinned("period") or (1 if self.rate is not None else None)


class Hold(msgspec.Struct, frozen=True, omit_defaults=True):
    """One reason not to deliver, as listed in a decision."""

    kind: str
    id: str | None
    reason: str | None
    expires: datetime | None
    source: str
    queue: str | None = None


class Decision(msgspec.Struct, frozen=True, omit_defaults=True):
    """The answer to "may I deliver to this queue now?"."""

    queue: str
    deliver: bool
    holds: tuple[Hold, ...]
    retry_after: int | None
    generation: int
    parallelism: int | None = None


class ScheduleDecision(msgspec.Struct, frozen=True):
    schedule: str
    run: bool
    holds: tuple[Hold, ...]
    generation: int


class EndpointDecision(msgspec.Struct, frozen=True):
    endpoint: str
    deliver: bool
    holds: tuple[Hold, ...]
    generation: int


class FlowControlDecision(msgspec.Struct, frozen=True, omit_defaults=True):
    """Whether messages carrying a flow-control key may be delivered, and at what pace."""

    flow_control: str
    deliver: bool
    holds: tuple[Hold, ...]
    generation: int
    parallelism: int | None = None
    rate: int | None = None
    period: int | None = None


def _pause_holds(
    kind: str, ident: str, declared: Schedule | Endpoint, pause: Pause | None
) -> tuple[Hold, ...]:
    """The hold on a schedule or endpoint: the file's pause first, else the runtime's."""
    holder = declared if declared.paused else pause
    if holder is None:
        return ()
    return (Hold(kind=kind, id=ident, reason=holder.reason, expires=None, source=holder.source),)


def _suspension_hold(s: Suspension) -> Hold:
    return Hold(kind="suspension", id=s.id, reason=s.reason, expires=s.expires, source=s.source)


class Suspensions(Mapping[str, Suspension]):
    """Every suspension by id: the files', then the runtime's (an id in both is the file's).

    A view over the two layers, so neither is copied to make it: the files'
    dict changes only on a reload, the runtime's persistent map with each change.
    """

    __slots__ = ("files", "runtime", "hidden")

    def __init__(self, files: Mapping[str, Suspension], runtime: Mapping[str, Suspension], hidden: frozenset[str]) -> None:
        self.files = files
        self.runtime = runtime
        self.hidden = hidden  # runtime ids a file also has

    def __getitem__(self, ident: str) -> Suspension:
        found = self.files.get(ident)
        if found is None:
            return self.runtime[ident]
        return found

    def get(self, ident: str, default: Suspension | None = None) -> Suspension | None:
        found = self.files.get(ident)
        if found is None:
            return self.runtime.get(ident, default)
        return found

    def __contains__(self, ident: object) -> bool:
        return ident in self.files or ident in self.runtime

    def __iter__(self):
        yield from self.files
        hidden = self.hidden
        for ident in self.runtime:
            if ident not in hidden:
                yield ident

    def __len__(self) -> int:
        return len(self.files) + len(self.runtime) - len(self.hidden)


def _hidden(files: Mapping[str, Suspension], runtime: Mapping[str, Suspension]) -> frozenset[str]:
    """The runtime ids a policy file also has (only a hand edit of the state can make one)."""
    small, large = (files, runtime) if len(files) <= len(runtime) else (runtime, files)
    return frozenset(ident for ident in small if ident in large)


def _merge_made(declared, entries: Mapping, made: type, view: Callable) -> dict:
    """Objects the files declare with the runtime's pauses of them, then those made at
    runtime (``made`` entries; an id a file also declares is the file's)."""
    views = {}
    for obj in declared:
        pause = entries.get(obj.id)
        views[obj.id] = view(obj, pause if isinstance(pause, Pause) else None)
    for ident, entry in entries.items():
        if isinstance(entry, made) and ident not in views:
            views[ident] = view(entry, None)
    return views


def _merge_schedules(policy: PolicySet, runtime: Runtime) -> dict[str, ScheduleView]:
    return _merge_made(
        policy.schedules, runtime.schedule_pauses, Schedule, lambda s, pause: ScheduleView(schedule=s, pause=pause)
    )


def _merge_endpoints(policy: PolicySet, runtime: Runtime) -> dict[str, EndpointView]:
    return _merge_made(
        policy.endpoints, runtime.endpoint_pauses, Endpoint, lambda e, pause: EndpointView(endpoint=e, pause=pause)
    )


def _merge_flow_controls(policy: PolicySet, runtime: Runtime) -> dict[str, FlowControlView]:
    files = {c.key: c for c in policy.flow_controls}
    return {
        key: FlowControlView(key=key, file=files.get(key), runtime=runtime.flow_controls.get(key))
        for key in files.keys() | runtime.flow_controls.keys()
    }


def _merge_queues(policy: PolicySet, runtime: Runtime) -> dict[str, QueueView]:
    files = {q.name: q for q in policy.queues}
    return {
        name: QueueView(name=name, file=files.get(name), runtime=runtime.queues.get(name))
        for name in files.keys() | runtime.queues.keys()
    }


# Each kind's merged views: the snapshot's attribute, the runtime's map, how to merge.
_VIEWS = (
    ("queues", "queues", _merge_queues),
    ("schedules", "schedule_pauses", _merge_schedules),
    ("endpoints", "endpoint_pauses", _merge_endpoints),
    ("flow_controls", "flow_controls", _merge_flow_controls),
)


def _views(policy: PolicySet, runtime: Runtime, before: Snapshot | None = None) -> dict[str, Mapping]:
    """Each kind's views of ``policy`` and ``runtime``; those ``before`` made
    from the same runtime map are kept, so a change of one kind merges only it."""
    views: dict[str, Mapping] = {}
    for attr, field, merge in _VIEWS:
        if before is not None and getattr(before.runtime, field) is getattr(runtime, field):
            views[attr] = getattr(before, attr)
        else:
            views[attr] = merge(policy, runtime)
    return views


class Snapshot:
    """One immutable effective policy with its generation number."""

    __slots__ = (
        "generation",
        "policy",
        "runtime",
        "suspensions",
        "queues",
        "schedules",
        "endpoints",
        "flow_controls",
        "_files_index",
        "_runtime_index",
        "_lasting",
        "_timed",
        "_since",
        "_file_ends",
        "_runtime_ends",
        "_holders",
        "_next_expiry",
    )

    def __init__(
        self,
        *,
        generation: int,
        policy: PolicySet,
        runtime: Runtime,
        suspensions: Suspensions,
        files_index: SuspensionIndex,
        runtime_index: SuspensionIndex,
        queues: Mapping[str, QueueView],
        schedules: Mapping[str, ScheduleView],
        endpoints: Mapping[str, EndpointView],
        flow_controls: Mapping[str, FlowControlView],
    ) -> None:
        self.generation = generation
        self.policy = policy
        self.runtime = runtime
        self.suspensions = suspensions
        self.queues = queues
        self.schedules = schedules
        self.endpoints = endpoints
        self.flow_controls = flow_controls
        self._files_index = files_index
        self._runtime_index = runtime_index
        self._lasting: dict[str, Decision] = {}
        self._timed: dict[str, tuple[Decision, float, float]] = {}
        self._since = -math.inf
        # for active_count, per layer; None: not yet made
        self._file_ends: Ends | None = None
        self._runtime_ends: Ends | None = None
        self._holders: immutables.Map | None = None  # for runtime_holder
        self._next_expiry: float | None | bool = False  # False: not yet computed

    @classmethod
    def build(
        cls, policy: PolicySet, runtime: Runtime | None = None, generation: int = 1
    ) -> Snapshot:
        """Merge ``policy`` and ``runtime`` into a new snapshot."""
        runtime = runtime if runtime is not None else Runtime()
        if not isinstance(runtime.suspensions, immutables.Map):
            runtime = msgspec.structs.replace(runtime, suspensions=immutables.Map(runtime.suspensions))
        runtime_index = SuspensionIndex.build(runtime.suspensions.values(), persistent=True)
        snapshot = cls._with_files(policy, runtime, runtime_index, generation)
        # Derived now, once, not on the first change or status line (with
        # 100,000 runtime suspensions each is a tenth of a second); later
        # snapshots evolve them.
        snapshot.runtime_holder("")
        snapshot.next_runtime_expiry()
        snapshot.active_count(0.0)
        return snapshot

    @classmethod
    def _with_files(
        cls,
        policy: PolicySet,
        runtime: Runtime,
        runtime_index: SuspensionIndex,
        generation: int,
        files: dict[str, Suspension] | None = None,
        files_index: SuspensionIndex | None = None,
    ) -> Snapshot:
        """A snapshot of ``policy`` over the runtime's layer; the files' layer
        built afresh unless given (evolved by ``with_policy``)."""
        if files is None:
            files = {s.id: s for s in policy.suspensions}
            files_index = SuspensionIndex.build(policy.suspensions)
        return cls(
            generation=generation,
            policy=policy,
            runtime=runtime,
            suspensions=Suspensions(files, runtime.suspensions, _hidden(files, runtime.suspensions)),
            files_index=files_index,
            runtime_index=runtime_index,
            **_views(policy, runtime),
        )

    def with_policy(self, policy: PolicySet, generation: int) -> Snapshot:
        """The same runtime state under new policy files (the runtime's layer is kept).

        Only the files that changed are indexed again: their old entries are
        taken out of the files' layer and their new ones put in, so a small
        edit next to a 100,000-suspension file costs the small file.
        """
        if self.policy.parsed and policy.parsed:
            gone, came = policy.changed_since(self.policy)
            removed = [s for f in gone for s in f.suspensions]
            added = [s for f in came for s in f.suspensions]
        else:
            removed = added = None
        evolved = not (removed is None or len(removed) + len(added) > len(policy.suspensions) // 2)
        if not evolved:
            after = Snapshot._with_files(policy, self.runtime, self._runtime_index, generation)
        else:
            files = dict(self.suspensions.files)
            for s in removed:
                files.pop(s.id, None)
            for s in added:
                files[s.id] = s
            after = Snapshot._with_files(
                policy,
                self.runtime,
                self._runtime_index,
                generation,
                files=files,
                files_index=self._files_index.evolve(add=added, remove=removed),
            )
        after._holders = self._holders
        after._next_expiry = self._next_expiry
        if after.suspensions.hidden == self.suspensions.hidden:
            after._runtime_ends = self._runtime_ends
        if evolved:
            after._file_ends = None if self._file_ends is None else self._file_ends.evolve(added, removed)
        return after

    def with_runtime(
        self,
        runtime: Runtime,
        generation: int,
        *,
        put: Iterable[Suspension] = (),
        drop: Iterable[Suspension] = (),
    ) -> Snapshot:
        """The same files under new runtime state.

        ``put`` and ``drop`` are the runtime suspensions that differ between
        ``self.runtime`` and ``runtime`` (an update is a drop and a put), so
        the index is evolved rather than rebuilt.
        """
        put, drop = list(put), list(drop)
        files = self.suspensions.files
        suspensions = runtime.suspensions
        if not isinstance(suspensions, immutables.Map):
            suspensions = immutables.Map(suspensions)
            runtime = msgspec.structs.replace(runtime, suspensions=suspensions)
        hidden = self.suspensions.hidden
        if any(s.id in files for s in (*put, *drop)):
            hidden = _hidden(files, suspensions)
        after = Snapshot(
            generation=generation,
            policy=self.policy,
            runtime=runtime,
            suspensions=Suspensions(files, suspensions, hidden),
            files_index=self._files_index,
            runtime_index=self._runtime_index.evolve(add=put, remove=drop),
            **_views(self.policy, runtime, self),
        )
        after._holders = self._evolved_holders(put, drop)
        after._file_ends = self._file_ends
        if hidden == self.suspensions.hidden and not any(s.id in hidden for s in (*put, *drop)):
            after._runtime_ends = None if self._runtime_ends is None else self._runtime_ends.evolve(put, drop)
        after._next_expiry = self._evolved_next_expiry(put, drop)
        return after

    def parts(self) -> tuple[list[object], list[object]]:
        """What freeing this snapshot frees: its many small values, and the
        containers that hold them, outermost first.

        Freeing a snapshot of 100,000 suspensions in one go is one long
        cascade of deallocations. With these lists held, dropping the
        snapshot itself frees little; freeing the containers one at a time
        then frees no more than each one's own table, and the small values
        can go a slice at a time (see daemon/memory.py).
        """
        policy = self.policy
        memo = [self._lasting, self._timed]
        index_values, index_tables = self._files_index.parts()
        values = [
            *policy.suspensions,
            # each memo read in one call: decisions may still be remembered
            # meanwhile, by another thread than the caller's
            *self._lasting.values(),
            *self._timed.values(),
            *index_values,
        ]
        containers = [
            policy, *policy.parsed, policy.seen, *policy.seen.values(), policy.suspensions,
            self.suspensions.files, self._file_ends, *memo, *index_tables,
        ]
        return values, containers

    def _evolved_holders(self, put: list[Suspension], drop: list[Suspension]) -> immutables.Map | None:
        """``runtime_holder``'s map after ``put`` and ``drop``, if this snapshot made one."""
        if self._holders is None:
            return None
        holders = self._holders.mutate()
        for s in drop:
            held = holders.get(s.criteria_key)
            if held is not None and held.id == s.id:
                del holders[s.criteria_key]
        for s in put:
            holders[s.criteria_key] = s
        return holders.finish()

    def _evolved_next_expiry(self, put: list[Suspension], drop: list[Suspension]) -> float | None | bool:
        """``next_runtime_expiry`` after ``put`` and ``drop``; False (work it out
        again when asked) if the earliest expiry may have been dropped."""
        earliest = self._next_expiry
        if earliest is False:
            return False
        if any(s.expires is not None and s.expires.timestamp() <= earliest for s in drop):
            return False
        ends = [s.expires.timestamp() for s in put if s.expires is not None]
        return min([*ends, earliest] if earliest is not None else ends, default=None)

    def decide(self, name: str | queue_name.QueueName, now: float) -> Decision:
        """Every hold on queue ``name`` at ``now`` (seconds since the epoch).

        Raises InvalidQueueName for a name that does not parse.

        Decisions asked by name are remembered for this snapshot (a new hold
        means a new snapshot, so only time can change them):
        - a decision none of whose holds expire stays right for any later
          ``now``; these live in ``_lasting``, valid while ``now`` is not
          before the latest time one was made (``_since``), so a hit costs one
          comparison and one dict probe;
        - any other decision is right while ``now`` lies in a window: after it
          was made, before its first hold expires, and within the second in
          which its ``retry_after`` holds. These live in ``_timed`` with the
          window.
        Both are bounded and die with the snapshot.
        """
        if name.__class__ is str:
            if now >= self._since:
                decision = self._lasting.get(name)
                if decision is not None:
                    return decision
                hit = self._timed.get(name)
                if hit is not None and hit[1] <= now < hit[2]:
                    return hit[0]
            return self._remember(name, now)
        return self._decide(name, now)[0]

    def _remember(self, name: str, now: float) -> Decision:
        decision, until, latest = self._decide(self._parse(name), now)
        lasting, timed = self._lasting, self._timed
        if len(lasting) + len(timed) >= MEMO_SIZE:
            lasting.clear()
            timed.clear()
        if until == math.inf and latest == math.inf:
            if now < self._since:  # the clock went back: what is remembered may be ahead
                lasting.clear()
            self._since = now
            lasting[name] = decision
        else:
            # retry_after, ceil(latest - now), keeps its value r while
            # latest - r <= now < latest - r + 1; the first bound holds already.
            high = until
            if latest != math.inf:
                high = min(until, latest - decision.retry_after + 1)
            timed[name] = (decision, now, high)
        return decision

    def _parse(self, name: str) -> queue_name.QueueName:
        """``name`` as a queue: a mail queue name, or a QStash queue held under it verbatim.

        A QStash name that is not a mail name in its normal form (``MyQueue``,
        a 100-character name) has no campaign, tenant or domain: only its own
        pause and suspensions of everything hold it.
        """
        if name in self.queues and not queue_name.is_normal(name):
            return queue_name.QueueName(name=name, domain="")
        return queue_name.parse(name)

    def _decide(self, q: queue_name.QueueName, now: float) -> tuple[Decision, float, float]:
        """The decision, when it stops being valid, and when its last hold ends."""
        found = self._files_index.lookup(q, now)
        in_runtime = self._runtime_index.lookup(q, now, self.suspensions.hidden)
        if in_runtime:
            found = found + in_runtime if found else in_runtime  # files' first, as listed
        view = self.queues.get(q.name)
        if not found and view is None:
            return (
                Decision(q.name, True, (), None, self.generation),
                math.inf,
                math.inf,
            )
        parallelism = None
        holds = [_suspension_hold(e[1]) for e in found]
        latest = max((e[0] for e in found), default=0.0)
        until = min((e[0] for e in found), default=math.inf)
        if view is not None:
            parallelism = view.parallelism
            holder = view.holder
            if holder is not None:
                holds.append(
                    Hold(
                        kind="queue_pause",
                        id=None,
                        reason=holder.reason,
                        expires=None,
                        source=holder.source,
                        queue=q.name,
                    )
                )
                latest = math.inf
        if not holds:
            decision = Decision(
                queue=q.name,
                deliver=True,
                holds=(),
                retry_after=None,
                generation=self.generation,
                parallelism=parallelism,
            )
            return decision, math.inf, math.inf
        decision = Decision(
            queue=q.name,
            deliver=False,
            holds=tuple(holds),
            retry_after=None if latest == math.inf else max(1, math.ceil(latest - now)),
            generation=self.generation,
            parallelism=parallelism,
        )
        return decision, until, latest

    def decide_schedule(self, schedule_id: str) -> ScheduleDecision | None:
        """Whether a schedule's trigger may run; None for an unknown schedule."""
        view = self.schedules.get(schedule_id)
        if view is None:
            return None
        holds = _pause_holds("schedule_pause", schedule_id, view.schedule, view.pause)
        return ScheduleDecision(
            schedule=schedule_id, run=not holds, holds=holds, generation=self.generation
        )

    def decide_endpoint(self, endpoint_id: str) -> EndpointDecision | None:
        """Whether messages for an endpoint may be delivered; None for an unknown one."""
        view = self.endpoints.get(endpoint_id)
        if view is None:
            return None
        holds = _pause_holds("endpoint_pause", endpoint_id, view.endpoint, view.pause)
        return EndpointDecision(
            endpoint=endpoint_id, deliver=not holds, holds=holds, generation=self.generation
        )

    def decide_flow_control(self, key: str) -> FlowControlDecision:
        """Whether messages with flow-control ``key`` may be delivered; any key
        may be asked (keys come with messages): one sluice holds nothing
        about may be delivered, unpaced."""
        view = self.flow_controls.get(key)
        if view is None:
            return FlowControlDecision(flow_control=key, deliver=True, holds=(), generation=self.generation)
        holder = view.holder
        holds = () if holder is None else (
            Hold(kind="flow_control_pause", id=key, reason=holder.reason, expires=None, source=holder.source),
        )
        return FlowControlDecision(
            flow_control=key,
            deliver=not holds,
            holds=holds,
            generation=self.generation,
            parallelism=view.parallelism,
            rate=view.rate,
            period=view.period,
        )

    def runtime_holder(self, criteria_key: str) -> Suspension | None:
        """The runtime suspension with these criteria (active or not yet swept), or None.

        Derived from the runtime on first use and kept with this snapshot, so
        it can never disagree with it.
        """
        if self._holders is None:
            self._holders = immutables.Map(
                {s.criteria_key: s for s in self.runtime.suspensions.values()}
            )
        return self._holders.get(criteria_key)

    def next_runtime_expiry(self) -> float | None:
        """When the earliest runtime suspension expires (None if none will)."""
        if self._next_expiry is False:
            self._next_expiry = min(
                (s.expires.timestamp() for s in self.runtime.suspensions.values() if s.expires),
                default=None,
            )
        return self._next_expiry

    def suspensions_with(
        self, campaign: str | None, tenant: str | None, domain: str | None, now: float
    ) -> list[Suspension]:
        """Suspensions in force at ``now`` whose criteria are exactly these, files' first; hash lookups."""
        return self._files_index.exactly(campaign, tenant, domain, now) + self._runtime_index.exactly(
            campaign, tenant, domain, now, self.suspensions.hidden
        )

    def active_suspensions(self, now: float) -> list[Suspension]:
        """Suspensions in force at ``now``, files first as written, then runtime by creation."""
        listed = [s for s in self.policy.suspensions if s.is_active(now)]
        hidden = self.suspensions.hidden
        runtime = [
            s for s in self.runtime.suspensions.values() if s.is_active(now) and s.id not in hidden
        ]
        runtime.sort(key=order_key)
        return listed + runtime

    def active_count(self, now: float) -> int:
        """How many suspensions are in force at ``now``; O(log n) once the
        layers' sorted ends are made (each change evolves them)."""
        if self._file_ends is None:
            self._file_ends = Ends.of(self.policy.suspensions)
        if self._runtime_ends is None:
            hidden = self.suspensions.hidden
            self._runtime_ends = Ends.of(s for s in self.runtime.suspensions.values() if s.id not in hidden)
        return self._file_ends.in_force(now) + self._runtime_ends.in_force(now)

    def counts(self, now: float) -> dict[str, int]:
        return {
            "suspensions": self.active_count(now),
            "paused_queues": sum(1 for q in self.queues.values() if q.paused),
            "schedules": len(self.schedules),
            "paused_schedules": sum(1 for s in self.schedules.values() if s.paused),
            "endpoints": len(self.endpoints),
            "paused_endpoints": sum(1 for e in self.endpoints.values() if e.paused),
            "paused_flow_controls": sum(1 for c in self.flow_controls.values() if c.paused),
            "automation_rules": len(self.policy.automation),
        }
