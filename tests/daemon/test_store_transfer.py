"""state export / import: runtime state moves between the files backend and etcd, byte for byte."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import trio

from sluice.daemon.config import load_config
from sluice.daemon.current import Current
from sluice.daemon.events import Broadcaster
from sluice.daemon.mutations import Mutations
from sluice.daemon.state.files import FileStore
from sluice.daemon.state.transfer import StoreUnreachable, TransferError, export_state, import_state
from sluice.policy.files import combine, parse_policy
from sluice.policy.snapshot import Snapshot
from test_store_etcd import EtcdCluster, free_port

FILES = """
[[schedule]]
id = "digest"

[[endpoint]]
id = "ep_550e8400e29b41d4a716446655440000"
url = "https://hooks.example.com"
"""


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        cluster.close()


def config(tmp_path: Path, name: str, etcd_endpoints: list[str] | None = None, prefix: str = "/x/"):
    path = tmp_path / f"{name}.toml"
    text = f'state_dir = "{name}-state"\n'
    if etcd_endpoints is not None:
        endpoints = ", ".join(f'"{e}"' for e in etcd_endpoints)
        text += f'[state]\nbackend = "etcd"\n[state.etcd]\nendpoints = [{endpoints}]\nprefix = "{prefix}"\n'
    path.write_text(text)
    return load_config(path)


async def fill(state_dir: Path) -> None:
    """Runtime state of every kind, made the daemon's way, in a files backend."""
    store = FileStore(state_dir)
    policy = combine([parse_policy(FILES, "10-a.toml")])
    m = Mutations(Current(Snapshot.build(policy, store.load()[0])), store, Broadcaster())
    await m.suspend({"domain": "gmail.com", "reason": "421", "duration": "1h"}, "alice")
    await m.suspend({"queue_names": ["news:acme@example.com"], "reason": "hold"}, "alice")
    await m.pause("queue", "acme@example.com", "bob", reason="warm-up", parallelism=2)
    await m.pause("schedule", "digest", "bob", reason="incident")
    await m.pause("endpoint", "ep_550e8400e29b41d4a716446655440000", "bob")


def test_files_to_etcd_and_back_is_a_byte_copy(tmp_path, etcd):
    files = config(tmp_path, "files")
    shared = config(tmp_path, "etcd", etcd.endpoints, prefix=f"/copy-{os.urandom(2).hex()}/")
    trio.run(fill, files.state_path)
    original = FileStore(files.state_path).read_raw()
    assert len(original) == 5

    # files -> one document on stdout -> etcd
    out = io.BytesIO()
    assert export_state(files.store_settings(), "-", stdout=out) == 5
    assert out.getvalue().startswith(b"# sluice runtime state, 5 entries")
    assert import_state(shared.store_settings(), "-", stdin=io.BytesIO(out.getvalue())) == 5
    stored = etcd.get_prefix(shared.state.etcd.prefix + "runtime/")
    assert sorted(stored.values()) == sorted(original.values())
    # a criteria key for each suspension, so upsert-by-criteria works after an import
    assert len(etcd.get_prefix(shared.state.etcd.prefix + "criteria/")) == 2

    # etcd -> a directory -> a fresh files backend
    dump = tmp_path / "dump"
    assert export_state(shared.store_settings(), dump) == 5
    assert {p.name: p.read_bytes() for p in dump.iterdir()} == original
    fresh = config(tmp_path, "fresh")
    assert import_state(fresh.store_settings(), dump) == 5
    assert FileStore(fresh.state_path).read_raw() == original
    runtime, problems = FileStore(fresh.state_path).load()
    assert not problems and len(runtime.suspensions) == 2

    # into a document file as well
    assert export_state(shared.store_settings(), tmp_path / "state.toml") == 5
    assert import_state(config(tmp_path, "again").store_settings(), tmp_path / "state.toml") == 5


def test_import_checks_everything_first_and_replace_removes_the_rest(tmp_path):
    target = config(tmp_path, "target")
    trio.run(fill, target.state_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[suspension]]\nid = "3b0b9a8e-6a52-4bd8-9d1c-5f1a0c1b2d3e"\ndomian = "x.com"\nreason = "r"\n'
        '[[queue]]\nname = "bad name"\npaused = true\n'
    )
    with pytest.raises(TransferError) as info:
        import_state(target.store_settings(), bad)
    assert "domian" in str(info.value) and "bad name" in str(info.value)  # every problem
    assert len(FileStore(target.state_path).read_raw()) == 5  # nothing written

    one = tmp_path / "one.toml"
    one.write_text('[[queue]]\nname = "only.example"\npaused = true\n')
    assert import_state(target.store_settings(), one) == 1
    assert len(FileStore(target.state_path).read_raw()) == 6  # merged
    assert import_state(target.store_settings(), one, replace=True) == 1
    assert list(FileStore(target.state_path).read_raw()) == ["queue-only.example.toml"]


def test_export_refuses_a_non_empty_directory_and_an_unreachable_etcd_is_said_so(tmp_path):
    files = config(tmp_path, "files")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(TransferError, match="not empty"):
        export_state(files.store_settings(), tmp_path / "full")
    down = config(tmp_path, "down", [f"http://127.0.0.1:{free_port()}"])
    with pytest.raises(StoreUnreachable, match="unreachable"):
        export_state(down.store_settings(), "-", stdout=io.BytesIO())
