"""The etcd backend's key layout, and the operations that write runtime objects there.

How this works
--------------
Keys under the configured prefix P:

    P runtime/<kind>/<quoted key>   one per runtime object (suspension, queue,
                                    schedule, endpoint); the value is the text
                                    ``encoding.render`` makes, so export and
                                    import are byte copies
    P criteria/<sha256>             the id of the suspension holding the
                                    criteria whose ``criteria_key`` hashes so

A suspension's put also points its criteria key at it; its delete removes
the criteria key only if it still points at it (a nested transaction), so a
newer holder's pointer is never lost. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote, unquote

import structlog

from sluice.policy.model import Entry, Suspension

from .encoding import KINDS, entry_key, name_for, only_entry, parse_entry
from .gateway import delete_op, put_op, value_is

log = structlog.get_logger("sluice.state")


class Keys:
    """The keys of one prefix."""

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("state.etcd.prefix must not be empty")
        self.prefix = prefix
        self.runtime = prefix + "runtime/"

    def of(self, kind: str, key: str) -> str:
        """The etcd key of the runtime object (kind, key)."""
        return f"{self.runtime}{kind}/{quote(key, safe='')}"

    def of_entry(self, entry: Entry) -> str:
        return self.of(*entry_key(entry))

    def criteria(self, criteria_key: str) -> str:
        """The key that names the suspension holding ``criteria_key``."""
        return f"{self.prefix}criteria/{hashlib.sha256(criteria_key.encode()).hexdigest()}"

    def kind_key(self, key: str) -> tuple[str, str] | None:
        """(kind, key) of an etcd key under runtime/, or None if it is not one of ours."""
        if not key.startswith(self.runtime):
            return None
        kind, sep, quoted = key[len(self.runtime):].partition("/")
        if not sep or kind not in KINDS or not quoted:
            return None
        return kind, unquote(quoted)

    def parse(self, key: str, data: bytes) -> Entry | None:
        """The entry an etcd value holds; None (logged) if it is not valid."""
        kind_key = self.kind_key(key)
        if kind_key is None:
            log.warning("state_key_ignored", key=key)
            return None
        parsed = parse_entry(data, name_for(*kind_key), where=key)
        if parsed.problems:
            for problem in parsed.problems:
                log.error("runtime_value_invalid", key=key, problem=str(problem))
            return None
        return only_entry(parsed)

    def put_ops(self, entry: Entry, data: bytes) -> list[dict]:
        """Store ``entry`` as ``data`` (and point its criteria at it)."""
        ops = [put_op(self.of_entry(entry), data)]
        if isinstance(entry, Suspension):
            ops.append(put_op(self.criteria(entry.criteria_key), entry.id))
        return ops

    def delete_ops(self, entry: Entry) -> list[dict]:
        """Remove ``entry`` (and its criteria key, if it still points at it)."""
        ops = [delete_op(self.of_entry(entry))]
        if isinstance(entry, Suspension):
            ckey = self.criteria(entry.criteria_key)
            ops.append({"request_txn": {"compare": [value_is(ckey, entry.id)], "success": [delete_op(ckey)]}})
        return ops
