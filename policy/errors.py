"""The policy core's exceptions.

    PolicyError                 code, status_hint, message
    ├── ValidationError         field (a key path), a value was not acceptable
    │   ├── InvalidQueueName    part: the component at fault
    │   └── InvalidDuration
    ├── PolicyLoadError         problems: every FileProblem found, never just the first
    ├── NotFound                an id or name that the snapshot does not hold
    └── Conflict                a change the current state refuses (DEFINED_IN_FILE, ...)

``code`` is the UPPER_SNAKE code of the API's error envelope and
``status_hint`` the HTTP status the boundary should use, as h11's
``error_status_hint``. Nothing here knows about HTTP otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass


class PolicyError(Exception):
    code = "POLICY_ERROR"
    status_hint = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ValidationError(PolicyError):
    """A value was refused. ``field`` is the key path at fault ("" for the whole)."""

    code = "INVALID_REQUEST"

    def __init__(self, message: str, *, field: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class InvalidQueueName(ValidationError):
    code = "INVALID_QUEUE_NAME"

    def __init__(self, message: str, *, part: str, field: str = "") -> None:
        super().__init__(message, field=field)
        self.part = part


class InvalidDuration(ValidationError):
    code = "INVALID_DURATION"


@dataclass(frozen=True, slots=True)
class FileProblem:
    """One problem in one policy file: where it is and what was expected."""

    path: str
    line: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.key_path:
            return f"{where}: {self.key_path}: {self.message}"
        return f"{where}: {self.message}"


class PolicyLoadError(PolicyError):
    """The policy could not be loaded; ``problems`` lists every one found."""

    code = "INVALID_POLICY"
    status_hint = 422

    def __init__(self, problems: list[FileProblem] | tuple[FileProblem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class NotFound(PolicyError):
    code = "NOT_FOUND"
    status_hint = 404


class Conflict(PolicyError):
    code = "CONFLICT"
    status_hint = 409
