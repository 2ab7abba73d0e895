"""Runtime state in etcd v3, through its JSON gateway, shared by a fleet of nodes.

How this works
--------------
One key per runtime object under the configured prefix, holding the text
the files backend writes, and a criteria key per suspension
(``etcd_keys.py``). The store is put together from parts, each with its own
module:

    EtcdStore       this module: open, the write transactions, claim, expiry
    ├── Keys        etcd_keys.py: the key layout and the operations per entry
    ├── Known       etcd_known.py: each key's revision as this node knows it;
    │               what a watched event or a resync makes news
    ├── Follower    etcd_watch.py: the watch, resyncs, member health, backoff
    ├── Health      etcd_watch.py: ``degraded`` and ``on_degraded``
    ├── Sweeper     this module: removing expired suspensions, retried
    ├── LocalCopy   cache.py: the state mirrored under ``state_dir``
    └── Gateway     gateway.py: HTTP to the members, in turn

Loading. ``open`` reads P runtime/ at one revision R (in pages, all at R)
and ``follow`` watches from R+1, so no change is missed. If etcd is
unreachable it serves the local copy, degraded, and ``follow`` resyncs once
etcd answers.

Writing. A change is one transaction, acknowledged when etcd answers
(committed by a quorum), and remembered in ``Known`` so its echo through the
watch is dropped. Upsert-by-criteria (``claim``) compares the criteria key
and the holder's revision, so two nodes posting the same criteria at once
get one id: the loser re-reads and updates the winner's suspension.
``remove_expired`` deletes only if the key is still at the revision this
node saw expire, so racing sweepers are harmless.

Degraded. When no member answers, the node keeps the state it has (a hold
is never dropped because the store is away), refuses changes with
``StateUnavailable`` (503), and the follow loop reconnects with backoff,
resuming the watch after the last revision it applied.

The local copy is best-effort: files are replaced atomically but not fsynced
one by one; a torn one is skipped when read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
import trio

from sluice.policy.model import Entry, Suspension

from .base import Apply, Claim, Claimed, Loaded, StateUnavailable, claim_each, ignore_invalid
from .cache import LocalCopy
from .encoding import name_for, render, runtime_from
from .etcd_keys import Keys
from .etcd_known import Expired, Known, runtime_keys
from .etcd_watch import Follower, Health
from .gateway import EtcdRefused, Gateway, absent, b64, delete_op, mod_revision_is, put_op, unb64, value_is

log = structlog.get_logger("sluice.state")

WRITE_PATIENCE = 3.0  # how long a change waits out a leader election before 503
OPEN_PATIENCE = 1.0
CLAIM_TRIES = 8
TXN_LIMIT = 128  # etcd's default limit of operations in one transaction


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
        self.gateway = gateway
        self.keys = Keys(prefix)
        self.copy = LocalCopy(cache_dir)
        self.known = Known(self.keys, self.copy)
        self.health = Health(lambda: self.where)
        # invalid values are logged and left out as they arrive (Keys.parse); none is kept
        self.on_invalid: Callable[[dict[str, str]], None] = ignore_invalid
        self.sweeper = Sweeper(gateway, self.keys, self.known)
        self.follower = Follower(
            gateway,
            self.known,
            self.health,
            retry_sweeps=self.sweeper.retry,
            sweep_later=self.sweeper.later,
            clock=clock,
        )

    @property
    def where(self) -> str:
        return f"etcd {', '.join(self.gateway.endpoints)} under {self.keys.prefix}"

    @property
    def degraded(self) -> bool:
        return self.health.degraded

    @property
    def on_degraded(self) -> Callable[[bool, str], None]:
        return self.health.on_degraded

    @on_degraded.setter
    def on_degraded(self, callback: Callable[[bool, str], None]) -> None:
        self.health.on_degraded = callback

    @property
    def revision(self) -> int | None:
        """The last revision applied; None while a resync is needed."""
        return self.known.revision

    # -- loading -----------------------------------------------------------------

    async def open(self) -> Loaded:
        """Read the state at a revision R; from the local copy if etcd is unreachable."""
        try:
            found, revision = await self.gateway.read_prefix(self.keys.runtime.encode(), patience=OPEN_PATIENCE)
        except StateUnavailable as exc:
            return await self._open_from_cache(str(exc))
        entries = self.known.loaded(found, revision)
        log.info("state_loaded", where=self.where, revision=revision, entries=len(entries))
        return Loaded(runtime=runtime_from(entries), revision=revision)

    async def _open_from_cache(self, reason: str) -> Loaded:
        runtime = await self.copy.load()
        self.known.loaded_stale(runtime_keys(runtime))
        self.health.degraded = True
        log.warning(
            "state_degraded",
            reason=reason,
            where=self.where,
            serving=f"local copy in {self.copy.directory}",
            entries=len(self.known.seen),
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
            self.health.set(True, str(exc))
            raise
        except EtcdRefused as exc:
            raise StateUnavailable(f"etcd refused the change: {exc}") from None
        self.health.answered()
        return answer

    async def put(self, entry: Entry) -> None:
        """Store ``entry``; returns once etcd has committed it."""
        data = render(entry)
        answer = await self._txn([], self.keys.put_ops(entry, data))
        self.known.wrote(self.keys.of_entry(entry), revision_of(answer), data)

    async def delete(self, entry: Entry) -> None:
        """Remove ``entry`` (and its criteria key, if it still points at it)."""
        answer = await self._txn([], self.keys.delete_ops(entry))
        self.known.wrote(self.keys.of_entry(entry), revision_of(answer), None)

    async def _range_one(self, key: str) -> dict | None:
        answer = await self._txn([], [{"request_range": {"key": b64(key)}}])
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        return kvs[0] if kvs else None

    async def _read_claim(
        self, ckey: str, criteria: str, known: Suspension | None
    ) -> tuple[str | None, str | None, Suspension | None, int]:
        """What etcd says about the criteria: (criteria value, candidate id, holder, its revision)."""
        kv = await self._range_one(ckey)
        value = unb64(kv["value"]).decode() if kv else None
        candidate = value if value is not None else (known.id if known is not None else None)
        if candidate is None:
            return None, None, None, 0
        skey = self.keys.of("suspension", candidate)
        kv = await self._range_one(skey)
        if kv is None:
            return value, candidate, None, 0
        holder = self.keys.parse(skey, unb64(kv.get("value", "")))
        if not isinstance(holder, Suspension) or holder.criteria_key != criteria:
            holder = None  # a dangling or hand-edited pointer: not a holder
        return value, candidate, holder, int(kv["mod_revision"])

    async def claim(
        self,
        criteria_key: str,
        known: Suspension | None,
        build: Callable[[Suspension | None], Suspension],
    ) -> tuple[Suspension, Suspension | None]:
        """Upsert by criteria, race-free across nodes (see the module docstring)."""
        ckey = self.keys.criteria(criteria_key)
        # First try on what this node knows: one round trip when nobody raced.
        seen = self.known.live_revision(self.keys.of_entry(known)) if known is not None else None
        if known is None:
            value, candidate, holder, revision = None, None, None, 0
        elif seen is not None:
            value, candidate, holder, revision = known.id, known.id, known, seen
        else:
            value, candidate, holder, revision = await self._read_claim(ckey, criteria_key, known)
        for _ in range(CLAIM_TRIES):
            stored = build(holder)
            compare = [absent(ckey) if value is None else value_is(ckey, value)]
            if candidate is not None:
                compare.append(mod_revision_is(self.keys.of("suspension", candidate), revision))
            skey, data = self.keys.of_entry(stored), render(stored)
            ops = [put_op(skey, data), put_op(ckey, stored.id)]
            replaced = holder is not None and holder.id != stored.id
            if replaced:
                ops.append(delete_op(self.keys.of_entry(holder)))
            answer = await self._txn(compare, ops)
            if answer.get("succeeded"):
                self.known.wrote(skey, revision_of(answer), data)
                if replaced:
                    self.known.wrote(self.keys.of_entry(holder), revision_of(answer), None)
                return stored, holder
            value, candidate, holder, revision = await self._read_claim(ckey, criteria_key, known)
        raise StateUnavailable("too many nodes are changing these criteria at once; try again")

    async def claim_all(self, claims: Sequence[Claim]) -> list[Claimed]:
        """Each claim in turn, a transaction each (``claim``)."""
        return await claim_each(self.claim, claims)

    async def remove_expired(self, suspension: Suspension) -> None:
        """Delete an expired suspension if nobody changed it since; never raises."""
        key = self.keys.of_entry(suspension)
        revision = self.known.live_revision(key)
        if revision is None:
            return  # gone already, or its revision is unknown until the next resync
        await self.sweeper.sweep((key, revision, suspension.criteria_key, suspension.id))

    # -- following -------------------------------------------------------------------

    async def follow(
        self,
        apply: Apply,
        *,
        stop: trio.Event,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Apply other nodes' changes until ``stop`` is set (``etcd_watch.Follower``)."""
        await self.follower.run(apply, stop=stop, task_status=task_status)

    # -- bulk, for state export and import ---------------------------------------------

    async def read_all(self) -> dict[str, bytes]:
        """Every runtime value by file name (``suspension-<id>.toml`` ...), at one revision."""
        found, _revision = await self.gateway.read_prefix(self.keys.runtime.encode(), patience=OPEN_PATIENCE)
        raw = {}
        for key, (_mod, data) in found.items():
            kind_key = self.keys.kind_key(key)
            if kind_key is None:
                log.warning("state_key_ignored", key=key)
                continue
            raw[name_for(*kind_key)] = data
        return raw

    async def write_all(self, puts: dict[str, tuple[Entry, bytes]], removes: dict[str, Entry]) -> None:
        """Put entries (with their exact bytes) and remove others, in transactions of
        at most TXN_LIMIT operations; not atomic as a whole."""
        ops: list[dict] = []
        for entry in removes.values():
            ops.extend(self.keys.delete_ops(entry))
        for entry, data in puts.values():
            ops.extend(self.keys.put_ops(entry, data))
        for start in range(0, len(ops), TXN_LIMIT):
            body = {"compare": [], "success": ops[start:start + TXN_LIMIT]}
            try:
                await self.gateway.call("/v3/kv/txn", body, patience=WRITE_PATIENCE)
            except EtcdRefused as exc:
                raise StateUnavailable(f"etcd refused the change: {exc}") from None

    async def aclose(self) -> None:
        """Write out the local copy and close the connections (bounded, shielded)."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.copy.flush()
            await self.gateway.aclose()


class Sweeper:
    """Removes expired suspensions by a transaction on the revision seen to expire.

    A sweep etcd did not answer is kept and tried again while the watch runs.
    """

    def __init__(self, gateway: Gateway, keys: Keys, known: Known) -> None:
        self.gateway = gateway
        self.keys = keys
        self.known = known
        self._later: dict[str, Expired] = {}

    def later(self, expired: Expired) -> None:
        """Sweep ``expired`` on the next ``retry``."""
        self._later[expired[0]] = expired

    async def sweep(self, expired: Expired) -> None:
        """Delete the key if it is still at the revision seen; never raises."""
        key, revision, criteria, ident = expired
        ckey = self.keys.criteria(criteria)
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
            self._later[key] = expired
            return
        self._later.pop(key, None)
        if answer.get("succeeded"):
            self.known.wrote(key, revision_of(answer), None)
        # else: changed or removed since; the watch brings whatever happened

    async def retry(self) -> None:
        for expired in list(self._later.values()):
            await self.sweep(expired)


def revision_of(answer: dict) -> int:
    """The revision an etcd answer was made at."""
    return int(answer["header"]["revision"])
