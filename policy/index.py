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

A bucket is a tuple of the suspensions themselves. Expiry is checked
against ``now`` at lookup, so an expired one never matches, and a hit is
handed back as ``(expires_at, suspension)``: expiry in seconds since the
epoch (``inf`` for none), which the decision needs. It is worked out for
the hits only: kept beside every suspension, the pairs of 100,000 took
9 MB. Several hits are put in listing order (``order_key``) when looked up:
kept in every entry, the order keys of 100,000 suspensions took 17 MB.

The index is immutable. ``evolve`` returns a new one that shares every table
it did not touch. Tables are plain dicts, fastest to build and probe, where
the index is built at once and seldom changed (the policy files', on a
reload); a touched dict table is copied. Built ``persistent`` (the runtime's
suspensions, changed one at a time), tables are persistent maps
(``immutables.Map``): a touched table shares all but a path with the old
one, so a change at 100,000 suspensions costs O(log n).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import immutables

from .bulk import collector_paused
from .model import Suspension
from .queue_name import QueueName

Hit = tuple[float, Suspension]  # a match at lookup: (expires_at, suspension)

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


def order_key(s: Suspension) -> tuple:
    """Stable listing order: file entries as written (files in name order, the
    order they are read in), then runtime ones by creation."""
    if s.source != "runtime":
        path, _, line = s.source.rpartition(":")
        if line.isdigit():
            return (0, path, int(line), s.id)
        return (0, s.source, 0, s.id)
    created = s.created_at.timestamp() if s.created_at is not None else 0.0
    return (1, created, s.id)


class SuspensionIndex:
    __slots__ = ("_tables", "_probes", "persistent")

    def __init__(self, tables: dict[int, dict | immutables.Map], persistent: bool = False) -> None:
        self._tables = tables
        self.persistent = persistent
        # Probe only shapes in use, the cheap single-key ones first.
        self._probes = tuple(sorted((m for m, t in tables.items() if t), key=lambda m: (m > 4, m)))

    @classmethod
    def build(cls, suspensions: Iterable[Suspension], *, persistent: bool = False) -> SuspensionIndex:
        tables: dict[int, dict[object, tuple[Suspension, ...]]] = {}
        with collector_paused():
            for s in suspensions:
                mask = shape(s)
                table = tables.get(mask)
                if table is None:
                    table = tables[mask] = {}
                for key in _keys(s, mask):
                    bucket = table.get(key)
                    table[key] = (s,) if bucket is None else bucket + (s,)
        if persistent:
            return cls({mask: immutables.Map(table) for mask, table in tables.items()}, True)
        return cls(tables)

    def evolve(
        self, *, add: Iterable[Suspension] = (), remove: Iterable[Suspension] = ()
    ) -> SuspensionIndex:
        """A new index with ``remove`` taken out and ``add`` put in (by id)."""
        changing: dict[int, dict | immutables.MapMutation] = {}
        persistent = self.persistent

        def table_for(mask: int) -> dict | immutables.MapMutation:
            if mask not in changing:
                table = self._tables.get(mask)
                if persistent:
                    changing[mask] = (table if table is not None else immutables.Map()).mutate()
                else:
                    changing[mask] = dict(table or {})
            return changing[mask]

        for s in remove:
            mask = shape(s)
            table = table_for(mask)
            for key in _keys(s, mask):
                kept = tuple(e for e in table.get(key, ()) if e.id != s.id)
                if kept:
                    table[key] = kept
                else:
                    table.pop(key, None)
        for s in add:
            mask = shape(s)
            table = table_for(mask)
            for key in _keys(s, mask):
                table[key] = table.get(key, ()) + (s,)
        done = {m: t.finish() if persistent else t for m, t in changing.items()}
        return SuspensionIndex({**self._tables, **done}, persistent)

    def parts(self) -> tuple[list[object], list[object]]:
        """Every bucket of every table, and the tables: what freeing the index
        frees, for freeing it a few at a time (see ``Snapshot.parts``)."""
        tables = list(self._tables.values())
        buckets: list[object] = []
        for table in tables:
            buckets.extend(table.values())
        return buckets, tables

    def lookup(self, q: QueueName, now: float, hidden: frozenset[str] = frozenset()) -> list[Hit]:
        """Every active suspension matching ``q`` at ``now``, in listing order,
        but those whose id is ``hidden``."""
        found: list[Hit] = []
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
                for s in hits:
                    end = _expiry(s)
                    if end > now and not (hidden and s.id in hidden):
                        found.append((end, s))
        if len(found) > 1:
            found.sort(key=_listed)
        return found

    def exactly(
        self,
        campaign: str | None,
        tenant: str | None,
        domain: str | None,
        now: float,
        hidden: frozenset[str] = frozenset(),
    ) -> list[Suspension]:
        """Active suspensions whose criteria are exactly (campaign, tenant, domain), in listing
        order, but those whose id is ``hidden``."""
        mask = (
            (CAMPAIGN if campaign is not None else 0)
            | (TENANT if tenant is not None else 0)
            | (DOMAIN if domain is not None else 0)
        )
        if not mask:
            return []
        values = tuple(v for v in (campaign, tenant, domain) if v is not None)
        key = values[0] if len(values) == 1 else values
        hits = [
            s for s in self._tables.get(mask, {}).get(key, ())
            if _expiry(s) > now and not (hidden and s.id in hidden)
        ]
        hits.sort(key=order_key)
        return hits


def _listed(hit: Hit) -> tuple:
    return order_key(hit[1])


def _expiry(s: Suspension) -> float:
    return math.inf if s.expires is None else s.expires.timestamp()
