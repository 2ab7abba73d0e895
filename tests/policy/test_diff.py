"""diff(old, new) lists what a reload or a change added, removed and changed."""

from sluice.policy.diff import diff
from sluice.policy.files import combine, parse_policy
from sluice.policy.snapshot import Snapshot


def snap(text, generation=1):
    return Snapshot.build(combine([parse_policy(text, "a.toml")]), generation=generation)


def test_added_removed_changed_and_moved():
    old = snap(
        '[[suspension]]\ndomain = "x.com"\nreason = "r1"\n'
        '[[suspension]]\ndomain = "gone.com"\nreason = "r"\n'
        '[[queue]]\nname = "q.com"\npaused = true\n'
    )
    new = snap(
        "# a comment moves every line down\n"
        '[[suspension]]\ndomain = "x.com"\nreason = "r2"\n'
        '[[suspension]]\ntenant = "new"\nreason = "r"\n'
        '[[queue]]\nname = "q.com"\npaused = true\n'
        '[[schedule]]\nid = "digest"\n',
        2,
    )
    changes = {(c.kind, c.action, c.key if c.kind != "suspension" else None) for c in diff(old, new)}
    assert changes == {
        ("suspension", "changed", None),
        ("suspension", "removed", None),
        ("suspension", "added", None),
        ("schedule", "added", "digest"),
    }
    changed = next(c for c in diff(old, new) if c.action == "changed")
    assert (changed.before.reason, changed.after.reason) == ("r1", "r2")


def test_identical_snapshots_have_no_changes():
    text = '[[suspension]]\ndomain = "x.com"\nreason = "r"\n'
    assert diff(snap(text), snap(text, 2)) == []
