"""Reading the policy directory: name order, droppings ignored, only changed files parsed."""

import os

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
    from sluice.policy.errors import PolicyLoadError

    (tmp_path / "10-deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyLoadError) as info:
        PolicyReader(tmp_path).load()
    assert [str(p) for p in info.value.problems] == [
        "10-deep.toml: nested too deeply to read (arrays or inline tables inside each other)"
    ]


def test_a_file_unchanged_on_disk_is_not_read_again_unless_written_just_now(tmp_path):
    """Next to a 100,000-entry file a reload reads only what changed; a file written
    within the last seconds is still read, since its time may not tell two writes apart."""

    path = tmp_path / "10-a.toml"
    path.write_text('[[suspension]]\ndomain = "a.com"\nreason = "one"\n')
    reader = PolicyReader(tmp_path)
    assert reader.load().suspensions[0].reason == "one" and reader.parsed_last == 1

    def rewrite(text: str, age: float) -> None:
        stamp = path.stat().st_mtime_ns
        with open(path, "r+") as f:  # in place: same inode, same size
            f.write(text)
        os.utime(path, ns=(stamp, stamp) if age == 0 else (stamp - int(age * 1e9),) * 2)

    rewrite('[[suspension]]\ndomain = "a.com"\nreason = "two"\n', age=10)  # an old file, edited
    assert reader.load().suspensions[0].reason == "two"  # its time moved: read
    assert reader.parsed_last == 1
    assert reader.load() and reader.parsed_last == 0  # nothing changed: nothing parsed
    rewrite('[[suspension]]\ndomain = "a.com"\nreason = "six"\n', age=0)  # same stamp exactly
    assert reader.load().suspensions[0].reason == "two"  # old enough to trust: not read
    os.utime(path)  # written just now
    assert reader.load().suspensions[0].reason == "six"
