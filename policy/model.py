"""The policy objects: frozen, slotted, checked when built.

Values held here are already normalised (queue names and domains in their
normal form, datetimes aware). ``fields.py`` turns untrusted mappings into
these objects and reports every problem; the checks in ``__post_init__`` are
the invariants no object may break, whoever builds it.

``source`` says who owns an entry: ``"runtime"`` for the daemon's own state,
or ``"<file>:<line>"`` for an entry written in a policy file.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Literal

import msgspec

from .errors import ValidationError
from .queue_name import QueueName

RUNTIME = "runtime"

# Ids of file suspensions without an explicit id: uuid5(namespace, file + criteria).
FILE_ID_NAMESPACE = uuid.UUID("6f0b7c52-3f7e-5a59-9a43-7b3e1f0e8a11")


class Suspension(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A suspension (KumoMTA admin suspend semantics)."""

    id: str
    reason: str
    campaign: str | None = None
    tenant: str | None = None
    domain: str | None = None
    queue_names: tuple[str, ...] = ()
    everything: bool = False
    expires: datetime | None = None
    created_at: datetime | None = None
    created_by: str | None = None
    source: str = RUNTIME

    def __post_init__(self) -> None:
        has_fields = (
            self.campaign is not None or self.tenant is not None or self.domain is not None
        )
        if self.everything and (has_fields or self.queue_names):
            raise ValidationError("everything cannot be combined with other criteria")
        if self.queue_names and has_fields:
            raise ValidationError(
                "queue_names cannot be combined with campaign, tenant or domain"
            )
        if not (self.everything or self.queue_names or has_fields):
            raise ValidationError(
                "a suspension needs campaign, tenant, domain or queue_names "
                "(or everything = true to suspend all queues)"
            )
        if not self.reason:
            raise ValidationError("reason must not be empty", field="reason")
        if self.expires is not None and self.expires.tzinfo is None:
            raise ValidationError("expires must carry a UTC offset", field="expires")

    @property
    def criteria_key(self) -> str:
        """A canonical text of what this suspension matches; equal criteria, equal key."""
        return criteria_key(
            self.campaign, self.tenant, self.domain, self.queue_names, self.everything
        )

    def is_active(self, now: float) -> bool:
        return self.expires is None or self.expires.timestamp() > now

    def matches(self, queue: QueueName) -> bool:
        """Whether this suspension's criteria cover ``queue``, time aside."""
        if self.everything:
            return True
        if self.queue_names:
            return queue.name in self.queue_names
        return (
            (self.campaign is None or self.campaign == queue.campaign)
            and (self.tenant is None or self.tenant == queue.tenant)
            and (self.domain is None or self.domain == queue.domain)
        )


def criteria_key(
    campaign: str | None,
    tenant: str | None,
    domain: str | None,
    queue_names: tuple[str, ...] | None,
    everything: bool | None,
) -> str:
    """A canonical text of a suspension's criteria; equal criteria, equal key."""
    if everything:
        return "everything"
    if queue_names:
        return "queue_names=" + ",".join(sorted(queue_names))
    return _encode_json([campaign, tenant, domain]).decode()


_encode_json = msgspec.json.Encoder().encode
_NAMESPACE_BYTES = FILE_ID_NAMESPACE.bytes


def file_suspension_id(file_name: str, criteria: str) -> str:
    """The stable id of a file suspension written without one: UUIDv5 of file and criteria.

    Computed as RFC 4122 says, without uuid.uuid5's overhead (it is called
    for every entry of a 100,000-entry file).
    """
    h = hashlib.sha1(_NAMESPACE_BYTES + f"{file_name}\n{criteria}".encode()).hexdigest()
    variant = _VARIANT[h[16]]  # the two top bits of octet 8 become 10
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}


class QueuePolicy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A queue's pause state and settings (QStash queue semantics)."""

    name: str
    paused: bool = False
    reason: str | None = None
    parallelism: int | None = None
    created_at: datetime | None = None
    created_by: str | None = None
    updated_at: datetime | None = None
    source: str = RUNTIME

    def __post_init__(self) -> None:
        if self.parallelism is not None and self.parallelism < 1:
            raise ValidationError("parallelism must be at least 1", field="parallelism")


class Schedule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A named recurring trigger (QStash schedule), declared in a policy file
    or created through QStash's API (``source`` "runtime").

    sluice keeps a schedule and answers whether it may fire; it never calls
    the destination. What a QStash client gave at creation beyond the cron
    and destination is kept so that it reads it back: the queue, label,
    delays (seconds), callbacks, flow control, forwarded headers and body.
    """

    id: str
    cron: str | None = None
    description: str | None = None
    destination: str | None = None
    method: str = "POST"
    retries: int = 3
    paused: bool = False
    reason: str | None = None
    queue: str | None = None
    label: str | None = None
    delay: int | None = None
    timeout: int | None = None
    retry_delay: str | None = None
    callback: str | None = None
    failure_callback: str | None = None
    flow_control_key: str | None = None
    parallelism: int | None = None
    rate: int | None = None
    period: int | None = None
    headers: dict[str, str] | None = None
    callback_headers: dict[str, str] | None = None
    failure_callback_headers: dict[str, str] | None = None
    redact: str | None = None
    body: str | None = None
    body_base64: str | None = None
    created_at: datetime | None = None
    created_by: str | None = None
    updated_at: datetime | None = None
    source: str = RUNTIME


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A delivery endpoint (HookBridge endpoint), declared in a policy file or
    created through HookBridge's API (``source`` "runtime").

    sluice never calls the URL: it answers whether messages for the endpoint
    may be delivered. The rate limit and headers a client gives are kept so
    that it reads them back.
    """

    id: str
    url: str
    name: str | None = None
    description: str | None = None
    paused: bool = False
    reason: str | None = None
    rate_limit_rps: int | None = None
    burst: int | None = None
    headers: dict[str, str] | None = None
    created_at: datetime | None = None
    created_by: str | None = None
    updated_at: datetime | None = None
    source: str = RUNTIME


# What a flow-control key's pins may be: parallelism, rate (per period), period in seconds.
PIN_LIMITS = {"parallelism": (1, 1_000_000), "rate": (1, 1_000_000), "period": (1, 7 * 24 * 3600)}


class FlowControl(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A QStash flow-control key's pause and pinned settings.

    Pinned ``parallelism`` and ``rate`` (per ``period`` seconds) are answered
    to whoever checks the key; a paused key holds every message that carries it.
    """

    key: str
    paused: bool = False
    reason: str | None = None
    parallelism: int | None = None
    rate: int | None = None
    period: int | None = None
    created_at: datetime | None = None
    created_by: str | None = None
    updated_at: datetime | None = None
    source: str = RUNTIME

    def __post_init__(self) -> None:
        # a pin out of these bounds would be stored, then refused when the
        # runtime state is read back: the daemon could not start again
        for field, (low, high) in PIN_LIMITS.items():
            value = getattr(self, field)
            if value is not None and not low <= value <= high:
                raise ValidationError(f"{field} must be from {low} to {high}, got {value}", field=field)


class Pause(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A runtime pause of a file-declared schedule or endpoint."""

    kind: Literal["schedule", "endpoint"]
    id: str
    reason: str | None = None
    created_at: datetime | None = None
    created_by: str | None = None
    source: str = RUNTIME


Entry = Suspension | QueuePolicy | Schedule | Endpoint | FlowControl | Pause
