"""Runtime state in etcd v3, through its JSON gateway, shared by a fleet of nodes.

How this works
--------------
Keys under the configured prefix P:

    P runtime/<kind>/<quoted key>   one per runtime object (suspension, queue,
                                    schedule, endpoint); the value is the TOML
                                    text the files backend writes, so export
                                    and import are byte copies
    P criteria/<sha256>             the id of the suspension holding the
                                    criteria whose ``criteria_key`` hashes so

Loading and following. ``open`` reads P runtime/ at one revision R (in
pages, all at R) and ``follow`` watches from R+1, so no change is missed.
``_seen`` maps every key this node knows to the revision it knows it at (a
tombstone for a delete it made itself); a watched event at or below that
revision is this node's own write echoing back, or superseded, and is
dropped. That check happens in ``read()``, which ``Mutations`` calls under
its lock, the lock local writes are made under: an old remote value can never
overwrite a newer local one. A watch cancelled for compaction, or a node that
started from its local copy, does a full resync: range again, apply the
difference, watch from the new revision.

Writing. A change is one transaction, acknowledged when etcd answers
(committed by a quorum). Upsert-by-criteria (``claim``) compares the
criteria key and the holder's revision, so two nodes posting the same
criteria at once get one id: the loser re-reads and updates the winner's
suspension. ``remove_expired`` deletes only if the key is still at the
revision this node saw expire, so racing sweepers are harmless.

Degraded. Endpoints are tried in turn. When none answers, the node keeps the
state it has (a hold is never dropped because the store is away), refuses
changes with ``StateUnavailable`` (503), and the follow loop reconnects with
backoff, resuming the watch after the last revision it applied. A member is
followed only once a linearizable read on it succeeds, and while the watch
runs such a read every ``PROBE_INTERVAL`` seconds notices a member that is
up but cut off from its quorum (it would still serve a watch, silently).

The local copy. Every value this node applies is mirrored, in the background,
into ``<state_dir>/etcd-cache/runtime/`` in the files backend's layout, so a
node can start, degraded, while etcd is down. It is a best-effort copy:
files are replaced atomically but not fsynced one by one; a torn one is
skipped when read.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import structlog
import trio

from sluice.policy.model import Entry, Suspension

from .cache import LocalCopy
from .encoding import entry_key, name_for, only_entry, parse_entry, render, runtime_from
from .gateway import (
    EtcdRefused,
    Gateway,
    Retry,
    absent,
    b64,
    delete_op,
    describe,
    mod_revision_is,
    prefix_end,
    put_op,
    unb64,
    value_is,
)
from .base import Apply, Loaded, StateUnavailable, Updates, ignore_degraded

log = structlog.get_logger("sluice.state")

WRITE_PATIENCE = 3.0  # how long a change waits out a leader election before 503
OPEN_PATIENCE = 1.0
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
PAGE = 2000
CLAIM_TRIES = 8


class _Broken(Exception):
    """The watch ended or went silent; reconnect."""


class EtcdStore:
    """The shared runtime-state backend (a ``RuntimeStore``)."""

    def __init__(
        self,
        gateway: Gateway,
        prefix: str,
        cache_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not prefix:
            raise ValueError("state.etcd.prefix must not be empty")
        self.gateway = gateway
        self.prefix = prefix
        self.clock = clock
        self.degraded = False
        self.on_degraded: Callable[[bool, str], None] = ignore_degraded
        self.revision: int | None = None  # last revision applied; None: resync needed
        self._runtime_prefix = prefix + "runtime/"
        self._seen: dict[str, tuple[int, bool]] = {}  # key -> (revision, live)
        self._sweep_later: dict[str, tuple[int, str, str]] = {}  # key -> (revision, criteria, id)
        self._wake = trio.Event()
        self.copy = LocalCopy(cache_dir)

    @property
    def where(self) -> str:
        return f"etcd {', '.join(self.gateway.endpoints)} under {self.prefix}"

    # -- keys ----------------------------------------------------------------

    def key(self, kind: str, key: str) -> str:
        return f"{self._runtime_prefix}{kind}/{quote(key, safe='')}"

    def criteria_key(self, criteria: str) -> str:
        return f"{self.prefix}criteria/{hashlib.sha256(criteria.encode()).hexdigest()}"

    def kind_key(self, key: str) -> tuple[str, str] | None:
        """(kind, key) of an etcd key under runtime/, or None if it is not one of ours."""
        if not key.startswith(self._runtime_prefix):
            return None
        kind, sep, quoted = key[len(self._runtime_prefix):].partition("/")
        if not sep or kind not in ("suspension", "queue", "schedule", "endpoint") or not quoted:
            return None
        return kind, unquote(quoted)

    def _parse(self, key: str, data: bytes) -> Entry | None:
        """The entry an etcd value holds; None (logged) if it is not valid."""
        kind_key = self.kind_key(key)
        if kind_key is None:
            log.warning("state_keyignore_degradedd", key=key)
            return None
        parsed = parse_entry(data, name_for(*kind_key), where=key)
        if parsed.problems:
            for problem in parsed.problems:
                log.error("runtime_value_invalid", key=key, problem=str(problem))
            return None
        return only_entry(parsed)

    # -- health ----------------------------------------------------------------

    def _set_degraded(self, degraded: bool, reason: str = "") -> None:
        if degraded == self.degraded:
            return
        self.degraded = degraded
        if degraded:
            log.warning("state_degraded", reason=reason, where=self.where)
        else:
            log.info("state_restored", where=self.where, revision=self.revision)
        self.on_degraded(degraded, reason)

    # -- loading -----------------------------------------------------------------

    async def _range_all(self, patience: float) -> tuple[dict[str, tuple[int, bytes]], int]:
        """Every runtime key: key -> (mod_revision, value), all at one revision, and that revision."""
        start = self._runtime_prefix.encode()
        end = prefix_end(start)
        for _ in range(3):
            found: dict[str, tuple[int, bytes]] = {}
            revision: int | None = None
            key = start
            try:
                while True:
                    body: dict[str, Any] = {"key": b64(key), "range_end": b64(end), "limit": PAGE}
                    if revision is not None:
                        body["revision"] = revision
                    answer = await self.gateway.call("/v3/kv/range", body, patience=patience)
                    if revision is None:
                        revision = int(answer["header"]["revision"])
                    kvs = answer.get("kvs", [])
                    for kv in kvs:
                        raw = unb64(kv["key"])
                        found[raw.decode("utf-8", "replace")] = (
                            int(kv["mod_revision"]),
                            unb64(kv.get("value", "")),
                        )
                    if not answer.get("more") or not kvs:
                        return found, revision
                    key = unb64(kvs[-1]["key"]) + b"\0"
            except EtcdRefused as exc:
                if exc.code != 11:  # OutOfRange: compacted while paging; start again
                    raise StateUnavailable(f"etcd refused to list the state: {exc}") from None
        raise StateUnavailable("etcd state kept being compacted while it was read")

    async def open(self) -> Loaded:
        """Read the state at a revision R; from the local copy if etcd is unreachable."""
        try:
            found, revision = await self._range_all(OPEN_PATIENCE)
        except StateUnavailable as exc:
            return await self._open_from_cache(str(exc))
        entries = []
        full = {}
        for key, (mod_revision, data) in found.items():
            entry = self._parse(key, data)
            self._seen[key] = (mod_revision, True)
            if entry is not None:
                entries.append(entry)
                full[name_for(*entry_key(entry))] = data
        self.revision = revision
        self.copy.replace_all(full)
        log.info("state_loaded", where=self.where, revision=revision, entries=len(entries))
        return Loaded(runtime=runtime_from(entries), revision=revision)

    async def _open_from_cache(self, reason: str) -> Loaded:
        runtime = await self.copy.load()
        for kind, mapping in (
            ("suspension", runtime.suspensions),
            ("queue", runtime.queues),
            ("schedule", runtime.schedule_pauses),
            ("endpoint", runtime.endpoint_pauses),
        ):
            for key in mapping:
                self._seen[self.key(kind, key)] = (0, True)  # revision unknown until a resync
        self.revision = None
        self.degraded = True
        log.warning(
            "state_degraded",
            reason=reason,
            where=self.where,
            serving=f"local copy in {self.copy.directory}",
            entries=len(self._seen),
        )
        return Loaded(runtime=runtime, stale=True)

    # -- writing -----------------------------------------------------------------

    async def _txn(self, compare: list[dict], success: list[dict], failure: list[dict] = ()) -> dict:
        body = {"compare": compare, "success": success, "failure": list(failure)}
        try:
            answer = await self.gateway.call(
                "/v3/kv/txn", body, patience=0.0 if self.degraded else WRITE_PATIENCE
            )
        except StateUnavailable as exc:
            self._set_degraded(True, str(exc))
            raise
        except EtcdRefused as exc:
            raise StateUnavailable(f"etcd refused the change: {exc}") from None
        if self.degraded:
            self._wake.set()  # etcd is back: reconnect now rather than after the backoff
        return answer

    def _wrote(self, key: str, answer: dict, data: bytes | None) -> None:
        """Remember a committed write, so its echo through the watch is dropped."""
        self._seen[key] = (int(answer["header"]["revision"]), data is not None)
        kind_key = self.kind_key(key)
        if kind_key is not None:
            self.copy.put(name_for(*kind_key), data)

    async def put(self, entry: Entry) -> None:
        """Store ``entry``; returns once etcd has committed it."""
        key, data = self.key(*entry_key(entry)), render(entry)
        ops = [put_op(key, data)]
        if isinstance(entry, Suspension):
            ops.append(put_op(self.criteria_key(entry.criteria_key), entry.id))
        self._wrote(key, await self._txn([], ops), data)

    def _delete_ops(self, key: str, suspension: Suspension | None) -> list[dict]:
        ops = [delete_op(key)]
        if suspension is not None:
            ckey = self.criteria_key(suspension.criteria_key)
            ops.append(
                {
                    "request_txn": {
                        "compare": [value_is(ckey, suspension.id)],
                        "success": [delete_op(ckey)],
                    }
                }
            )
        return ops

    async def delete(self, entry: Entry) -> None:
        """Remove ``entry`` (and its criteria key, if it still points at it)."""
        key = self.key(*entry_key(entry))
        suspension = entry if isinstance(entry, Suspension) else None
        self._wrote(key, await self._txn([], self._delete_ops(key, suspension)), None)

    async def _read_claim(
        self, ckey: str, criteria: str, known: Suspension | None
    ) -> tuple[str | None, str | None, Suspension | None, int]:
        """What etcd says about the criteria: (criteria value, candidate id, holder, its revision)."""
        answer = await self._txn([], [{"request_range": {"key": b64(ckey)}}])
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        value = unb64(kvs[0]["value"]).decode() if kvs else None
        candidate = value if value is not None else (known.id if known is not None else None)
        if candidate is None:
            return None, None, None, 0
        skey = self.key("suspension", candidate)
        answer = await self._txn([], [{"request_range": {"key": b64(skey)}}])
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        if not kvs:
            return value, candidate, None, 0
        holder = self._parse(skey, unb64(kvs[0].get("value", "")))
        if not isinstance(holder, Suspension) or holder.criteria_key != criteria:
            holder = None  # a dangling or hand-edited pointer: not a holder
        return value, candidate, holder, int(kvs[0]["mod_revision"])

    async def claim(
        self,
        criteria_key: str,
        known: Suspension | None,
        build: Callable[[Suspension | None], Suspension],
    ) -> tuple[Suspension, Suspension | None]:
        """Upsert by criteria, race-free across nodes (see the module docstring)."""
        ckey = self.criteria_key(criteria_key)
        # First try on what this node knows: one round trip when nobody raced.
        seen = self._seen.get(self.key("suspension", known.id)) if known is not None else None
        if known is None:
            value, candidate, holder, revision = None, None, None, 0
        elif seen is not None and seen[1] and seen[0] > 0:
            value, candidate, holder, revision = known.id, known.id, known, seen[0]
        else:
            value, candidate, holder, revision = await self._read_claim(ckey, criteria_key, known)
        for _ in range(CLAIM_TRIES):
            stored = build(holder)
            compare = [absent(ckey) if value is None else value_is(ckey, value)]
            if candidate is not None:
                compare.append(mod_revision_is(self.key("suspension", candidate), revision))
            skey, data = self.key("suspension", stored.id), render(stored)
            ops = [put_op(skey, data), put_op(ckey, stored.id)]
            if holder is not None and holder.id != stored.id:
                ops.append(delete_op(self.key("suspension", holder.id)))
            answer = await self._txn(compare, ops)
            if answer.get("succeeded"):
                self._wrote(skey, answer, data)
                if holder is not None and holder.id != stored.id:
                    self._wrote(self.key("suspension", holder.id), answer, None)
                return stored, holder
            value, candidate, holder, revision = await self._read_claim(ckey, criteria_key, known)
        raise StateUnavailable("too many nodes are changing these criteria at once; try again")

    async def remove_expired(self, suspension: Suspension) -> None:
        """Delete an expired suspension if nobody changed it since; never raises."""
        key = self.key("suspension", suspension.id)
        seen = self._seen.get(key)
        if seen is None or not seen[1] or seen[0] == 0:
            return  # gone already, or its revision is unknown until the next resync
        await self._sweep(key, seen[0], suspension.criteria_key, suspension.id)

    async def _sweep(self, key: str, revision: int, criteria: str, ident: str) -> None:
        ckey = self.criteria_key(criteria)
        body = {
            "compare": [mod_revision_is(key, revision)],
            "success": [
                delete_op(key),
                {"request_txn": {"compare": [value_is(ckey, ident)], "success": [delete_op(ckey)]}},
            ],
        }
        try:
            answer = await self.gateway.call("/v3/kv/txn", body)
        except (StateUnavailable, EtcdRefused):
            self._sweep_later[key] = (revision, criteria, ident)
            return
        self._sweep_later.pop(key, None)
        if answer.get("succeeded"):
            self._wrote(key, answer, None)
        # else: changed or removed since; the watch brings whatever happened

    async def _retry_sweeps(self) -> None:
        for key, (revision, criteria, ident) in list(self._sweep_later.items()):
            await self._sweep(key, revision, criteria, ident)

    # -- following -------------------------------------------------------------------

    async def follow(
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
            nursery.start_soon(self.copy.run)

            async def until_stopped() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stopped)
            backoff = BACKOFF_MIN
            while True:
                try:
                    if self.revision is None:
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
                    self._set_degraded(True, str(exc))
                ready()
                with trio.move_on_after(backoff):
                    await self._wake.wait()
                self._wake = trio.Event()
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _resync(self, apply: Apply) -> None:
        """Read everything again and apply the difference (announced like any change)."""
        found, revision = await self._range_all(0.0)
        now = self.clock()

        async def read() -> Updates:
            updates: Updates = {}
            for key, (mod_revision, data) in found.items():
                seen = self._seen.get(key)
                if seen is not None and mod_revision <= seen[0]:
                    continue  # known, or this node changed it since
                self._seen[key] = (mod_revision, True)
                entry = self._parse(key, data)
                if entry is None:
                    continue
                updates[entry_key(entry)] = entry
                self.copy.put(name_for(*entry_key(entry)), data)
                if isinstance(entry, Suspension) and not entry.is_active(now):
                    self._sweep_later[key] = (mod_revision, entry.criteria_key, entry.id)
            for key, (seen_revision, live) in list(self._seen.items()):
                if key in found or seen_revision > revision:
                    continue  # still there, or written by this node after the read
                del self._seen[key]
                kind_key = self.kind_key(key)
                if live and kind_key is not None:
                    updates[kind_key] = None
                    self.copy.put(name_for(*kind_key), None)
            self.revision = revision
            return updates

        updates = await apply(read, announce="each")
        log.info("state_resynced", revision=revision, updates=updates)

    async def _watch(self, apply: Apply, ready: Callable[[], None]) -> None:
        """Watch from the last revision applied; returns when compaction needs a resync."""
        start = self._runtime_prefix.encode()
        body = {
            "create_request": {
                "key": b64(start),
                "range_end": b64(prefix_end(start)),
                "start_revision": str(self.revision + 1),
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
                self._set_degraded(False)
                ready()
                await self._follow_stream(endpoint, results, apply)
                return
        raise StateUnavailable("no etcd member has a quorum (" + "; ".join(problems.values()) + ")")

    async def _follow_stream(self, endpoint: str, results: AsyncIterator[dict], apply: Apply) -> None:
        """Apply what the watch brings; returns when compaction needs a resync, raises _Broken."""
        log.debug("state_watching", endpoint=endpoint, revision=self.revision)
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
            nursery.start_soon(self._retry_sweeps)
            try:
                async for result in results:
                    if result.get("canceled"):
                        if "compact_revision" in result:
                            log.warning(
                                "state_compacted",
                                wanted=self.revision + 1,
                                compacted=int(result["compact_revision"]),
                            )
                            self.revision = None
                            outcome = "compacted"
                        else:
                            outcome = result.get("cancel_reason") or "watch cancelled"
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

    async def _check(self, endpoint: str) -> str:
        """A linearizable read on ``endpoint``: "" if it has a quorum, else what went wrong."""
        body = {"key": b64(self.prefix), "count_only": True}
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
        await apply(functools.partial(self._fresh, changes), announce="each")
        self.revision = max(self.revision or 0, changes[-1][1])

    async def _fresh(self, changes: list[tuple[str, int, bool, bytes]]) -> Updates:
        """The watched changes still news (called under the mutations lock)."""
        updates: Updates = {}
        for key, revision, deleted, data in changes:
            seen = self._seen.get(key)
            if seen is not None and revision <= seen[0]:
                if not seen[1] and revision == seen[0]:
                    del self._seen[key]  # the echo of this node's own delete
                continue
            kind_key = self.kind_key(key)
            if kind_key is None:
                continue
            if deleted:
                self._seen.pop(key, None)
                updates[kind_key] = None
                self.copy.put(name_for(*kind_key), None)
                continue
            self._seen[key] = (revision, True)
            entry = self._parse(key, data)
            if entry is not None:  # a broken value keeps the entry this node had
                updates[kind_key] = entry
                self.copy.put(name_for(*kind_key), data)
        return updates

    # -- bulk, for state export and import ---------------------------------------------

    async def read_all(self) -> dict[str, bytes]:
        """Every runtime value by file name (``suspension-<id>.toml`` ...), at one revision."""
        found, _revision = await self._range_all(OPEN_PATIENCE)
        raw = {}
        for key, (_mod, data) in found.items():
            kind_key = self.kind_key(key)
            if kind_key is None:
                log.warning("state_keyignore_degradedd", key=key)
                continue
            raw[name_for(*kind_key)] = data
        return raw

    async def write_all(self, puts: dict[str, tuple[Entry, bytes]], removes: dict[str, Entry]) -> None:
        """Put entries (with their exact bytes) and remove others, in transactions of
        at most 128 operations (etcd's default limit); not atomic as a whole."""
        ops: list[dict] = []
        for entry in removes.values():
            suspension = entry if isinstance(entry, Suspension) else None
            ops.extend(self._delete_ops(self.key(*entry_key(entry)), suspension))
        for entry, data in puts.values():
            ops.append(put_op(self.key(*entry_key(entry)), data))
            if isinstance(entry, Suspension):
                ops.append(put_op(self.criteria_key(entry.criteria_key), entry.id))
        for start in range(0, len(ops), 128):
            body = {"compare": [], "success": ops[start:start + 128]}
            try:
                await self.gateway.call("/v3/kv/txn", body, patience=WRITE_PATIENCE)
            except EtcdRefused as exc:
                raise StateUnavailable(f"etcd refused the change: {exc}") from None

    async def aclose(self) -> None:
        """Write out the local copy and close the connections (bounded, shielded)."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.copy.flush()
            await self.gateway.aclose()
