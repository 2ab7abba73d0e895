"""Durations follow the humantime grammar KumoMTA accepts, and format back in whole seconds."""

import pytest

from sluice.policy.duration import format_duration, parse_duration
from sluice.policy.errors import InvalidDuration


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("5m", 300),
        ("5min", 300),
        ("1 hour", 3600),
        ("2h 37min", 2 * 3600 + 37 * 60),
        ("2h37m", 2 * 3600 + 37 * 60),
        ("1d", 86400),
        ("3 weeks", 3 * 7 * 86400),
        ("1M", 2_630_016),
        ("1y", 31_557_600),
        ("90s", 90),
        ("1500ms", 1.5),
        ("300", 300),
        (300, 300),
        (2.5, 2.5),
        (" 10 seconds ", 10),
    ],
)
def test_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("", "empty"),
        ("5", None),  # valid: plain seconds
        ("5 fortnights", "unknown unit 'fortnights'"),
        ("m5", "expected a number and a unit"),
        ("5m and change", "expected a number and a unit at 'and change'"),
        ("0s", "greater than zero"),
        (0, "greater than zero"),
        (-5, "greater than zero"),
        (True, "must be a string"),
        (None, "must be a string"),
        ([5], "must be a string"),
        (float("inf"), "finite"),
    ],
)
def test_invalid(value, fragment):
    if fragment is None:
        assert parse_duration(value) == 5
        return
    with pytest.raises(InvalidDuration) as info:
        parse_duration(value)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "seconds,text",
    [
        (0, "0s"),
        (9, "9s"),
        (300, "5m"),
        (3849, "1h 4m 9s"),
        (86400 + 3 * 3600, "1day 3h"),
        (2 * 86400, "2days"),
        (299.2, "5m"),  # rounded up: a fresh 5m suspension reads 5m
    ],
)
def test_format(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [1, 59, 61, 3599, 86399, 86401, 2_630_017, 40_000_000])
def test_format_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds
