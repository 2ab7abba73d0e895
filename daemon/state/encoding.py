"""Runtime objects <-> bytes and names, shared by the backends and ``state export``.

How this works
--------------
Each runtime object (a suspension, a queue policy, a schedule or endpoint
pause) is stored as one TOML text: its table in the policy-file format,
``[[<kind>]]`` with the fields that differ from the defaults, written with
tomli-w (``render``). The same bytes are a file under ``<state_dir>/runtime/``
and the value of an etcd key, so moving state between backends is a copy.

An object is identified by ``(kind, key)`` (the core's ``entry_key``): the suspension's
or pause's id, the queue's name. Its file is named after it
(``name_for``): ``<kind>-<quoted key>.toml``, and ``key_of`` reads the
name back. A text is valid only if it holds exactly one entry, the one its
name says (``parse_entry``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import msgspec
import tomli_w

from sluice.policy.changes import entry_key
from sluice.policy.errors import FileProblem, ValidationError
from sluice.policy.files import ParsedFile, parse_runtime
from sluice.policy.model import Endpoint, Entry, FlowControl, Pause, QueuePolicy, Schedule, Suspension
from sluice.policy.snapshot import Runtime

KINDS = ("suspension", "queue", "schedule", "endpoint", "flow_control")


MAX_NAME_BYTES = 255  # what a file name may hold on Linux file systems


def name_for(kind: str, key: str) -> str:
    """The file name of the object (kind, key).

    Raises ValidationError for a key too long to be a file name once quoted
    (a 251-character domain, 60 ``ü`` in a tenant), so the change is refused
    with a 400 before anything is written, on either backend.
    """
    name = f"{kind}-{quote(key, safe='')}.toml"
    if len(name.encode()) > MAX_NAME_BYTES:
        field = "queue" if kind == "queue" else "id"
        raise ValidationError(
            f"{kind} {key[:40]}... is too long to store: {len(name.encode())} bytes as a file "
            f"name, at most {MAX_NAME_BYTES} (each byte outside ASCII letters, digits and -._~ takes three)",
            field=field,
        )
    return name


def file_name(entry: Entry) -> str:
    """The file that holds ``entry``."""
    return name_for(*entry_key(entry))


def key_of(name: str) -> tuple[str, str] | None:
    """(kind, key) from a runtime file name, or None if it is not one."""
    stem = name[: -len(".toml")] if name.endswith(".toml") else None
    if stem is None or "-" not in stem:
        return None
    kind, _, key = stem.partition("-")
    return kind, unquote(key)


def to_table(entry: Entry) -> tuple[str, dict[str, Any]]:
    """The TOML table of a runtime entry: its fields, without defaults or source."""
    kind, _ = entry_key(entry)
    table = {}
    for field, value in msgspec.structs.asdict(entry).items():
        if field in ("source", "kind") or value is None or value == () or value is False:
            continue
        table[field] = list(value) if isinstance(value, tuple) else value
    if isinstance(entry, Pause):
        table["paused"] = True
    if isinstance(entry, (QueuePolicy, FlowControl)):
        table["paused"] = entry.paused
    return kind, table


def render(entry: Entry) -> bytes:
    """The stored text of ``entry``."""
    kind, table = to_table(entry)
    return tomli_w.dumps({kind: [table]}).encode()


def parse_entry(data: bytes, name: str, where: str | None = None) -> ParsedFile:
    """Parse the text of one runtime object, which must be named ``name``.

    ``where`` names it in problems (default: ``name``); the etcd backend
    passes the key.
    """
    where = where or name
    try:
        parsed = parse_runtime(data.decode("utf-8"), where)
    except UnicodeDecodeError:
        return ParsedFile(name=where, problems=(FileProblem(where, None, "", "not valid UTF-8"),))
    if parsed.ok:
        entries = parsed.entries()
        if len(entries) != 1 or file_name(entries[0]) != name:
            expected = ", ".join(file_name(e) for e in entries) or "nothing"
            return ParsedFile(
                name=where,
                problems=(
                    FileProblem(
                        where,
                        None,
                        "",
                        "a runtime file holds exactly one entry, named after it "
                        f"(this one holds {expected})",
                    ),
                ),
            )
    return parsed


def only_entry(parsed: ParsedFile) -> Entry:
    """The one entry of a text ``parse_entry`` found valid."""
    [entry] = parsed.entries()
    return entry


def runtime_from(entries: list[Entry]) -> Runtime:
    """The runtime state made of ``entries``."""
    return Runtime(
        suspensions={e.id: e for e in entries if isinstance(e, Suspension)},
        queues={e.name: e for e in entries if isinstance(e, QueuePolicy)},
        schedule_pauses={
            e.id: e
            for e in entries
            if isinstance(e, Schedule) or (isinstance(e, Pause) and e.kind == "schedule")
        },
        endpoint_pauses={
            e.id: e
            for e in entries
            if isinstance(e, Endpoint) or (isinstance(e, Pause) and e.kind == "endpoint")
        },
        flow_controls={e.key: e for e in entries if isinstance(e, FlowControl)},
    )
