"""Moving runtime state between backends: ``sluicectl state export`` and ``state import``.

How this works
--------------
Both backends hold the same thing: one TOML text per runtime object, the text
``encoding.render`` writes (a file under ``<state_dir>/runtime/`` or the value of
an etcd key). So moving state is copying those texts.

Export reads them from the backend the settings name (through
``open_store``, the one factory; ``sluicectl`` builds the settings from
sluiced.toml), checks every one, and writes either

- a directory: one file per object, named as the files backend names them,
  with the very bytes the store holds (a directory that can serve as, or be
  copied into, ``<state_dir>/runtime/``); or
- one TOML document (to a ``*.toml`` file, or ``-`` for stdout): the texts
  one after the other, which together are ``[[suspension]]``, ``[[queue]]``,
  ``[[schedule]]`` and ``[[endpoint]]`` tables.

Import reads either form, checks every entry (all problems are reported and
nothing is written if there is one), and writes the entries into the backend
the settings name: files are written atomically and fsynced (a running sluiced
takes them in as hand edits), etcd keys are put in transactions (every node
takes them in through its watch). Entries already in the store and not in the
input are kept, unless ``replace`` is given.

Errors:

    TransferError          the input, output or stored state cannot be used
    └── StoreUnreachable   the store (etcd) did not answer
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import trio

from sluice.policy.files import is_policy_file, parse_runtime
from sluice.policy.model import Entry
from sluice.policy.times import rfc3339

from . import open_store
from .atomic import write_file, write_files
from .base import RuntimeStore, StateUnavailable, StoreSettings
from .encoding import entry_key, file_name, key_of, only_entry, parse_entry, render

T = TypeVar("T")


class TransferError(Exception):
    """State could not be exported or imported; the message says why."""


class StoreUnreachable(TransferError):
    """The configured store did not answer (etcd down or misconfigured)."""


# -- reading and writing a backend ---------------------------------------------


def _run(settings: StoreSettings, use: Callable[[RuntimeStore], Awaitable[T]]) -> T:
    """``use(store)`` on the store ``settings`` name, closed afterwards."""
    try:
        store = open_store(settings)
    except ValueError as exc:
        raise TransferError(str(exc)) from None

    async def run() -> T:
        try:
            return await use(store)
        finally:
            await store.aclose()

    try:
        return trio.run(run)
    except StateUnavailable as exc:
        raise StoreUnreachable(exc.message) from None


def read_backend(settings: StoreSettings) -> dict[str, bytes]:
    """The runtime texts the configured backend holds, by file name."""
    return _run(settings, lambda store: store.read_all())


def write_backend(
    settings: StoreSettings, puts: dict[str, tuple[Entry, bytes]], removes: dict[str, Entry]
) -> None:
    """Write texts (by file name) into the configured backend and remove others."""
    try:
        _run(settings, lambda store: store.write_all(puts, removes))
    except OSError as exc:
        raise TransferError(f"cannot write {settings.state_dir / 'runtime'}: {exc}") from None


def _checked(raw: dict[str, bytes], where: str) -> dict[str, tuple[Entry, bytes]]:
    """Each text parsed; TransferError listing every problem."""
    checked, problems = {}, []
    for name, data in sorted(raw.items()):
        parsed = parse_entry(data, name, where=f"{where}/{name}")
        if parsed.problems:
            problems.extend(str(p) for p in parsed.problems)
        else:
            checked[name] = (only_entry(parsed), data)
    if problems:
        raise TransferError("invalid runtime state:\n" + "\n".join(problems))
    return checked


# -- the two forms -----------------------------------------------------------------


def document(texts: list[bytes], header: str) -> bytes:
    """One TOML document holding every text."""
    body = b"\n".join(t if t.endswith(b"\n") else t + b"\n" for t in texts)
    return f"# {header}\n\n".encode() + body


def read_document(data: bytes, name: str) -> dict[str, tuple[Entry, bytes]]:
    """The entries of one TOML document, each with the text the store will hold."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TransferError(f"{name}: not valid UTF-8") from None
    parsed = parse_runtime(text, name)
    if parsed.problems:
        raise TransferError("invalid runtime state:\n" + "\n".join(str(p) for p in parsed.problems))
    entries: dict[str, tuple[Entry, bytes]] = {}
    for entry in parsed.entries():
        fname = file_name(entry)
        if fname in entries:
            kind, key = entry_key(entry)
            raise TransferError(f"{name}: {kind} {key!r} is given more than once")
        entries[fname] = (entry, render(entry))
    return entries


def read_directory(directory: Path) -> dict[str, tuple[Entry, bytes]]:
    raw = {}
    for item in sorted(os.scandir(directory), key=lambda i: i.name):
        if item.is_file() and is_policy_file(item.name):
            raw[item.name] = Path(item.path).read_bytes()
    return _checked(raw, str(directory))


# -- export and import -----------------------------------------------------------------


def export_state(settings: StoreSettings, target: str | Path = "-", *, stdout: BinaryIO | None = None) -> int:
    """Write the configured backend's runtime state to ``target``; returns how many entries.

    ``target``: ``-`` (stdout) or a ``*.toml`` file for one document, any other
    path for a directory of files (created; it must be empty if it exists).
    """
    where = settings.state_dir / "runtime" if settings.backend == "files" else "etcd"
    entries = _checked(read_backend(settings), str(where))
    texts = [data for _entry, data in entries.values()]
    header = (
        f"sluice runtime state, {len(texts)} entries, exported from the {settings.backend} "
        f"backend at {rfc3339(time.time(), 'seconds')}"
    )
    target = str(target)
    if target == "-":
        out = stdout or sys.stdout.buffer
        out.write(document(texts, header))
        out.flush()
    elif target.endswith(".toml"):
        try:
            write_file(Path(target), document(texts, header), mode=0o666)
        except OSError as exc:
            raise TransferError(f"cannot write {target}: {exc.strerror or exc}") from None
    else:
        directory = Path(target)
        if directory.exists() and any(directory.iterdir()):
            raise TransferError(f"{directory} is not empty; export into a new or empty directory")
        try:
            write_files(directory, {name: data for name, (_entry, data) in entries.items()})
        except OSError as exc:
            raise TransferError(f"cannot write {directory}: {exc}") from None
    return len(entries)


def import_state(
    settings: StoreSettings, source: str | Path, *, replace: bool = False, stdin: BinaryIO | None = None
) -> int:
    """Write the entries in ``source`` into the configured backend; returns how many.

    ``source``: ``-`` (stdin) or a file for one document, a directory for one
    file per entry. With ``replace``, stored entries not in ``source`` are removed.
    """
    source = str(source)
    try:
        if source == "-":
            entries = read_document((stdin or sys.stdin.buffer).read(), "<stdin>")
        elif Path(source).is_dir():
            entries = read_directory(Path(source))
        else:
            entries = read_document(Path(source).read_bytes(), source)
    except OSError as exc:
        raise TransferError(f"cannot read {source}: {exc.strerror or exc}") from None
    removes: dict[str, Entry] = {}
    if replace:
        stored = read_backend(settings)
        for name, data in stored.items():
            if name not in entries:
                parsed = parse_entry(data, name)
                if parsed.ok:
                    removes[name] = only_entry(parsed)
                else:  # a broken stored text: remove it by name all the same
                    removes[name] = _placeholder(name)
    write_backend(settings, entries, removes)
    return len(entries)


def _placeholder(name: str) -> Entry:
    """An entry with the kind and key ``name`` stands for, to remove a broken text."""
    from sluice.policy.model import FlowControl, Pause, QueuePolicy, Suspension

    kind, key = key_of(name) or ("", "")
    if kind == "suspension":
        return Suspension(id=key, reason="-", everything=True)
    if kind == "queue":
        return QueuePolicy(name=key)
    if kind in ("schedule", "endpoint"):
        return Pause(kind=kind, id=key)
    if kind == "flow_control":
        return FlowControl(key=key)
    raise TransferError(f"{name}: not a runtime entry's name")

