"""The fast path for file suspensions accepts exactly what the full reader accepts."""

from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sluice.policy.fields import EntryInvalid, _file_suspension_fast, suspension_from

texts = st.one_of(
    st.sampled_from(["acme", "news", "Gmail.COM.", "bücher.example", "a b", "", " ", "x@y", "c:d",
                     "ok.example", "[192.0.2.1]", "line\nbreak", "a" * 300]),
    st.text(max_size=8),
)
values = st.one_of(texts, st.integers(), st.booleans(), st.none(), st.lists(texts, max_size=3))
moments = st.one_of(
    st.just(datetime(2030, 1, 1, tzinfo=timezone.utc)),
    st.just(datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))),
    st.just(datetime(2030, 1, 1)),
    st.just("2030-01-01T00:00:00Z"),
    st.just(" 2030-01-01T12:00:00+02:00 "),
    st.just("2030-01-01T00:00:00"),
    st.just("2030-01-01"),
    st.just("soon"),
)
keys = st.sampled_from(
    ["campaign", "tenant", "domain", "queue_names", "everything", "reason", "expires", "id", "domian"]
)


@st.composite
def tables(draw):
    table = {}
    for key in draw(st.lists(keys, max_size=5, unique=True)):
        if key == "expires":
            table[key] = draw(moments)
        elif key == "id":
            table[key] = draw(st.sampled_from(["6f0b7c52-3f7e-4a59-9a43-7b3e1f0e8a11", "nope", 5]))
        elif key == "reason":
            table[key] = draw(st.one_of(st.just("rate limited"), values))
        else:
            table[key] = draw(values)
    return table


def slow(table):
    """The full reader: a mapping that is not a dict never takes the fast path."""
    try:
        return suspension_from(MappingProxyType(table), mode="file", file_name="a.toml", source="a.toml:1")
    except EntryInvalid:
        return None


@settings(max_examples=1500, deadline=None)
@example({"campaign": "acme", "reason": "rate limited", "tenant": None})
@given(tables())
def test_fast_path_agrees_with_the_reader(table):
    fast = _file_suspension_fast(table, "a.toml", "a.toml:1")
    if fast is not None:
        assert fast == slow(table)


def test_fast_path_takes_the_common_shapes():
    for table in (
        {"domain": "Gmail.com", "reason": "r", "expires": datetime(2030, 1, 1, tzinfo=timezone.utc)},
        {"tenant": "acme", "campaign": "news", "reason": "r"},
        {"queue_names": ["a@b.example"], "reason": "r"},
        {"everything": True, "reason": "r"},
        {"domain": "mail.example", "reason": "r", "expires": "2030-01-01T12:00:00+02:00"},
    ):
        fast = _file_suspension_fast(table, "a.toml", "a.toml:1")
        assert fast is not None and fast == slow(table)
