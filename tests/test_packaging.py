"""sluice installs as a user installs it: a wheel and an sdist, under the one import name ``sluice``.

These build the real artifacts with ``python -m build`` and install the
wheel into a fresh virtualenv outside the source tree, so nothing of the
checkout can hide a missing module (an editable install would).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist, and the wheel built from that sdist (as ``python -m build`` does)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def source_modules() -> set[str]:
    """Every module of the checkout's daemon/ and policy/, as its installed path."""
    return {
        "sluice/" + path.relative_to(ROOT).as_posix()
        for part in ("daemon", "policy")
        for path in (ROOT / part).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_the_wheel_holds_every_module_under_sluice_and_nothing_else(dist):
    (wheel,) = dist.glob("sluice-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"sluice", f"sluice-{VERSION}.dist-info"}
    missing = source_modules() - set(names)
    assert not missing, f"modules left out of the wheel: {sorted(missing)}"
    top_level = zipfile.ZipFile(wheel).read(f"sluice-{VERSION}.dist-info/top_level.txt").decode()
    assert top_level.split() == ["sluice"]


def test_the_sdist_carries_the_units_the_examples_and_the_docs(dist):
    (sdist,) = dist.glob("sluice-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for path in (
        "etc/sluiced.toml", "etc/policy.d/10-suspensions.toml", "systemd/sluiced.service",
        "systemd/sluiced.socket", "systemd/sluiced-policy.socket", "systemd/sluice.sysusers",
        "systemd/sluice-follow-postfix-log.service",
        "docs/postfix.md", "docs/openapi.yaml", "setup.py", "pyproject.toml", "README.md",
    ):
        assert path in names, f"{path} is not in the sdist"


def test_the_installed_wheel_works_beside_python_daemon(dist, tmp_path):
    """python-daemon's import name is ``daemon``: both must import from one environment."""
    (wheel,) = dist.glob("sluice-*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    bin_ = env / "bin"
    install = subprocess.run(
        [bin_ / "pip", "install", "-q", str(wheel), "python-daemon"],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    code = (
        "import daemon.pidfile, sluice.daemon.main, sluice.daemon.ctl, sluice.policy.snapshot\n"
        "import sluice.daemon.http.connection, sluice.daemon.state.etcd\n"
        "print(daemon.pidfile.__file__)\nprint(sluice.daemon.main.__file__)\n"
    )
    done = subprocess.run(
        [bin_ / "python", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=clean
    )
    assert done.returncode == 0, done.stderr
    pidfile, main = done.stdout.split()
    assert pidfile.startswith(str(env)) and main.startswith(str(env))  # not the checkout's

    for tool in ("sluiced", "sluicectl"):
        shown = subprocess.run([bin_ / tool, "--version"], capture_output=True, text=True, cwd=tmp_path, env=clean)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == f"{tool} {VERSION}"

    validated = subprocess.run(
        [bin_ / "sluicectl", "validate", str(ROOT / "etc" / "policy.d")],
        capture_output=True, text=True, cwd=tmp_path, env=clean,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
