"""Atomic, durable file writes: the one way sluice replaces a file on disk (DESIGN 8).

How this works
--------------
New content goes to a temporary file in the same directory (``<name>.tmp``),
which is fsynced and renamed over the target; then the directory is fsynced,
so the rename itself survives a crash. A crash at any instant leaves the old
file or the new one, never a torn one; a leftover ``*.tmp`` is the trace of a
write that never completed, and whoever reads the directory may remove it.

``write_files`` replaces (or removes) several files of one directory and
syncs the directory once, at the end. ``fsync_files=False`` skips the
per-file fsync, for a best-effort copy whose torn files are skipped when
read (the etcd backend's local copy): the renames are still atomic.

``install`` is the last step alone, for a temporary file someone else wrote
(``sluicectl edit``'s editor): fsync it, rename it over the target, fsync
the directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (renames, removals) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(tmp: Path, data: bytes, *, fsync: bool, mode: int) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_files(
    directory: Path,
    changes: Mapping[str, bytes | None],
    *,
    fsync_files: bool = True,
    mode: int = 0o640,
) -> None:
    """Write (bytes) or remove (None) files of ``directory`` by name, each atomically.

    Every new content is written (and fsynced) to its temporary file before
    any is renamed, so a write the disk refuses (full, read-only) changes
    nothing: the temporary files are removed and OSError raised. Then the
    renames and removals, and the directory is fsynced once at the end (if
    anything changed). The directory is created if missing. ``mode`` is that
    of new files, before the umask.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    try:
        for name, data in changes.items():
            if data is not None:
                tmp = directory / (name + TMP_SUFFIX)
                written.append((tmp, directory / name))
                _write_tmp(tmp, data, fsync=fsync_files, mode=mode)
    except OSError:
        for tmp, _target in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    changed = bool(written)
    for tmp, target in written:
        os.rename(tmp, target)
    for name, data in changes.items():
        if data is None:
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                continue
            changed = True
    if changed:
        fsync_directory(directory)


def write_file(path: Path, data: bytes, *, mode: int = 0o640) -> None:
    """Replace ``path`` with ``data`` atomically and durably. Raises OSError."""
    write_files(path.parent, {path.name: data}, mode=mode)


def remove_file(path: Path) -> None:
    """Remove ``path`` durably; a missing file is not an error. Raises OSError."""
    write_files(path.parent, {path.name: None})


def install(tmp: Path, path: Path) -> None:
    """Make the already written ``tmp`` durable and rename it over ``path``. Raises OSError."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)
