"""Following etcd: the watch from the last revision applied, resyncs, health and reconnects.

How this works
--------------
``Follower.run`` is the etcd store's ``follow``. Each round it resyncs if
the revision it has is unknown (a full read, the difference applied and
announced), then watches from that revision + 1 and applies every batch of
events through ``apply`` (``Mutations.apply_changes``), which calls back
``Known.news`` under the mutations lock.

A member is followed only once a linearizable read on it succeeds, and while
the watch runs such a read every ``PROBE_INTERVAL`` seconds notices a member
that is up but cut off from its quorum (it would still serve a watch,
silently). A watch that breaks after it was healthy is reopened at once, on
the next member; no member with a quorum makes the node degraded
(``Health``), and it tries again with backoff, woken early when a write gets
through. A watch cancelled for compaction means a resync.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import structlog
import trio

from .base import Apply, StateUnavailable, Updates, ignore_degraded
from .etcd_known import Expired, Known
from .gateway import EtcdRefused, Gateway, Retry, b64, describe, prefix_end, unb64

log = structlog.get_logger("sluice.state")

PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0


class _Broken(Exception):
    """The watch ended or went silent; reconnect."""


class Health:
    """Whether the store can take changes now, and who hears when that flips."""

    def __init__(self, where: Callable[[], str]) -> None:
        self.where = where
        self.degraded = False
        self.on_degraded: Callable[[bool, str], None] = ignore_degraded
        self._wake = trio.Event()

    def set(self, degraded: bool, reason: str = "", **context: object) -> None:
        if degraded == self.degraded:
            return
        self.degraded = degraded
        if degraded:
            log.warning("state_degraded", reason=reason, where=self.where())
        else:
            log.info("state_restored", where=self.where(), **context)
        self.on_degraded(degraded, reason)

    def answered(self) -> None:
        """etcd took a change: if degraded, reconnect now rather than after the backoff."""
        if self.degraded:
            self._wake.set()

    async def rest(self, seconds: float) -> None:
        """Wait ``seconds``, or less if etcd answers meanwhile."""
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = trio.Event()


class Follower:
    """The follow loop of one etcd store (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        known: Known,
        health: Health,
        *,
        retry_sweeps: Callable[[], Awaitable[None]],
        sweep_later: Callable[[Expired], None],
        clock: Callable[[], float],
    ) -> None:
        self.gateway = gateway
        self.known = known
        self.health = health
        self.retry_sweeps = retry_sweeps
        self.sweep_later = sweep_later
        self.clock = clock

    async def run(
        self,
        apply: Apply,
        *,
        stop: trio.Event,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Apply other nodes' changes until ``stop`` is set; reconnect with backoff.

        Ready once the watch runs, or once it has failed and the node serves
        what it has, degraded.
        """
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.known.copy.run)

            async def until_stopped() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stopped)
            backoff = BACKOFF_MIN
            while True:
                try:
                    if self.known.revision is None:
                        await self._resync(apply)
                    await self._watch(apply, ready)
                    backoff = BACKOFF_MIN
                    continue  # compacted: resync at once
                except _Broken as exc:
                    # it was healthy: reconnect at once, to the next member first
                    log.info("state_watch_broken", reason=str(exc))
                    self.gateway.next_endpoint()
                    backoff = BACKOFF_MIN
                    await trio.sleep(BACKOFF_MIN)
                    continue
                except StateUnavailable as exc:
                    self.health.set(True, str(exc))
                ready()
                await self.health.rest(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _resync(self, apply: Apply) -> None:
        """Read everything again and apply the difference (announced like any change)."""
        found, revision = await self.gateway.read_prefix(self.known.keys.runtime.encode(), patience=0.0)
        now = self.clock()

        async def read() -> Updates:
            updates, expired = self.known.difference(found, revision, now)
            for item in expired:
                self.sweep_later(item)
            return updates

        updates = await apply(read, announce="each")
        log.info("state_resynced", revision=revision, updates=updates)

    async def _watch(self, apply: Apply, ready: Callable[[], None]) -> None:
        """Watch from the last revision applied; returns when compaction needs a resync."""
        start = self.known.keys.runtime.encode()
        body = {
            "create_request": {
                "key": b64(start),
                "range_end": b64(prefix_end(start)),
                "start_revision": str(self.known.revision + 1),
            }
        }
        problems: dict[str, str] = {}
        while len(problems) < len(self.gateway.endpoints):
            async with AsyncExitStack() as stack:
                endpoint, results = await self.gateway.open_watch(body, stack)
                if endpoint in problems:
                    break  # round the members once: none that answers has a quorum
                # A member cut off from its quorum still creates watches: only
                # a linearizable read says the member is worth following.
                problem = await self._check(endpoint)
                if problem:
                    problems[endpoint] = problem
                    self.gateway.next_endpoint()
                    continue
                self.health.set(False, revision=self.known.revision)
                ready()
                await self._follow_stream(endpoint, results, apply)
                return
        raise StateUnavailable("no etcd member has a quorum (" + "; ".join(problems.values()) + ")")

    async def _follow_stream(self, endpoint: str, results: AsyncIterator[dict], apply: Apply) -> None:
        """Apply what the watch brings; returns when compaction needs a resync, raises _Broken."""
        log.debug("state_watching", endpoint=endpoint, revision=self.known.revision)
        # Nothing is raised out of this nursery (trio would wrap it in a
        # group): the outcome is recorded and the scope cancelled.
        outcome = ""
        async with trio.open_nursery() as nursery:

            async def probe() -> None:
                nonlocal outcome
                problem = await self._probe(endpoint)
                outcome = outcome or problem
                nursery.cancel_scope.cancel()

            nursery.start_soon(probe)
            nursery.start_soon(self.retry_sweeps)
            try:
                async for result in results:
                    if result.get("canceled"):
                        outcome = self._cancelled(result)
                        break
                    events = result.get("events")
                    if events:
                        await self._deliver(events, apply)
                else:
                    outcome = "watch stream ended"
            except Retry as exc:
                outcome = str(exc) or "watch stream failed"
            nursery.cancel_scope.cancel()
        if outcome != "compacted":
            raise _Broken(outcome)

    def _cancelled(self, result: dict) -> str:
        """Why etcd cancelled the watch: "compacted" (a resync is due) or its reason."""
        if "compact_revision" not in result:
            return result.get("cancel_reason") or "watch cancelled"
        log.warning(
            "state_compacted",
            wanted=self.known.revision + 1,
            compacted=int(result["compact_revision"]),
        )
        self.known.revision = None
        return "compacted"

    async def _check(self, endpoint: str) -> str:
        """A linearizable read on ``endpoint``: "" if it has a quorum, else what went wrong."""
        body = {"key": b64(self.known.keys.prefix), "count_only": True}
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                await self.gateway.post_to(endpoint, "/v3/kv/range", body, timeout=PROBE_TIMEOUT)
        except (Retry, EtcdRefused, trio.TooSlowError) as exc:
            return f"{endpoint} failed a health check: {describe(exc)}"
        return ""

    async def _probe(self, endpoint: str) -> str:
        """Check the watched member every PROBE_INTERVAL; returns what went wrong once it fails."""
        while True:
            await trio.sleep(PROBE_INTERVAL)
            problem = await self._check(endpoint)
            if problem:
                return problem

    async def _deliver(self, events: list[dict], apply: Apply) -> None:
        changes = []
        for event in events:
            kv = event["kv"]
            changes.append(
                (
                    unb64(kv["key"]).decode("utf-8", "replace"),
                    int(kv["mod_revision"]),
                    event.get("type") == "DELETE",
                    unb64(kv.get("value", "")),
                )
            )

        async def read() -> Updates:
            return self.known.news(changes)

        await apply(read, announce="each")
        self.known.revision = max(self.known.revision or 0, changes[-1][1])
