"""The etcd backend's local copy of the runtime state, for starting while etcd is down.

How this works
--------------
The copy lives in ``<state_dir>/etcd-cache/runtime/``, in the files
backend's layout and with the very bytes etcd holds. The store calls ``put``
for every value it applies (None for a removal) and ``replace_all`` after a
full read; a background task (``run``) writes what is pending in a worker
thread, coalescing bursts, so the event loop and acknowledgements never wait
for this disk. Files are replaced atomically but, for speed, not fsynced one
by one (the directory is, once per batch): it is a best-effort copy, and a
torn file is skipped, with a warning, when the copy is read.
"""

from __future__ import annotations

import functools
from pathlib import Path

import structlog
import trio

from sluice.policy.snapshot import Runtime

from .files import FileStore

log = structlog.get_logger("sluice.state")


class LocalCopy:
    def __init__(self, directory: Path) -> None:
        self._files = FileStore(directory)
        self.directory = self._files.directory
        self._pending: dict[str, bytes | None] = {}
        self._full: dict[str, bytes] | None = None
        self._wake = trio.Event()

    async def load(self) -> Runtime:
        """The copy as it is on disk; unreadable files are left out (and logged)."""
        runtime, problems = await trio.to_thread.run_sync(self._files.load)
        for problem in problems:
            log.warning("state_cache_entry_skipped", problem=str(problem))
        return runtime

    def put(self, name: str, data: bytes | None) -> None:
        """Write ``data`` as file ``name`` soon (None: remove it)."""
        self._pending[name] = data
        self._wake.set()

    def replace_all(self, full: dict[str, bytes]) -> None:
        """Make the copy exactly ``full`` (name -> bytes) soon."""
        self._full = full
        self._pending.clear()
        self._wake.set()

    def _reconcile(self, full: dict[str, bytes]) -> None:
        have = self._files.read_raw()
        changes: dict[str, bytes | None] = {n: None for n in have if n not in full}
        changes.update({n: data for n, data in full.items() if have.get(n) != data})
        self._files.write_raw(changes, fsync=False)

    async def flush(self) -> None:
        """Write out everything pending now."""
        try:
            if self._full is not None:
                full, self._full = self._full, None
                await trio.to_thread.run_sync(self._reconcile, full)
            while self._pending:
                batch, self._pending = self._pending, {}
                await trio.to_thread.run_sync(functools.partial(self._files.write_raw, batch, fsync=False))
        except OSError as exc:
            log.warning("state_cache_write_failed", error=str(exc), directory=str(self.directory))

    async def run(self) -> None:
        """Write pending changes as they come, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()
