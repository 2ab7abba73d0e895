"""A large policy file read in pieces is the file read whole: entries, lines, indexes, ids."""

from datetime import timezone

import pytest

from sluice.policy.files import CHUNK_TABLES, join_parts, parse_policy, parse_policy_part

NAME = "50-bulk.toml"


def tables(n: int, start: int = 0) -> str:
    """``n`` tables of several kinds and shapes, with comments and blank lines between."""
    out = []
    for i in range(start, start + n):
        shape = i % 7
        if shape == 0:
            out.append(f'[[suspension]]\ndomain = "d{i}.example"\nreason = "r {i}"\n')
        elif shape == 1:
            out.append(f'[[suspension]]\ntenant = "t{i}"\nreason = "r {i}"\nexpires = 2030-01-01T00:00:00+02:00\n')
        elif shape == 2:
            out.append(f'# a comment above\n[[suspension]]\nqueue_names = ["c{i}:t@x{i}.example", "y{i}.example"]\nreason = "r"\n')
        elif shape == 3:
            out.append(f'  [[queue]]\n  name = "t{i}@q.example"\n  paused = true\n  reason = "indented"\n')
        elif shape == 4:
            out.append(f'[[suspension]]\ncampaign = "c{i}"\ntenant = "t{i}"\nreason = """\na multi-line string"""\n')
        elif shape == 5:
            out.append(f'[[endpoint]]\nid = "ep_{i:032x}"\nurl = "https://hooks.example.com/{i}"\n')
        else:
            out.append(f'[[suspension]]\nid = "{i:08x}-0000-4000-8000-000000000000"\ndomain = "e{i}.example"\nreason = "r"\n\n')
    return "\n".join(out)


def whole_and_parts(text: str, parts: int):
    return parse_policy(text, NAME), [parse_policy_part(text, NAME, k, parts) for k in range(parts)]


@pytest.mark.parametrize("parts", [2, 3, 4])
@pytest.mark.parametrize("lead", ["", "# generated\n\n", "\n\n# two comments\n# here\n"])
def test_the_parts_joined_are_the_whole_file(parts, lead):
    text = lead + tables(2 * parts * CHUNK_TABLES + 123)
    whole, pieces = whole_and_parts(text, parts)
    assert whole.ok and all(p is not None for p in pieces)
    joined = join_parts(pieces)
    assert joined == whole
    assert [s.source for s in joined.suspensions] == [s.source for s in whole.suspensions]
    assert [q.source for q in joined.queues][-1] == whole.queues[-1].source
    # a piece's parser gives offset date-times its own tzinfo class; entries hold UTC as the whole parse does
    expiring = [s for s in joined.suspensions if s.expires is not None]
    assert expiring and all(s.expires.tzinfo is timezone.utc for s in expiring)


@pytest.mark.parametrize(
    "why, text",
    [
        ("too few tables to share", tables(CHUNK_TABLES)),
        ("a top-level key above the tables", "version = 1\n" + tables(4 * CHUNK_TABLES)),
        ("a plain table", tables(2 * CHUNK_TABLES) + '[settings]\nx = 1\n' + tables(2 * CHUNK_TABLES, 10_000)),
        ("a problem in an entry", tables(4 * CHUNK_TABLES) + '[[suspension]]\ndomian = "x.example"\nreason = "r"\n'),
        ("a syntax error", tables(4 * CHUNK_TABLES) + "[[suspension]\n"),
        ("a byte-order mark, which rtoml reads and tomli refuses", "\ufeff" + tables(4 * CHUNK_TABLES)),
        ("a number tomli reads and rtoml refuses", tables(4 * CHUNK_TABLES) + "[[queue]]\nname = \"q@x.example\"\n"
         "paused = true\nparallelism = 1e400\n"),
        ("a table header inside a multi-line string",
         tables(CHUNK_TABLES - 1) + '[[suspension]]\ndomain = "s.example"\nreason = """\n[[suspension]]\n"""\n'
         + tables(CHUNK_TABLES + 10, 10_000)),
    ],
)
def test_a_file_not_to_read_in_pieces_is_left_to_the_whole_parse(why, text):
    """None from any part: the daemon then parses the file whole, and reports its problems as always."""
    _, pieces = whole_and_parts(text, 2)
    assert None in pieces, why


def test_a_part_with_no_table_of_its_own_still_joins_into_the_whole_file():
    """Parts are cut by size: a long comment can hold two cuts, leaving a part empty."""
    comment = "".join(f"# line {i} of a long note\n" for i in range(40_000))
    text = tables(2 * CHUNK_TABLES) + comment + tables(4 * CHUNK_TABLES, 10_000)
    whole, pieces = whole_and_parts(text, 4)
    assert whole.ok and all(p is not None for p in pieces)
    assert any(not p.suspensions and not p.queues and not p.endpoints for p in pieces)
    assert join_parts(pieces) == whole
