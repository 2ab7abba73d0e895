"""The policy core is pure: it imports without trio or any of the daemon's I/O."""

import subprocess
import sys


def test_policy_imports_without_trio():
    code = (
        "import sys\n"
        "for name in ('trio', 'watchfiles', 'h11', 'socket', 'sluice.daemon'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import sluice.policy.snapshot, sluice.policy.files, sluice.policy.diff, sluice.policy.fields\n"
        "import sluice.policy.changes, sluice.policy.times, sluice.policy.postfix_log\n"
        "from sluice.policy.files import combine, parse_policy\n"
        "from sluice.policy.snapshot import Snapshot\n"
        "s = Snapshot.build(combine([parse_policy('[[suspension]]\\ndomain = \"x.com\"\\n"
        "reason = \"r\"\\n', 'a.toml')]))\n"
        "assert not s.decide('x.com', 0.0).deliver\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
