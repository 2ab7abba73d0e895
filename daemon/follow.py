"""``sluicectl follow-postfix-log``: a Postfix mail log followed as ``tail -F`` does, its
delivery outcomes posted to ``POST /publish_log_v1`` (DESIGN 10).

How this works
--------------
``LogFile.lines()`` yields the log's complete lines, each with the position
just after it (the file's device, inode and offset), and ``IDLE`` when it
has read all there is. At the end of the file it looks at the path: if it
names another file now (rotated), the old one is read to its end and the
new one from its start; if the file is shorter than what was read
(truncated, as by ``copytruncate``), it is read again from its start; if
the path is missing, the old file is still read while it grows and the
path looked at again. ``stdin_lines`` reads standard input to its end
instead, idle after each read.

``follow`` feeds each line to the core's ``Joiner``
(``sluice.policy.postfix_log``), gathers the outcomes, and posts them in
batches (at most ``batch`` records; whatever there is when the log is
idle). ``Publisher`` posts a batch until the daemon answers it: while the
daemon is unreachable or answers 5xx (a 503 while its state store is away),
401, 403, 404 or 429, it waits (0.2 s doubling to 10 s) and posts the
same batch again; a 400, 413, 415 or 422 names a batch the daemon will
never take, so it is logged with the daemon's error and skipped.

Invariants:
- Nothing is read past a batch that is not yet answered, so the position
  stored is always just after the last line whose outcome was answered,
  and the tenants stored are the Joiner's at that line.
- The state file (``StateFile``: identity, offset, and the Joiner's
  tenants, so a message deferred before a restart is still its tenant's
  after) is written atomically (``atomic.write_file``) after every
  answered batch, and after lines with no outcome at most every
  ``SAVE_EVERY`` seconds. On start the same file resumes at its offset
  (from its start if it is now shorter), another file at the path (rotated
  meanwhile) from its start; with no state, the file is read from its end,
  as ``tail -F`` does (``from_start``: from its start).
- SIGTERM and SIGINT stop the follower at once, except between sending a
  batch and storing the position after it: there they wait for the
  write, so an outcome answered is never posted again. (A crash in that
  instant, SIGKILL or power loss, posts that one batch again on restart.)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import msgspec
import structlog

from sluice.policy.log_record import Record
from sluice.policy.postfix_log import Joiner, encode_records

from .client import AdminClient, Refused, Unreachable
from .state.atomic import write_file

log = structlog.get_logger("sluice.follow")

CHUNK = 1 << 16
BATCH = 500
POLL = 0.25  # seconds between looks at an idle log
SAVE_EVERY = 5.0  # seconds: at most this often the position is stored after lines with no outcome
BACKOFF = (0.2, 10.0)  # first and longest wait before posting a batch again
SKIPPED = frozenset((400, 413, 415, 422))  # the batch itself is refused: posting it again cannot help
MAX_SHOWN = 200  # characters of an unreadable line logged


class Stopped(Exception):
    """SIGTERM or SIGINT: stop following."""


class Position(msgspec.Struct, frozen=True):
    """A place in a file: the file (device, inode) and an offset in it."""

    device: int
    inode: int
    offset: int

    def same_file(self, st: os.stat_result) -> bool:
        return (self.device, self.inode) == (st.st_dev, st.st_ino)


class State(msgspec.Struct):
    version: int
    position: Position
    tenants: dict[str, str] = {}


class StateFile:
    """Where the follower stopped: one small JSON file, replaced whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State | None:
        """The state stored, or None if there is none or it cannot be read (logged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("follow_state_unreadable", file=str(self.path), error=exc.strerror or str(exc))
            return None
        try:
            state = msgspec.json.decode(data, type=State)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("follow_state_unreadable", file=str(self.path), error=str(exc))
            return None
        if state.version != 1:
            log.warning("follow_state_unreadable", file=str(self.path), error=f"version {state.version}")
            return None
        return state

    def save(self, position: Position, tenants: dict[str, str]) -> None:
        """Store ``position`` and ``tenants`` atomically and durably. Raises OSError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.path, msgspec.json.encode(State(1, position, tenants)) + b"\n", mode=0o600)


IDLE = None  # what a source yields when it has read all there is for now
Line = tuple[str, "Position | None"]


def _split(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) and the rest."""
    *lines, rest = buffer.split(b"\n")
    return lines, rest


def stdin_lines(stream: BinaryIO) -> Iterator[Line | None]:
    """Standard input's lines to its end, idle after each read; no positions (a pipe has none)."""
    rest = b""
    fd = stream.fileno()
    while chunk := os.read(fd, CHUNK):
        lines, rest = _split(rest + chunk)
        for line in lines:
            yield line.decode("utf-8", "replace"), None
        yield IDLE
    if rest:
        yield rest.decode("utf-8", "replace"), None


class LogFile:
    """The log at ``path``, followed (see the module's docstring)."""

    def __init__(self, path: Path, poll: float = POLL, sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = path
        self.poll = poll
        self.sleep = sleep
        self._fd: int | None = None
        self._at: Position | None = None  # just after the last complete line yielded
        self._rest = b""

    def _open(self) -> os.stat_result | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        self._close()
        self._fd = fd
        self._rest = b""
        return st

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _seek(self, st: os.stat_result, offset: int) -> None:
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._at = Position(st.st_dev, st.st_ino, offset)

    def start(self, resume: Position | None, from_start: bool = False) -> bool:
        """Open the log where ``resume`` says, or at its start or end; False if it is missing.

        Raises OSError if it cannot be read.
        """
        st = self._open()
        if st is None:
            return False
        if resume is not None and resume.same_file(st):
            offset = resume.offset if resume.offset <= st.st_size else 0
        elif resume is not None or from_start:
            offset = 0  # another file now: the one stored was rotated away
        else:
            offset = st.st_size
        self._seek(st, offset)
        log.info("follow_started", file=str(self.path), offset=offset, inode=st.st_ino,
                 resumed=resume is not None and resume.same_file(st))
        return True

    def _read(self) -> Iterator[Line]:
        """The complete lines the open file has now."""
        while chunk := os.read(self._fd, CHUNK):
            lines, self._rest = _split(self._rest + chunk)
            at = self._at
            offset = at.offset
            for line in lines:
                offset += len(line) + 1
                self._at = Position(at.device, at.inode, offset)
                yield line.decode("utf-8", "replace"), self._at

    def lines(self) -> Iterator[Line | None]:
        """Lines as they are appended, across rotation and truncation; never ends."""
        while self._fd is None:
            if self.start(None, from_start=True):
                break  # it appeared: all of it is new
            log.info("follow_waiting", file=str(self.path), reason="no such file")
            yield IDLE
            self.sleep(self.poll)
        while True:
            yield from self._read()
            yield IDLE
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None  # moved away, the new one not yet made: the old one may still grow
            if st is not None and not self._at.same_file(st):
                yield from self._read()  # what the old file got before it was rotated
                if self._rest:  # a last line without its newline: it will get none now
                    rest, self._rest = self._rest, b""
                    yield rest.decode("utf-8", "replace"), self._at
                yield IDLE
                opened = self._open()
                if opened is not None:
                    log.info("follow_rotated", file=str(self.path), inode=opened.st_ino)
                    self._seek(opened, 0)
                    continue
            elif os.fstat(self._fd).st_size < self._at.offset + len(self._rest):
                log.info("follow_truncated", file=str(self.path))
                self._rest = b""
                self._seek(os.fstat(self._fd), 0)
                continue
            self.sleep(self.poll)


class Guard:
    """SIGTERM and SIGINT raise Stopped, except inside ``held()``, which they end instead."""

    def __init__(self) -> None:
        self._depth = 0
        self._stopping = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._signalled)
        signal.signal(signal.SIGINT, self._signalled)

    def _signalled(self, signum: int, frame: object) -> None:
        if self._depth:
            self._stopping = True
        else:
            raise Stopped

    @contextmanager
    def held(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._stopping and not self._depth:
            raise Stopped


class Publisher:
    """Posts batches to the daemon until each is answered (see the module's docstring)."""

    def __init__(self, client: AdminClient, guard: Guard, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.guard = guard
        self.sleep = sleep
        self.posted = 0
        self.skipped = 0

    def publish(self, records: list[Record], then: Callable[[], None]) -> None:
        """Post ``records``; once the daemon has answered (or refused the batch), call ``then``."""
        body = encode_records(records)
        wait = BACKOFF[0]
        while True:
            with self.guard.held():
                try:
                    reply = self.client.publish_log(body)
                except Refused as exc:
                    if exc.status not in SKIPPED:
                        error = f"{exc.code}: {exc.message}"
                    else:
                        self.skipped += len(records)
                        log.error("follow_batch_refused", status=exc.status, code=exc.code,
                                  error=exc.message, records=len(records))
                        then()
                        return
                except Unreachable as exc:
                    error = exc.message
                else:
                    self.posted += len(records)
                    answer = reply.data if isinstance(reply.data, dict) else {}
                    log.info("follow_posted", records=len(records), matched=answer.get("matched"),
                             holds=len(answer.get("holds") or ()))
                    then()
                    return
            log.warning("follow_retrying", error=error, records=len(records), wait=wait)
            self.sleep(wait)
            wait = min(wait * 2, BACKOFF[1])


def follow(
    source: Iterator[Line | None],
    joiner: Joiner,
    publisher: Publisher,
    state: StateFile | None,
    *,
    batch: int = BATCH,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Feed ``source``'s lines to ``joiner`` and post the outcomes, storing the position
    in ``state`` as the module's docstring says; returns when ``source`` ends."""
    pending: list[Record] = []
    at: Position | None = None
    saved: Position | None = None
    saved_when = monotonic()

    def save() -> None:
        nonlocal saved, saved_when
        if state is not None and at is not None and at != saved:
            state.save(at, joiner.tenants)
            saved, saved_when = at, monotonic()

    def flush(idle: bool) -> None:
        if pending:
            publisher.publish(pending, save)
            pending.clear()
        elif idle and monotonic() - saved_when >= SAVE_EVERY:
            save()

    try:
        for item in source:
            if item is IDLE:
                flush(idle=True)
                continue
            text, at = item
            unreadable = joiner.counts.unreadable
            record = joiner.feed(text, clock())
            if joiner.counts.unreadable != unreadable:
                log.info("follow_unreadable_line", line=text[:MAX_SHOWN], unreadable=joiner.counts.unreadable)
            if record is not None:
                pending.append(record)
                if len(pending) >= batch:
                    flush(idle=False)
        flush(idle=False)
        save()
    finally:
        counts = joiner.counts
        log.info("follow_stopped", lines=counts.lines, outcomes=counts.outcomes, unreadable=counts.unreadable,
                 forgotten=counts.forgotten, posted=publisher.posted, skipped=publisher.skipped)


def default_state_path(state_dir: Path, log_path: Path) -> Path:
    """``<state_dir>/follow-postfix-log.<the log's absolute path, / as ->.json``: one per log."""
    name = str(log_path.absolute()).strip("/").replace("/", "-") or "log"
    return state_dir / f"follow-postfix-log.{name}.json"
