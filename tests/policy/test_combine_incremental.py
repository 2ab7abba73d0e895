"""combine from the previous load checks only what changed, and says what a combine afresh says."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.policy.errors import PolicyLoadError
from sluice.policy.files import combine, parse_policy

# ids the small files share, so that an edit can give one twice; the big file's are its own
SHARED = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(6)]
BIG = parse_policy(
    "".join(
        f'[[suspension]]\nid = "{i:08x}-1111-4000-8000-000000000000"\ndomain = "big{i}.example"\nreason = "r"\n\n'
        for i in range(100)
    ),
    "00-big.toml",
)
SMALL = ["10-a.toml", "20-b.toml", "30-c.toml"]


def small_file(name: str, ids: list[int]) -> object:
    return parse_policy(
        "".join(
            f'[[suspension]]\nid = "{SHARED[i]}"\ndomain = "{name[3]}{i}.example"\nreason = "r"\n\n'
            for i in ids
        ),
        name,
    )


def outcome(files, previous=None):
    try:
        policy = combine(files, previous)
    except PolicyLoadError as exc:
        # the ids given twice (which of the two places a problem names first may differ)
        return None, sorted(re.search(r"'([^']+)'", p.message)[1] for p in exc.problems)
    return policy, None


edits = st.lists(
    st.tuples(st.sampled_from(SMALL), st.none() | st.lists(st.sampled_from(range(len(SHARED))), unique=True, max_size=4)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(edits)
def test_combine_from_the_last_load_says_what_a_combine_afresh_says(edits):
    """A small file edited, added or removed beside a big one, over and over, as the policy
    reader does: it keeps the last combine that succeeded and starts the next one from it."""
    parsed = {"00-big.toml": BIG}
    last = combine([BIG])
    for name, ids in edits:
        if ids is None:
            parsed.pop(name, None)
        else:
            parsed[name] = small_file(name, ids)
        files = [parsed[n] for n in sorted(parsed)]
        fresh, fresh_problems = outcome(files)
        policy, problems = outcome(files, last)
        assert problems == fresh_problems  # an id given twice is found either way
        if policy is not None:
            assert policy.suspensions == fresh.suspensions
            last = policy


def test_an_id_given_twice_across_a_small_edit_is_refused_and_the_last_load_stays_good():
    one = small_file("10-a.toml", [0])
    last = combine([BIG, one])
    twice = small_file("20-b.toml", [0])
    _, problems = outcome([BIG, one, twice], last)
    assert problems == [SHARED[0]]
    # the refused load changed nothing the next one starts from
    other = small_file("20-b.toml", [1])
    policy, problems = outcome([BIG, one, other], last)
    assert problems is None and len(policy.suspensions) == 102
