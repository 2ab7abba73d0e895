"""The one atomic write: temp file in the same directory, fsync it, rename, fsync the directory."""

from __future__ import annotations

import os
import stat

import pytest

from sluice.daemon.state import atomic
from sluice.daemon.state.atomic import install, remove_file, write_file, write_files


@pytest.fixture
def synced(monkeypatch):
    """What os.fsync was called on: "dir" for a directory, else the file's name."""
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        calls.append("dir" if stat.S_ISDIR(mode) else os.readlink(f"/proc/self/fd/{fd}").rpartition("/")[2])
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return calls


def test_write_file_syncs_the_temporary_file_then_the_directory(tmp_path, synced):
    write_file(tmp_path / "a.toml", b"one")
    assert (tmp_path / "a.toml").read_bytes() == b"one"
    assert synced == ["a.toml.tmp", "dir"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml"]


def test_write_files_syncs_the_directory_once_and_can_skip_the_files(tmp_path, synced):
    (tmp_path / "gone.toml").write_bytes(b"x")
    write_files(tmp_path, {"a.toml": b"1", "b.toml": b"2", "gone.toml": None}, fsync_files=False)
    assert synced == ["dir"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml", "b.toml"]


def test_removing_a_missing_file_changes_nothing_and_syncs_nothing(tmp_path, synced):
    remove_file(tmp_path / "missing.toml")
    assert synced == []


def test_install_syncs_a_file_written_elsewhere_and_renames_it(tmp_path, synced):
    copy = tmp_path / ".edit.toml"
    copy.write_bytes(b"edited")
    install(copy, tmp_path / "a.toml")
    assert (tmp_path / "a.toml").read_bytes() == b"edited" and not copy.exists()
    assert synced == [".edit.toml", "dir"]


def test_new_files_get_the_mode_asked_for_under_the_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        write_file(tmp_path / "a.toml", b"1")
        write_file(tmp_path / "b.toml", b"2", mode=0o666)
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.toml").stat().st_mode) == 0o644


def test_a_short_write_is_continued_until_the_whole_content_is_written(tmp_path, monkeypatch):
    """os.write may write less than it is given (a signal, a nearly full disk)."""
    real = os.write
    monkeypatch.setattr(atomic.os, "write", lambda fd, data: real(fd, bytes(data[:3])))
    write_file(tmp_path / "a.toml", b"a longer content than one write takes")
    assert (tmp_path / "a.toml").read_bytes() == b"a longer content than one write takes"
