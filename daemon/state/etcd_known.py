"""What one node knows of the etcd state: each key's revision, and what is news.

How this works
--------------
``seen`` maps every runtime key this node knows to the revision it knows it
at and whether it is live (a tombstone for a delete it made itself).
``revision`` is the last revision applied as a whole (loaded, resynced or
watched up to); None means a full resync is needed (the node started from
its local copy, or its watch was compacted).

A value read from etcd, by the watch or a resync, at or below the revision
in ``seen`` is this node's own write echoing back, or superseded, and is
dropped. ``news`` and ``difference`` make that decision; the store calls
them from ``read()``, under the mutations lock that local writes are made
under, so an old remote value can never overwrite a newer local one.

Every value applied or written is also handed to the local copy
(``cache.LocalCopy``), so it mirrors what this node serves.
"""

from __future__ import annotations

from collections.abc import Iterable

from sluice.policy.changes import entries
from sluice.policy.model import Entry, Suspension
from sluice.policy.snapshot import Runtime

from .base import Updates
from .cache import LocalCopy
from .encoding import entry_key, name_for
from .etcd_keys import Keys

Found = dict[str, tuple[int, bytes]]  # etcd key -> (mod_revision, value)
Expired = tuple[str, int, str, str]  # (key, revision, criteria_key, id) of an expired suspension
WatchedChange = tuple[str, int, bool, bytes]  # (key, mod_revision, deleted, value)


class Known:
    """The revisions this node knows (see the module docstring); mirrored into the local copy."""

    def __init__(self, keys: Keys, copy: LocalCopy) -> None:
        self.keys = keys
        self.copy = copy
        self.revision: int | None = None
        self.seen: dict[str, tuple[int, bool]] = {}

    def live_revision(self, key: str) -> int | None:
        """The revision ``key`` is known live at; None if gone or not known yet (0)."""
        seen = self.seen.get(key)
        if seen is None or not seen[1] or seen[0] == 0:
            return None
        return seen[0]

    def loaded(self, found: Found, revision: int) -> list[Entry]:
        """Take in a full read at ``revision``; returns its valid entries."""
        entries = []
        full = {}
        for key, (mod_revision, data) in found.items():
            entry = self.keys.parse(key, data)
            self.seen[key] = (mod_revision, True)
            if entry is not None:
                entries.append(entry)
                full[name_for(*entry_key(entry))] = data
        self.revision = revision
        self.copy.replace_all(full)
        return entries

    def loaded_stale(self, keys: Iterable[tuple[str, str]]) -> None:
        """Take in (kind, key)s served from the local copy: revisions unknown until a resync."""
        for kind, key in keys:
            self.seen[self.keys.of(kind, key)] = (0, True)
        self.revision = None

    def wrote(self, key: str, revision: int, data: bytes | None) -> None:
        """Remember a committed write, so its echo through the watch is dropped."""
        self.seen[key] = (revision, data is not None)
        self._mirror(key, data)

    def news(self, changes: list[WatchedChange]) -> Updates:
        """The watched changes still news; a broken value keeps the entry this node had."""
        updates: Updates = {}
        for key, revision, deleted, data in changes:
            seen = self.seen.get(key)
            if seen is not None and revision <= seen[0]:
                if not seen[1] and revision == seen[0]:
                    del self.seen[key]  # the echo of this node's own delete
                continue
            kind_key = self.keys.kind_key(key)
            if kind_key is None:
                continue
            if deleted:
                self.seen.pop(key, None)
                updates[kind_key] = None
                self._mirror(key, None)
                continue
            self.seen[key] = (revision, True)
            entry = self.keys.parse(key, data)
            if entry is not None:
                updates[kind_key] = entry
                self._mirror(key, data)
        return updates

    def difference(self, found: Found, revision: int, now: float) -> tuple[Updates, list[Expired]]:
        """What a full read at ``revision`` changes, and the expired suspensions in it."""
        updates: Updates = {}
        expired: list[Expired] = []
        for key, (mod_revision, data) in found.items():
            seen = self.seen.get(key)
            if seen is not None and mod_revision <= seen[0]:
                continue  # known, or this node changed it since
            self.seen[key] = (mod_revision, True)
            entry = self.keys.parse(key, data)
            if entry is None:
                continue
            updates[entry_key(entry)] = entry
            self._mirror(key, data)
            if isinstance(entry, Suspension) and not entry.is_active(now):
                expired.append((key, mod_revision, entry.criteria_key, entry.id))
        for key, (seen_revision, live) in list(self.seen.items()):
            if key in found or seen_revision > revision:
                continue  # still there, or written by this node after the read
            del self.seen[key]
            kind_key = self.keys.kind_key(key)
            if live and kind_key is not None:
                updates[kind_key] = None
                self._mirror(key, None)
        self.revision = revision
        return updates, expired

    def _mirror(self, key: str, data: bytes | None) -> None:
        kind_key = self.keys.kind_key(key)
        if kind_key is not None:
            self.copy.put(name_for(*kind_key), data)


def runtime_keys(runtime: Runtime) -> list[tuple[str, str]]:
    """The (kind, key) of every object in ``runtime``."""
    return [entry_key(e) for e in entries(runtime)]

