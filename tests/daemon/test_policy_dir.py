"""Reading the policy directory: name order, droppings ignored, only changed files parsed."""

import pytest

from sluice.daemon.policy_dir import PolicyReader


def test_only_changed_files_are_parsed_again(tmp_path):
    (tmp_path / "20-b.toml").write_text('[[suspension]]\ndomain = "b.com"\nreason = "r"\n')
    (tmp_path / "10-a.toml").write_text('[[suspension]]\ndomain = "a.com"\nreason = "r"\n')
    (tmp_path / "10-a.toml~").write_text("backup")
    (tmp_path / ".10-a.toml.swp").write_text("swap")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.toml").write_text("not read: not directly inside")
    reader = PolicyReader(tmp_path)
    first = reader.load()
    assert reader.parsed_last == 2
    assert first.files == ("10-a.toml", "20-b.toml")
    assert [s.domain for s in first.suspensions] == ["a.com", "b.com"]

    reader.load()
    assert reader.parsed_last == 0  # nothing changed, nothing parsed

    (tmp_path / "20-b.toml").write_text('[[suspension]]\ndomain = "c.com"\nreason = "r"\n')
    again = reader.load()
    assert reader.parsed_last == 1
    assert [s.domain for s in again.suspensions] == ["a.com", "c.com"]
    assert again.suspensions[0] is first.suspensions[0]  # the unchanged file's entries, reused


def test_a_file_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "a.toml").write_bytes(b'[[suspension]]\ndomain = "\xff"\n')
    [parsed] = PolicyReader(tmp_path).read()
    assert [(p.line, p.message) for p in parsed.problems] == [(2, "file is not valid UTF-8")]


def test_any_failure_reading_a_file_is_that_files_problem(tmp_path):
    """A TOML text nested thousands deep exhausts the parser's recursion: a problem, not a crash."""
    from sluice.daemon.policy_dir import PolicyReader
    from sluice.policy.errors import PolicyLoadError

    (tmp_path / "10-deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyLoadError) as info:
        PolicyReader(tmp_path).load()
    assert [str(p) for p in info.value.problems] == [
        "10-deep.toml: nested too deeply to read (arrays or inline tables inside each other)"
    ]
