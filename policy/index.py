"""Hash lookups of suspensions by the shape of their criteria.

How this works
--------------
A suspension matches through exactly one of nine shapes: ``everything``,
``queue_names``, or a non-empty subset of (campaign, tenant, domain). Each
subset gets a bit mask (campaign 1, tenant 2, domain 4) and a dict from the
criteria's values to the suspensions that have them. A queue is looked up by
probing, for every mask in use, the key built from its own components; a
mask that needs a component the queue lacks is skipped (a rule with a tenant
never matches a queue without one). That is at most nine dict probes,
whatever the number of suspensions: nothing scans.

Entries are ``(expires_at, order, suspension)``: expiry in seconds since the
epoch (``inf`` for none), checked against ``now`` at lookup so an expired
entry never matches, and an order key that makes the listing stable.

The index is immutable. ``evolve`` returns a new one that shares every
table it did not have to touch, so a runtime change at 100,000 suspensions
copies one table, not all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .bulk import collector_paused
from .model import Suspension
from .queue_name import QueueName

Entry = tuple[float, tuple, Suspension]

CAMPAIGN, TENANT, DOMAIN = 1, 2, 4
EVERYTHING, NAMES = 8, 16


def shape(s: Suspension) -> int:
    """The shape of a suspension's criteria as a mask."""
    if s.everything:
        return EVERYTHING
    if s.queue_names:
        return NAMES
    return (
        (CAMPAIGN if s.campaign is not None else 0)
        | (TENANT if s.tenant is not None else 0)
        | (DOMAIN if s.domain is not None else 0)
    )


def _keys(s: Suspension, mask: int) -> tuple:
    if mask == EVERYTHING:
        return (None,)
    if mask == NAMES:
        return s.queue_names
    if mask == DOMAIN:
        return (s.domain,)
    if mask == TENANT:
        return (s.tenant,)
    if mask == CAMPAIGN:
        return (s.campaign,)
    return (
        tuple(
            v
            for bit, v in ((CAMPAIGN, s.campaign), (TENANT, s.tenant), (DOMAIN, s.domain))
            if mask & bit
        ),
    )


def order_key(s: Suspension, position: int) -> tuple:
    """Stable listing order: file entries as written, then runtime ones by creation."""
    if s.source != "runtime":
        return (0, position, s.id)
    created = s.created_at.timestamp() if s.created_at is not None else 0.0
    return (1, created, s.id)


class SuspensionIndex:
    __slots__ = ("_tables", "_probes")

    def __init__(self, tables: dict[int, dict[object, tuple[Entry, ...]]]) -> None:
        self._tables = tables
        # Probe only shapes in use, the cheap single-key ones first.
        self._probes = tuple(sorted((m for m, t in tables.items() if t), key=lambda m: (m > 4, m)))

    @classmethod
    def build(cls, suspensions: Iterable[Suspension]) -> SuspensionIndex:
        tables: dict[int, dict[object, tuple[Entry, ...]]] = {}
        with collector_paused():
            for position, s in enumerate(suspensions):
                mask = shape(s)
                table = tables.get(mask)
                if table is None:
                    table = tables[mask] = {}
                entry = (_expiry(s), order_key(s, position), s)
                for key in _keys(s, mask):
                    bucket = table.get(key)
                    table[key] = (entry,) if bucket is None else bucket + (entry,)
        return cls(tables)

    def evolve(
        self, *, add: Iterable[Suspension] = (), remove: Iterable[Suspension] = ()
    ) -> SuspensionIndex:
        """A new index with ``remove`` taken out and ``add`` put in (by id)."""
        tables = dict(self._tables)
        copied: set[int] = set()

        def table_for(mask: int) -> dict[object, tuple[Entry, ...]]:
            if mask not in copied:
                tables[mask] = dict(tables.get(mask, {}))
                copied.add(mask)
            return tables[mask]

        for s in remove:
            mask = shape(s)
            table = table_for(mask)
            for key in _keys(s, mask):
                kept = tuple(e for e in table.get(key, ()) if e[2].id != s.id)
                if kept:
                    table[key] = kept
                else:
                    table.pop(key, None)
        for s in add:
            mask = shape(s)
            table = table_for(mask)
            entry = (_expiry(s), order_key(s, 0), s)
            for key in _keys(s, mask):
                table[key] = table.get(key, ()) + (entry,)
        return SuspensionIndex(tables)

    def lookup(self, q: QueueName, now: float) -> list[Entry]:
        """Every active suspension matching ``q`` at ``now``, in listing order."""
        found: list[Entry] = []
        tables = self._tables
        c, t, d = q.campaign, q.tenant, q.domain
        for mask in self._probes:
            if mask == DOMAIN:
                key: object = d
            elif mask == TENANT:
                if t is None:
                    continue
                key = t
            elif mask == CAMPAIGN:
                if c is None:
                    continue
                key = c
            elif mask == EVERYTHING:
                key = None
            elif mask == NAMES:
                key = q.name
            elif mask == CAMPAIGN | TENANT:
                if c is None:
                    continue
                key = (c, t)
            elif mask == TENANT | DOMAIN:
                if t is None:
                    continue
                key = (t, d)
            elif mask == CAMPAIGN | DOMAIN:
                if c is None:
                    continue
                key = (c, d)
            else:
                if c is None:
                    continue
                key = (c, t, d)
            hits = tables[mask].get(key)
            if hits:
                for entry in hits:
                    if entry[0] > now:
                        found.append(entry)
        if len(found) > 1:
            found.sort(key=lambda e: e[1])
        return found

    def exactly(
        self, campaign: str | None, tenant: str | None, domain: str | None, now: float
    ) -> list[Suspension]:
        """Active suspensions whose criteria are exactly (campaign, tenant, domain), in listing order."""
        mask = (
            (CAMPAIGN if campaign is not None else 0)
            | (TENANT if tenant is not None else 0)
            | (DOMAIN if domain is not None else 0)
        )
        if not mask:
            return []
        values = tuple(v for v in (campaign, tenant, domain) if v is not None)
        key = values[0] if len(values) == 1 else values
        hits = [e for e in self._tables.get(mask, {}).get(key, ()) if e[0] > now]
        hits.sort(key=lambda e: e[1])
        return [e[2] for e in hits]


def _expiry(s: Suspension) -> float:
    return math.inf if s.expires is None else s.expires.timestamp()
