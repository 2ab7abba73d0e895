"""Automation rules: how they load, and the engine that turns outcomes into holds."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.policy.automation import (
    MAX_REASON,
    Outcome,
    Rulebook,
    Threshold,
    decode_windows,
    encode_windows,
    evaluate,
    parse_threshold,
    prune,
    response_line,
)
from sluice.policy.errors import PolicyLoadError, ValidationError
from sluice.policy.files import combine, parse_policy
from sluice.policy.queue_name import parse

NOW = 1_800_000_000.0


def rules(text: str, name: str = "50-auto.toml") -> Rulebook:
    parsed = parse_policy(textwrap.dedent(text), name)
    assert parsed.ok, [str(p) for p in parsed.problems]
    return Rulebook(combine([parsed]).automation)


def problems(text: str) -> list[str]:
    return [str(p) for p in parse_policy(textwrap.dedent(text).lstrip("\n"), "50-auto.toml").problems]


def outcome(queue="acme@gmail.com", response="421 4.7.28 [192.0.2.1] rate limited", at=NOW, domains=None, internal=False):
    q = parse(queue)
    return Outcome(domains=domains or (q.domain,), queue=q, response=response, internal=internal, at=at)


GMAIL = """
[[automation]]
domain = "gmail.com"
regex = "4\\\\.7\\\\.28"
action = "SuspendTenant"
duration = "3 hours"
"""


# -- thresholds: KumoMTA's ThrottleSpec -------------------------------------------------


@pytest.mark.parametrize(
    "text, limit, period",
    [
        ("10/hr", 10, 3600),
        ("10/h", 10, 3600),
        ("10/hour", 10, 3600),
        ("5/m", 5, 60),
        ("5/min", 5, 60),
        ("100/s", 100, 1),
        ("3/day", 3, 86400),
        ("3/d", 3, 86400),
        ("1_000/5min", 1000, 300),
        ("1,000/hr", 1000, 3600),
        ("local:10/hr", 10, 3600),
        ("10/hr,max_burst=2", 10, 3600),
    ],
)
def test_threshold_reads_as_kumomta_writes_it(text, limit, period):
    assert parse_threshold(text) == Threshold(limit=limit, period=period, text=text)


@pytest.mark.parametrize(
    "text, says",
    [
        ("10", "expected 'N/period'"),
        ("0/hr", "greater than 0"),
        ("ten/hr", "whole number"),
        ("10/hours", "unknown period"),
        ("10/fortnight", "unknown period"),
        ("10/0m", "longer than 0"),
        ("-1/hr", "whole number"),
        ("10/hr,max_burst=x", "max_burst"),
    ],
)
def test_a_malformed_threshold_says_what_is_wrong(text, says):
    with pytest.raises(ValidationError, match=says):
        parse_threshold(text)


# -- rules in policy files -----------------------------------------------------------------


def test_a_rule_loads_with_its_defaults():
    book = rules(GMAIL)
    (rule,) = book.rules
    assert rule.domain == "gmail.com"
    assert rule.regex == ("4\\.7\\.28",)
    assert rule.action == ("SuspendTenant",)
    assert rule.duration == 3 * 3600
    assert rule.trigger is None  # Immediate
    assert rule.match_internal is False
    assert rule.source == "50-auto.toml:2"
    assert rule.actor == "automation 50-auto.toml:2"


def test_lists_of_regexes_and_actions_and_a_threshold():
    book = rules(
        """
        [[automation]]
        domain = "Yahoo.COM"
        regex = ["\\\\[TS04\\\\]", "\\\\[TS03\\\\]"]
        action = ["Suspend", "SuspendCampaign"]
        duration = "2h"
        trigger = { Threshold = "5/m" }
        match_internal = true
        """
    )
    (rule,) = book.rules
    assert rule.domain == "yahoo.com"
    assert rule.action == ("Suspend", "SuspendCampaign")
    assert rule.trigger == Threshold(5, 60, "5/m")
    assert rule.match_internal
    assert rule.regex_text() == "(\\[TS04\\],\\[TS03\\])"
    assert book.by_domain["yahoo.com"] == (rule,)


@pytest.mark.parametrize(
    "table, expected",
    [
        ('regex = "("', "50-auto.toml:3: automation[0].regex: is not a valid regex (missing ), unterminated subpattern"),
        ('regex = ["a", "[b"]', "50-auto.toml:3: automation[0].regex[1]: is not a valid regex"),
        ('regex = []', "50-auto.toml:3: automation[0].regex: must hold at least one"),
        ('action = "Suspnd"', "50-auto.toml:4: automation[0].action: unknown action 'Suspnd' (did you mean 'Suspend'?)"),
        ('action = ["Suspend", "SuspendTenent"]', "automation[0].action[1]: unknown action 'SuspendTenent' (did you mean 'SuspendTenant'?)"),
        ('action = "Bounce"', "automation[0].action: 'Bounce' is a KumoMTA action sluice does not take"),
        ('action = ["Suspend", "Suspend"]', "automation[0].action: names an action twice"),
        ('trigger = "10/hr"', '50-auto.toml:6: automation[0].trigger: expected "Immediate" or { Threshold = "N/period" }'),
        ('trigger = { Threshhold = "10/hr" }', "50-auto.toml:6: automation[0].trigger.Threshhold: unknown trigger (did you mean 'Threshold'?)"),
        ('trigger = { Threshold = "10/fortnight" }', "50-auto.toml:6: automation[0].trigger.Threshold: unknown period in '10/fortnight'"),
        ('trigger = { Threshold = 10 }', "automation[0].trigger.Threshold: expected a string"),
        ('duration = "3 parsecs"', "50-auto.toml:5: automation[0].duration: duration '3 parsecs': unknown unit"),
        ('match_internal = "yes"', "automation[0].match_internal: expected true or false"),
        ('domian = "x.com"', "automation[0].domian: unknown field (did you mean 'domain'?)"),
        ('domain = "bad domain"', "automation[0].domain: domain 'bad domain' contains a space"),
    ],
)
def test_a_bad_rule_is_refused_with_file_line_and_key(table, expected):
    base = {
        "domain": '"gmail.com"', "regex": '"x"', "action": '"Suspend"', "duration": '"1h"', "trigger": '"Immediate"',
    }
    key = table.split(" =")[0]
    lines = [f"{k} = {v}" for k, v in base.items() if k != key]
    # the key at fault keeps its place in the table, so its line is known
    order = list(base)
    position = order.index(key) if key in order else len(order)
    lines.insert(position, table)
    found = problems("[[automation]]\n" + "\n".join(lines) + "\n")
    assert any(p.startswith(expected) or expected in p for p in found), found


def test_a_rule_needs_domain_regex_action_and_duration():
    found = problems("[[automation]]\ntrigger = \"Immediate\"\n")
    assert found == [
        "50-auto.toml:1: automation[0].domain: is required (the recipient domain the rule watches)",
        "50-auto.toml:1: automation[0].regex: is required",
        "50-auto.toml:1: automation[0].action: is required",
        '50-auto.toml:1: automation[0].duration: is required (how long a hold lasts, such as "3 hours")',
    ]


def test_the_same_rule_twice_is_refused_naming_both_places():
    a = parse_policy(textwrap.dedent(GMAIL), "50-a.toml")
    b = parse_policy(textwrap.dedent(GMAIL), "60-b.toml")
    with pytest.raises(PolicyLoadError) as caught:
        combine([a, b])
    assert str(caught.value.problems[0]) == (
        "60-b.toml:2: automation: the same automation rule (for gmail.com, 4\\.7\\.28) is also defined at 50-a.toml:2"
    )


def test_a_rules_id_is_what_it_says_not_where():
    moved = rules("# a comment moves the rule down\n\n" + GMAIL, "other.toml")
    assert moved.rules[0].id == rules(GMAIL).rules[0].id
    assert moved.rules[0].source == "other.toml:4"
    longer = rules(GMAIL.replace("3 hours", "4 hours"))
    assert longer.rules[0].id != rules(GMAIL).rules[0].id


def test_runtime_state_cannot_hold_rules():
    from sluice.policy.files import parse_runtime

    parsed = parse_runtime(textwrap.dedent(GMAIL), "x.toml")
    assert [str(p) for p in parsed.problems] == [
        "x.toml:2: automation: automation rules live in policy files, not in runtime state"
    ]


# -- the engine ------------------------------------------------------------------------------


def test_an_immediate_rule_holds_the_tenant_at_the_domain_until_the_record_time_plus_duration():
    book = rules(GMAIL)
    result = evaluate(book, [outcome(at=NOW - 60)], {}, NOW)
    (hold,) = result.holds
    assert (hold.domain, hold.tenant, hold.campaign) == ("gmail.com", "acme", None)
    assert hold.expires == NOW - 60 + 3 * 3600
    assert evaluate(book, [outcome(at=NOW - 60.25)], {}, NOW).holds[0].expires == NOW - 60 + 3 * 3600  # rounded up
    assert result.matched == {book.rules[0].id: 1}
    assert result.windows == {}  # nothing to count for an immediate rule
    s = hold.suspension()
    assert (s.domain, s.tenant, s.campaign) == ("gmail.com", "acme", None)
    assert s.expires.timestamp() == hold.expires
    assert s.reason == (
        'automation rule: 4\\.7\\.28 tenant=acme domain=gmail.com (50-auto.toml:2); '
        'response: "421 4.7.28 [192.0.2.1] rate limited"'
    )


@pytest.mark.parametrize(
    "action, queue, expected",
    [
        ("Suspend", "news:acme@gmail.com", [("gmail.com", None, None)]),
        ("SuspendTenant", "news:acme@gmail.com", [("gmail.com", "acme", None)]),
        ("SuspendCampaign", "news:acme@gmail.com", [("gmail.com", "acme", "news")]),
        ("SuspendCampaign", "acme@gmail.com", [("gmail.com", "acme", None)]),  # no campaign: the tenant
        ("SuspendTenant", "gmail.com", []),  # no tenant: nothing, as in KumoMTA
        ("SuspendCampaign", "gmail.com", []),
        (["Suspend", "SuspendTenant"], "acme@gmail.com", [("gmail.com", None, None), ("gmail.com", "acme", None)]),
    ],
)
def test_each_action_holds_its_scope(action, queue, expected):
    written = f'"{action}"' if isinstance(action, str) else "[" + ", ".join(f'"{a}"' for a in action) + "]"
    book = rules(GMAIL.replace('"SuspendTenant"', written))
    result = evaluate(book, [outcome(queue=queue)], {}, NOW)
    assert [(h.domain, h.tenant, h.campaign) for h in result.holds] == expected


def test_only_the_rules_of_the_recipient_domain_and_a_matching_response_apply():
    book = rules(GMAIL)
    assert evaluate(book, [outcome(queue="acme@yahoo.com")], {}, NOW).holds == ()
    assert evaluate(book, [outcome(response="421 4.7.0 try later")], {}, NOW).holds == ()
    # the recipient's domain chooses the rules; the queue's domain is held
    routed = outcome(queue="acme@gmail.com!relay.example", domains=("gmail.com",))
    assert [h.domain for h in evaluate(book, [routed], {}, NOW).holds] == ["gmail.com"]


def test_internal_responses_match_only_rules_that_ask_for_them():
    internal = outcome(response="421 4.7.28 KumoMTA internal: suspended", internal=True)
    assert evaluate(rules(GMAIL), [internal], {}, NOW).holds == ()
    book = rules(GMAIL + "match_internal = true\n")
    assert len(evaluate(book, [internal], {}, NOW).holds) == 1


def test_an_outcome_older_than_the_duration_is_ignored():
    book = rules(GMAIL)
    old = outcome(at=NOW - 3 * 3600)
    result = evaluate(book, [old], {}, NOW)
    assert result.holds == () and result.matched == {}


def test_an_outcome_from_the_future_counts_as_now():
    (hold,) = evaluate(rules(GMAIL), [outcome(at=NOW + 10 * 365 * 86400)], {}, NOW).holds
    assert hold.expires == NOW + 3 * 3600


def test_a_threshold_fires_at_its_nth_match_within_the_period_and_after():
    book = rules(GMAIL + 'trigger = { Threshold = "3/hr" }\n')
    windows: dict = {}
    fired = []
    for i in range(5):
        result = evaluate(book, [outcome(at=NOW + i)], windows, NOW + i)
        windows = result.windows
        fired.append(len(result.holds))
    assert fired == [0, 0, 1, 1, 1]
    (key,) = windows
    assert key == (book.rules[0].id, "acme@gmail.com")
    assert windows[key] == (NOW + 2, NOW + 3, NOW + 4)  # the limit's worth, the latest


def test_threshold_windows_slide_and_are_per_scope():
    book = rules(GMAIL + 'trigger = { Threshold = "2/m" }\n')
    first = evaluate(book, [outcome(at=NOW)], {}, NOW)
    # 61 seconds later the first match has left the window
    late = evaluate(book, [outcome(at=NOW + 61)], first.windows, NOW + 61)
    assert late.holds == ()
    # another tenant counts apart
    other = evaluate(book, [outcome(queue="beta@gmail.com", at=NOW + 1)], first.windows, NOW + 1)
    assert other.holds == ()
    both = evaluate(book, [outcome(at=NOW + 1)], first.windows, NOW + 1)
    assert len(both.holds) == 1


def test_one_batch_makes_one_hold_per_scope_with_the_latest_expiry():
    book = rules(GMAIL)
    result = evaluate(book, [outcome(at=NOW - 5), outcome(at=NOW - 1), outcome(at=NOW - 3)], {}, NOW)
    (hold,) = result.holds
    assert hold.expires == NOW - 1 + 3 * 3600
    assert result.matched == {book.rules[0].id: 3}


def test_windows_are_not_copied_when_nothing_counts():
    book = rules(GMAIL + 'trigger = { Threshold = "3/hr" }\n')
    windows = {("x", "y"): (NOW,)}
    assert evaluate(book, [outcome(queue="acme@yahoo.com")], windows, NOW).windows is windows


def test_a_reason_is_one_line_of_at_most_1000_characters():
    long = "421 4.7.28 " + "x\r\ny" * 400
    (hold,) = evaluate(rules(GMAIL), [outcome(response=long)], {}, NOW).holds
    reason = hold.reason()
    assert len(reason) == MAX_REASON and reason.endswith('…"')
    assert not any(c in reason for c in "\r\n")


def test_response_line_is_kumods_single_line():
    assert response_line(421, (4, 7, 28), "a\r\nb\nc") == "421 4.7.28 a b c"
    assert response_line(550, None, "no such user") == "550 no such user"


# -- windows: kept, pruned and stored ------------------------------------------------


def test_prune_drops_what_can_no_longer_count():
    book = rules(GMAIL + 'trigger = { Threshold = "2/m" }\n')
    rid = book.rules[0].id
    windows = {(rid, "acme@gmail.com"): (NOW - 120, NOW - 30), (rid, "b@gmail.com"): (NOW - 90,), ("gone", "x"): (NOW,)}
    assert prune(windows, book, NOW) == {(rid, "acme@gmail.com"): (NOW - 30,)}


def test_windows_round_trip_through_bytes():
    windows = {("a", "acme@gmail.com"): (NOW, NOW + 0.5), ("b", "gmail.com"): (NOW,)}
    assert decode_windows(encode_windows(windows)) == windows
    with pytest.raises(ValidationError, match="not a windows file"):
        decode_windows(b"{}")
    with pytest.raises(ValidationError, match="version 2"):
        decode_windows(b'{"version": 2, "windows": []}')


# -- the engine against a plain model --------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 5),
    period=st.integers(1, 30),
    steps=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from(["acme", "beta"]), st.integers(-40, 5)), max_size=30
    ),
)
def test_a_threshold_fires_exactly_when_a_plain_count_says(limit, period, steps):
    """Fired iff, counting every match at or after now - period (times clamped
    to now, none older than the hold's duration), there are at least ``limit``."""
    book = rules(GMAIL.replace("3 hours", "100s") + f'trigger = {{ Threshold = "{limit}/{period}s" }}\n')
    windows: dict = {}
    seen: dict[str, list[float]] = {"acme": [], "beta": []}
    now = NOW
    for advance, tenant, offset in steps:
        now += advance
        at = now + offset
        result = evaluate(book, [outcome(queue=f"{tenant}@gmail.com", at=at)], windows, now)
        windows = result.windows
        counted = min(at, now)
        if counted + 100 > now:
            seen[tenant].append(counted)
            expected = sum(1 for t in seen[tenant] if t >= now - period) >= limit
        else:
            expected = False
        assert bool(result.holds) == expected
        for times in windows.values():
            assert len(times) <= limit and list(times) == sorted(times)


@settings(max_examples=200, deadline=None)
@given(
    written=st.lists(
        st.tuples(st.sampled_from(["a.example", "b.example", "c.example"]),
                  st.sampled_from(["4\\\\.7\\\\.28", "TS0[1-4]", "^421", "quota"]),
                  st.sampled_from(["3 hours", "10s"]), st.booleans()),
        max_size=12, unique=True,
    ),
    domains=st.lists(st.sampled_from(["a.example", "b.example", "c.example", "d.example"]), min_size=1, max_size=3, unique=True),
    response=st.sampled_from(["421 4.7.28 slow down", "421 4.7.0 [TS03] deferred", "452 4.2.2 over quota", "250 ok"]),
    internal=st.booleans(),
    age=st.integers(0, 60),
)
def test_the_rules_that_match_are_those_a_linear_scan_finds(written, domains, response, internal, age):
    """The domain index finds exactly the rules a scan of every rule finds."""
    text = "".join(
        f'[[automation]]\ndomain = "{d}"\nregex = "{rx}"\naction = "Suspend"\nduration = "{dur}"\n'
        f"match_internal = {str(mi).lower()}\n\n"
        for d, rx, dur, mi in written
    )
    book = rules(text) if written else Rulebook(())
    o = outcome(queue=f"acme@{domains[0]}", response=response, at=NOW - age, domains=tuple(domains), internal=internal)
    scanned = {
        r.id for r in book.rules
        if r.domain in domains and r.matches(response) and (r.match_internal or not internal)
        and NOW - age + r.duration > NOW
    }
    assert set(evaluate(book, [o], {}, NOW).matched) == scanned
