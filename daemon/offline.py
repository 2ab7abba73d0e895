"""sluicectl's offline commands: ``validate`` and the visudo-style ``edit``.

Both use the daemon's own policy reader, so what they accept is what the
daemon loads. ``edit`` never leaves a broken file in place: the edited copy
is validated with the rest of the directory and installed by an atomic
rename only if the whole loads.
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sluice.policy.errors import FileProblem, PolicyLoadError
from sluice.policy.files import ParsedFile, combine, is_policy_file

from .policy_dir import PolicyReader, parse_bytes
from .state.atomic import install

EXIT_OK, EXIT_REFUSED = 0, 1


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _summary(f: ParsedFile) -> str:
    c = f.counts()
    rules = f", {plural(c['automation'], 'automation rule')}" if c["automation"] else ""
    return (
        f"{f.name}: ok, {plural(c['suspensions'], 'suspension')}, "
        f"{plural(c['queues'], 'queue')}, {plural(c['schedules'], 'schedule')}, "
        f"{plural(c['endpoints'], 'endpoint')}{rules}"
    )


def _note_expired(files: Sequence[ParsedFile], err: TextIO) -> None:
    now = time.time()
    for f in files:
        for s in f.suspensions:
            if not s.is_active(now):
                print(
                    f"{s.source}: note: suspension {s.id} expired at "
                    f"{s.expires.isoformat()} and no longer matches",
                    file=err,
                )


def validate(directory: Path, out=sys.stdout, err=sys.stderr) -> int:
    """Check a policy directory offline, as the daemon would load it.

    Prints one summary line per file and returns 0, or prints every problem
    to ``err`` and returns 1. Suspensions already expired are noted, not
    refused: they simply no longer match.
    """
    reader = PolicyReader(directory)
    try:
        files = reader.read()
        combine(files)
    except PolicyLoadError as exc:
        _print_problems(exc.problems, str(directory), err)
        return EXIT_REFUSED
    for f in files:
        print(_summary(f), file=out)
    _note_expired(files, err)
    if not files:
        print(f"{directory}: ok, no policy files", file=out)
    return EXIT_OK


def _print_problems(problems: Sequence[FileProblem], where: str, err: TextIO) -> None:
    for problem in problems:
        print(problem, file=err)
    print(f"{where}: invalid: {plural(len(problems), 'problem')}", file=err)


# -- edit: visudo for a policy file ------------------------------------------------
#
# The copy being edited lives next to FILE (so the final rename is atomic) under
# a name the daemon never reads (a leading dot); it keeps a .toml suffix so the
# editor highlights it. FILE is replaced only by a copy that, in place of FILE,
# makes the whole directory load; it is never written in place, and a copy is
# removed unless FILE changed on disk meanwhile (then it is kept and named).


def check_edit(directory: Path, name: str, data: bytes) -> tuple[ParsedFile, tuple[FileProblem, ...]]:
    """Parse ``data`` as file ``name`` of ``directory`` and combine it with the others.

    Returns the parsed file and every problem of the directory as it would
    be with ``data`` in place (none: it loads).
    """
    edited = parse_bytes(data, name)
    try:
        others = [f for f in PolicyReader(directory).read() if f.name != name]
        combine(sorted([*others, edited], key=lambda f: f.name))
    except PolicyLoadError as exc:
        return edited, exc.problems
    return edited, ()


def _editor() -> list[str]:
    command = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    return shlex.split(command)


def _run_editor(command: list[str]) -> int:
    """Run the editor; returns its exit status.

    Meanwhile ctrl-C belongs to the editor (vi uses it), not to sluicectl: a
    handler (unlike SIG_IGN) is reset to the default in the child by exec.
    """
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        return subprocess.run(command).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def _ask(stdin: TextIO, err: TextIO) -> str:
    """'e' to edit again or 'x' to give up; 'x' at end of input or without a terminal."""
    if not stdin.isatty():
        print("not saved: no terminal to ask on (stdin is not a TTY)", file=err)
        return "x"
    while True:
        print("What now? [e]dit again, [x] exit without saving: ", end="", file=err, flush=True)
        line = stdin.readline()
        if not line:
            print(file=err)
            return "x"
        answer = line.strip().lower()
        if answer in ("e", "edit"):
            return "e"
        if answer in ("x", "exit", "q", "quit"):
            return "x"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _install(copy: Path, dest: Path, before: os.stat_result | None) -> None:
    """Give ``copy`` FILE's mode (and owner, where allowed), then install it over ``dest`` durably."""
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.fchmod(fd, stat.S_IMODE(before.st_mode) if before else 0o666 & ~_umask())
        if before is not None:
            try:
                os.fchown(fd, before.st_uid, before.st_gid)
            except PermissionError:
                pass  # not root: the file becomes ours, as any editor would leave it
    finally:
        os.close(fd)
    install(copy, dest)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def edit(file: Path, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Edit a policy file visudo-style; returns 0 (installed or unchanged) or 1 (not saved)."""
    directory, name = file.parent, file.name
    dest = Path(os.path.realpath(file))  # a symlinked FILE: replace its target, keep the link
    if not directory.is_dir():
        print(f"sluicectl: {directory}: no such directory", file=err)
        return EXIT_REFUSED
    try:
        original = _read(dest)
        before = dest.stat() if original is not None else None
    except OSError as exc:
        print(f"sluicectl: cannot read {file}: {exc.strerror}", file=err)
        return EXIT_REFUSED
    if not is_policy_file(name):
        print(f"sluicectl: note: sluiced does not read {name} (only *.toml not starting with '.')", file=err)
    stem = name[: -len(".toml")] if name.endswith(".toml") else name
    try:
        fd, copy_name = tempfile.mkstemp(prefix=f".{stem}.sluicectl-", suffix=".toml", dir=dest.parent)
    except OSError as exc:
        print(f"sluicectl: cannot make a copy to edit in {dest.parent}: {exc.strerror}", file=err)
        return EXIT_REFUSED
    copy = Path(copy_name)
    keep = False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(original or b"")
        while True:
            command = [*_editor(), str(copy)]
            try:
                status = _run_editor(command)
            except OSError as exc:
                print(f"sluicectl: cannot run editor {command[0]!r}: {exc.strerror}", file=err)
                return EXIT_REFUSED
            if status != 0:
                print(f"sluicectl: editor exited with status {status}; {file} not saved", file=err)
                return EXIT_REFUSED
            data = _read(copy)
            if data is None:
                print(f"sluicectl: the edited copy {copy} is gone; {file} not saved", file=err)
                return EXIT_REFUSED
            if data == (original if original is not None else b""):
                said = "unchanged" if original is not None else "empty, not created"
                print(f"{file}: {said}", file=out)
                return EXIT_OK
            parsed, problems = check_edit(directory, name, data)
            if not problems:
                break
            _print_problems(problems, str(directory), err)
            if _ask(stdin, err) == "x":
                print(f"{file} not saved" + (", left as it was" if original is not None else ""), file=err)
                return EXIT_REFUSED
        if _read(dest) != original:
            keep = True
            print(
                f"sluicectl: {file} changed on disk while you edited it; not replaced. "
                f"Your version is in {copy}",
                file=err,
            )
            return EXIT_REFUSED
        try:
            _install(copy, dest, before)
        except OSError as exc:
            keep = copy.exists()
            print(
                f"sluicectl: cannot install {file}: {exc.strerror}"
                + (f". Your version is in {copy}" if keep else ""),
                file=err,
            )
            return EXIT_REFUSED
        print(_summary(parsed), file=out)
        _note_expired([parsed], err)
        print(f"{file}: {'installed' if original is not None else 'created'}", file=out)
        return EXIT_OK
    finally:
        if not keep:
            copy.unlink(missing_ok=True)


# -- output for people --------------------------------------------------------------
