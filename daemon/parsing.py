"""Parsing the policy files off the event loop: large ones in a process of their own.

How this works
--------------
``load`` is how the daemon reads its policy directory: the reader's
``scan`` (a worker thread) says which files changed, ``Parser`` parses
those, and the reader's ``take`` and ``combine`` (a worker thread) put the
policy together, checking only what changed.

A small file is parsed in a worker thread, in the daemon's process. A file
of ``LARGE`` bytes or more is parsed in a child process
(``parse_child.py``), started for it and gone when it is done: tomli holds
the interpreter for each call it makes, and a 100,000-entry file makes
hundreds of thousands of objects that would stay in the daemon's heap as
garbage. The child hands back a compact form that a worker thread decodes
a piece at a time. Several large files are parsed side by side, at most one
child per CPU.

A child that does not finish its work (killed by the kernel for memory,
by an operator, or ended by a crash) is that file's problem: the reload
fails, the policy in force stays, and the file is parsed again at the next
reload, since its bytes were never judged.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

from sluice.policy.bulk import collector_paused
from sluice.policy.errors import FileProblem, PolicyLoadError
from sluice.policy.files import ParsedFile, PolicySet, join_parts

from .parse_child import unpack
from .policy_dir import PolicyReader, parse_file

LARGE = 1 * 2**20  # bytes from which a file is parsed in a child process


class PolicyNotRead(PolicyLoadError):
    """A load whose only problems are parser processes that ended without their result.

    Nothing is known to be wrong with the files: at start, trying again may
    succeed (the daemon exits EX_TEMPFAIL, not EX_CONFIG).
    """


class ParserDied(Exception):
    """The child parsing a file ended without its result; ``problem`` says how."""

    def __init__(self, problem: FileProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class Parser:
    def __init__(self, large: int = LARGE, children: int | None = None) -> None:
        self.large = large
        self.children = trio.CapacityLimiter(children or os.cpu_count() or 1)
        self.started = 0  # child processes started, for tests and metrics

    async def parse(self, data: bytes, name: str) -> ParsedFile:
        """``name``'s bytes parsed, as ``policy_dir.parse_file`` parses them.

        Raises ParserDied if the child parsing them ended without a result.
        """
        if len(data) < self.large:
            return await trio.to_thread.run_sync(parse_file, data, name)
        parts = min(self.children.total_tokens, len(data) // self.large)
        if parts > 1:
            pieces: list[ParsedFile | None] = [None] * parts
            died: list[ParserDied] = []

            async def one(part: int) -> None:
                try:
                    pieces[part] = await self._in_child(data, name, str(part), str(parts))
                except ParserDied as exc:
                    died.append(exc)
                    nursery.cancel_scope.cancel()  # the file fails whatever the others say

            async with trio.open_nursery() as nursery:
                for part in range(parts):
                    nursery.start_soon(one, part)
            if died:
                raise died[0]
            if all(p is not None for p in pieces):
                return await trio.to_thread.run_sync(join_parts, pieces)
        parsed = await self._in_child(data, name)
        assert parsed is not None
        return parsed

    async def _in_child(self, data: bytes, name: str, *part: str) -> ParsedFile | None:
        """The child's result (None: the file is not one to read in pieces)."""
        async with self.children:
            self.started += 1
            try:
                done = await trio.run_process(
                    [sys.executable, "-m", "sluice.daemon.parse_child", name, *part],
                    stdin=data,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): the reload fails, not the daemon
                message = f"could not be parsed: no parser process could be started: {exc.strerror or exc}"
                raise ParserDied(FileProblem(name, None, "", message)) from None
        if done.returncode != 0:
            raise ParserDied(FileProblem(name, None, "", _how_it_ended(done.returncode, done.stderr)))
        if not done.stdout:
            return None
        return await trio.to_thread.run_sync(_unpack, done.stdout)


def _unpack(data: bytes) -> ParsedFile:
    # Piece by piece: between two pieces the event loop's thread may take the
    # interpreter back. The entries live until the next reload and form no
    # cycles: out of the collector's sight (see collector_paused).
    with collector_paused():
        for parsed in unpack(data):
            if parsed is not None:
                return parsed
    raise AssertionError("unpack yields the file last")


def _how_it_ended(returncode: int, stderr: bytes) -> str:
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        why = " (out of memory?)" if -returncode == signal.SIGKILL else ""
        return f"could not be parsed: the parser process was killed by {signame}{why}; the policy in force stays"
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    said = f": {lines[-1]}" if lines else ""
    return f"could not be parsed: the parser process exited with status {returncode}{said}; the policy in force stays"


async def load(reader: PolicyReader, parser: Parser) -> PolicySet:
    """The policy directory read, its changed files parsed, combined; raises PolicyLoadError."""
    scan = await trio.to_thread.run_sync(reader.scan)
    parsed: dict[str, ParsedFile] = {}
    died: set[str] = set()

    async def one(name: str, data: bytes) -> None:
        try:
            parsed[name] = await parser.parse(data, name)
        except ParserDied as exc:
            parsed[name] = ParsedFile(name=name, problems=(exc.problem,))
            died.add(name)

    async with trio.open_nursery() as nursery:
        for name, data in scan.to_parse.items():
            nursery.start_soon(one, name, data)
    files = await trio.to_thread.run_sync(reader.take, scan, parsed, frozenset(died))
    try:
        return await trio.to_thread.run_sync(reader.combine, files)
    except PolicyLoadError as exc:
        if died and {problem.path for problem in exc.problems} <= died:
            raise PolicyNotRead(exc.problems) from None
        raise
