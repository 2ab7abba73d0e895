"""Policy files: every problem named with file, line and key path, all at once."""

import textwrap
from datetime import datetime, timezone

import pytest

from sluice.policy.errors import PolicyLoadError
from sluice.policy.files import combine, is_policy_file, parse_policy, parse_runtime


def parse(text, name="10-test.toml"):
    return parse_policy(textwrap.dedent(text).lstrip("\n"), name)


def problems(text, name="10-test.toml"):
    return [(p.line, p.key_path, p.message) for p in parse(text, name).problems]


def test_example_tables_load():
    f = parse(
        """
        [[suspension]]
        domain = "Gmail.COM"
        reason = "421 4.7.28 rate limited; backing off"
        expires = 2026-11-23T12:00:00Z

        [[suspension]]
        queue_names = ["newsletter:acme@Example.com"]
        reason = "customer asked to hold this campaign"

        [[queue]]
        name = "acme@example.com"
        paused = true
        reason = "warming up new IPs"
        parallelism = 4

        [[schedule]]
        id = "weekly-digest"
        cron = "0 9 * * MON"

        [[endpoint]]
        id = "ep_550e8400e29b41d4a716446655440000"
        url = "https://hooks.example.com/events"
        """
    )
    assert f.ok, f.problems
    first, second = f.suspensions
    assert first.domain == "gmail.com"
    assert first.expires == datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    assert first.source == "10-test.toml:1"
    assert second.queue_names == ("newsletter:acme@example.com",)
    assert second.source == "10-test.toml:6"
    assert f.queues[0].parallelism == 4 and f.queues[0].paused
    assert f.schedules[0].cron == "0 9 * * MON"
    assert f.endpoints[0].url == "https://hooks.example.com/events"


def test_rfc3339_string_expires_is_accepted():
    f = parse(
        """
        [[suspension]]
        domain = "x.com"
        reason = "r"
        expires = "2026-11-23T12:00:00+01:00"
        """
    )
    assert f.ok
    # the same instant, kept in UTC so every listing shows one form
    assert f.suspensions[0].expires == datetime(2026, 11, 23, 11, 0, tzinfo=timezone.utc)
    assert f.suspensions[0].expires.utcoffset().total_seconds() == 0


def test_syntax_error_names_the_line():
    [(line, key, message)] = problems(
        """
        [[suspension]]
        domain = "x.com"
        reason = "unterminated
        """
    )
    assert line == 3
    assert "TOML syntax error" in message


def test_every_problem_of_a_file_is_reported_with_line_and_key_path():
    found = problems(
        """
        [[suspension]]
        domian = "gmail.com"
        reason = "typo must not suspend everything"

        [[suspension]]
        domain = "ok.com"
        reason = 42

        [[suspension]]
        tenant = "acme"
        reason = "naive"
        expires = 2026-11-23T12:00:00

        [[suspension]]
        reason = "no criterion"

        [[queue]]
        name = "bad name@x.com"
        paused = "yes"
        """
    )
    assert (2, "suspension[0].domian", found[0][2]) == found[0]
    assert "did you mean 'domain'" in found[0][2]
    assert (7, "suspension[1].reason") == found[1][:2]
    assert "expected a string, got a number" in found[1][2]
    assert (12, "suspension[2].expires") == found[2][:2]
    assert "no UTC offset" in found[2][2]
    assert (14, "suspension[3]") == found[3][:2]
    assert "everything = true" in found[3][2]
    assert (18, "queue[0].name") == found[4][:2]
    assert "a space" in found[4][2]
    assert (19, "queue[0].paused") == found[5][:2]
    assert len(found) == 6


@pytest.mark.parametrize(
    "body,key,fragment",
    [
        ('everything = true\ndomain = "x.com"\nreason = "r"', "everything", "cannot be combined"),
        ('queue_names = ["a.com"]\ndomain = "x.com"\nreason = "r"', "queue_names", "cannot be combined"),
        ('queue_names = []\nreason = "r"', "queue_names", "at least one"),
        ('queue_names = ["a.com", 5]\nreason = "r"', "queue_names[1]", "expected a queue name"),
        ('domain = "x.com"\nreason = ""', "reason", "must not be empty"),
        ('domain = "x.com"', "reason", "is required"),
        ('domain = "x.com"\nreason = "r"\nexpires = 2026-11-23', "expires", "date-time"),
        ('domain = "x.com"\nreason = "r"\nexpires = "tomorrow"', "expires", "RFC 3339"),
        ('domain = "x.com"\nreason = "r"\nid = "not-a-uuid"', "id", "UUID"),
        ('domain = "x.com"\nreason = "r"\nduration = "5m"', "duration", "unknown field"),
        ('tenant = "a@b"\nreason = "r"', "tenant", "'@'"),
        ('domain = "x.com"\nreason = "line one\\nline two"', "reason", "control characters"),
    ],
)
def test_suspension_problems(body, key, fragment):
    [(line, path, message)] = problems("[[suspension]]\n" + body + "\n")
    assert path == "suspension[0]." + key
    assert fragment in message
    assert line is not None


@pytest.mark.parametrize(
    "text,path,fragment",
    [
        ('[[schedule]]\nid = "digest"\ncron = "61 * * * *"\n', "schedule[0].cron", "cron"),
        ('[[schedule]]\nid = "a b"\n', "schedule[0].id", "schedule id"),
        ('[[schedule]]\nid = "d"\ndestination = "http://x.com"\n', "schedule[0].destination", "https://"),
        ('[[endpoint]]\nid = "ep_123"\nurl = "https://x.com"\n', "endpoint[0].id", "ep_xxx"),
        ('[[endpoint]]\nid = "ep_550e8400e29b41d4a716446655440000"\nurl = "http://x.com"\n',
         "endpoint[0].url", "https://"),
        ('[[queue]]\nname = "x.com"\n', "queue[0].paused", "is required"),
        ('[[queue]]\nname = "x.com"\npaused = true\nparallelism = 0\n', "queue[0].parallelism", "from 1"),
        ('[[suspensions]]\ndomain = "x.com"\n', "suspensions", "did you mean [[suspension]]"),
        ('[suspension]\ndomain = "x.com"\nreason = "r"\n', "suspension", "array of tables"),
        ('reason = "r"\n', "reason", "unknown table"),
    ],
)
def test_other_table_problems(text, path, fragment):
    [(line, key_path, message)] = problems(text)
    assert key_path == path
    assert fragment in message
    assert line is not None


def test_stable_ids_survive_edits_of_reason_and_expiry():
    a = parse('[[suspension]]\ndomain = "x.com"\nreason = "one"\n').suspensions[0]
    b = parse(
        '# moved down\n[[suspension]]\nreason = "two"\ndomain = "X.com."\n'
        "expires = 2030-01-01T00:00:00Z\n"
    ).suspensions[0]
    c = parse('[[suspension]]\ndomain = "x.com"\nreason = "one"\n', name="20-other.toml").suspensions[0]
    d = parse('[[suspension]]\ndomain = "y.com"\nreason = "one"\n').suspensions[0]
    assert a.id == b.id
    assert a.id != c.id  # another file
    assert a.id != d.id  # other criteria


def test_duplicate_ids_across_files_are_errors_naming_both_places():
    one = parse('[[suspension]]\ndomain = "x.com"\nreason = "a"\n', "10-a.toml")
    same = parse('[[suspension]]\ndomain = "x.com"\nreason = "b"\n\n[[suspension]]\ndomain = "x.com"\nreason = "c"\n', "10-a.toml")
    with pytest.raises(PolicyLoadError) as info:
        combine([same])
    [problem] = info.value.problems
    assert problem.path == "10-a.toml" and problem.line == 5
    assert "also defined at 10-a.toml:1" in problem.message
    explicit = parse(
        '[[suspension]]\nid = "%s"\ndomain = "y.com"\nreason = "r"\n' % one.suspensions[0].id,
        "20-b.toml",
    )
    with pytest.raises(PolicyLoadError, match="20-b.toml:1: suspension: suspension id"):
        combine([one, explicit])


def test_duplicate_queue_schedule_endpoint_across_files():
    a = parse('[[queue]]\nname = "x.com"\npaused = true\n[[schedule]]\nid = "s"\n', "a.toml")
    b = parse('[[queue]]\nname = "X.com"\npaused = false\n[[schedule]]\nid = "s"\n', "b.toml")
    with pytest.raises(PolicyLoadError) as info:
        combine([a, b])
    assert [p.key_path for p in info.value.problems] == ["queue", "schedule"]


def test_combine_reports_problems_of_every_file():
    a = parse('[[suspension]]\ndomian = "x"\nreason = "r"\n', "a.toml")
    b = parse("[[queue]\n", "b.toml")
    with pytest.raises(PolicyLoadError) as info:
        combine([a, b])
    assert [p.path for p in info.value.problems] == ["a.toml", "b.toml"]


def test_runtime_shape_has_created_fields_and_requires_id():
    f = parse_runtime(
        '[[suspension]]\nid = "0b7e4c2e-0f0e-4a7e-9d55-1f2a3b4c5d6e"\ndomain = "x.com"\n'
        'reason = "r"\nexpires = 2030-01-01T00:00:00Z\ncreated_at = 2026-11-23T10:00:00Z\n'
        'created_by = "uid=0(root) pid=1"\n'
        '[[schedule]]\nid = "digest"\npaused = true\n',
        "state.toml",
    )
    assert f.ok, f.problems
    assert f.suspensions[0].created_by == "uid=0(root) pid=1"
    assert f.suspensions[0].source == "runtime"
    assert f.pauses[0].kind == "schedule"
    missing = parse_runtime('[[suspension]]\ndomain = "x.com"\nreason = "r"\n', "s.toml")
    assert [p.key_path for p in missing.problems] == ["suspension[0].id"]


@pytest.mark.parametrize(
    "name,read",
    [
        ("10-main.toml", True),
        ("main.toml~", False),
        (".main.toml.swp", False),
        (".#main.toml", False),
        ("#main.toml#", False),
        ("4913", False),
        ("main.toml.tmp", False),
        ("notes.txt", False),
    ],
)
def test_editor_droppings_are_ignored(name, read):
    assert is_policy_file(name) is read


def test_a_large_file_parses_in_pieces_to_the_same_entries(monkeypatch):
    import sluice.policy.files as files

    tables = "".join(
        f'[[suspension]]\ndomain = "d{i}.example"\nreason = "r {i}"\n\n[[queue]]\nname = "q{i}.example"\npaused = true\n\n'
        for i in range(3000)
    )
    text = "# a comment before the first table\n\n" + tables
    assert len(text) > 256 * 1024  # large enough for parse_policy to cut it
    whole = files.tomli.loads(text)
    pieces = files._decode_in_chunks(text)
    assert pieces == whole
    # the same entries with their true lines, either way
    chunked = parse_policy(text, "big.toml")
    monkeypatch.setattr(files, "_decode_in_chunks", lambda text: None)
    assert parse_policy(text, "big.toml") == chunked


@pytest.mark.parametrize(
    "prefix",
    ['reason = "top-level key"\n', '[settings]\nx = 1\n'],
)
def test_files_that_do_not_cut_cleanly_are_parsed_whole(prefix):
    import sluice.policy.files as files

    text = prefix + "".join(f'[[suspension]]\ndomain = "d{i}.example"\nreason = "r"\n' for i in range(1200))
    assert files._decode_in_chunks(text) is None


def test_a_header_inside_a_multiline_string_falls_back_to_the_whole_parse():
    import sluice.policy.files as files

    body = "".join(f'[[suspension]]\ndomain = "d{i}.example"\nreason = "r"\n' for i in range(600))
    tricky = '[[suspension]]\ndomain = "x.example"\nreason = """one\n[[suspension]]\ntwo"""\n'
    text = body + tricky + body.replace(".example", ".test")
    assert files._decode(text, "a.toml")[0] == files.tomli.loads(text)


def test_locating_problems_is_linear_in_the_file():
    """Locating each problem used to scan the whole file once per key: 10x the keys, 100x the time."""
    import time

    def cost(keys):
        text = '[[suspension]]\ndomain = "x.com"\nreason = "r"\n' + "".join(f"k{i} = 1\n" for i in range(keys))
        started = time.perf_counter()
        parsed = parse_policy(text, "big.toml")
        return time.perf_counter() - started, parsed

    small, _ = cost(20_000)
    large, parsed = cost(200_000)
    assert large < 30 * small  # linear is ~10x; one scan per key is ~100x
    messages = [str(p) for p in parsed.problems]
    assert messages[0].startswith("big.toml:4: suspension[0].k0: unknown field")
    assert "and 199990 more unknown fields" in messages[-1]


def test_a_policy_file_over_the_size_limit_is_refused_before_parsing():
    from sluice.policy import files

    text = "# padding\n" * (files.MAX_FILE_CHARS // 10 + 1)
    parsed = parse_policy(text, "huge.toml")
    assert [str(p) for p in parsed.problems] == [
        "huge.toml: file is 64.0 MiB; a policy file holds at most 64 MiB (split it into several files)"
    ]


@pytest.mark.parametrize("what, text", [
    ("keys", "".join(f"k{i} = {i}\n" for i in range(2_000_001))),
    ("tables", "[[queue]]\n" * 1_000_001),
])
def test_a_policy_file_with_too_many_keys_or_tables_is_refused_before_parsing(what, text):
    parsed = parse_policy(text, "many.toml")
    [problem] = parsed.problems  # the one problem, not what parsing would have found in each entry
    assert str(problem).startswith("many.toml: file holds up to ") and f" {what}; a policy file holds at most" in str(problem)


def test_problems_stop_at_a_hundred_per_file():
    text = "".join(f"bad{i} = 1\n" for i in range(500))
    parsed = parse_policy(text, "many.toml")
    assert len(parsed.problems) == 101
    assert str(parsed.problems[-1]) == "many.toml: stopped after 100 problems; fix these first"
