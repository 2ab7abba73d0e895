"""The tokens file: who may use the TCP listener, by the SHA-256 of a token.

```toml
[[token]]
name = "deploy-bot"
sha256 = "<hex sha256 of the token>"
role = "admin"          # admin: read and change; read: read only
```

Only digests are stored, so the file holds no secret. ``Tokens.find`` hashes
the presented token and compares it with every digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import msgspec
import tomli

from .errors import FileProblem
from .files import SourceLines

ROLES = ("admin", "read")
_HEX = re.compile(r"[0-9a-f]{64}\Z")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")


class Token(msgspec.Struct, frozen=True):
    name: str
    sha256: str
    role: str


class Tokens(msgspec.Struct, frozen=True):
    tokens: tuple[Token, ...] = ()

    def find(self, presented: str) -> Token | None:
        """The token whose digest matches ``presented``, compared in constant time."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.sha256):
                found = token
        return found


def parse_tokens(text: str, name: str) -> tuple[Tokens, list[FileProblem]]:
    """Parse a tokens file; returns the tokens and every problem found."""
    try:
        doc = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        return Tokens(), [FileProblem(name, getattr(exc, "lineno", None), "", f"TOML syntax error: {exc.msg}")]
    lines = SourceLines(text)
    problems: list[FileProblem] = []
    for key in doc:
        if key != "token":
            problems.append(FileProblem(name, lines.top(key), key, "unknown table; a tokens file holds [[token]]"))
    tables = doc.get("token", [])
    if not isinstance(tables, list):
        return Tokens(), problems + [FileProblem(name, lines.top("token"), "token", "expected [[token]] tables")]
    found: list[Token] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        path = f"token[{i}]"
        line = lines.table("token", i)
        before = len(problems)
        if not isinstance(table, dict):
            problems.append(FileProblem(name, line, path, "expected a table"))
            continue
        for key in table:
            if key not in ("name", "sha256", "role"):
                problems.append(FileProblem(name, lines.key("token", i, key), f"{path}.{key}", "unknown field; a token has: name, sha256, role"))
        values = {}
        for key, check, expected in (
            ("name", lambda v: NAME.match(v), "a name of letters, digits, '.', '_', '@' or '-'"),
            ("sha256", lambda v: _HEX.match(v), "64 lowercase hex digits (sha256 of the token)"),
            ("role", lambda v: v in ROLES, "admin or read"),
        ):
            value = table.get(key)
            if value is None:
                problems.append(FileProblem(name, line, f"{path}.{key}", "is required"))
            elif not isinstance(value, str) or not check(value):
                problems.append(FileProblem(name, lines.key("token", i, key), f"{path}.{key}", f"expected {expected}"))
            else:
                values[key] = value
        if len(problems) > before:
            continue
        if values["name"] in seen:
            problems.append(
                FileProblem(name, line, f"{path}.name", f"token name {values['name']!r} is also used at line {seen[values['name']]}")
            )
            continue
        seen[values["name"]] = line
        found.append(Token(**values))
    return Tokens(tuple(found)), problems


def new_token() -> tuple[str, str]:
    """A fresh random token and its sha256 hex digest."""
    token = "sl_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()
