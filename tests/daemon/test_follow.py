"""The follower's reading of a log file, line by line, driven in-process (no waiting: ``sleep``
is given as a no-op, so each look at an idle log comes at the next ``next``)."""

from __future__ import annotations

import os
from pathlib import Path

from sluice.daemon.follow import IDLE, LogFile, Position, StateFile, default_state_path


def reader(path: Path, resume: Position | None = None, from_start: bool = True):
    log = LogFile(path, sleep=lambda seconds: None)
    assert log.start(resume, from_start=from_start)
    return log.lines()


def take(lines, n: int) -> list:
    """The next ``n`` items: lines as their text, idle as None."""
    return [None if item is IDLE else item[0] for item in (next(lines) for _ in range(n))]


def test_a_line_is_read_only_once_it_is_complete(tmp_path):
    path = tmp_path / "mail.log"
    path.write_text("one\ntw")
    lines = reader(path)
    assert take(lines, 2) == ["one", None]
    with open(path, "a") as f:
        f.write("o\nthree\n")
    assert take(lines, 3) == ["two", "three", None]


def test_positions_are_just_after_each_line_in_that_file(tmp_path):
    path = tmp_path / "mail.log"
    path.write_text("one\ntwo\n")
    st = os.stat(path)
    lines = reader(path)
    assert next(lines)[1] == Position(st.st_dev, st.st_ino, 4)
    assert next(lines)[1] == Position(st.st_dev, st.st_ino, 8)


def test_rotation_reads_the_old_file_to_its_end_then_the_new_from_its_start(tmp_path):
    path = tmp_path / "mail.log"
    path.write_text("one\n")
    lines = reader(path)
    assert take(lines, 2) == ["one", None]
    path.rename(tmp_path / "mail.log.1")
    with open(tmp_path / "mail.log.1", "a") as f:
        f.write("two\nunfinished")
    path.write_text("three\n")
    assert take(lines, 5) == ["two", "unfinished", None, "three", None]


def test_a_missing_path_keeps_the_old_file_read_until_a_new_one_comes(tmp_path):
    path = tmp_path / "mail.log"
    path.write_text("one\n")
    lines = reader(path)
    assert take(lines, 2) == ["one", None]
    path.rename(tmp_path / "mail.log.1")
    with open(tmp_path / "mail.log.1", "a") as f:
        f.write("two\n")
    assert take(lines, 2) == ["two", None]
    path.write_text("three\n")
    assert take(lines, 2) == [None, "three"]


def test_truncation_reads_again_from_the_start(tmp_path):
    path = tmp_path / "mail.log"
    path.write_text("a long first line\n")
    lines = reader(path)
    assert take(lines, 2) == ["a long first line", None]
    with open(path, "r+") as f:
        f.truncate(0)
        f.write("new\n")
    assert take(lines, 2) == ["new", None]


def test_a_resumed_file_starts_at_its_offset_another_at_its_start_none_at_its_end(tmp_path):
    path = tmp_path / "mail.log"
    path.write_text("one\ntwo\n")
    st = os.stat(path)
    assert take(reader(path, Position(st.st_dev, st.st_ino, 4)), 1) == ["two"]
    assert take(reader(path, Position(st.st_dev, st.st_ino + 1, 4)), 1) == ["one"]  # rotated meanwhile
    assert take(reader(path, Position(st.st_dev, st.st_ino, 99)), 1) == ["one"]  # shorter now: truncated
    assert take(reader(path, None, from_start=False), 1) == [None]  # tail -F: only what comes


def test_a_missing_file_is_waited_for_and_read_from_its_start(tmp_path):
    path = tmp_path / "mail.log"
    log = LogFile(path, sleep=lambda seconds: None)
    assert not log.start(None)
    lines = log.lines()
    assert take(lines, 1) == [None]
    path.write_text("first\n")
    assert take(lines, 2) == ["first", None]


def test_the_state_file_round_trips_and_a_bad_one_is_no_state(tmp_path):
    state = StateFile(tmp_path / "sub" / "state.json")
    assert state.load() is None
    state.save(Position(1, 2, 3), {"4ABC123": "acme"})
    loaded = state.load()
    assert loaded.position == Position(1, 2, 3) and loaded.tenants == {"4ABC123": "acme"}
    assert oct(os.stat(state.path).st_mode & 0o777) == "0o600"
    state.path.write_text("{not json")
    assert state.load() is None


def test_the_default_state_file_is_named_after_the_log():
    assert default_state_path(Path("/var/lib/sluice"), Path("/var/log/mail.log")) == Path(
        "/var/lib/sluice/follow-postfix-log.var-log-mail.log.json"
    )
