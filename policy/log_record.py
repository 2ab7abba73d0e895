"""kumod's JSON log records -> the outcomes automation reads.

How this works
--------------
A record is kumo-log-types' ``JsonLogRecord`` as kumod's log hook sends it
(one object, or an array of them). msgspec decodes only the fields sluice
uses, into ``Record``; every other field (``id``, ``sender``, ``site``,
``size``, ``peer_address``, ``meta``, ``headers``, ``nodeid`` ...) is
skipped unread, so records from newer kumod versions are taken as they are.
The fields used:

    type                      only TransientFailure and Bounce are outcomes
    recipient                 a string, or an array (serde's OneOrMany)
    queue                     [campaign:][tenant@]domain[!routing]
    response.code, .content,  the line a rule's regex is matched against
    .enhanced_code            ({class, subject, detail} or null)
    timestamp, event_time     seconds since the epoch (serde ts_seconds), and
                              since kumod 2024 the same moment in RFC 3339
                              with its fraction; event_time wins when present

A type, shape or value the engine cannot use is a ``ValidationError`` whose
``field`` is the path (``[3].response.code``): the caller refuses the whole
body, so nothing is counted twice when the sender corrects and resends it.
Records of other types are checked for shape only.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from . import queue_name
from .automation import FAILURES, INTERNAL_PREFIX, Outcome, response_line
from .errors import InvalidQueueName, ValidationError

MAX_RECORDS = 10_000
# Seconds since the epoch a record's time may hold: from 2000 to 2100.
EARLIEST, LATEST = 946_684_800, 4_102_444_800


class EnhancedCode(msgspec.Struct, frozen=True):
    class_: int = msgspec.field(name="class")
    subject: int
    detail: int


class Response(msgspec.Struct, frozen=True):
    code: int
    content: str
    enhanced_code: EnhancedCode | None = None


class Record(msgspec.Struct, frozen=True):
    """The fields of a ``JsonLogRecord`` that automation uses."""

    type: str
    recipient: str | list[str]
    queue: str
    response: Response
    timestamp: int | float
    event_time: datetime | None = None


_decoder = msgspec.json.Decoder(Record | list[Record])


class Batch(msgspec.Struct, frozen=True):
    records: int  # how many records the body held
    outcomes: tuple[Outcome, ...]  # the failures among them


def decode(body: bytes) -> Batch:
    """The outcomes in a body of one record or an array of records.

    Raises msgspec.DecodeError for a body that is not JSON, and
    ValidationError naming the field for a record automation cannot read.
    """
    try:
        decoded = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).rpartition(" - at `$")
        field = path.rstrip("`").lstrip(".") if message else ""
        where = f" at {field}" if field else ""
        raise ValidationError(f"not a KumoMTA log record{where}: {message or exc}", field=field) from None
    records = decoded if isinstance(decoded, list) else [decoded]
    if len(records) > MAX_RECORDS:
        raise ValidationError(f"{len(records)} records; at most {MAX_RECORDS} a request")
    prefix = isinstance(decoded, list)
    outcomes = []
    for i, record in enumerate(records):
        if record.type in FAILURES:
            outcomes.append(_outcome(record, f"[{i}]" if prefix else ""))
    return Batch(records=len(records), outcomes=tuple(outcomes))


def _outcome(record: Record, at: str) -> Outcome:
    def refuse(field: str, message: str) -> ValidationError:
        return ValidationError(f"{at}.{field}".lstrip(".") + f": {message}", field=f"{at}.{field}".lstrip("."))

    recipients = [record.recipient] if isinstance(record.recipient, str) else record.recipient
    if not recipients:
        raise refuse("recipient", "holds no address")
    domains: list[str] = []
    for n, address in enumerate(recipients):
        field = "recipient" if isinstance(record.recipient, str) else f"recipient[{n}]"
        address = _bare(address)
        if address.lower() == "postmaster":
            continue  # the local postmaster: no automation, as in KumoMTA
        local, _, domain = address.rpartition("@")
        if not local or not domain:
            raise refuse(field, f"{address!r} is not an address (expected local@domain)")
        try:
            domain = queue_name.normalise_domain(domain, "domain")
        except InvalidQueueName as exc:
            raise refuse(field, exc.message) from None
        if domain not in domains:
            domains.append(domain)
    try:
        queue = queue_name.parse(record.queue)
    except InvalidQueueName as exc:
        raise refuse("queue", exc.message) from None
    when = record.event_time
    if when is not None:
        if when.tzinfo is None:
            raise refuse("event_time", "has no UTC offset; expected RFC 3339 such as 2026-01-01T12:00:00.5Z")
        seconds = when.timestamp()
    else:
        seconds = float(record.timestamp)
    if not EARLIEST <= seconds <= LATEST:
        name = "event_time" if when is not None else "timestamp"
        raise refuse(name, f"{record.timestamp if when is None else when} is not a time from 2000 to 2100 "
                           "(seconds since the epoch)")
    response = record.response
    if not 100 <= response.code <= 999:
        raise refuse("response.code", f"{response.code} is not an SMTP reply code")
    enhanced = response.enhanced_code
    return Outcome(
        domains=tuple(domains),
        queue=queue,
        response=response_line(
            response.code,
            None if enhanced is None else (enhanced.class_, enhanced.subject, enhanced.detail),
            response.content,
        ),
        internal=response.content.startswith(INTERNAL_PREFIX),
        at=seconds,
    )


def _bare(address: str) -> str:
    """A recipient without the angle brackets a forward path may keep."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address
