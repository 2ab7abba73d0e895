"""The threshold counts' file: saves asked while a write is under way share the next one."""

from __future__ import annotations

import pytest
import trio

from sluice.daemon.automation import WindowsFile
from sluice.daemon.state.base import StateUnavailable
from sluice.policy.automation import decode_windows, encode_windows


async def test_concurrent_saves_share_writes_and_each_returns_once_its_state_is_on_disk(tmp_path):
    file = WindowsFile(tmp_path / "automation-windows.json")
    state = {"version": 0}
    written: list[int] = []

    def current() -> bytes:
        written.append(state["version"])
        return encode_windows({("rule", "acme@gmail.com"): (float(state["version"]),)})

    async def save() -> None:
        state["version"] += 1  # a change to the counts, then the save that stores it
        version = state["version"]
        await file.save(current)
        # what this save asked for (or later) is on disk when it returns
        (times,) = decode_windows(file.path.read_bytes()).values()
        assert times[0] >= version

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(save)
    assert len(written) < 20  # writes were shared
    assert file.load() == {("rule", "acme@gmail.com"): (20.0,)}


async def test_a_write_the_disk_refuses_is_state_unavailable(tmp_path):
    taken = tmp_path / "automation-windows.json"
    taken.mkdir()  # a directory where the file goes: the rename over it fails, even for root
    with pytest.raises(StateUnavailable, match="cannot store automation counts"):
        await WindowsFile(taken).save(lambda: b"{}")


def test_a_missing_or_broken_file_is_no_counts(tmp_path):
    path = tmp_path / "automation-windows.json"
    assert WindowsFile(path).load() == {}
    path.write_text('{"version": 1, "windows": [["r", "s"]]}')
    assert WindowsFile(path).load() == {}
