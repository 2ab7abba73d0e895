"""The runtime-state interface: what the shell holds, and what it hands in (DESIGN 8b).

    RuntimeStore            the interface below (a Protocol)
    ├── FileStore           state/files.py: one TOML file per object under state_dir
    └── EtcdStore           state/etcd.py: one etcd key per object, shared by a fleet

    StoreSettings           the input of ``open_store`` (state/__init__.py):
    └── EtcdSettings        plain values, paths already resolved
    Changes                 how the files backend hears of changes in its
                            directory (the shell builds it from its watcher)

    StateUnavailable        PolicyError, 503 STATE_UNAVAILABLE: the store cannot
                            take a change now (etcd unreachable); nothing changed

How this works
--------------
``Mutations`` is the only caller. It holds its lock around every call, so a
store sees one change at a time from this node; other nodes (etcd) or people
(hand edits of the files) change the state too, and the store reports those
through ``follow``.

- ``open`` loads the whole runtime state once, at start (for etcd at a
  revision R that ``follow`` then watches from, R+1, so nothing is missed).
- ``put``, ``delete`` and ``claim_all`` return only once the change is durable:
  fsynced for files, committed for etcd. If the store cannot take it they
  raise ``StateUnavailable`` and nothing changed.
- ``claim_all`` is upsert-by-criteria made safe across nodes, for a batch of
  claims at once (the requests that queued while the last batch was being
  written: a group commit). Each ``Claim``'s ``build`` gets the suspension
  that holds its criteria in the store (or None), a later claim of the batch
  seeing what an earlier one with the same criteria stored, and returns what
  to store. The answer is one ``outcome`` per claim: the stored suspension
  and the holder it replaced, or the error. The files backend writes the
  whole batch together, so it is all stored or none is; for etcd each claim
  is a transaction on a key derived from the criteria, retried with what
  etcd says if another node got there first (``claim_each``).
- ``remove_expired`` removes a suspension whose expiry this node has seen
  pass; it never fails the caller (expiry is decided locally) and, for etcd,
  is a transaction on the key's revision, so racing sweepers are harmless.
- ``follow`` runs for the daemon's lifetime and calls
  ``apply(read, announce=...)`` for each batch of changes made elsewhere
  (files: from the ``changes`` the store was built with; etcd: its watch).
  ``apply`` (``Mutations.apply_changes``) takes the mutations lock and only
  then calls ``read()``, which returns ``{(kind, key): Entry | None}``: the
  batch as it stands at that moment, with this node's own writes and changes
  it has already superseded left out. Deciding freshness under the same lock
  as local writes is what keeps an old remote value from overwriting a newer
  local one.
- ``degraded`` is True while the store cannot take changes; the store calls
  ``on_degraded(flag, reason)`` when it flips.
- ``read_all`` and ``write_all`` copy stored texts in bulk, by file name, for
  ``sluicectl state export`` and ``import``; not for the daemon's own use.

Nothing here, nor in any backend, imports the shell (``daemon.config``,
``daemon.reload``): the shell passes plain settings and, for the files
backend, a ``Changes`` callable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import msgspec
import outcome
import trio

from sluice.policy.errors import FileProblem, PolicyError
from sluice.policy.model import Entry, Suspension
from sluice.policy.snapshot import Runtime

Key = tuple[str, str]  # (kind, key): ("suspension", id), ("queue", name), ("schedule", id) ...
Updates = dict[Key, Entry | None]
ReadUpdates = Callable[[], Awaitable[Updates]]
Announce = Literal["each", "summary"]


class Claim(NamedTuple):
    """Store ``build(holder)`` in place of the suspension holding ``criteria_key``.

    ``known`` is the suspension this node believes holds the criteria.
    """

    criteria_key: str
    known: Suspension | None
    build: Callable[[Suspension | None], Suspension]


# the stored suspension and the holder it replaced or updated, or the error
Claimed = outcome.Outcome  # of tuple[Suspension, Suspension | None]

async def claim_each(claim: Callable[..., Awaitable[tuple[Suspension, Suspension | None]]], claims: Sequence[Claim]) -> list[Claimed]:
    """``claim_all`` for a backend that stores claims one at a time with ``claim``."""
    holders: dict[str, Suspension] = {}
    results: list[Claimed] = []
    for criteria_key, known, build in claims:
        result = await outcome.acapture(claim, criteria_key, holders.get(criteria_key, known), build)
        if isinstance(result, outcome.Value):
            holders[criteria_key] = result.value[0]
        results.append(result)
    return results


class Apply(Protocol):
    """``Mutations.apply_changes``: takes the lock, calls ``read()``, applies and announces."""

    async def __call__(self, read: ReadUpdates, *, announce: Announce) -> int: ...


Changes = Callable[[Path], AsyncIterator[Collection[tuple[object, str]]]]
"""Called once, with a directory: batches of (change, path) inside it, debounced.

The daemon passes its one watcher's tree of the directory (``Watcher.tree``
through ``debounced``); a test may pass a scripted iterator.
"""


class EtcdSettings(msgspec.Struct, frozen=True):
    """``[state.etcd]``, with its file paths resolved."""

    endpoints: tuple[str, ...]
    prefix: str = "/sluice/"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str = ""
    password: str = ""


class StoreSettings(msgspec.Struct, frozen=True):
    """Which backend, and where: the input of ``open_store``."""

    state_dir: Path
    backend: Literal["files", "etcd"] = "files"
    etcd: EtcdSettings | None = None


class StateUnavailable(PolicyError):
    """The runtime-state store cannot take a change now; nothing was changed."""

    code = "STATE_UNAVAILABLE"
    status_hint = 503


@dataclass
class Loaded:
    """What ``open`` read.

    ``problems``: entries that could not be read (fatal at start for files).
    ``revision``: the etcd revision the state was read at (None for files, or
    when it came from the local copy). ``stale``: read from the local copy
    because the store was unreachable.
    """

    runtime: Runtime
    problems: list[FileProblem] = field(default_factory=list)
    revision: int | None = None
    stale: bool = False


def ignore_degraded(degraded: bool, reason: str) -> None:
    """The default ``on_degraded``."""


def ignore_invalid(problems: dict[str, str]) -> None:
    """The default ``on_invalid``."""


class RuntimeStore(Protocol):
    degraded: bool
    on_degraded: Callable[[bool, str], None]
    # called with every stored object that cannot be read now (where -> problem),
    # each time that set changes; the entry read before is kept meanwhile
    on_invalid: Callable[[dict[str, str]], None]

    @property
    def where(self) -> str:
        """Where the state lives, for messages (a directory, etcd endpoints)."""

    async def open(self) -> Loaded: ...

    async def put(self, entry: Entry) -> None: ...

    async def delete(self, entry: Entry) -> None: ...

    async def claim_all(self, claims: Sequence[Claim]) -> list[Claimed]:
        """Store each claim's ``build(holder)`` in order; one outcome per claim (see above)."""

    async def remove_expired(self, suspension: Suspension) -> None: ...

    async def follow(
        self,
        apply: Apply,
        *,
        stop: trio.Event,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...

    async def read_all(self) -> dict[str, bytes]:
        """Every stored text by file name (``encoding.name_for``), at one moment."""

    async def write_all(self, puts: dict[str, tuple[Entry, bytes]], removes: dict[str, Entry]) -> None:
        """Store texts as given (by file name, with their entry) and remove ``removes``."""

    async def aclose(self) -> None: ...

