"""`sluicectl validate`: exit 0 with a summary per file, or 1 with every problem."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sluicectl(*args):
    return subprocess.run(
        [sys.executable, "-m", "sluice.daemon.ctl", *args], capture_output=True, text=True, cwd=ROOT
    )


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(textwrap.dedent(text).lstrip("\n"))


def test_example_policy_is_valid():
    out = sluicectl("validate", str(ROOT / "etc" / "policy.d"))
    assert out.returncode == 0, out.stderr
    assert "10-suspensions.toml: ok, 2 suspensions" in out.stdout
    assert "40-endpoints.toml: ok, 0 suspensions, 0 queues, 0 schedules, 1 endpoint" in out.stdout


def test_the_example_automation_rule_is_valid():
    out = sluicectl("validate", str(ROOT / "etc" / "policy.d"))
    assert "50-automation.toml: ok, 0 suspensions, 0 queues, 0 schedules, 0 endpoints, 1 automation rule" in out.stdout


def test_broken_automation_rules_report_file_line_and_key(tmp_path):
    write(
        tmp_path,
        "50-auto.toml",
        r"""
        [[automation]]
        domain = "gmail.com"
        regex = "4\\.7\\.28("
        action = "SuspendTenent"
        duration = "3 hours"
        trigger = { Threshold = "10/fortnight" }

        [[automation]]
        domain = "yahoo.com"
        regex = ["\\[TS04\\]"]
        action = ["Suspend", "SetConfig"]
        duration = "2h"
        trigger = "Later"
        """,
    )
    out = sluicectl("validate", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "50-auto.toml:3: automation[0].regex: is not a valid regex (missing ), unterminated subpattern "
        "at position 8): '4\\\\.7\\\\.28('",
        "50-auto.toml:4: automation[0].action: unknown action 'SuspendTenent' (did you mean 'SuspendTenant'?); "
        "actions: Suspend, SuspendTenant, SuspendCampaign",
        "50-auto.toml:6: automation[0].trigger.Threshold: unknown period in '10/fortnight'; periods are s, sec, "
        "second, m, min, minute, h, hr, hour, d, day, optionally after a number (5min)",
        "50-auto.toml:11: automation[1].action[1]: 'SetConfig' is a KumoMTA action sluice does not take; "
        "sluice holds with: Suspend, SuspendTenant, SuspendCampaign",
        '50-auto.toml:13: automation[1].trigger: expected "Immediate" or { Threshold = "N/period" } such as '
        "{ Threshold = \"10/hr\" }, got 'Later'",
        f"{tmp_path}: invalid: 5 problems",
    ]


def test_default_directory_comes_from_the_config():
    out = sluicectl("--config", str(ROOT / "etc" / "sluiced.toml"), "validate")
    assert out.returncode == 0, out.stderr
    assert "20-queues.toml: ok" in out.stdout


def test_broken_files_report_every_problem_with_file_line_and_key(tmp_path):
    write(
        tmp_path,
        "10-a.toml",
        """
        [[suspension]]
        domian = "gmail.com"
        reason = "typo"

        [[suspension]]
        domain = "x.com"
        reason = "both"
        duration = "5m"
        expires = 2030-01-01T00:00:00Z

        [[suspension]]
        reason = "no criterion"

        [[suspension]]
        domain = "y.com"
        reason = "naive"
        expires = 2030-01-01T00:00:00

        [[queue]]
        name = "q.com"
        paused = "yes"
        """,
    )
    write(tmp_path, "20-b.toml", '[[suspension]]\ndomain = "x.com"\nreason = "unterminated\n')
    write(
        tmp_path,
        "30-c.toml",
        """
        [[endpoint]]
        id = "ep_550e8400e29b41d4a716446655440000"
        url = "https://a.example"

        [[endpoint]]
        id = "ep_550e8400e29b41d4a716446655440000"
        url = "https://b.example"
        """,
    )
    write(tmp_path, "10-a.toml~", "this backup is ignored")
    out = sluicectl("validate", str(tmp_path))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0].startswith("10-a.toml:2: suspension[0].domian: unknown field")
    assert lines[1].startswith("10-a.toml:8: suspension[1].duration: unknown field")
    assert lines[2].startswith("10-a.toml:11: suspension[2]: a suspension needs")
    assert lines[3].startswith("10-a.toml:17: suspension[3].expires: has no UTC offset")
    assert lines[4].startswith("10-a.toml:21: queue[0].paused: expected true or false")
    assert lines[5].startswith("20-b.toml:3: TOML syntax error")
    assert lines[6] == (
        "30-c.toml:5: endpoint: endpoint id 'ep_550e8400e29b41d4a716446655440000' "
        "is also defined at 30-c.toml:1"
    )
    assert lines[7] == f"{tmp_path}: invalid: 7 problems"
    assert out.stdout == ""


def test_past_and_future_suspensions_mix_is_valid_and_notes_the_expired(tmp_path):
    write(
        tmp_path,
        "a.toml",
        """
        [[suspension]]
        domain = "old.example"
        reason = "over"
        expires = 2020-01-01T00:00:00Z

        [[suspension]]
        domain = "new.example"
        reason = "ahead"
        expires = 2099-01-01T00:00:00Z
        """,
    )
    out = sluicectl("validate", str(tmp_path))
    assert out.returncode == 0
    assert "a.toml: ok, 2 suspensions" in out.stdout
    assert "a.toml:1: note: suspension" in out.stderr
    assert "expired at 2020-01-01T00:00:00+00:00" in out.stderr
    assert "new.example" not in out.stderr and "a.toml:6" not in out.stderr


def test_missing_directory_is_refused(tmp_path):
    out = sluicectl("validate", str(tmp_path / "nope"))
    assert out.returncode == 1
    assert "policy directory does not exist" in out.stderr


@pytest.mark.parametrize("args", [[], ["validate", "a", "b"], ["frobnicate"]])
def test_usage_errors_exit_2(args):
    assert sluicectl(*args).returncode == 2


def test_validate_names_a_file_nested_too_deep_and_exits_1(tmp_path):
    import subprocess
    import sys

    (tmp_path / "a.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    out = subprocess.run([sys.executable, "-m", "sluice.daemon.ctl", "validate", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "a.toml: nested too deeply to read" in out.stdout + out.stderr


def test_validate_reports_a_million_key_file_with_its_lines(tmp_path):
    """Locating a million keys' lines is linear: the error comes, with file and line."""
    (tmp_path / "10-big.toml").write_text(
        '[[suspension]]\ndomain = "a.com"\nreason = "r"\n' + "".join(f"k{i} = {i}\n" for i in range(1_000_000))
    )
    out = sluicectl("validate", str(tmp_path))
    assert out.returncode == 1
    assert "10-big.toml:4: suspension[0].k0: unknown field" in out.stdout + out.stderr
    assert "and 999990 more unknown fields" in out.stdout + out.stderr
