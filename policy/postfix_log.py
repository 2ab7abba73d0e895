"""Postfix's mail log -> the delivery outcomes automation reads, as kumod's log records.

How this works
--------------
``Joiner.feed(line, now)`` reads one line of a Postfix mail log (syslog's
``Mmm dd hh:mm:ss host tag[pid]: text``, or RFC 3339 time as newer
rsyslog and Postfix write it) and keeps, by queue id, what a later line of
the same message needs. Three kinds of line matter; every other is passed
over:

    postfix/smtpd[9582]: 9D92520C18E: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username=acme
        the message's SASL login: its tenant, as the policy socket names it
        (``login_tenant``: ``acme@realm`` is ``acme`` unless strip_realm is off)
    postfix/smtp[9587]: 9D92520C18E: to=<u@gmail.com>, relay=..., dsn=4.7.28, status=deferred
        (host mx[192.0.2.1] said: 421 4.7.28 Our system has detected ... (in reply to RCPT TO command))
        an outcome: a ``TransientFailure`` (deferred) or ``Bounce`` (bounced)
        record for that recipient, its queue ``tenant@domain`` (``domain``
        when the message has no known tenant), its response read from the
        remote's answer, its time the line's
    postfix/qmgr[9580]: 9D92520C18E: removed
        the message has left the queue: its tenant is forgotten

The program is the tag's last part (``smtp`` or ``lmtp``; ``smtpd``;
``qmgr`` or ``postsuper``), the tag's first part names Postfix
(``postfix``, or a multi-instance ``postfix-out``), and services between
(``postfix/submission/smtpd``, ``postfix/relay/smtp``) are taken as they
come. Queue ids are Postfix's short ids (hexadecimal) or long ids
(``enable_long_queue_ids``).

Invariants:
- Only the remote's own answers are outcomes (``host ... said: ...``,
  ``host ... refused to talk to me: ...``); a deferral Postfix decides
  itself (no route, connection refused, a timeout) has no SMTP answer to
  match and is passed over.
- A multi-line answer, which Postfix logs as its lines joined by spaces
  (``550-5.1.1 first 550-5.1.1 second 550 5.1.1 last``), is read as kumod
  reads one: the code and enhanced code once, the lines' text joined by
  line breaks.
- The table of tenants holds at most ``max_queue_ids`` messages: past that
  the oldest is forgotten (a log without ``removed`` lines cannot grow it
  without end). A forgotten or never seen message is posted without a
  tenant, so domain rules still apply to it.
- A line that looks like none of Postfix's, or a status line whose
  recipient or time cannot be read, is counted in ``unreadable`` and
  skipped; no line raises.
- A traditional time has no year: it is the year of ``now`` (in ``zone``),
  or the year before if that would put it more than a day ahead of ``now``.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo

import msgspec

from . import queue_name
from .errors import InvalidQueueName
from .log_record import EARLIEST, LATEST, EnhancedCode, Record, Response

MAX_QUEUE_IDS = 100_000
AHEAD = timedelta(days=1)  # how far ahead of now a traditional time may be and stay this year's

_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_LINE = re.compile(
    r"(?:(?P<month>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<clock>\d\d:\d\d:\d\d)(?:\.\d+)?"
    r"|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)))"
    r" \S+ (?P<tag>[^\s\[:]+)(?:\[\d+\])?: (?P<text>.*)"
)
_SHORT_ID = r"[0-9A-F]{6,}"
_LONG_ID = r"[0-9BCDFGHJ-NP-TV-Zb-df-hj-np-tv-z]{10,}z[0-9BCDFGHJ-NP-TV-Zb-df-hj-np-tv-y]+"
_QUEUE_ID = re.compile(rf"(?P<id>{_SHORT_ID}|{_LONG_ID}): (?P<rest>.*)")
_LOGIN = re.compile(r"client=.*?, sasl_method=[^,]*, sasl_username=(?P<login>[^,]*)")
_STATUS = re.compile(r"to=<(?P<to>[^>]*)>, .*?status=(?P<status>deferred|bounced) \((?P<why>.*)\)\Z")
_ANSWER = re.compile(r"host \S+ (?:said|refused to talk to me): (?P<answer>.*)\Z")
_IN_REPLY = re.compile(r" \(in reply to [^()]*\)\Z")
_CODE = re.compile(r"(?P<code>[2-5]\d\d)(?P<sep>[ -]|\Z)(?:(?P<enhanced>[245]\.\d{1,3}\.\d{1,3})(?: |\Z))?")

TYPES = {"deferred": "TransientFailure", "bounced": "Bounce"}
DELIVERY = frozenset(("smtp", "lmtp"))
LEAVING = frozenset(("qmgr", "postsuper"))


def login_tenant(login: str, strip_realm: bool = True) -> tuple[str, str | None]:
    """The tenant a SASL login names, and the login if it cannot name one.

    ``("acme", None)`` for ``acme`` (or ``acme@realm`` with ``strip_realm``);
    ``("", login)`` for a login no queue name can carry as a tenant (a
    ``:``, an ``@`` left in, whitespace or control characters); ``("",
    None)`` for no login. The policy socket names its tenants by this, so a
    hold made from the log matches the mail the policy socket is asked about.
    """
    if not login:
        return "", None
    tenant = login.partition("@")[0] if strip_realm else login
    try:
        queue_name.check_component(tenant, "tenant")
    except InvalidQueueName:
        return "", login
    if ":" in tenant:  # it would turn into a campaign
        return "", login
    return tenant, None


class Answer(msgspec.Struct, frozen=True):
    code: int
    enhanced: tuple[int, int, int] | None
    content: str


def parse_answer(text: str) -> Answer | None:
    """The remote's answer as Postfix logs it (``421 4.7.28 text``, or a
    multi-line answer's lines joined by spaces), or None if it is not an
    SMTP reply. Postfix's own ``(in reply to ... command)`` is not part of it."""
    text = _IN_REPLY.sub("", text.strip())
    match = _CODE.match(text)
    if match is None:
        return None
    code, enhanced, rest = match["code"], match["enhanced"], text[match.end():]
    if match["sep"] != "-":
        lines = [rest]
    elif enhanced:
        # each following line starts again with the code, "-" or " " (the last), and the enhanced code
        lines = re.split(f" {code}[ -]{re.escape(enhanced)} ", rest)
    else:
        # without an enhanced code only "NNN-" is sure to start a line; then the last line's "NNN "
        lines = rest.split(f" {code}-")
        last, sep, tail = lines[-1].rpartition(f" {code} ")
        if sep:
            lines[-1:] = [last, tail]
    return Answer(
        code=int(code),
        enhanced=None if enhanced is None else tuple(int(n) for n in enhanced.split(".")),  # type: ignore[arg-type]
        content="\n".join(line.strip() for line in lines),
    )


class Counts(msgspec.Struct):
    lines: int = 0
    outcomes: int = 0
    unreadable: int = 0
    forgotten: int = 0  # tenants dropped because the table was full


class Joiner:
    """The lines of one mail log, in order, joined into outcomes (see the module's docstring).

    ``tenants`` (queue id -> tenant) is the state a restart must keep to go
    on where it stopped; give it back to a new Joiner to resume.
    """

    def __init__(
        self,
        tenants: Iterable[tuple[str, str]] = (),
        *,
        max_queue_ids: int = MAX_QUEUE_IDS,
        strip_realm: bool = True,
        zone: tzinfo | None = None,
    ) -> None:
        self.max_queue_ids = max(1, max_queue_ids)
        self.strip_realm = strip_realm
        self.zone = zone  # of traditional times; None: this machine's local time
        self.tenants: dict[str, str] = {}
        self.counts = Counts()
        for queue_id, tenant in tenants:
            self._remember(queue_id, tenant)

    def feed(self, line: str, now: float) -> Record | None:
        """The outcome ``line`` is, if it is one; otherwise what it says is remembered."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return None
        self.counts.lines += 1
        match = _LINE.match(line)
        if match is None:
            self.counts.unreadable += 1
            return None
        tag = match["tag"].split("/")
        if len(tag) < 2 or not tag[0].startswith("postfix"):
            return None  # another program's line
        program = tag[-1]
        if program not in DELIVERY and program != "smtpd" and program not in LEAVING:
            return None
        queued = _QUEUE_ID.match(match["text"])
        if queued is None:
            return None  # connect, disconnect, NOQUEUE, warnings ...
        queue_id, rest = queued["id"], queued["rest"]
        if program == "smtpd":
            login = _LOGIN.match(rest)
            if login is not None:
                tenant, _ = login_tenant(login["login"].strip(), self.strip_realm)
                if tenant:
                    self._remember(queue_id, tenant)
            return None
        if program in LEAVING:
            if rest == "removed":
                self.tenants.pop(queue_id, None)
            return None
        return self._outcome(match, queue_id, rest, now)

    def _outcome(self, match: re.Match[str], queue_id: str, rest: str, now: float) -> Record | None:
        status = _STATUS.match(rest)
        if status is None:
            return None  # sent, expired, a note ...
        answered = _ANSWER.match(status["why"])
        answer = None if answered is None else parse_answer(answered["answer"])
        if answer is None:
            return None  # Postfix's own deferral: no remote answer to match
        at = self._time(match, now)
        recipient = status["to"]
        local, _, domain = recipient.rpartition("@")
        tenant = self.tenants.get(queue_id)
        try:
            queue = queue_name.parse(f"{tenant}@{domain}" if tenant else domain)
        except InvalidQueueName:
            queue = None
        if at is None or not local or queue is None:
            self.counts.unreadable += 1
            return None
        self.counts.outcomes += 1
        enhanced = answer.enhanced
        return Record(
            type=TYPES[status["status"]],
            recipient=recipient,
            queue=queue.name,
            response=Response(
                code=answer.code,
                content=answer.content,
                enhanced_code=None if enhanced is None else EnhancedCode(*enhanced),
            ),
            timestamp=int(at.timestamp()),
            event_time=at,
        )

    def _time(self, match: re.Match[str], now: float) -> datetime | None:
        """The line's time, aware; None if it is no time (or none from 2000 to 2100)."""
        try:
            if match["iso"]:
                at = datetime.fromisoformat(match["iso"])
            else:
                at = self._traditional(match["month"], int(match["day"]), match["clock"], now)
        except ValueError:
            return None
        if at is None or not EARLIEST <= at.timestamp() <= LATEST:
            return None
        return at

    def _traditional(self, month_name: str, day: int, clock: str, now: float) -> datetime | None:
        """``Mmm dd hh:mm:ss`` in ``zone``: this year's, or last year's if this year's is
        more than a day ahead of ``now`` (or does not exist: a 29 February)."""
        month = _MONTHS.get(month_name)
        if month is None:
            return None
        hour, minute, second = (int(n) for n in clock.split(":"))
        today = datetime.fromtimestamp(now, self.zone)
        for year in (today.year, today.year - 1):
            try:
                at = datetime(year, month, day, hour, minute, second, tzinfo=self.zone)
            except ValueError:
                continue
            if at - today <= AHEAD:
                return at if at.tzinfo is not None else at.astimezone()
        return None

    def _remember(self, queue_id: str, tenant: str) -> None:
        self.tenants.pop(queue_id, None)
        self.tenants[queue_id] = tenant
        while len(self.tenants) > self.max_queue_ids:
            del self.tenants[next(iter(self.tenants))]
            self.counts.forgotten += 1


_encoder = msgspec.json.Encoder()


def encode_records(records: Iterable[Record]) -> bytes:
    """A body for ``POST /publish_log_v1``: the records as a JSON array."""
    return _encoder.encode(list(records))
