"""TOML text -> policy entries, with every problem located.

How this works
--------------
A file is parsed with tomli (a piece of a large one with rtoml, below),
then every ``[[suspension]]``, ``[[queue]]``,
``[[schedule]]``, ``[[endpoint]]``, ``[[flow_control]]`` and
``[[automation]]`` table is built by ``fields.py``. The
parser gives no positions, so lines are found in the source text: the n-th
``[[kind]]`` header is the n-th table of that kind, and a key's line is the
first ``key =`` line below that header and above the next one. Where no
single key is at fault the header's line is given.

Nothing stops at the first problem: each table is checked in full, every
table of the file is checked, and ``combine`` adds the problems that span
files (an id or a name given twice).

Runtime state (the daemon's own files) has the same tables plus
``created_at`` and ``created_by``, but no ``[[automation]]`` (rules live in
policy files only); ``parse_runtime`` reads it.
"""

from __future__ import annotations

import collections
import difflib
import functools
import re
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import msgspec
import rtoml
import tomli

from .bulk import collector_paused
from .errors import FileProblem, PolicyLoadError
from .automation import Rule
from .fields import (
    EntryInvalid,
    Mode,
    automation_from,
    endpoint_from,
    flow_control_from,
    pause_from,
    queue_from,
    schedule_from,
    suspension_from,
)
from .model import Endpoint, FlowControl, Pause, QueuePolicy, Schedule, Suspension

KINDS = ("suspension", "queue", "schedule", "endpoint", "flow_control", "automation")
# A line opening a table; group 1 is the name of an array-of-tables header.
_HEADERS = re.compile(r"^[ \t]*\[(?:\[[ \t]*\"?([A-Za-z0-9_-]+)\"?[ \t]*\]\])?", re.MULTILINE)


class ParsedFile(msgspec.Struct, frozen=True):
    """What one file holds: its entries, or the problems that keep it out."""

    name: str
    suspensions: tuple[Suspension, ...] = ()
    queues: tuple[QueuePolicy, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    flow_controls: tuple[FlowControl, ...] = ()
    pauses: tuple[Pause, ...] = ()
    automation: tuple[Rule, ...] = ()
    problems: tuple[FileProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def entries(self) -> list[Any]:
        """Every entry, of whatever kind (for the runtime state's one-entry files)."""
        return [
            *self.suspensions, *self.queues, *self.schedules, *self.endpoints,
            *self.flow_controls, *self.pauses,
        ]

    def counts(self) -> dict[str, int]:
        return {
            "suspensions": len(self.suspensions),
            "queues": len(self.queues),
            "schedules": len(self.schedules),
            "endpoints": len(self.endpoints),
            "flow_controls": len(self.flow_controls),
            "pauses": len(self.pauses),
            "automation": len(self.automation),
        }


class PolicySet(msgspec.Struct, frozen=True):
    """Entries of several files combined, each id and name checked to be unique."""

    suspensions: tuple[Suspension, ...] = ()
    queues: tuple[QueuePolicy, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    flow_controls: tuple[FlowControl, ...] = ()
    pauses: tuple[Pause, ...] = ()
    automation: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()
    # the files combined, and every (kind, key) they hold -> its source: what
    # the next combine starts from, so that it checks only the files that changed
    parsed: tuple[ParsedFile, ...] = ()
    seen: dict[str, Defined] = msgspec.field(default_factory=dict)  # kind -> where each key is defined

    def changed_since(self, previous: PolicySet) -> tuple[list[ParsedFile], list[ParsedFile]]:
        """``changed_files`` from ``previous``'s files to these."""
        return changed_files(previous.parsed, self.parsed)


def changed_files(
    before: Sequence[ParsedFile], after: Sequence[ParsedFile]
) -> tuple[list[ParsedFile], list[ParsedFile]]:
    """The files of ``before`` that are gone or changed, and the files of
    ``after`` that came or changed, by name and parsed object (a file read
    again from unchanged bytes is the same object)."""
    old = {f.name: f for f in before}
    new = {f.name: f for f in after}
    gone = [f for name, f in old.items() if new.get(name) is not f]
    came = [f for name, f in new.items() if old.get(name) is not f]
    return gone, came


# What one policy file may hold: 100,000 suspensions take about 8 MiB, 400,000
# keys and 100,000 tables. Counted before parsing (a count of '=' and of '[[' is
# an upper bound of keys and tables), so that a file the parser would take
# minutes over is refused at once.
MAX_FILE_CHARS = 64 * 2**20
MAX_KEYS = 2_000_000
MAX_TABLES = 1_000_000

# Problems reported for one file before the rest of it is left unread.
MAX_PROBLEMS = 100


class SourceLines:
    """Finds the line of a table or key in TOML source text.

    The text may be a piece of a file (see ``parse_policy_part``): then
    ``first_line`` is the file's line the piece starts on, ``before`` how
    many tables of each kind the file has above it, and the lines and table
    indexes asked and answered are the file's.
    """

    def __init__(self, text: str, first_line: int = 1, before: dict[str, int] | None = None) -> None:
        self.text = text
        self.first_line = first_line
        self.before = before or {}
        self.headers: dict[str, list[int]] = {}
        # One pass over the text for header lines; line numbers by counting
        # newlines between them (a regex per line is slow on 100,000 tables).
        number, pos = first_line, 0
        for match in _HEADERS.finditer(text):
            number += text.count("\n", pos, match.start())
            pos = match.start()
            if match.group(1) is not None:
                self.headers.setdefault(match.group(1), []).append(number)

    @functools.cached_property
    def _names(self) -> tuple[dict[tuple[int, str], int], dict[str, int]]:
        """Where each key is first set, in one pass over the text.

        ``(table start, key) -> line`` for keys inside ``[[kind]]`` tables
        (start 0: before any table), and ``name -> line`` for the first top
        level key or table header of each name. Built once, on the first
        question, so that locating every problem of a file is linear in it.
        """
        in_table: dict[tuple[int, str], int] = {}
        top: dict[str, int] = {}
        table, number, pos = 0, self.first_line, 0
        for match in _NAMES.finditer(self.text):
            number += self.text.count("\n", pos, match.start())
            pos = match.start()
            header, key = match.group(1), match.group(2)
            if match.group(0).lstrip().startswith("["):
                table = number
                if header is not None:
                    top.setdefault(header, number)
                continue
            in_table.setdefault((table, key), number)
            if table == 0:
                top.setdefault(key, number)
        return in_table, top

    def table(self, kind: str, index: int) -> int | None:
        found = self.headers.get(kind, ())
        index -= self.before.get(kind, 0)
        return found[index] if 0 <= index < len(found) else None

    def key(self, kind: str, index: int, key: str) -> int | None:
        start = self.table(kind, index)
        if start is None:
            return None
        return self._names[0].get((start, key), start)

    def top(self, key: str) -> int | None:
        return self._names[1].get(key)


# A table header (group 1: its name, for [name], [[name]] or [name.sub]), or
# a key being set (group 2), at the start of a line.
_NAMES = re.compile(
    r"^[ \t]*(?:\[\[?[ \t]*\"?([^\]\".\s]+)\"?[ \t]*[\].][^\n]*|\"?([^\"=\s\[#]+)\"?[ \t]*=)",
    re.MULTILINE,
)


# A problem's key path up to its first index or subkey: the key whose line it is on.
_KEY_HEAD = re.compile(r"[\[.]")

CHUNK_TABLES = 500
_ARRAY_HEADER = re.compile(r"^\[\[", re.MULTILINE)
_MEANINGFUL = re.compile(r"^[ \t]*[^ \t\r\n#]", re.MULTILINE)


def _decode_in_chunks(text: str) -> dict[str, Any] | None:
    """Parse a large file of ``[[kind]]`` tables a few hundred tables at a time.

    The parser is compiled code that holds the interpreter for all of its
    call: on a 100,000-table file, most of a second in which the daemon's
    event loop, in another thread, could not run. Cut at table headers, the
    pieces parse to the same arrays. Anything unusual (top-level keys, a
    plain ``[table]``, a piece that does not parse alone, as a multi-line
    string holding a header would) returns None: the caller then parses the
    whole text, and reports any error with its true line.
    """
    starts = [m.start() for m in _ARRAY_HEADER.finditer(text)]
    if len(starts) <= CHUNK_TABLES or _MEANINGFUL.search(text, 0, starts[0]):
        return None
    cuts = [starts[0], *starts[CHUNK_TABLES::CHUNK_TABLES], len(text)]
    merged: dict[str, list[Any]] = {}
    for begin, end in zip(cuts, cuts[1:]):
        try:
            part = tomli.loads(text[begin:end])
        except tomli.TOMLDecodeError:
            return None
        for key, value in part.items():
            if not isinstance(value, list):
                return None
            merged.setdefault(key, []).extend(value)
    return merged


def _decode(text: str, name: str) -> tuple[dict[str, Any] | None, FileProblem | None]:
    if len(text) > 256 * 1024:
        doc = _decode_in_chunks(text)
        if doc is not None:
            return doc, None
    try:
        return tomli.loads(text), None
    except tomli.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        msg = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        where = f" (column {col})" if col else ""
        return None, FileProblem(name, line, "", f"TOML syntax error: {msg}{where}")


def _parse(text: str, name: str, mode: Mode) -> ParsedFile:
    with collector_paused():
        problem = _too_large(text, name)
        if problem is not None:
            return ParsedFile(name=name, problems=(problem,))
        doc, problem = _decode(text, name)
        if doc is None:
            return ParsedFile(name=name, problems=(problem,))
        return _build(doc, SourceLines(text), name, mode)


def _too_large(text: str, name: str) -> FileProblem | None:
    if len(text) > MAX_FILE_CHARS:
        size = f"{len(text) / 2**20:.1f} MiB"
        limit = f"at most {MAX_FILE_CHARS // 2**20} MiB (split it into several files)"
        return FileProblem(name, None, "", f"file is {size}; a policy file holds {limit}")
    for what, count, limit in (("keys", text.count("="), MAX_KEYS), ("tables", text.count("[["), MAX_TABLES)):
        if count > limit:
            message = f"file holds up to {count:,} {what}; a policy file holds at most {limit:,} (split it into several files)"
            return FileProblem(name, None, "", message)
    return None


def _build(doc: dict[str, Any], lines: SourceLines, name: str, mode: Mode) -> ParsedFile:
    """The entries of a decoded file (or piece of one, see SourceLines), every problem located."""
    problems: list[FileProblem] = []
    built: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    pauses: list[Pause] = []

    for key, value in doc.items():
        if len(problems) >= MAX_PROBLEMS:
            break
        if key not in KINDS:
            hint = difflib.get_close_matches(key, KINDS, n=1)
            also = f" (did you mean [[{hint[0]}]]?)" if hint else ""
            problems.append(
                FileProblem(
                    name,
                    lines.top(key),
                    key,
                    f"unknown table{also}; a policy file holds "
                    + ", ".join(f"[[{k}]]" for k in KINDS),
                )
            )
            continue
        if not isinstance(value, list):
            problems.append(
                FileProblem(
                    name,
                    lines.top(key),
                    key,
                    f"expected an array of tables, written [[{key}]], one per entry",
                )
            )
            continue
        if key == "automation" and mode == "runtime":
            problems.append(
                FileProblem(name, lines.top(key), key, "automation rules live in policy files, not in runtime state")
            )
            continue
        for index, table in enumerate(value, lines.before.get(key, 0)):
            if len(problems) >= MAX_PROBLEMS:
                break
            line = lines.table(key, index)
            source = f"{name}:{line}" if line is not None else name
            try:
                if mode == "runtime" and key in ("schedule", "endpoint") and _is_pause(key, table):
                    pauses.append(pause_from(table, kind=key))
                    continue
                built[key].append(_BUILDERS[key](table, mode, name, source))
            except EntryInvalid as exc:
                for p in exc.problems:
                    base = _KEY_HEAD.split(p.key, 1)[0]
                    at = lines.key(key, index, base) if base else line
                    path = f"{key}[{index}]" + (f".{p.key}" if p.key else "")
                    problems.append(FileProblem(name, at, path, p.message))
    if len(problems) >= MAX_PROBLEMS:
        problems.append(
            FileProblem(name, None, "", f"stopped after {MAX_PROBLEMS} problems; fix these first")
        )
    if mode == "runtime":
        # The daemon's own entries: their source is the runtime state.
        built["suspension"] = [
            msgspec.structs.replace(s, source="runtime") for s in built["suspension"]
        ]
        for kind in ("queue", "schedule", "endpoint", "flow_control"):
            built[kind] = [msgspec.structs.replace(e, source="runtime") for e in built[kind]]
    return ParsedFile(
        name=name,
        suspensions=tuple(built["suspension"]),
        queues=tuple(built["queue"]),
        schedules=tuple(built["schedule"]),
        endpoints=tuple(built["endpoint"]),
        flow_controls=tuple(built["flow_control"]),
        pauses=tuple(pauses),
        automation=tuple(built["automation"]),
        problems=tuple(problems),
    )


_BUILDERS: dict[str, Callable[[Any, Mode, str, str], Any]] = {
    "suspension": lambda t, mode, name, source: suspension_from(
        t, mode=mode, file_name=name, source=source
    ),
    "queue": lambda t, mode, name, source: queue_from(t, mode=mode, source=source),
    "schedule": lambda t, mode, name, source: schedule_from(t, source=source, mode=mode),
    "endpoint": lambda t, mode, name, source: endpoint_from(t, source=source, mode=mode),
    "flow_control": lambda t, mode, name, source: flow_control_from(t, mode=mode, source=source),
    "automation": lambda t, mode, name, source: automation_from(t, source=source),
}


def _is_pause(kind: str, table: Any) -> bool:
    """Whether a runtime ``[[schedule]]`` or ``[[endpoint]]`` table is the pause
    of a file's object rather than an object made through the API (which
    has its cron, or its url)."""
    return not (isinstance(table, dict) and ("cron" in table or "url" in table))


def parse_policy(text: str, name: str) -> ParsedFile:
    """Parse one policy file's text. ``name`` is the file's name (ids derive from it)."""
    return _parse(text, name, "file")


def parse_policy_part(text: str, name: str, part: int, parts: int) -> ParsedFile | None:
    """The entries of the ``part``-th of ``parts`` pieces of a policy file, or None.

    A large file of ``[[kind]]`` tables is cut at table headers into
    ``parts`` pieces of about as many bytes, so that several processes can
    parse one file: ``join_parts`` of every part's result is what
    ``parse_policy`` gives for the whole text, lines, indexes and ids
    included. None when the file is not one to read in pieces (too few
    tables, anything above the first table, a piece that does not parse
    alone or one with a problem): ``parse_policy`` then reads it whole and
    reports its problems as always.

    A piece is decoded by rtoml, a compiled parser three to four times as
    quick as tomli on these tables. The two read the toml-test suite alike
    (NaN aside) but for a byte-order mark, which rtoml reads and tomli
    refuses, and which is text above the first table here, so None. A piece
    rtoml refuses, or one whose entries have any problem, is None: the
    whole parse, with tomli, gives the file's one true answer and its
    messages.
    """
    if _too_large(text, name) is not None:
        return None
    # the lines that start with "[[" (_ARRAY_HEADER's matches), counted and
    # found without a pass of Python over the text: every part's process makes these cuts
    if text.count("\n[[") + text.startswith("[[") < parts * CHUNK_TABLES:
        return None
    if _MEANINGFUL.search(text, 0, _array_header_from(text, 0)):
        return None
    cuts = [0, *(_array_header_from(text, len(text) * k // parts) for k in range(1, parts)), len(text)]
    begin, end = cuts[part], cuts[part + 1]
    lines = SourceLines(
        text[begin:end], first_line=text.count("\n", 0, begin) + 1, before=_tables_above(text, begin)
    )
    with collector_paused():
        try:
            doc = rtoml.loads(lines.text)
        except rtoml.TomlParsingError:
            return None
        if any(not isinstance(v, list) for v in doc.values()):
            return None
        parsed = _build(doc, lines, name, "file")
    return None if parsed.problems else parsed


def _array_header_from(text: str, pos: int) -> int:
    """Where the first line starting with ``[[`` at or after ``pos`` starts (the text's end if none)."""
    if pos == 0 and text.startswith("[["):
        return 0
    found = text.find("\n[[", max(pos - 1, 0))
    return found + 1 if found >= 0 else len(text)


def _tables_above(text: str, end: int) -> dict[str, int]:
    """How many ``[[kind]]`` tables of each kind ``text`` has before ``end``."""
    counts = collections.Counter(_HEADERS.findall(text, 0, end))
    counts.pop("", None)  # a plain [table]
    return dict(counts)


def join_parts(parts: Sequence[ParsedFile]) -> ParsedFile:
    """One file's entries from its parts' (see ``parse_policy_part``), in order."""
    fields = ("suspensions", "queues", "schedules", "endpoints", "flow_controls", "pauses", "automation")
    return ParsedFile(
        name=parts[0].name,
        **{f: tuple(e for p in parts for e in getattr(p, f)) for f in fields},
    )


def parse_runtime(text: str, name: str) -> ParsedFile:
    """Parse a runtime-state file written by the daemon (or edited by hand)."""
    return _parse(text, name, "runtime")


def _where(source: str) -> tuple[str, int | None]:
    path, _, line = source.rpartition(":")
    if path and line.isdigit():
        return path, int(line)
    return source, None


def _keys_of(f: ParsedFile) -> Iterator[tuple[str, str, str, str]]:
    """(kind, key, source, what) of every entry of a file that must be unique."""
    for s in f.suspensions:
        yield "suspension", s.id, s.source, "suspension id"
    for q in f.queues:
        yield "queue", q.name, q.source, "queue"
    for sc in f.schedules:
        yield "schedule", sc.id, sc.source, "schedule id"
    for e in f.endpoints:
        yield "endpoint", e.id, e.source, "endpoint id"
    for fc in f.flow_controls:
        yield "flow_control", fc.key, fc.source, "flow-control key"
    for rule in f.automation:  # keyed by what the rule says, named by it too
        yield "automation", rule.id, rule.source, f"the same automation rule (for {rule.domain}, {rule.regex_text()})"


class Defined:
    """Where each key of one kind is defined (key -> source), as ``combine`` keeps it between loads.

    A big dict shared by the loads that follow, and a small one of what
    changed since (None: a key gone): a small edit next to a 100,000-entry
    file changes the small one, where a copy of the big one was most of its
    combine. ``settled`` folds the changes in once they are an eighth of
    the whole.
    """

    __slots__ = ("_base", "_changes")

    def __init__(self, base: dict[str, str] | None = None, changes: dict[str, str | None] | None = None) -> None:
        self._base = base if base is not None else {}
        self._changes = changes if changes is not None else {}

    def get(self, key: str) -> str | None:
        changes = self._changes
        return changes[key] if key in changes else self._base.get(key)

    def setdefault(self, key: str, source: str) -> str:
        """Where ``key`` is defined, ``source`` if nowhere yet."""
        first = self.get(key)
        if first is None:
            self._changes[key] = first = source
        return first

    def remove(self, key: str) -> None:
        if key in self._base:
            self._changes[key] = None
        else:
            self._changes.pop(key, None)

    def changed(self) -> Defined:
        """A copy to change; this one stays as it is."""
        return Defined(self._base, dict(self._changes))

    def settled(self) -> Defined:
        """The same keys, the changes folded in if they have grown to an eighth of the whole."""
        if len(self._changes) * 8 <= len(self._base):
            return self
        return Defined(self._merged())

    def _merged(self) -> dict[str, str]:
        merged = {**self._base, **self._changes}
        return {key: source for key, source in merged.items() if source is not None}

    def __eq__(self, other: object) -> bool:  # the same keys defined at the same places
        return isinstance(other, Defined) and self._merged() == other._merged()


def combine(files: Sequence[ParsedFile], previous: PolicySet | None = None) -> PolicySet:
    """Merge parsed files in order; raises PolicyLoadError with every problem.

    Problems inside files come first, then ids, queue names, schedule ids and
    endpoint ids given more than once (each naming where it was first seen).
    With ``previous`` (the last combine that succeeded), only the entries of
    files that changed since are checked against the others: a small edit
    next to a 100,000-entry file does not check 100,000 ids again.
    """
    problems = [p for f in files for p in f.problems]
    check: Sequence[ParsedFile] = files
    # kind -> where each key is defined: the previous combine's, changed, when
    # few entries changed; else plain dicts made afresh (both have setdefault)
    seen: dict[str, Defined | dict[str, str]] = {}
    if previous is not None and previous.parsed:
        gone, came = changed_files(previous.parsed, files)
        if sum(map(_key_count, (*gone, *came))) * 8 <= sum(map(_key_count, previous.parsed)):
            seen = {kind: keys.changed() for kind, keys in previous.seen.items()}
            for f in gone:
                for kind, key, _source, _what in _keys_of(f):
                    seen[kind].remove(key)
            check = came
    for f in check:
        for kind, key, source, what in _keys_of(f):
            keys = seen.get(kind)
            if keys is None:
                keys = seen[kind] = {}
            first = keys.setdefault(key, source)
            if first is not source:
                path, line = _where(source)
                said = what if kind == "automation" else f"{what} {key!r}"
                problems.append(FileProblem(path, line, kind, f"{said} is also defined at {first}"))
    if problems:
        raise PolicyLoadError(problems)
    return PolicySet(
        suspensions=tuple(s for f in files for s in f.suspensions),
        queues=tuple(q for f in files for q in f.queues),
        schedules=tuple(s for f in files for s in f.schedules),
        endpoints=tuple(e for f in files for e in f.endpoints),
        flow_controls=tuple(c for f in files for c in f.flow_controls),
        pauses=tuple(p for f in files for p in f.pauses),
        automation=tuple(r for f in files for r in f.automation),
        files=tuple(f.name for f in files),
        parsed=tuple(files),
        seen={kind: keys.settled() if isinstance(keys, Defined) else Defined(keys) for kind, keys in seen.items()},
    )


def _key_count(f: ParsedFile) -> int:
    """How many keys ``_keys_of(f)`` gives."""
    return (
        len(f.suspensions) + len(f.queues) + len(f.schedules) + len(f.endpoints)
        + len(f.flow_controls) + len(f.automation)
    )


_DROPPINGS = re.compile(r"(^[.#])|(~$)|(\.sw[a-p]$)|(^4913$)")


def is_policy_file(name: str) -> bool:
    """Whether a file in the policy directory is read: ``*.toml``, no editor droppings."""
    return name.endswith(".toml") and _DROPPINGS.search(name) is None
