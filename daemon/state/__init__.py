"""Runtime state behind one small interface (DESIGN 8b); the one place a backend is chosen.

    base.py        the interface: RuntimeStore, Loaded, StateUnavailable, settings
    encoding.py    runtime objects <-> TOML text and file names, shared by the backends
    atomic.py      the one atomic, durable file write
    files.py       FileStore: one file per object under state_dir (the default)
    etcd.py        EtcdStore: one etcd key per object, shared by a fleet; with
                   etcd_keys.py, etcd_known.py, etcd_watch.py, gateway.py, cache.py
    transfer.py    sluicectl state export / import

The shell builds a ``StoreSettings`` from its config and calls ``open_store``;
nothing in this package imports the shell. The backends are imported when a
store is opened, not with the package, so that a command that only writes a
file atomically (``sluicectl edit``) does not load trio, httpx and etcd.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Changes, RuntimeStore, StoreSettings


def open_store(
    settings: StoreSettings,
    *,
    changes: Changes | None = None,
    clock: Callable[[], float] = time.time,
) -> RuntimeStore:
    """The backend ``settings`` names, not yet opened.

    ``changes`` tells the files backend of changes in its directory (without
    it, hand edits are not followed); ``clock`` is the etcd backend's, for
    expiry found in a resync. Raises ValueError for settings that cannot
    work (no endpoints, unreadable TLS files, an empty prefix).
    """
    if settings.backend == "etcd":
        from .etcd import EtcdStore
        from .gateway import Gateway

        if settings.etcd is None:
            raise ValueError("state.backend = \"etcd\" needs [state.etcd]")
        gateway = Gateway.from_settings(settings.etcd)
        return EtcdStore(gateway, settings.etcd.prefix, settings.state_dir / "etcd-cache", clock=clock)
    from .files import FileStore

    return FileStore(settings.state_dir, changes=changes)
