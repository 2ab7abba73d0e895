"""Ends, evolved change by change (chunks splitting and emptying), counts what a count afresh counts."""

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.policy import ends as ends_module
from sluice.policy.ends import Ends
from sluice.policy.model import Suspension

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def suspension(i: int, minutes: int | None) -> Suspension:
    return Suspension(
        id=f"{i:08x}-0000-4000-8000-000000000000",
        reason="r",
        domain=f"d{i}.example",
        expires=None if minutes is None else T0 + timedelta(minutes=minutes),
    )


# few distinct ends, so that equal ends (within a chunk and across chunks) are common
ends = st.one_of(st.none(), st.integers(0, 12))
steps = st.lists(st.tuples(st.booleans(), ends, st.integers(0, 1_000)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.lists(ends, max_size=20), steps, st.integers(1, 4), st.booleans())
def test_evolved_ends_count_what_a_count_afresh_counts(start, changes, chunk, recut):
    """Put (True) or drop (False, a held one picked by the number) in any order,
    in chunks so small that they split and empty often: each version counts as
    one built afresh, and the versions before it still count as they did."""
    held = [suspension(i, m) for i, m in enumerate(start)]
    # recut: the chunks are cut again as the count moves, as they are at a
    # larger scale (at these sizes only without the smallest chunk size)
    smallest, ends_module.MIN_CHUNK = ends_module.MIN_CHUNK, 1 if recut else ends_module.MIN_CHUNK
    try:
        versions = evolved(held, start, changes, chunk)
    finally:
        ends_module.MIN_CHUNK = smallest
    for version, members in versions:
        afresh = Ends.of(members)
        assert version.sorted_ends() == afresh.sorted_ends()
        for minute in range(-1, 14):
            now = (T0 + timedelta(minutes=minute)).timestamp()
            assert version.in_force(now) == afresh.in_force(now) == sum(
                1 for s in members if s.is_active(now)
            )


def evolved(held, start, changes, chunk):
    versions = [(Ends.of(held, chunk=chunk), list(held))]
    for put, minutes, pick in changes:
        before, held = versions[-1][0], list(versions[-1][1])
        if put:
            s = suspension(len(start) + len(versions), minutes)
            held.append(s)
            after = before.evolve([s], [])
        elif held:
            s = held.pop(pick % len(held))
            after = before.evolve([], [s])
        else:
            continue
        versions.append((after, held))
    return versions


def test_a_change_next_to_many_ends_copies_one_chunk_of_them():
    """Versions share their chunks: a change copies the one it touches, so its cost stays
    about the square root of the ends, however many changes come."""
    many = Ends.of(suspension(i, i % 600) for i in range(100_000))
    assert 300 <= len(many.chunks) <= 320
    after = many.evolve([suspension(100_001, 5)], [])
    shared = sum(1 for a, b in zip(after.chunks, many.chunks) if a is b)
    assert shared == len(many.chunks) - 1
    at = (T0 + timedelta(minutes=4)).timestamp()
    assert after.in_force(at) == many.in_force(at) + 1
    for i in range(2_000):
        after = after.evolve([suspension(200_000 + i, 7)], [])
    assert max(map(len, after.chunks)) < 2 * 316  # split as they grow
    assert after.total == 102_001


def test_ends_grown_from_none_or_shrunk_to_few_keep_chunks_of_about_their_square_root(monkeypatch):
    """Built empty (a runtime with nothing yet) and grown one change at a time, then shrunk:
    the chunks are cut again as the count moves, so a change stays O(sqrt n). (The smallest
    chunk size is lowered, so that this shows at 10,000.)"""
    monkeypatch.setattr(ends_module, "MIN_CHUNK", 4)
    grown = Ends.of([])
    members = []
    for i in range(10_000):
        s = suspension(i, i % 700)
        members.append(s)
        grown = grown.evolve([s], [])
    assert len(grown.chunks) <= 2 * 100 + 8 and max(map(len, grown.chunks)) < 2 * 100
    for s in members[100:]:
        grown = grown.evolve([], [s])
    assert len(grown.chunks) <= 2 * 10 + 8 and max(map(len, grown.chunks)) < 2 * 10
    at = (T0 + timedelta(minutes=50)).timestamp()
    assert grown.total == 100 and grown.in_force(at) == sum(1 for s in members[:100] if s.is_active(at))
