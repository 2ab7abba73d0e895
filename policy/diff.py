"""What changed between two snapshots, for the reload log and the events stream.

``diff(old, new)`` compares entries by kind and key (suspension id, queue
name, schedule id, endpoint id, automation rule id: a digest of what the
rule says, so an edited rule is one removed and one added). An entry whose only difference is its
``source`` (its lines moved by an edit above it) has not changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from .snapshot import Snapshot

Action = Literal["added", "removed", "changed"]


class Change(msgspec.Struct, frozen=True):
    kind: str
    action: Action
    key: str
    before: Any = None
    after: Any = None


def _sourceless(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_sourceless(v) for v in value)
    if isinstance(value, msgspec.Struct) and hasattr(value, "source"):
        return msgspec.structs.replace(value, source="")
    if isinstance(value, msgspec.Struct):
        return tuple(_sourceless(v) for v in msgspec.structs.astuple(value))
    return value


def _compare(kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    changes = []
    for key, before in old.items():
        after = new.get(key)
        if after is None:
            changes.append(Change(kind, "removed", key, before=before))
        elif before != after and _sourceless(before) != _sourceless(after):
            changes.append(Change(kind, "changed", key, before=before, after=after))
    for key, after in new.items():
        if key not in old:
            changes.append(Change(kind, "added", key, after=after))
    return changes


def _compare_suspensions(old: Snapshot, new: Snapshot) -> list[Change]:
    if old.runtime is not new.runtime or not (old.policy.parsed and new.policy.parsed):
        return _compare("suspension", old.suspensions, new.suspensions)
    # Only the changed files' ids can differ. An id is unique among the files
    # (combine), and a snapshot finds an id in the files first, then in the
    # runtime state: so an id of a file that went is the old snapshot's entry,
    # one of a file that came the new one's, and either side's other ids are
    # the runtime's, if it has them.
    gone, came = new.policy.changed_since(old.policy)
    before = {s.id: s for f in gone for s in f.suspensions}
    after = {s.id: s for f in came for s in f.suspensions}
    runtime = new.runtime.suspensions
    if runtime:
        for ident in after.keys() - before.keys():
            if (held := runtime.get(ident)) is not None:
                before[ident] = held
        for ident in before.keys() - after.keys():
            if (held := runtime.get(ident)) is not None:
                after[ident] = held
    return _compare("suspension", before, after)


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """Every entry added, removed or changed from ``old`` to ``new``.

    Suspensions come as Suspension values, queues as QueueView, schedules and
    endpoints as ScheduleView and EndpointView, automation rules as Rule.
    Between two reloads of the same runtime state only the suspensions of
    files that changed are compared (the others are the same objects).
    """
    return (
        _compare_suspensions(old, new)
        + _compare("queue", old.queues, new.queues)
        + _compare("schedule", old.schedules, new.schedules)
        + _compare("endpoint", old.endpoints, new.endpoints)
        + _compare("flow_control", old.flow_controls, new.flow_controls)
        + _compare("automation", _rules(old), _rules(new))
    )


def _rules(snapshot: Snapshot) -> dict[str, Any]:
    return {rule.id: rule for rule in snapshot.policy.automation}
