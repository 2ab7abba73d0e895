"""state/ stands apart from the shell: no import of the rest of sluice.daemon, no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sluice.daemon.state

PACKAGE = Path(sluice.daemon.state.__file__).parent


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as an absolute name."""
    here = "sluice.daemon.state" + ("" if path.stem == "__init__" else f".{path.stem}")
    package = here if path.stem == "__init__" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            found.add(module)
            if node.level and not node.module:  # from . import x: x may be a module
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name = "sluice.daemon.state" + ("" if path.stem == "__init__" else f".{path.stem}")
        graph[name] = imports(path)
    return graph


def test_state_imports_nothing_of_the_shell():
    outside = {
        name: sorted(m for m in found if m.startswith("sluice.daemon") and not m.startswith("sluice.daemon.state"))
        for name, found in modules().items()
    }
    assert {name: found for name, found in outside.items() if found} == {}


def test_state_imports_without_the_shell_modules():
    code = (
        "import sys\n"
        "for name in ('sluice.daemon.config', 'sluice.daemon.reload', 'sluice.daemon.main',\n"
        "             'sluice.daemon.mutations', 'sluice.daemon.ctl', 'watchfiles'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import sluice.daemon.state, sluice.daemon.state.transfer\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_modules_of_state_import_each_other_without_a_cycle():
    everything = modules()
    graph = {name: found & everything.keys() for name, found in everything.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_the_interface_and_the_encoding_know_no_backend():
    graph = modules()
    backends = {f"sluice.daemon.state.{m}" for m in ("files", "etcd", "etcd_keys", "etcd_known",
                                                      "etcd_watch", "gateway", "cache", "transfer")}
    for name in ("base", "encoding", "atomic"):
        assert not graph[f"sluice.daemon.state.{name}"] & (backends | {"sluice.daemon.state"})
