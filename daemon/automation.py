"""Automation in the shell: outcomes in, holds out, threshold windows kept on disk.

How this works
--------------
``Automation.publish(batch)`` runs the core's ``evaluate`` on the rules in
force (``sluice.policy.automation``; the ``Rulebook`` is made once per
policy, when a request first sees it) with the windows held in memory, and
takes the new windows at once, before anything is awaited, so concurrent
publishes never lose each other's counts. Then:

1. each hold is made or extended through ``Mutations.hold``: a runtime
   suspension like any other, durable before it returns, announced on the
   events stream and shared through etcd;
2. if the windows changed, they are written to
   ``<state_dir>/automation-windows.json`` (``atomic.write_file``) before
   ``publish`` returns. Publishes that arrive while a write is under way
   share the next one (a group commit), so the disk sees at most one write
   in flight however many senders post.

A failure of either raises ``StateUnavailable`` (503): the sender retries,
and a retried record can only lengthen a hold, never make a second one.

Windows are this node's counts: in a fleet each node counts the records
posted to it. At start the file is read; one that cannot be read is logged
and counting starts afresh (windows are counts, not holds: every hold made
is in the runtime state).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog
import trio

from sluice.policy.automation import Rulebook, Windows, decode_windows, encode_windows, evaluate, prune
from sluice.policy.errors import ValidationError
from sluice.policy.files import PolicySet
from sluice.policy.log_record import Batch
from sluice.policy.times import rfc3339

from .current import Current
from .metrics import Metrics
from .mutations import Mutations
from .state.atomic import write_file
from .state.base import StateUnavailable

log = structlog.get_logger("sluice.automation")

WINDOWS_FILE = "automation-windows.json"
PRUNE_EVERY = 60.0  # seconds between sweeps of the windows in memory for counts that can no longer count


class Held(msgspec.Struct):
    """A hold a publish made, extended or found already lasting, as answered."""

    id: str
    domain: str
    tenant: str | None
    campaign: str | None
    expires: str | None  # None: the hold found lasting has no end (a hand-edited runtime entry)
    rule: str  # the rule's file and line
    change: str  # "added", "extended" or "unchanged"


class Published(msgspec.Struct):
    """The answer to a publish: what was read, matched and held."""

    records: int
    failures: int
    matched: int
    holds: list[Held]


_CHANGES = {"suspension_added": "added", "suspension_updated": "extended", None: "unchanged"}


class WindowsFile:
    """The windows on disk: one small file, replaced whole, written by one task at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._asked = 0  # saves asked for
        self._done = 0  # the last ask a completed write covers
        self._writing: trio.Event | None = None

    def load(self) -> dict[tuple[str, str], tuple[float, ...]]:
        """The windows stored, or none if there is no file or it cannot be read. Blocking."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("automation_windows_unreadable", file=str(self.path), error=exc.strerror or str(exc))
            return {}
        try:
            return decode_windows(data)
        except ValidationError as exc:
            log.warning("automation_windows_unreadable", file=str(self.path), error=exc.message)
            return {}

    async def save(self, current: Callable[[], bytes]) -> None:
        """Return once what ``current()`` gives at least as late as now is on disk.

        ``current`` is called in a worker thread when a write begins; one
        write serves every save asked before it began.
        """
        self._asked += 1
        mine = self._asked
        while self._done < mine:
            if self._writing is not None:
                await self._writing.wait()
                continue
            self._writing = trio.Event()
            covers = self._asked
            try:
                await trio.to_thread.run_sync(lambda: write_file(self.path, current()))
            except OSError as exc:
                raise StateUnavailable(
                    f"cannot store automation counts in {self.path}: {exc.strerror or exc}"
                ) from None
            else:
                self._done = covers
            finally:
                self._writing.set()
                self._writing = None


class Automation:
    def __init__(
        self,
        current: Current,
        mutations: Mutations,
        state_dir: Path,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.current = current
        self.mutations = mutations
        self.metrics = metrics
        self.clock = clock
        self.file = WindowsFile(state_dir / WINDOWS_FILE)
        self.windows: Windows = {}
        self._policy: PolicySet | None = None
        self._book = Rulebook(())
        self._pruned_at = 0.0

    async def open(self) -> None:
        """Read the windows stored by the last run."""
        self.windows = await trio.to_thread.run_sync(self.file.load)

    def rulebook(self) -> Rulebook:
        """The rules in force, indexed once per policy."""
        policy = self.current.snapshot.policy
        if policy is not self._policy:
            self._book = Rulebook(policy.automation)
            self._policy = policy
        return self._book

    async def publish(self, batch: Batch) -> Published:
        """Count ``batch``'s outcomes, make the holds they call for, store the counts."""
        book = self.rulebook()
        now = self.clock()
        if now - self._pruned_at > PRUNE_EVERY:
            self.windows = prune(self.windows, book, now)
            self._pruned_at = now
        before = self.windows
        result = evaluate(book, batch.outcomes, before, now)
        self.windows = result.windows
        self.metrics.automation_received(batch.records, len(batch.outcomes))
        for rule_id, count in result.matched.items():
            self.metrics.automation_matched(book.by_id[rule_id].source, count)
        held = []
        for hold in result.holds:
            stored, event = await self.mutations.hold(hold.suspension(), hold.rule.actor)
            change = _CHANGES[event]
            if event is not None:
                self.metrics.automation_held(hold.rule.source, change)
            held.append(
                Held(
                    id=stored.id,
                    domain=hold.domain,
                    tenant=hold.tenant,
                    campaign=hold.campaign,
                    expires=None if stored.expires is None else rfc3339(stored.expires, "seconds"),
                    rule=hold.rule.source,
                    change=change,
                )
            )
        if result.windows is not before:
            await self.file.save(lambda: encode_windows(prune(self.windows, book, self.clock())))
        return Published(
            records=batch.records,
            failures=len(batch.outcomes),
            matched=sum(result.matched.values()),
            holds=held,
        )
