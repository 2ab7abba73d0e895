"""Scheduled queue names: ``[campaign:][tenant@]domain[!routing_domain]``.

How this works
--------------
Splitting follows KumoMTA exactly: the first ``@`` separates the prefix from
the domain part (no ``@``: the whole name is the domain part); the prefix is
split on its first ``:`` into campaign and tenant (no ``:``: it is all
tenant); the domain part is split on its first ``!`` into domain and routing
domain. A ``:port`` stays part of the domain.

Beyond KumoMTA, domains (and routing domains) are normalised: lower case,
IDNA (``idna`` package, UTS 46) for non-ASCII labels, trailing dot dropped.
ASCII labels may hold letters, digits, ``-`` and ``_``. An address literal
such as ``[192.0.2.1]`` is kept as it is. Campaign and tenant are
case-sensitive and kept as they are.

Invariant: ``str(parse(x)) == str(parse(str(parse(x))))``; the string form of a
parsed name is its normalised form and is what rules and queries compare.
"""

from __future__ import annotations

import re
from functools import lru_cache

import idna
import msgspec

from .errors import InvalidQueueName

MAX_NAME = 255
MAX_LABEL = 63

_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_ASCII_LABEL = re.compile(r"[a-z0-9_-]+\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
# The common name, [campaign:][tenant@]domain with a plain ASCII domain (no
# port, routing domain, trailing dot or address literal), in one match; any
# other name takes the general path, which gives the same result or names the
# error.
_PLAIN = r"(?:[A-Za-z0-9_-]{1,63}\.){0,126}[A-Za-z0-9_-]{1,63}"
_PLAIN_DOMAIN = re.compile(_PLAIN)
_PREFIX = r"(?:(?:([^:@\s\x00-\x1f\x7f-\x9f]+):)?([^:@\s\x00-\x1f\x7f-\x9f]+)@)?"
_COMMON = re.compile(_PREFIX + "(" + _PLAIN + ")")


class QueueName(msgspec.Struct, frozen=True):
    """A parsed, normalised queue name; ``name`` (and ``str()``) is the normal form."""

    name: str
    domain: str
    campaign: str | None = None
    tenant: str | None = None
    routing_domain: str | None = None

    def __str__(self) -> str:
        return self.name


def format_name(
    domain: str,
    campaign: str | None = None,
    tenant: str | None = None,
    routing_domain: str | None = None,
) -> str:
    """Join components into ``[campaign:][tenant@]domain[!routing_domain]``."""
    name = domain
    if tenant is not None:
        name = f"{tenant}@{name}"
        if campaign is not None:
            name = f"{campaign}:{name}"
    if routing_domain is not None:
        name = f"{name}!{routing_domain}"
    return name


def _describe(char: str) -> str:
    if char == " ":
        return "a space"
    if char.isspace():
        return f"whitespace ({char!r})"
    return f"a control character ({char!r})"


def _check_text(value: str, part: str) -> None:
    if not value:
        raise InvalidQueueName(f"{part} is empty", part=part)
    bad = _BAD_CHAR.search(value)
    if bad is not None:
        raise InvalidQueueName(
            f"{part} {value!r} contains {_describe(bad.group())}", part=part
        )


def _normalise_label(label: str, part: str, host: str) -> str:
    if not label:
        raise InvalidQueueName(f"{part} {host!r} has an empty label", part=part)
    if label.isascii():
        lowered = label.lower()
        if _ASCII_LABEL.match(lowered) is None:
            bad = next(c for c in lowered if not (c.isalnum() or c in "-_"))
            raise InvalidQueueName(
                f"{part} {host!r}: label {label!r} contains {bad!r}; "
                "labels hold letters, digits, '-' and '_'",
                part=part,
            )
    else:
        try:
            lowered = idna.encode(label, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidQueueName(
                f"{part} {host!r}: label {label!r} is not a valid IDNA label ({exc})",
                part=part,
            ) from None
    if len(lowered) > MAX_LABEL:
        raise InvalidQueueName(
            f"{part} {host!r}: label {label!r} is {len(lowered)} octets long; "
            f"at most {MAX_LABEL}",
            part=part,
        )
    return lowered


def normalise_domain(value: str, part: str = "domain") -> str:
    """Return the normalised form of a domain (with an optional ``:port``).

    Raises InvalidQueueName naming ``part`` when it is not acceptable.
    """
    if len(value) <= MAX_NAME and _PLAIN_DOMAIN.fullmatch(value) is not None:
        return value.lower()
    return normalise_domain_general(value, part)


def normalise_domain_general(value: str, part: str = "domain") -> str:
    """``normalise_domain`` for any domain, without the shortcut for plain ones."""
    _check_text(value, part)
    if value.startswith("["):
        close = value.find("]")
        if close < 2:
            raise InvalidQueueName(
                f"{part} {value!r} is an unterminated or empty address literal", part=part
            )
        rest = value[close + 1 :]
        if rest and not (rest.startswith(":") and _PORT.match(rest[1:])):
            raise InvalidQueueName(
                f"{part} {value!r} has {rest!r} after its address literal; "
                "only a :port may follow",
                part=part,
            )
        return value
    host, colon, port = value.partition(":")
    if colon and _PORT.match(port) is None:
        raise InvalidQueueName(
            f"{part} {value!r} has port {port!r}; a port is 1 to 5 digits", part=part
        )
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    labels = [_normalise_label(label, part, value) for label in host.split(".")]
    normal = ".".join(labels)
    if len(normal) > MAX_NAME:
        raise InvalidQueueName(
            f"{part} {value!r} is {len(normal)} characters long; at most {MAX_NAME}",
            part=part,
        )
    return normal + colon + port


@lru_cache(maxsize=65536)
def parse(name: str) -> QueueName:
    """Parse and normalise a queue name.

    Returns a QueueName; raises InvalidQueueName naming the offending part.
    Results are cached: delivery engines ask about the same queues again and
    again.
    """
    if not isinstance(name, str):
        raise InvalidQueueName("queue name must be a string", part="name")
    if len(name) > MAX_NAME:
        raise InvalidQueueName(
            f"queue name is {len(name)} characters long; at most {MAX_NAME}", part="name"
        )
    if not name:
        raise InvalidQueueName("queue name is empty", part="name")
    common = _COMMON.fullmatch(name)
    if common is None:
        return parse_general(name)
    campaign, tenant, domain = common.groups()
    lowered = domain.lower()
    return QueueName(
        name=name if lowered == domain else format_name(lowered, campaign, tenant),
        domain=lowered,
        campaign=campaign,
        tenant=tenant,
    )


def parse_general(name: str) -> QueueName:
    """``parse`` for any non-empty name of at most MAX_NAME characters, uncached."""
    campaign = tenant = None
    prefix, at, rest = name.partition("@")
    if at:
        first, colon, second = prefix.partition(":")
        if colon:
            campaign, tenant = first, second
            _check_text(campaign, "campaign")
        else:
            tenant = prefix
        _check_text(tenant, "tenant")
    else:
        rest = name
    domain, bang, routing = rest.partition("!")
    routing_domain = normalise_domain(routing, "routing_domain") if bang else None
    domain = normalise_domain(domain, "domain")
    return QueueName(
        name=format_name(domain, campaign, tenant, routing_domain),
        domain=domain,
        campaign=campaign,
        tenant=tenant,
        routing_domain=routing_domain,
    )


def normalise(name: str) -> str:
    """Return the normalised string form of a queue name (raises InvalidQueueName)."""
    return parse(name).name


def is_normal(name: str) -> bool:
    """Whether ``name`` is a valid queue name in its normal form."""
    try:
        return parse(name).name == name
    except InvalidQueueName:
        return False


def check_component(value: str, part: str) -> str:
    """Validate a campaign or tenant given on its own; returns it unchanged."""
    if not isinstance(value, str):
        raise InvalidQueueName(f"{part} must be a string", part=part)
    _check_text(value, part)
    if len(value) > MAX_NAME:
        raise InvalidQueueName(
            f"{part} is {len(value)} characters long; at most {MAX_NAME}", part=part
        )
    # A queue name never yields these, so a rule holding one could never match.
    forbidden = "@:" if part == "campaign" else "@"
    for char in forbidden:
        if char in value:
            raise InvalidQueueName(
                f"{part} {value!r} contains {char!r}, which no queue's {part} can hold",
                part=part,
            )
    return value
