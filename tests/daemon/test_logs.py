"""Log output: lines of one event-loop pass written together, nothing lost at the end."""

from __future__ import annotations

import json
import threading
from unittest import mock
from datetime import datetime, timedelta, timezone

import pytest
import structlog
import trio

from sluice.daemon import logs
from sluice.daemon.logs import LineOutput


class Recorder:
    """A text stream that remembers each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.writers: list[int] = []  # the thread of each write

    def write(self, text: str) -> None:
        self.writes.append(text)
        self.writers.append(threading.get_ident())

    def flush(self) -> None:
        pass


def test_outside_the_loop_each_line_is_written_at_once():
    stream = Recorder()
    out = LineOutput(stream)
    out.info("one")
    out.error("two")
    assert stream.writes == ["one\n", "two\n"]


def test_lines_of_one_pass_are_written_together_before_the_loop_waits():
    stream = Recorder()
    out = LineOutput(stream)

    async def main():
        for n in range(3):
            out.info(f"a{n}")
        assert stream.writes == []  # still in this pass
        await trio.sleep(0.01)  # the loop waits for I/O: written first
        assert stream.writes == ["a0\na1\na2\n"]
        out.info("b")
        await trio.lowlevel.checkpoint()
        assert stream.writes == ["a0\na1\na2\n", "b\n"]

    trio.run(main, instruments=[out])


def test_lines_from_other_threads_are_written_at_once_and_in_order():
    stream = Recorder()
    out = LineOutput(stream)

    async def main():
        out.info("loop")
        await trio.lowlevel.checkpoint()  # a pass of the loop: its line is written
        worker = await trio.to_thread.run_sync(lambda: out.info("thread") or threading.get_ident())
        # the worker's line is written by the worker itself, not left for the loop
        assert stream.writes == ["loop\n", "thread\n"]
        assert stream.writers == [threading.get_ident(), worker]

    trio.run(main, instruments=[out])


def test_pending_lines_are_written_when_the_run_fails():
    stream = Recorder()
    out = LineOutput(stream)

    async def main():
        out.info("last words")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        trio.run(main, instruments=[out])
    assert stream.writes == ["last words\n"]
    out.info("after")  # the loop is gone: written at once
    assert stream.writes[-1] == "after\n"


@pytest.mark.parametrize(
    "now", [1_800_000_000.0, 1_800_000_000.999999, 1_800_000_059.5, 1_798_761_599.25]
)
def test_json_timestamps_are_what_structlogs_iso_utc_timestamper_writes(now):
    instant = datetime.fromtimestamp(now, timezone.utc)
    with mock.patch("sluice.daemon.logs.datetime") as clock:
        clock.now.return_value = instant
        ours = json.loads(logs._encode(logs.add_timestamp(None, "info", {})))["timestamp"]
    # structlog.processors.TimeStamper(fmt="iso", utc=True) for that instant
    assert ours == instant.isoformat().replace("+00:00", "Z")
    assert datetime.fromisoformat(ours) == instant


@pytest.fixture
def configured():
    """``logs.configure`` for one test, then the configuration there was before it."""
    before = structlog.get_config(), logs.OUTPUT.request_lines, logs.OUTPUT.json_chain
    yield logs.configure
    structlog.configure(**before[0])
    logs.OUTPUT.request_lines, logs.OUTPUT.json_chain = before[1:]


def test_json_lines_are_compact_with_context_level_and_utc_time(configured, capsys):
    configured("json", "info")
    logger = structlog.get_logger("sluice.http")
    fields = dict(method="GET", path="/api/check/v1", status=200, duration_ms=0.25, peer="uid=0(root)")
    answering = logs.REQUEST_ID.set("req_1")
    try:
        logger.info("request", **fields)
    finally:
        logs.REQUEST_ID.reset(answering)
    logger.info("reloaded")
    text, outside = capsys.readouterr().out.splitlines()
    line = json.loads(text)
    # the call's keys in order, the event, the request being answered, then level and time
    assert list(line) == [*fields, "event", "request_id", "level", "timestamp"]
    assert text.startswith('{"method":"GET","path":"/api/check/v1","status":200,')
    assert line["level"] == "info" and line["request_id"] == "req_1"
    assert "request_id" not in json.loads(outside)
    stamp = datetime.fromisoformat(line["timestamp"])
    assert line["timestamp"].endswith("Z") and stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)


def test_lines_follow_the_level_and_the_console_format(configured, capsys):
    configured("json", "warning")
    structlog.get_logger("a").info("request", status=200)
    assert capsys.readouterr().out == ""  # below the level: nothing
    configured("console", "info")
    structlog.get_logger("b").info("request", status=200)
    line = capsys.readouterr().out
    assert "request" in line and "status" in line and "200" in line and not line.startswith("{")


REQUEST = dict(
    method="GET", path="/api/check/v1", status=200, duration_ms=0.125, peer="uid=0(root) pid=7",
    request_id="req_0a1b2c3d00000001",
)


def test_a_request_line_is_the_line_structlog_writes_for_it(configured, capsys):
    configured("json", "info")
    assert logs.OUTPUT.writes_request_lines()  # the line below is msgspec's, not structlog's
    logs.request_line(**REQUEST)
    structlog.get_logger("sluice.http").info("request", **REQUEST)
    ours, structlogs = (json.loads(text) for text in capsys.readouterr().out.splitlines())
    assert list(ours) == list(structlogs) == [*REQUEST, "event", "level", "timestamp"]
    assert ours.pop("timestamp") <= structlogs.pop("timestamp")
    assert ours == structlogs == {**REQUEST, "event": "request", "level": "info"}


def test_a_request_line_follows_the_level_the_console_and_structlogs_test_capture(configured, capsys):
    configured("json", "warning")
    logs.request_line(**REQUEST)
    assert capsys.readouterr().out == ""
    configured("console", "info")
    logs.request_line(**REQUEST)
    line = capsys.readouterr().out
    assert "request" in line and "/api/check/v1" in line and "req_0a1b2c3d00000001" in line
    assert not line.startswith("{")
    configured("json", "info")
    with structlog.testing.capture_logs() as captured:
        assert not logs.OUTPUT.writes_request_lines()
        logs.request_line(**REQUEST)
    assert captured == [{**REQUEST, "event": "request", "log_level": "info"}]
