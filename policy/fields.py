"""Untrusted mappings (a TOML table, a JSON object) -> policy objects.

Every builder reads the whole mapping and reports every problem it finds at
once, as ``EntryInvalid.problems``: (key, message, code) triples where key is
relative to the entry ("" when the entry as a whole is at fault). Callers add
their own context: ``files.py`` the file, line and ``suspension[3]`` prefix,
the HTTP layer the error envelope.

Three modes, because the same tables arrive from three places:
    file      a policy file: ``id`` optional (a stable one is derived),
              ``expires`` may lie in the past (the entry simply never matches)
    runtime   the daemon's own state: ``id``, ``created_at``, ``created_by``
    api       a request: ``duration`` allowed, ``expires`` must be in the
              future, ``id`` not accepted (the daemon assigns it)
Unknown keys are always an error: a typo must never widen a rule.
"""

from __future__ import annotations

import difflib
import re
import uuid
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Literal, Mapping, NamedTuple
from urllib.parse import urlsplit

from croniter import croniter

from . import queue_name
from .automation import ACTIONS, IMMEDIATE, KUMO_ONLY_ACTIONS, Rule, parse_threshold, rule_id
from .duration import parse_duration
from .errors import InvalidQueueName, PolicyError, ValidationError
from .model import (
    PIN_LIMITS,
    RUNTIME,
    Endpoint,
    FlowControl,
    Pause,
    QueuePolicy,
    Schedule,
    Suspension,
    criteria_key,
    file_suspension_id,
)

Mode = Literal["file", "runtime", "api"]

DEFAULT_SUSPENSION = timedelta(minutes=5)
MAX_REASON = 1000
SCHEDULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
ENDPOINT_ID = re.compile(r"ep_[a-f0-9]{32}\Z")
# QStash's names (queues, flow-control keys): kept verbatim, case included.
QSTASH_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}\Z")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON can carry them; UTF-8 cannot
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}\Z")  # an HTTP header name (RFC 9110)


class Problem(NamedTuple):
    key: str
    message: str
    code: str = "INVALID_REQUEST"


class EntryInvalid(ValidationError):
    """An entry was refused; ``problems`` holds every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0]
        message = "; ".join(f"{p.key}: {p.message}" if p.key else p.message for p in problems)
        super().__init__(message, field=first.key, code=first.code)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, (date, time)):
        return "a date or time without a date-time"
    return type(value).__name__


# Unknown fields reported one by one in an entry; the rest are counted.
MAX_UNKNOWN = 10


class _Reader:
    """Reads one mapping, collecting problems instead of stopping at the first."""

    def __init__(self, data: object, allowed: tuple[str, ...], what: str) -> None:
        self.problems: list[Problem] = []
        if not isinstance(data, Mapping):
            self.problems.append(
                Problem("", f"expected a {what} (a JSON object or TOML table), got {_type_name(data)}")
            )
            data = {}
        self.data: Mapping[str, Any] = data
        unknown = [key for key in data if key not in allowed]
        for key in unknown[:MAX_UNKNOWN]:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            also = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.problems.append(
                Problem(str(key), f"unknown field{also}; a {what} has: {', '.join(allowed)}")
            )
        if len(unknown) > MAX_UNKNOWN:
            self.problems.append(
                Problem("", f"and {len(unknown) - MAX_UNKNOWN} more unknown fields")
            )

    def fail(self, key: str, message: str, code: str = "INVALID_REQUEST") -> None:
        self.problems.append(Problem(key, message, code))

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, *, required: bool = False, limit: int = 255) -> str | None:
        if key not in self.data:
            if required:
                self.fail(key, "is required")
            return None
        value = self.data[key]
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_type_name(value)}")
            return None
        if not value.strip():
            self.fail(key, "must not be empty")
            return None
        if _CONTROL.search(value):
            self.fail(key, "must not contain control characters such as newlines")
            return None
        if _SURROGATE.search(value):
            self.fail(key, "is not valid Unicode text (a lone surrogate such as \\ud800)")
            return None
        if len(value) > limit:
            self.fail(key, f"is {len(value)} characters long; at most {limit}")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_type_name(value)}")
            return None
        return value

    def integer(self, key: str, minimum: int, maximum: int) -> int | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_type_name(value)}")
            return None
        if not minimum <= value <= maximum:
            self.fail(key, f"must be from {minimum} to {maximum}, got {value}")
            return None
        return value

    def moment(self, key: str) -> datetime | None:
        """An aware datetime: a TOML offset date-time or an RFC 3339 string."""
        if key not in self.data:
            return None
        value = self.data[key]
        expected = "an RFC 3339 date-time with an offset, such as 2026-11-23T12:00:00Z"
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                self.fail(key, f"expected {expected}, got {self.data[key]!r}")
                return None
        if not isinstance(value, datetime):
            self.fail(key, f"expected {expected}, got {_type_name(value)}")
            return None
        if value.tzinfo is None:
            self.fail(key, f"has no UTC offset; expected {expected}")
            return None
        return value.astimezone(timezone.utc)

    def _named(self, key: str, check: Callable[[str, str], str]) -> str | None:
        value = self.text(key)
        if value is None:
            return None
        try:
            return check(value, key)
        except InvalidQueueName as exc:
            self.fail(key, exc.message, exc.code)
            return None

    def component(self, key: str) -> str | None:
        """A campaign or tenant, as written."""
        return self._named(key, queue_name.check_component)

    def domain(self, key: str) -> str | None:
        """A domain, normalised."""
        return self._named(key, queue_name.normalise_domain)

    def queue(self, key: str, *, required: bool = False) -> str | None:
        if key not in self.data:
            if required:
                self.fail(key, "is required")
            return None
        value = self.data[key]
        if not isinstance(value, str):
            self.fail(key, f"expected a queue name string, got {_type_name(value)}")
            return None
        try:
            return queue_name.normalise(value)
        except InvalidQueueName as exc:
            self.fail(key, exc.message, exc.code)
            return None

    def queue_list(self, key: str) -> tuple[str, ...] | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, (list, tuple)):
            self.fail(key, f"expected an array of queue names, got {_type_name(value)}")
            return None
        if not value:
            self.fail(key, "must list at least one queue name")
            return None
        names: dict[str, None] = {}
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{i}]", f"expected a queue name string, got {_type_name(item)}")
                continue
            try:
                names[queue_name.normalise(item)] = None
            except InvalidQueueName as exc:
                self.fail(f"{key}[{i}]", exc.message, exc.code)
        return tuple(names)

    def uuid(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is None:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            self.fail(key, f"expected a UUID, got {value!r}")
            return None

    def done(self) -> None:
        if self.problems:
            raise EntryInvalid(self.problems)


def _build(reader: _Reader, cls: type, **values: Any) -> Any:
    reader.done()
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise EntryInvalid([Problem(exc.field, exc.message, exc.code)]) from None


_SUSPENSION_KEYS = {
    "file": ("id", "campaign", "tenant", "domain", "queue_names", "everything", "reason", "expires"),
    "runtime": (
        "id", "campaign", "tenant", "domain", "queue_names", "everything", "reason",
        "expires", "created_at", "created_by",
    ),
    "api": (
        "campaign", "tenant", "domain", "queue_names", "everything", "reason", "duration",
        "expires",
    ),
}


KUMO_CRITERIA = ("campaign", "tenant", "domain")


def kumo_request(data: dict) -> dict:
    """A suspend request as KumoMTA's clients write it, in sluice's terms.

    kcli serialises ``campaign``, ``tenant`` and ``domain`` always, as
    ``null`` when a flag is not given (kumo-api-types' ``SuspendV1Request``),
    so ``null`` means absent for every optional field and an empty
    ``queue_names`` means none. All three present and ``null`` with no
    ``queue_names`` is ``kcli suspend --everything``. A body that names no
    criteria at all stays refused, and unknown keys stay errors: a typo
    cannot suspend all mail.
    """
    known = _SUSPENSION_KEYS["api"]
    body = {
        k: v
        for k, v in data.items()
        if k not in known or not (v is None or (k == "queue_names" and v == []))
    }
    if (
        all(k in data and data[k] is None for k in KUMO_CRITERIA)
        and "queue_names" not in body
        and "everything" not in body
    ):
        body["everything"] = True
    return body


def suspension_from(
    data: object,
    *,
    mode: Mode,
    now: datetime | None = None,
    file_name: str = "",
    source: str = RUNTIME,
) -> Suspension:
    """Build a Suspension from a mapping; raises EntryInvalid with every problem.

    ``now`` is required in api mode, where ``duration`` (default five
    minutes) is turned into ``expires``.
    """
    if mode == "file" and type(data) is dict:
        fast = _file_suspension_fast(data, file_name, source)
        if fast is not None:
            return fast
    if mode == "api" and type(data) is dict:
        data = kumo_request(data)
    r = _Reader(data, _SUSPENSION_KEYS[mode], "suspension")
    campaign = r.component("campaign")
    tenant = r.component("tenant")
    domain = r.domain("domain")
    names = r.queue_list("queue_names")
    everything = r.boolean("everything")
    reason = r.text("reason", required=True, limit=MAX_REASON)
    expires = r.moment("expires")
    ident = r.uuid("id", required=mode == "runtime")
    created_at = r.moment("created_at")
    created_by = r.text("created_by") if r.has("created_by") else None

    if names is not None and any(r.has(k) for k in ("campaign", "tenant", "domain")):
        r.fail("queue_names", "cannot be combined with campaign, tenant or domain")
    criteria = any(r.has(k) for k in ("campaign", "tenant", "domain", "queue_names"))
    if everything is True and criteria:
        r.fail("everything", "cannot be combined with other criteria")
    if everything is not True and not criteria and not r.problems:
        r.fail(
            "",
            "a suspension needs campaign, tenant, domain or queue_names "
            "(or everything = true to suspend all queues)",
        )

    if mode == "api":
        assert now is not None, "api mode needs now"
        if r.has("duration") and r.has("expires"):
            r.fail("duration", "give either duration or expires, not both")
        elif r.has("duration"):
            try:
                expires = now + timedelta(seconds=parse_duration(r.data["duration"]))
            except PolicyError as exc:
                r.fail("duration", exc.message, exc.code)
        elif expires is not None:
            if expires <= now:
                r.fail("expires", f"{expires.isoformat()} is in the past")
        elif not r.has("expires"):
            expires = now + DEFAULT_SUSPENSION

    r.done()
    if ident is None:
        ident = (
            file_suspension_id(file_name, criteria_key(campaign, tenant, domain, names, everything))
            if mode == "file"
            else str(uuid.uuid4())
        )
    try:
        return Suspension(
            id=ident,
            reason=reason,
            campaign=campaign,
            tenant=tenant,
            domain=domain,
            queue_names=names or (),
            everything=bool(everything),
            expires=expires,
            created_at=created_at,
            created_by=created_by,
            source=source,
        )
    except ValidationError as exc:
        raise EntryInvalid([Problem(exc.field, exc.message, exc.code)]) from None


_FILE_KEYS = frozenset(_SUSPENSION_KEYS["file"])


def _file_suspension_fast(data: dict, file_name: str, source: str) -> Suspension | None:
    """The common, well-formed file suspension, built without the full reader.

    Returns None at the first thing out of the ordinary; the full reader then
    runs and reports every problem. It accepts exactly what the reader
    accepts (a test checks the two agree), only faster: a policy file may
    hold 100,000 of these.
    """
    if not data.keys() <= _FILE_KEYS or None in data.values():
        return None
    reason = data.get("reason")
    if (
        type(reason) is not str
        or len(reason) > MAX_REASON
        or not reason.strip()
        or _CONTROL.search(reason)
    ):
        return None
    try:
        campaign = data.get("campaign")
        if campaign is not None:
            if type(campaign) is not str or not campaign.strip():
                return None
            campaign = queue_name.check_component(campaign, "campaign")
        tenant = data.get("tenant")
        if tenant is not None:
            if type(tenant) is not str or not tenant.strip():
                return None
            tenant = queue_name.check_component(tenant, "tenant")
        domain = data.get("domain")
        if domain is not None:
            if type(domain) is not str or len(domain) > 255 or not domain.strip():
                return None
            domain = queue_name.normalise_domain(domain, "domain")
        names = data.get("queue_names")
        if names is not None:
            if type(names) is not list or not names or any(type(n) is not str for n in names):
                return None
            names = tuple(dict.fromkeys(queue_name.parse(n).name for n in names))
    except InvalidQueueName:
        return None
    everything = data.get("everything")
    if everything is not None and type(everything) is not bool:
        return None
    has_fields = campaign is not None or tenant is not None or domain is not None
    if names is not None and has_fields:
        return None
    if everything and (has_fields or names is not None):
        return None
    if not everything and not has_fields and names is None:
        return None
    expires = data.get("expires")
    if expires is not None:
        if type(expires) is str:  # an RFC 3339 string, as the reader's moment() takes it
            try:
                expires = datetime.fromisoformat(expires.strip())
            except ValueError:
                return None
        if type(expires) is not datetime or expires.tzinfo is None:
            return None
        expires = expires.astimezone(timezone.utc)
    ident = data.get("id")
    if ident is not None:
        if type(ident) is not str:
            return None
        try:
            ident = str(uuid.UUID(ident))
        except ValueError:
            return None
    else:
        ident = file_suspension_id(file_name, criteria_key(campaign, tenant, domain, names, everything))
    return Suspension(
        id=ident,
        reason=reason,
        campaign=campaign,
        tenant=tenant,
        domain=domain,
        queue_names=names or (),
        everything=bool(everything),
        expires=expires,
        source=source,
    )


_QUEUE_KEYS = {
    "file": ("name", "paused", "reason", "parallelism"),
    "runtime": (
        "name", "paused", "reason", "parallelism", "created_at", "created_by", "updated_at",
    ),
    "api": ("reason", "parallelism"),
}


def queue_from(
    data: object,
    *,
    mode: Mode,
    name: str | None = None,
    source: str = RUNTIME,
    qstash: bool = False,
) -> QueuePolicy:
    """Build a QueuePolicy; in api mode ``name`` comes from the path, not the body.

    In a policy file ``paused`` is required, so that a table meant to pause a
    queue cannot silently leave it running. A name is a mail queue name, in
    its normal form, but with ``qstash`` (QStash's routes) it is a QStash
    name, kept verbatim; the runtime state holds both kinds, so a stored name
    that is a valid QStash name is read back verbatim.
    """
    r = _Reader(data, _QUEUE_KEYS[mode], "queue")
    if mode == "api":
        try:
            normal = check_qstash_name(name) if qstash else queue_name.normalise(name or "")
        except InvalidQueueName as exc:
            r.fail("name", exc.message, exc.code)
            normal = None
        except ValidationError as exc:
            r.fail("name", exc.message)
            normal = None
    elif mode == "runtime" and isinstance(r.data.get("name"), str) and QSTASH_NAME.match(r.data["name"]):
        normal = r.data["name"]
    else:
        normal = r.queue("name", required=True)
    paused = r.boolean("paused")
    if mode == "file" and not r.has("paused"):
        r.fail("paused", "is required (true to pause the queue, false to only set parallelism)")
    return _build(
        r,
        QueuePolicy,
        name=normal,
        paused=paused,
        reason=r.text("reason", limit=MAX_REASON),
        parallelism=r.integer("parallelism", 1, 1_000_000),
        created_at=r.moment("created_at"),
        created_by=r.text("created_by"),
        updated_at=r.moment("updated_at"),
        source=source,
    )


def check_schedule_id(value: object) -> str:
    """Return a valid schedule id or raise ValidationError."""
    if not isinstance(value, str) or SCHEDULE_ID.match(value) is None:
        raise ValidationError(
            "schedule id must be 1 to 128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit; got {value!r}",
            field="id",
        )
    return value


def check_qstash_name(value: object, what: str = "queue name") -> str:
    """Return a valid QStash name (a queue's, a flow-control key) verbatim, or raise ValidationError."""
    if not isinstance(value, str) or QSTASH_NAME.match(value) is None:
        raise ValidationError(
            f"{what} must be 1 to 200 letters, digits, '.', '_' or '-' (case is kept); got {value!r}",
            field="name",
        )
    return value


def check_endpoint_id(value: object) -> str:
    """Return a valid endpoint id or raise ValidationError (HookBridge's message)."""
    if not isinstance(value, str) or ENDPOINT_ID.match(value) is None:
        raise ValidationError(
            f"endpoint_id must be in format ep_xxx (ep_ and 32 lowercase hex digits), got {value!r}",
            field="id",
        )
    return value


def _checked(r: _Reader, key: str, check: Any) -> str | None:
    if key not in r.data:
        r.fail(key, "is required")
        return None
    try:
        return check(r.data[key])
    except ValidationError as exc:
        r.fail(key, exc.message)
        return None


def _https_url(
    r: _Reader, key: str, *, required: bool, schemes: tuple[str, ...] = ("https",)
) -> str | None:
    value = r.text(key, required=required, limit=2048)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        wanted = " or ".join(f"{s}://" for s in schemes)
        r.fail(key, f"expected an {wanted} URL, got {value!r}")
        return None
    return value


_SCHEDULE_FILE_KEYS = ("id", "cron", "description", "destination", "method", "retries", "paused", "reason")
# What a schedule made through QStash's API also keeps (the daemon's state only).
_SCHEDULE_RUNTIME_KEYS = _SCHEDULE_FILE_KEYS + (
    "queue", "label", "delay", "timeout", "retry_delay", "callback", "failure_callback",
    "flow_control_key", "parallelism", "rate", "period", "headers", "callback_headers",
    "failure_callback_headers", "redact", "body", "body_base64",
    "created_at", "created_by", "updated_at",
)
MAX_BODY = 1_000_000
MAX_HEADERS = 100
WEEK = 7 * 24 * 3600


def schedule_from(data: object, *, source: str = RUNTIME, mode: Mode = "file") -> Schedule:
    """Build a Schedule from a policy file table, or (``mode="runtime"``) one made
    through QStash's API as the daemon stores it; the cron is checked by croniter."""
    runtime = mode != "file"
    r = _Reader(data, _SCHEDULE_RUNTIME_KEYS if runtime else _SCHEDULE_FILE_KEYS, "schedule")
    ident = _checked(r, "id", check_schedule_id)
    cron = r.text("cron", required=runtime)
    if cron is not None and not croniter.is_valid(cron):
        r.fail("cron", f"{cron!r} is not a valid cron expression")
    method = r.text("method")
    if method is not None and method not in HTTP_METHODS:
        r.fail("method", f"expected one of {', '.join(HTTP_METHODS)}, got {method!r}")
    extra: dict[str, Any] = {}
    if runtime:
        urls = ("https", "http")
        extra = {
            "queue": _checked(r, "queue", check_qstash_name) if r.has("queue") else None,
            "label": r.text("label"),
            "delay": r.integer("delay", 0, 365 * 24 * 3600),
            "timeout": r.integer("timeout", 1, 365 * 24 * 3600),
            "retry_delay": r.text("retry_delay", limit=MAX_REASON),
            "callback": _https_url(r, "callback", required=False, schemes=urls),
            "failure_callback": _https_url(r, "failure_callback", required=False, schemes=urls),
            "flow_control_key": (
                _checked(r, "flow_control_key", check_flow_control_key) if r.has("flow_control_key") else None
            ),
            "parallelism": r.integer("parallelism", 1, 1_000_000),
            "rate": r.integer("rate", 1, 1_000_000),
            "period": r.integer("period", 1, WEEK),
            "headers": _headers(r, "headers"),
            "callback_headers": _headers(r, "callback_headers"),
            "failure_callback_headers": _headers(r, "failure_callback_headers"),
            "redact": r.text("redact"),
            "body": _body(r, "body"),
            "body_base64": _body(r, "body_base64"),
            "created_at": r.moment("created_at"),
            "created_by": r.text("created_by"),
            "updated_at": r.moment("updated_at"),
        }
        if extra["flow_control_key"] is None and any(
            extra[k] is not None for k in ("parallelism", "rate", "period")
        ):
            r.fail("flow_control_key", "is required with parallelism, rate or period")
    return _build(
        r,
        Schedule,
        id=ident,
        cron=cron,
        description=r.text("description", limit=MAX_REASON),
        destination=_https_url(r, "destination", required=runtime, schemes=("https", "http") if runtime else ("https",)),
        method=method,
        retries=r.integer("retries", 0, 100),
        paused=r.boolean("paused"),
        reason=r.text("reason", limit=MAX_REASON),
        source=source,
        **extra,
    )


def _headers(r: _Reader, key: str) -> dict[str, str] | None:
    """Header names and values, as a schedule forwards them."""
    if not r.has(key):
        return None
    value = r.data[key]
    if not isinstance(value, Mapping) or len(value) > MAX_HEADERS:
        r.fail(key, f"expected a table of at most {MAX_HEADERS} header names and values")
        return None
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            r.fail(key, f"{name!r} is not a header name")
            return None
        if not isinstance(text, str) or _CONTROL.search(text) or _SURROGATE.search(text) or len(text) > 8192:
            r.fail(f"{key}.{name}", "expected header text of at most 8192 characters, without control characters")
            return None
    return dict(value)


def _body(r: _Reader, key: str) -> str | None:
    if not r.has(key):
        return None
    value = r.data[key]
    if not isinstance(value, str) or _SURROGATE.search(value) or len(value) > MAX_BODY:
        r.fail(key, f"expected text of at most {MAX_BODY} characters")
        return None
    return value


def check_flow_control_key(value: object) -> str:
    """A flow-control key: a QStash name."""
    return check_qstash_name(value, "flow-control key")


_FLOW_KEYS = {
    "file": ("key", "paused", "reason", "parallelism", "rate", "period"),
    "runtime": (
        "key", "paused", "reason", "parallelism", "rate", "period",
        "created_at", "created_by", "updated_at",
    ),
}


def flow_control_from(data: object, *, mode: Mode = "file", source: str = RUNTIME) -> FlowControl:
    """Build a FlowControl: a key's pause and pinned parallelism and rate.

    In a policy file ``paused`` is required, as for a queue.
    """
    r = _Reader(data, _FLOW_KEYS["file" if mode == "file" else "runtime"], "flow_control")
    key = _checked(r, "key", check_flow_control_key)
    if mode == "file" and not r.has("paused"):
        r.fail("paused", "is required (true to pause the key, false to only pin settings)")
    return _build(
        r,
        FlowControl,
        key=key,
        paused=r.boolean("paused"),
        reason=r.text("reason", limit=MAX_REASON),
        **{field: r.integer(field, low, high) for field, (low, high) in PIN_LIMITS.items()},
        created_at=r.moment("created_at"),
        created_by=r.text("created_by"),
        updated_at=r.moment("updated_at"),
        source=source,
    )


_ENDPOINT_FILE_KEYS = ("id", "url", "name", "description", "paused", "reason")
# What an endpoint made through HookBridge's API also keeps (the daemon's state only).
_ENDPOINT_RUNTIME_KEYS = _ENDPOINT_FILE_KEYS + (
    "rate_limit_rps", "burst", "headers", "created_at", "created_by", "updated_at",
)
# What HookBridge's create and update take.
ENDPOINT_API_KEYS = ("url", "description", "rate_limit_rps", "burst", "headers")


def endpoint_from(data: object, *, source: str = RUNTIME, mode: Mode = "file") -> Endpoint:
    """Build an Endpoint from a policy file table, or (``mode="runtime"``) one
    made through HookBridge's API as the daemon stores it."""
    runtime = mode != "file"
    r = _Reader(data, _ENDPOINT_RUNTIME_KEYS if runtime else _ENDPOINT_FILE_KEYS, "endpoint")
    extra: dict[str, Any] = {}
    if runtime:
        extra = {
            "rate_limit_rps": r.integer("rate_limit_rps", 0, 1_000_000),
            "burst": r.integer("burst", 0, 1_000_000),
            "headers": _headers(r, "headers"),
            "created_at": r.moment("created_at"),
            "created_by": r.text("created_by"),
            "updated_at": r.moment("updated_at"),
        }
    return _build(
        r,
        Endpoint,
        id=_checked(r, "id", check_endpoint_id),
        url=_https_url(r, "url", required=True),
        name=r.text("name"),
        description=r.text("description", limit=MAX_REASON),
        paused=r.boolean("paused"),
        reason=r.text("reason", limit=MAX_REASON),
        source=source,
        **extra,
    )


def pause_from(data: object, *, kind: Literal["schedule", "endpoint"]) -> Pause:
    """Build a runtime Pause of a schedule or endpoint from the daemon's state."""
    r = _Reader(data, ("id", "paused", "reason", "created_at", "created_by"), kind)
    check = check_schedule_id if kind == "schedule" else check_endpoint_id
    ident = _checked(r, "id", check)
    if r.boolean("paused") is False:
        r.fail("paused", "a runtime entry records a pause; remove it to resume")
    return _build(
        r,
        Pause,
        kind=kind,
        id=ident,
        reason=r.text("reason", limit=MAX_REASON),
        created_at=r.moment("created_at"),
        created_by=r.text("created_by"),
    )



_AUTOMATION_KEYS = ("domain", "regex", "action", "duration", "trigger", "match_internal")


def automation_from(data: object, *, source: str = "") -> Rule:
    """Build an automation Rule from a policy file table (KumoMTA's shaping.toml
    ``automation`` entry, with the ``domain`` it watches); raises EntryInvalid
    with every problem. Regexes are compiled here, once per read of the file."""
    r = _Reader(data, _AUTOMATION_KEYS, "automation rule")
    domain = r.domain("domain")
    if not r.has("domain"):
        r.fail("domain", "is required (the recipient domain the rule watches)")
    regex = _one_or_list(r, "regex", "a regex")
    patterns = []
    for where, text in regex:
        try:
            patterns.append(re.compile(text))
        except re.error as exc:
            r.fail(where, f"is not a valid regex ({exc}): {text!r}")
        except (RecursionError, OverflowError):
            r.fail(where, f"is too large or nested too deeply to compile: {text[:40]!r}")
    action = _one_or_list(r, "action", "an action")
    for where, name in action:
        if name in ACTIONS:
            continue
        if name in KUMO_ONLY_ACTIONS:
            r.fail(where, f"{name!r} is a KumoMTA action sluice does not take; sluice holds with: {', '.join(ACTIONS)}")
            continue
        hint = difflib.get_close_matches(name, ACTIONS, n=1)
        also = f" (did you mean {hint[0]!r}?)" if hint else ""
        r.fail(where, f"unknown action {name!r}{also}; actions: {', '.join(ACTIONS)}")
    actions = [name for _, name in action]
    if len(set(actions)) != len(actions):
        r.fail("action", "names an action twice")
    duration = None
    if not r.has("duration"):
        r.fail("duration", 'is required (how long a hold lasts, such as "3 hours")')
    else:
        try:
            duration = parse_duration(r.data["duration"])
        except PolicyError as exc:
            r.fail("duration", exc.message, exc.code)
    trigger = _trigger(r)
    match_internal = bool(r.boolean("match_internal"))
    r.done()
    regexes = tuple(text for _, text in regex)
    return Rule(
        id=rule_id(domain, regexes, actions, duration, trigger, match_internal),
        domain=domain,
        regex=regexes,
        action=tuple(actions),
        duration=duration,
        trigger=trigger,
        match_internal=match_internal,
        source=source,
        patterns=tuple(patterns),
    )


def _one_or_list(r: _Reader, key: str, what: str) -> list[tuple[str, str]]:
    """A required string, or a non-empty array of strings (KumoMTA's one-or-many),
    each with the key path it is at."""
    if not r.has(key):
        r.fail(key, "is required")
        return []
    value = r.data[key]
    if not isinstance(value, list):
        value, paths = [value], [key]
    else:
        paths = [f"{key}[{i}]" for i in range(len(value))]
    if not value:
        r.fail(key, f"must hold at least one; expected {what} or an array of them")
    good = []
    for where, item in zip(paths, value):
        if not isinstance(item, str) or not item:
            got = "an empty string" if item == "" else _type_name(item)
            r.fail(where, f"expected {what} (a non-empty string), got {got}")
        else:
            good.append((where, item))
    return good


def _trigger(r: _Reader) -> Any:
    """``"Immediate"`` (also when absent) -> None; ``{ Threshold = "N/period" }`` -> Threshold."""
    if not r.has("trigger"):
        return None
    value = r.data["trigger"]
    expected = 'expected "Immediate" or { Threshold = "N/period" } such as { Threshold = "10/hr" }'
    if value == IMMEDIATE:
        return None
    if isinstance(value, str):
        hint = f' (did you mean {{ Threshold = "{value}" }}?)' if "/" in value else ""
        r.fail("trigger", f"{expected}, got {value!r}{hint}")
        return None
    if not isinstance(value, Mapping) or len(value) != 1:
        r.fail("trigger", f"{expected}, got {_type_name(value)}")
        return None
    ((name, spec),) = value.items()
    if name != "Threshold":
        hint = difflib.get_close_matches(str(name), ["Threshold"], n=1)
        also = " (did you mean 'Threshold'?)" if hint else ""
        r.fail(f"trigger.{name}", f"unknown trigger{also}; {expected}")
        return None
    if not isinstance(spec, str):
        r.fail("trigger.Threshold", f"expected a string such as \"10/hr\", got {_type_name(spec)}")
        return None
    try:
        return parse_threshold(spec)
    except ValidationError as exc:
        r.fail("trigger.Threshold", exc.message)
        return None
