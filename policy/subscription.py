"""KumoMTA's TSA subscription: which holds kumod can be told of, and as what.

How this works
--------------
kumod follows a TSA daemon over a websocket of JSON text frames, each one
``SubscriptionItem`` of kumo-api-types' ``tsa.rs`` as serde writes an
externally tagged enum: ``{"SchedQSuspension": {"rule_hash", "tenant",
"domain", "campaign", "reason", "expires"}}`` (``campaign`` null when there
is none, ``expires`` RFC 3339 UTC). kumod makes each one an admin suspension
of (campaign, tenant, domain) until ``expires``; a later item with the same
criteria replaces the one it holds, whatever its ``rule_hash``.

What is streamed (``item_of``): an active sluice suspension, from a file or
made at runtime, by hand or by an automation rule, that names a tenant and
a domain (a campaign too, or not) is a ``SchedQSuspension``; ``rule_hash``
is its id, and a hold without an end is sent with ``ENDLESS`` as its
``expires``, since kumod's has no endless form. Every other hold has no
form kumod takes, so it is left out and counted: a domain alone (TSA's
``ReadyQSuspension`` names an egress site, not a domain), a tenant or a
campaign without a domain, ``queue_names``, ``everything``.

kumod holds one suspension per criteria, so the stream is made per
criteria too: of the holds with the same (campaign, tenant, domain), the
one that lasts longest is what kumod should hold. A ``Follower`` is one
subscriber's view of what it was sent, by criteria. ``resync`` brings it in
line with the whole snapshot (the current set, when it connects); ``follow``
with the holds an event names. Either gives the frames to send:
- a new hold, or one whose longest expiry or reason changed: its item;
- criteria no longer held in sluice while kumod's copy still runs (lifted
  by hand, removed from a file): the item it was sent, with ``expires`` set
  to now, which kumod takes as over (it replaces its copy with one already
  expired);
- a hold that simply expired: nothing, kumod's copy ends at the same time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import msgspec

from .model import Suspension
from .snapshot import Snapshot
from .times import rfc3339

# The ``expires`` sent for a hold without an end: kumod's schema has no
# endless suspension, and a fixed moment keeps the item the same each time.
ENDLESS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)

Criteria = tuple[str | None, str, str]  # (campaign, tenant, domain)


class SchedQSuspension(msgspec.Struct, frozen=True):
    """kumo-api-types' ``SchedQSuspension``, its fields in serde's order."""

    rule_hash: str
    tenant: str
    domain: str
    campaign: str | None
    reason: str
    expires: str


class Suspensions(msgspec.Struct, frozen=True):
    """kumo-api-types' ``Suspensions``: what TSA's ``/get_suspension_v1`` answers."""

    ready_q: list[Any]
    sched_q: list[SchedQSuspension]


# The variant tags of the two streams: ``SubscriptionItem`` on
# /subscribe_event_v1, the older ``SuspensionEntry`` on /subscribe_suspension_v1.
EVENT_TAG = "SchedQSuspension"
LEGACY_TAG = "SchedQ"

_encode = msgspec.json.Encoder().encode


def frame(item: SchedQSuspension, tag: str = EVENT_TAG) -> str:
    """``item`` as one text frame: serde's externally tagged form, ``{tag: {...}}``."""
    return _encode({tag: item}).decode()


def expressible(s: Suspension) -> bool:
    """Whether kumod's schema can express ``s``: a tenant and a domain, a campaign or not."""
    return s.tenant is not None and s.domain is not None


def item_of(s: Suspension) -> SchedQSuspension | None:
    """``s`` as kumod takes it, or None if it has no such form."""
    if not expressible(s):
        return None
    return SchedQSuspension(
        rule_hash=s.id,
        tenant=s.tenant,
        domain=s.domain,
        campaign=s.campaign,
        reason=s.reason,
        expires=rfc3339(s.expires or ENDLESS, "auto"),
    )


def _ends(s: Suspension) -> float:
    return math.inf if s.expires is None else s.expires.timestamp()


def _criteria(s: Suspension) -> Criteria:
    return (s.campaign, s.tenant, s.domain)


def _longest(holds: Iterable[Suspension]) -> Suspension | None:
    """The hold kumod should keep of those with one criteria: the latest end (ties: the larger id)."""
    return max(holds, key=lambda s: (_ends(s), s.id), default=None)


def _order(entry: tuple[float, SchedQSuspension]) -> tuple:
    """TSA's order for its current set: by expiry, then tenant, domain and campaign."""
    ends, item = entry
    return (ends, item.tenant, item.domain, item.campaign or "")


def current_set(snapshot: Snapshot, now: float) -> list[SchedQSuspension]:
    """The holds kumod should hold at ``now``, one per criteria, in TSA's order."""
    return Follower().resync(snapshot, now)


def counts(snapshot: Snapshot, now: float) -> dict[str, int]:
    """How many holds in force are streamed, and how many are left out (no form in kumod's schema)."""
    streamed = left_out = 0
    for s in snapshot.active_suspensions(now):
        if expressible(s):
            streamed += 1
        else:
            left_out += 1
    return {"streamed": streamed, "left_out": left_out}


@dataclass
class Follower:
    """What one subscriber was sent and still holds, by criteria; no I/O, the clock a parameter."""

    sent: dict[Criteria, tuple[float, SchedQSuspension]] = field(default_factory=dict)
    # the criteria each sent item's rule_hash (a suspension id) stands for
    by_id: dict[str, Criteria] = field(default_factory=dict)

    def resync(self, snapshot: Snapshot, now: float) -> list[SchedQSuspension]:
        """The frames that bring the subscriber in line with all of ``snapshot``."""
        wanted: dict[Criteria, list[Suspension]] = {}
        for s in snapshot.active_suspensions(now):
            if expressible(s):
                key = _criteria(s)
                wanted.setdefault(key, []).append(s)
        keys = set(wanted) | set(self.sent)
        return self._settle(((key, _longest(wanted.get(key, ()))) for key in keys), now)

    def follow(self, snapshot: Snapshot, ids: Iterable[str], now: float) -> list[SchedQSuspension]:
        """The frames that follow a change of the suspensions ``ids`` (added, updated, lifted, expired)."""
        keys: set[Criteria] = set()
        for ident in ids:
            was = self.by_id.get(ident)
            if was is not None:
                keys.add(was)
            s = snapshot.suspensions.get(ident)
            if s is not None and expressible(s):
                keys.add(_criteria(s))
        return self._settle(
            ((key, _longest(snapshot.suspensions_with(*key, now))) for key in keys), now
        )

    def _settle(
        self, wanted: Iterable[tuple[Criteria, Suspension | None]], now: float
    ) -> list[SchedQSuspension]:
        """Send what differs from ``wanted`` (criteria -> the hold kumod should keep, or None)."""
        out: list[tuple[float, SchedQSuspension]] = []
        for key, hold in wanted:
            old = self.sent.get(key)
            if hold is None:
                if old is None:
                    continue
                del self.sent[key]
                self._forget(old[1].rule_hash, key)
                if old[0] > now:  # kumod's copy still runs: end it now
                    out.append((now, msgspec.structs.replace(old[1], expires=rfc3339(now, "auto"))))
                continue
            new = (_ends(hold), item_of(hold))
            if old is not None and old[1] == new[1]:
                continue
            if old is not None:
                self._forget(old[1].rule_hash, key)
            self.sent[key] = new
            self.by_id[hold.id] = key
            out.append(new)
        out.sort(key=_order)
        return [item for _, item in out]

    def _forget(self, ident: str, key: Criteria) -> None:
        """``ident`` no longer stands for ``key`` (it may stand for other criteria by now)."""
        if self.by_id.get(ident) == key:
            del self.by_id[ident]


def suspension_ids(event: dict[str, Any]) -> list[str] | None:
    """The suspensions an event of the events stream names: [] for none, None for "any may have changed".

    ``suspension_*`` events name one; a reload lists what it changed (all
    of it, unless ``more_changes`` says the list was cut); a hand edit of the
    runtime files names files, not suspensions.
    """
    name = event.get("event", "")
    if name.startswith("suspension_"):
        return [event["id"]]
    if name == "reload_applied":
        if event.get("more_changes"):
            return None
        return [c["key"] for c in event.get("changes", ()) if c.get("kind") == "suspension"]
    if name == "runtime_reloaded":
        return None
    return []
