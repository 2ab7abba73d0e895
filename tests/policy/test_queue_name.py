"""Queue names parse exactly as KumoMTA splits them, normalised as DESIGN.md 1 says."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.policy.errors import InvalidQueueName
from sluice.policy.queue_name import (
    check_component,
    normalise,
    normalise_domain,
    normalise_domain_general,
    parse,
    parse_general,
)

# name, campaign, tenant, domain, routing_domain, normal form
VALID = [
    ("example.com", None, None, "example.com", None, "example.com"),
    ("acme@example.com", None, "acme", "example.com", None, "acme@example.com"),
    ("news:acme@example.com", "news", "acme", "example.com", None, "news:acme@example.com"),
    ("example.com!relay.net", None, None, "example.com", "relay.net", "example.com!relay.net"),
    (
        "news:acme@example.com!relay.net",
        "news",
        "acme",
        "example.com",
        "relay.net",
        "news:acme@example.com!relay.net",
    ),
    # first ':' splits campaign from tenant; the rest stays in the tenant
    ("a:b:c@example.com", "a", "b:c", "example.com", None, "a:b:c@example.com"),
    # first '!' splits the routing domain
    ("example.com!relay.net", None, None, "example.com", "relay.net", "example.com!relay.net"),
    # a port stays part of the domain
    ("example.com:2525", None, None, "example.com:2525", None, "example.com:2525"),
    ("acme@example.com:25!relay.net:587", None, "acme", "example.com:25", "relay.net:587",
     "acme@example.com:25!relay.net:587"),
    # normalisation: case, trailing dot, IDNA
    ("Example.COM.", None, None, "example.com", None, "example.com"),
    ("Acme@Example.COM", None, "Acme", "example.com", None, "Acme@example.com"),
    ("bücher.example", None, None, "xn--bcher-kva.example", None, "xn--bcher-kva.example"),
    ("BÜCHER.example", None, None, "xn--bcher-kva.example", None, "xn--bcher-kva.example"),
    # underscores, as in DNS practice and QStash queue names
    ("my_queue", None, None, "my_queue", None, "my_queue"),
    ("_dmarc.example.com", None, None, "_dmarc.example.com", None, "_dmarc.example.com"),
    # address literals are kept as written
    ("[192.0.2.1]", None, None, "[192.0.2.1]", None, "[192.0.2.1]"),
    ("acme@[192.0.2.1]:25", None, "acme", "[192.0.2.1]:25", None, "acme@[192.0.2.1]:25"),
    ("[IPv6:2001:db8::1]", None, None, "[IPv6:2001:db8::1]", None, "[IPv6:2001:db8::1]"),
]


@pytest.mark.parametrize("name,campaign,tenant,domain,routing,normal", VALID)
def test_valid_forms(name, campaign, tenant, domain, routing, normal):
    q = parse(name)
    assert (q.campaign, q.tenant, q.domain, q.routing_domain) == (
        campaign,
        tenant,
        domain,
        routing,
    )
    assert str(q) == normal == q.name
    assert normalise(normal) == normal


# name, the part the error must name, a fragment of its message
INVALID = [
    ("", "name", "empty"),
    ("@example.com", "tenant", "empty"),
    (":acme@example.com", "campaign", "empty"),
    ("news:@example.com", "tenant", "empty"),
    ("acme@", "domain", "empty"),
    ("example.com!", "routing_domain", "empty"),
    ("!relay.net", "domain", "empty"),
    ("example..com", "domain", "empty label"),
    ("exa mple.com", "domain", "a space"),
    ("acme corp@example.com", "tenant", "a space"),
    ("news\t:acme@example.com", "campaign", "whitespace"),
    ("example.com\n", "domain", "whitespace"),
    ("example\x00.com", "domain", "control character"),
    ("acme@exa$mple.com", "domain", "'$'"),
    ("acme@ex@ample.com", "domain", "'@'"),
    ("example.com:http", "domain", "port"),
    ("example.com:123456", "domain", "port"),
    ("[192.0.2.1", "domain", "address literal"),
    ("[192.0.2.1]x", "domain", "after its address literal"),
    ("a" * 64 + ".com", "domain", "at most 63"),
    ("example.com!re lay.net", "routing_domain", "a space"),
    ("x" * 256, "name", "at most 255"),
    ("a..b@example.com!", "routing_domain", "empty"),
]


@pytest.mark.parametrize("name,part,fragment", INVALID)
def test_invalid_forms_name_the_part(name, part, fragment):
    with pytest.raises(InvalidQueueName) as info:
        parse(name)
    assert info.value.part == part
    assert fragment in info.value.message
    assert info.value.code == "INVALID_QUEUE_NAME"


def test_domain_of_255_characters_over_63_per_label_is_refused_by_label():
    with pytest.raises(InvalidQueueName, match="octets"):
        parse("b" * 70)


@pytest.mark.parametrize(
    "value,part,fragment",
    [
        ("ac me", "tenant", "a space"),
        ("a@b", "tenant", "'@'"),
        ("news:x", "campaign", "':'"),
        ("", "campaign", "empty"),
    ],
)
def test_components_that_could_never_match_are_refused(value, part, fragment):
    with pytest.raises(InvalidQueueName) as info:
        check_component(value, part)
    assert fragment in info.value.message


def test_tenant_with_colon_is_a_valid_component():
    assert check_component("b:c", "tenant") == "b:c"


# Names made of the characters that decide how a name splits and whether it is
# valid, so that both the one-match path for common names and the general
# path are taken, and near misses of the common form are frequent.
_pieces = st.sampled_from(
    ["a", "B", "mx", "7", "-", "_", ".", ":", "@", "!", " ", "é", "[", "]", "25", "\t", "x" * 63]
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=12).map("".join).filter(lambda n: len(n) <= 255))
def test_common_names_parse_as_the_general_path_does(name):
    try:
        expected = parse_general(name)
    except InvalidQueueName as exc:
        with pytest.raises(InvalidQueueName) as raised:
            parse.__wrapped__(name)
        assert (raised.value.part, str(raised.value)) == (exc.part, str(exc))
    else:
        assert parse.__wrapped__(name) == expected


@settings(max_examples=1000, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=12).map("".join))
def test_plain_domains_normalise_as_the_general_path_does(value):
    try:
        expected = normalise_domain_general(value)
    except InvalidQueueName as exc:
        with pytest.raises(InvalidQueueName) as raised:
            normalise_domain(value)
        assert (raised.value.part, str(raised.value)) == (exc.part, str(exc))
    else:
        assert normalise_domain(value) == expected
