"""Automation: holds made from delivery outcomes (DESIGN 10), as pure functions.

How this works
--------------
A rule (``[[automation]]`` in a policy file, built by ``fields.automation_from``)
watches one recipient domain. It follows KumoMTA's shaping.toml ``automation``
entries: ``regex`` (one or a list) is searched in the response's single line,
``code enhanced content``; ``action`` (one or a list) says what to hold;
``duration`` how long, from the outcome's time; ``trigger`` is ``Immediate``
(every match fires) or ``{ Threshold = "N/period" }`` (a match fires once N
matches, itself included, fall within the last period).

``evaluate(book, outcomes, windows, now)`` is the whole engine. For each
failure outcome it finds the rules of its recipient domain (``Rulebook``
indexes them by domain; their patterns were compiled when the file was
read), and for each rule that matches it counts the match in the sliding
window of every scope the rule's actions name, and returns:

- the holds to make or extend, one per criteria (the latest expiry wins
  when several outcomes or rules name the same criteria);
- the new windows (the same object when nothing was counted);
- how many outcomes each rule matched.

Invariants:
- Scopes follow the actions: ``Suspend`` holds the queue's domain,
  ``SuspendTenant`` its tenant at that domain, ``SuspendCampaign`` its
  campaign and tenant at that domain (its tenant alone when the queue has
  no campaign). A tenant or campaign action on a queue without a tenant
  holds nothing, as in KumoMTA.
- A window holds at most ``limit`` times, all within ``period`` of the last
  ``now``: the N most recent matches are all a threshold needs.
- A hold ends ``duration`` after its outcome, rounded up to the whole
  second, so a flood of matches lengthens it at most once a second. An
  outcome older than a rule's duration (its hold would already be over)
  is not counted by that rule. An outcome stamped in the future counts as
  now, so a wrong clock cannot make a hold of centuries.
- Internal responses (``KumoMTA internal: ...``) match only rules with
  ``match_internal = true``.

Nothing here does I/O or reads a clock; windows are encoded to bytes and
back (``encode_windows``/``decode_windows``) for the shell to store.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone

import msgspec

from .errors import ValidationError
from .model import Suspension
from .queue_name import QueueName, format_name

ACTIONS = ("Suspend", "SuspendTenant", "SuspendCampaign")
# KumoMTA's other actions: configuration overrides and bounces, which sluice does not hold.
KUMO_ONLY_ACTIONS = ("SetConfig", "SetDomainConfig", "Bounce", "BounceTenant", "BounceCampaign")
IMMEDIATE = "Immediate"
FAILURES = frozenset(("TransientFailure", "Bounce"))
INTERNAL_PREFIX = "KumoMTA internal: "
MAX_REASON = 1000
MAX_LIMIT = 1_000_000  # a window keeps this many times at most

# ThrottleSpec's periods, as KumoMTA's throttle crate spells them.
_PERIODS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hr": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}
_PERIOD = re.compile(r"([0-9]*)([a-z]+)\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class Threshold(msgspec.Struct, frozen=True):
    """``{ Threshold = "N/period" }``: fire once ``limit`` matches fall within ``period`` seconds."""

    limit: int
    period: int
    text: str  # as written, for messages


def parse_threshold(text: str) -> Threshold:
    """KumoMTA's ThrottleSpec: ``[local:]LIMIT/[N]UNIT[,max_burst=B]``.

    ``10/hr``, ``5/m``, ``100/s``, ``3/day``, ``1_000/5min``. ``local:`` and
    ``max_burst`` are accepted and have no effect (a threshold counts
    matches; it does not pace them). Raises ValidationError saying what is
    wrong.
    """
    spec = text.strip()
    spec = spec.removeprefix("local:")
    spec, burst, burst_value = spec.partition(",max_burst=")
    if burst and not burst_value.replace("_", "").replace(",", "").isdigit():
        raise ValidationError(f"max_burst in {text!r} must be a number")
    limit_text, slash, period_text = spec.partition("/")
    if not slash:
        raise ValidationError(f"expected 'N/period' such as '10/hr', got {text!r}")
    digits = limit_text.strip().replace("_", "").replace(",", "")
    if not digits.isdigit() or not digits.isascii():
        raise ValidationError(f"the limit in {text!r} must be a whole number, such as the 10 of '10/hr'")
    limit = int(digits)
    if limit == 0:
        raise ValidationError(f"the limit in {text!r} must be greater than 0")
    if limit > MAX_LIMIT:
        raise ValidationError(f"the limit in {text!r} is over {MAX_LIMIT:,}")
    match = _PERIOD.match(period_text.strip())
    if match is None or match.group(2) not in _PERIODS:
        raise ValidationError(
            f"unknown period in {text!r}; periods are s, sec, second, m, min, minute, "
            "h, hr, hour, d, day, optionally after a number (5min)"
        )
    scale = int(match.group(1)) if match.group(1) else 1
    if scale == 0:
        raise ValidationError(f"the period in {text!r} must be longer than 0")
    period = scale * _PERIODS[match.group(2)]
    if period > 366 * 86400:
        raise ValidationError(f"the period in {text!r} is over a year")
    return Threshold(limit=limit, period=period, text=text)


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[[automation]]`` rule, checked and compiled.

    ``id`` is derived from what the rule says (not where it is written), so
    its windows survive edits elsewhere in its file; two rules saying the
    same thing are one rule. ``source`` is ``"<file>:<line>"``.
    """

    id: str
    domain: str
    regex: tuple[str, ...]
    action: tuple[str, ...]
    duration: float
    trigger: Threshold | None = None  # None: Immediate
    match_internal: bool = False
    source: str = ""
    patterns: tuple[re.Pattern[str], ...] = ()

    def matches(self, response: str) -> bool:
        for pattern in self.patterns:
            if pattern.search(response) is not None:
                return True
        return False

    @property
    def actor(self) -> str:
        """Who a hold made by this rule is created by: ``automation <file>:<line>``."""
        return f"automation {self.source}"

    def regex_text(self) -> str:
        """The regexes as KumoMTA's reasons write them: one, or ``(a,b)``."""
        if len(self.regex) == 1:
            return self.regex[0]
        return "(" + ",".join(self.regex) + ")"


def rule_id(
    domain: str,
    regex: Sequence[str],
    action: Sequence[str],
    duration: float,
    trigger: Threshold | None,
    match_internal: bool,
) -> str:
    """The id of a rule: a digest of what it says, 16 hex digits."""
    said = msgspec.json.encode(
        [domain, list(regex), list(action), duration,
         None if trigger is None else [trigger.limit, trigger.period], match_internal]
    )
    return hashlib.sha256(said).hexdigest()[:16]


class Rulebook:
    """The rules in force, by recipient domain, in the order the files give them."""

    __slots__ = ("rules", "by_domain", "by_id")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self.by_domain: dict[str, tuple[Rule, ...]] = {}
        for rule in self.rules:
            self.by_domain[rule.domain] = (*self.by_domain.get(rule.domain, ()), rule)
        self.by_id = {rule.id: rule for rule in self.rules}


class Outcome(msgspec.Struct, frozen=True):
    """A delivery failure as the engine reads it.

    ``domains``: the recipients' domains (normal form, each once); ``queue``:
    the message's queue; ``response``: the single line ``code enhanced
    content``; ``internal``: the delivery engine's own response rather than
    the remote's; ``at``: seconds since the epoch.
    """

    domains: tuple[str, ...]
    queue: QueueName
    response: str
    internal: bool
    at: float


def response_line(code: int, enhanced: tuple[int, int, int] | None, content: str) -> str:
    """The single line a rule's regex is matched against, as kumod's ``to_single_line``:
    ``code``, the enhanced code if any, and the content with its line breaks as spaces."""
    text = content.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    if enhanced is None:
        return f"{code} {text}"
    return f"{code} {enhanced[0]}.{enhanced[1]}.{enhanced[2]} {text}"


class Hold(msgspec.Struct, frozen=True):
    """A hold a rule asks for: its criteria, until when, and the response that fired it."""

    rule: Rule
    domain: str
    tenant: str | None
    campaign: str | None
    expires: int  # seconds since the epoch
    response: str

    @property
    def scope(self) -> str:
        """The criteria as a queue name: ``domain``, ``tenant@domain``, ``campaign:tenant@domain``."""
        return format_name(self.domain, self.campaign, self.tenant)

    def reason(self) -> str:
        """KumoMTA's reason (``automation rule: <regex> tenant=.. domain=..``),
        then the rule's place and the response that fired it, quoted; one
        line of at most MAX_REASON characters."""
        parts = [f"automation rule: {self.rule.regex_text()}"]
        if self.tenant is not None:
            parts.append(f"tenant={self.tenant}")
        parts.append(f"domain={self.domain}")
        if self.campaign is not None:
            parts.append(f"campaign={self.campaign}")
        head = " ".join(parts) + f" ({self.rule.source}); response: "
        quoted = '"' + self.response + '"'
        text = _CONTROL.sub(" ", head + quoted)
        if len(text) > MAX_REASON:
            text = text[: MAX_REASON - 2] + '…"'
        return text

    def suspension(self) -> Suspension:
        """The runtime suspension this hold is made as (a new id; an upsert keeps the holder's)."""
        return Suspension(
            id=str(uuid.uuid4()),
            reason=self.reason(),
            campaign=self.campaign,
            tenant=self.tenant,
            domain=self.domain,
            expires=datetime.fromtimestamp(self.expires, timezone.utc),
        )


Windows = Mapping[tuple[str, str], tuple[float, ...]]
"""(rule id, scope) -> the times of that rule's latest matches in that scope, oldest first."""


class Result(msgspec.Struct, frozen=True):
    holds: tuple[Hold, ...]
    windows: Windows
    matched: dict[str, int]  # rule id -> outcomes it matched


def _scopes(rule: Rule, queue: QueueName) -> list[tuple[str | None, str | None]]:
    """(tenant, campaign) of each distinct hold the rule's actions name for ``queue``."""
    scopes: list[tuple[str | None, str | None]] = []
    for action in rule.action:
        if action == "Suspend":
            scope = (None, None)
        elif queue.tenant is None:
            continue  # a tenant's hold without a tenant: nothing, as in KumoMTA
        elif action == "SuspendTenant":
            scope = (queue.tenant, None)
        else:
            scope = (queue.tenant, queue.campaign)
        if scope not in scopes:
            scopes.append(scope)
    return scopes


def _count(times: tuple[float, ...], at: float, trigger: Threshold, now: float) -> tuple[float, ...]:
    """The window after a match at ``at``: times within the period, the ``limit`` latest."""
    start = now - trigger.period
    kept = list(times[bisect.bisect_left(times, start):])
    if at >= start:
        bisect.insort(kept, at)
    return tuple(kept[-trigger.limit:])


def evaluate(book: Rulebook, outcomes: Iterable[Outcome], windows: Windows, now: float) -> Result:
    """The holds ``outcomes`` call for under ``book``, and the windows after them (see above)."""
    holds: dict[str, Hold] = {}
    matched: dict[str, int] = {}
    changed: dict[tuple[str, str], tuple[float, ...]] | None = None
    for outcome in outcomes:
        at = min(outcome.at, now)
        queue = outcome.queue
        for domain in outcome.domains:
            rules = book.by_domain.get(domain)
            if rules is None:
                continue
            for rule in rules:
                if outcome.internal and not rule.match_internal:
                    continue
                expires = at + rule.duration
                if expires <= now or not rule.matches(outcome.response):
                    continue
                matched[rule.id] = matched.get(rule.id, 0) + 1
                for tenant, campaign in _scopes(rule, queue):
                    if rule.trigger is not None:
                        if changed is None:
                            changed = dict(windows)
                        key = (rule.id, format_name(queue.domain, campaign, tenant))
                        times = _count(changed.get(key, ()), at, rule.trigger, now)
                        changed[key] = times
                        if len(times) < rule.trigger.limit:
                            continue
                    # whole seconds: a hold is lengthened at most once a second
                    hold = Hold(rule, queue.domain, tenant, campaign, math.ceil(expires), outcome.response)
                    before = holds.get(hold.scope)
                    if before is None or before.expires < expires:
                        holds[hold.scope] = hold
    return Result(
        holds=tuple(holds.values()),
        windows=windows if changed is None else changed,
        matched=matched,
    )


def prune(windows: Windows, book: Rulebook, now: float) -> Windows:
    """``windows`` without what can no longer count: rules gone or no longer
    thresholds, and times older than their rule's period."""
    kept: dict[tuple[str, str], tuple[float, ...]] = {}
    for key, times in windows.items():
        rule = book.by_id.get(key[0])
        if rule is None or rule.trigger is None:
            continue
        start = now - rule.trigger.period
        times = times[bisect.bisect_left(times, start):][-rule.trigger.limit:]
        if times:
            kept[key] = times
    return kept


# -- windows as bytes, for the shell to store ---------------------------------


class _Window(msgspec.Struct, array_like=True):
    rule: str
    scope: str
    times: list[float]


class _WindowsFile(msgspec.Struct):
    version: int
    windows: list[_Window]


_windows_decoder = msgspec.json.Decoder(_WindowsFile)


def encode_windows(windows: Windows) -> bytes:
    """The windows as a small JSON document (version 1)."""
    return msgspec.json.encode(
        _WindowsFile(version=1, windows=[_Window(r, s, list(t)) for (r, s), t in windows.items()])
    ) + b"\n"


def decode_windows(data: bytes) -> dict[tuple[str, str], tuple[float, ...]]:
    """Windows from ``encode_windows``'s bytes; raises ValidationError if they are not that."""
    try:
        doc = _windows_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValidationError(f"not a windows file: {exc}") from None
    if doc.version != 1:
        raise ValidationError(f"windows file version {doc.version}; this sluice reads version 1")
    return {(w.rule, w.scope): tuple(sorted(w.times)) for w in doc.windows}
