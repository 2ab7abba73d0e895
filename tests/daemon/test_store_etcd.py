"""The etcd backend against a real etcd: load at a revision, watch, claims, sweeps, degraded mode.

``EtcdCluster`` (real ``etcd`` processes on free loopback ports, each with its
own data directory) is also used by test_fleet.py and bench/fleet.py.
Readiness is polled on ``/health`` in a bounded loop: etcd has no notify.
"""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trio
from harness import unavailable

ETCD = shutil.which("etcd")


def require_etcd() -> str:
    """The etcd binary (skips without it, or fails under CI)."""
    if ETCD is None:
        unavailable("etcd is not installed (apt-get install etcd-server)")
    return ETCD


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class EtcdMember:
    def __init__(self, root: Path, name: str, scheme: str = "http") -> None:
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data = root / f"{name}.data"
        self.log = root / f"{name}.log"
        self.scheme = scheme
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """Real etcd members on loopback; ``extra`` adds flags (TLS, ...)."""

    def __init__(self, root: Path, size: int = 1, extra: tuple[str, ...] = (), scheme: str = "http",
                 health_client: httpx.Client | None = None) -> None:
        require_etcd()
        root.mkdir(parents=True, exist_ok=True)
        tag = os.urandom(3).hex()
        self.members = [EtcdMember(root, f"n{i}-{tag}", scheme) for i in range(size)]
        self.extra = extra
        self.health = health_client or httpx.Client(timeout=1.0, trust_env=False)
        self.token = f"sluice-test-{tag}"

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        return self.members[0].url

    def _spawn(self, m: EtcdMember) -> None:
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        m.proc = subprocess.Popen(
            [
                ETCD, "--name", m.name, "--data-dir", str(m.data),
                "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-token", self.token,
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "warn",
                *self.extra,
            ],
            stdout=open(m.log, "ab"),
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, members: list[EtcdMember] | None = None, timeout: float = 20.0) -> None:
        """Poll /health until every member says true (bounded: etcd has no readiness notify)."""
        deadline = time.monotonic() + timeout
        for m in members or self.members:
            while True:
                try:
                    if self.health.get(m.url + "/health").json().get("health") == "true":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if m.proc.poll() is not None:
                    raise AssertionError(f"etcd {m.name} exited:\n{m.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd {m.name} not healthy:\n{m.log.read_text()[-3000:]}")
                time.sleep(0.05)

    def start(self, *which: int) -> EtcdCluster:
        members = [self.members[i] for i in which] if which else self.members
        for m in members:
            self._spawn(m)
        try:
            self.wait_healthy(members if len(self.members) == 1 or which else None)
        except BaseException:
            self.stop(*which)
            raise
        return self

    def stop(self, *which: int, sig: int = signal.SIGTERM) -> None:
        for i in which or range(len(self.members)):
            m = self.members[i]
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(sig)
                m.proc.wait(10)
            m.proc = None

    def close(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait()
        self.health.close()

    # -- the JSON gateway, for tests that look behind sluice's back --------------

    def call(self, path: str, body: dict) -> dict:
        with httpx.Client(timeout=5, trust_env=False) as client:
            for url in self.endpoints:
                try:
                    response = client.post(url + path, json=body)
                except httpx.TransportError:
                    continue
                response.raise_for_status()
                return response.json()
        raise AssertionError("no etcd member answered")

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        answer = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in answer.get("kvs", [])
        }

    def put(self, key: str, value: str | bytes) -> int:
        return int(self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})["header"]["revision"])

    def compact(self) -> int:
        revision = int(self.call("/v3/kv/range", {"key": b64("/")})["header"]["revision"])
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


# -- in-process tests of EtcdStore ---------------------------------------------------


from sluice.policy.errors import PolicyError  # noqa: E402
from sluice.policy.files import combine, parse_policy  # noqa: E402
from sluice.policy.snapshot import Snapshot  # noqa: E402
from sluice.daemon.current import Current  # noqa: E402
from sluice.daemon.events import Broadcaster  # noqa: E402
from sluice.daemon.mutations import Mutations  # noqa: E402
from sluice.daemon.state.etcd import EtcdStore
from sluice.daemon.state.gateway import Gateway  # noqa: E402
from sluice.daemon.state import open_store  # noqa: E402
from sluice.daemon.state.base import StateUnavailable  # noqa: E402

FILES = """
[[schedule]]
id = "digest"
cron = "0 9 * * MON"
"""
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        cluster.close()


@pytest.fixture
def prefix():
    return f"/t{next(_prefixes)}-{os.urandom(2).hex()}/"


class Clock:
    """Wall-clock seconds that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Node:
    """One EtcdStore with its Mutations, as sluiced wires them."""

    def __init__(self, endpoints: list[str], prefix: str, state: Path, clock=time.time, **gateway) -> None:
        self.store = EtcdStore(Gateway(endpoints, **gateway), prefix, state / "etcd-cache", clock=clock)
        self.clock = clock
        self.events = Broadcaster()
        self.sub = self.events.subscribe()
        self.stop = trio.Event()

    async def open(self, nursery: trio.Nursery | None = None, follow: bool = True) -> Node:
        loaded = await self.store.open()
        self.loaded = loaded
        policy = combine([parse_policy(FILES, "10-a.toml")])
        self.current = Current(Snapshot.build(policy, loaded.runtime))
        self.current.degraded = self.store.degraded
        self.mutations = Mutations(self.current, self.store, self.events, clock=self.clock)
        if follow:
            await nursery.start(
                lambda task_status: self.store.follow(self.mutations.apply_changes, stop=self.stop, task_status=task_status)
            )
        return self

    async def event(self, name: str, timeout: float = 5.0, **fields) -> dict:
        with trio.fail_after(timeout):
            while True:
                message = await self.sub.receive.receive()
                if message["event"] == name and all(message.get(k) == v for k, v in fields.items()):
                    return message

    def pending(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sub.receive.receive_nowait()["event"])
            except trio.WouldBlock:
                return out

    async def caught_up(self) -> None:
        """Until this node has applied every revision etcd has now (its own echoes too)."""
        head = int((await self.store.gateway.call("/v3/kv/range", {"key": b64("/")}))["header"]["revision"])
        with trio.fail_after(5):
            while (self.store.revision or 0) < head:
                await trio.sleep(0.01)

    def held(self, queue: str) -> bool:
        return not self.current.snapshot.decide(queue, self.clock()).deliver


async def test_a_change_on_one_node_is_applied_and_announced_on_the_other_once(etcd, prefix, tmp_path):
    async with trio.open_nursery() as nursery:
        a = await Node([etcd.url], prefix, tmp_path / "a").open(nursery)
        b = await Node([etcd.url], prefix, tmp_path / "b").open(nursery)
        s, created = await a.mutations.suspend({"domain": "gmail.com", "reason": "421"}, "alice")
        assert created
        added = await b.event("suspension_added", id=s.id)
        assert added["domain"] == "gmail.com" and added["by"] == "alice"
        assert b.held("gmail.com") and b.current.snapshot.suspensions[s.id] == s
        await a.mutations.pause("queue", "acme@example.com", "bob", reason="ops")
        await b.event("queue_paused", queue="acme@example.com")
        await b.mutations.cancel_suspension(s.id, "carol")
        await a.event("suspension_removed", id=s.id)
        await b.mutations.pause("schedule", "digest", "carol", reason="incident")
        await a.event("schedule_paused", id="digest")
        assert not a.current.snapshot.decide_schedule("digest").run
        # own writes echo through the watch and are not announced twice
        await a.caught_up()
        await b.caught_up()
        assert a.pending() == []
        assert b.pending() == ["suspension_removed", "schedule_paused"]  # its own, once each
        assert a.current.snapshot.runtime == b.current.snapshot.runtime
        a.stop.set()
        b.stop.set()
    # the value in etcd is the files backend's text, byte for byte
    stored = etcd.get_prefix(prefix + "runtime/")
    assert list(stored) == [prefix + "runtime/queue/acme%40example.com", prefix + "runtime/schedule/digest"]
    from sluice.daemon.state.encoding import render

    assert stored[prefix + "runtime/queue/acme%40example.com"] == render(
        a.current.snapshot.runtime.queues["acme@example.com"]
    )


async def test_two_nodes_posting_the_same_criteria_at_once_get_one_id(etcd, prefix, tmp_path):
    async with trio.open_nursery() as nursery:
        nodes = [await Node([etcd.url], prefix, tmp_path / f"n{i}").open(nursery) for i in range(4)]
        for round_ in range(5):
            ids = []

            async def post(node, i):
                s, _ = await node.mutations.suspend(
                    {"domain": f"race{round_}.example", "reason": f"from {i}"}, f"node{i}"
                )
                ids.append(s.id)

            async with trio.open_nursery() as racers:
                for i, node in enumerate(nodes):
                    racers.start_soon(post, node, i)
            assert len(set(ids)) == 1, ids
        keys = etcd.get_prefix(prefix)
        suspensions = [k for k in keys if "/runtime/suspension/" in k]
        criteria = [k for k in keys if "/criteria/" in k]
        assert len(suspensions) == 5 and len(criteria) == 5
        for node in nodes:
            node.stop.set()


async def test_claim_takes_over_an_expired_holder_and_a_dangling_pointer(etcd, prefix, tmp_path):
    clock = Clock()
    async with trio.open_nursery() as nursery:
        a = await Node([etcd.url], prefix, tmp_path / "a", clock=clock).open(nursery)
        s, _ = await a.mutations.suspend({"tenant": "acme", "reason": "r", "duration": "1m"}, "x")
        clock.offset = 120  # it expired (the sweeper is not running here)
        t, created = await a.mutations.suspend({"tenant": "acme", "reason": "again"}, "x")
        assert created and t.id != s.id
        assert prefix + f"runtime/suspension/{s.id}" not in etcd.get_prefix(prefix)
        # a criteria key that points at nothing is taken over, not obeyed
        await a.mutations.cancel_suspension(t.id, "x")
        import hashlib

        ckey = prefix + "criteria/" + hashlib.sha256(t.criteria_key.encode()).hexdigest()
        etcd.put(ckey, "00000000-0000-4000-8000-000000000000")
        u, created = await a.mutations.suspend({"tenant": "acme", "reason": "third"}, "x")
        assert created and etcd.get_prefix(ckey)[ckey] == u.id.encode()
        a.stop.set()


async def test_racing_sweepers_remove_an_expired_key_once_and_never_an_updated_one(etcd, prefix, tmp_path):
    clock = Clock()
    async with trio.open_nursery() as nursery:
        a = await Node([etcd.url], prefix, tmp_path / "a", clock=clock).open(nursery)
        b = await Node([etcd.url], prefix, tmp_path / "b", clock=clock).open(nursery)
        s, _ = await a.mutations.suspend({"domain": "x.example", "reason": "r", "duration": "1m"}, "x")
        await b.event("suspension_added", id=s.id)
        clock.offset = 61
        async with trio.open_nursery() as sweepers:
            sweepers.start_soon(a.mutations.sweep)
            sweepers.start_soon(b.mutations.sweep)
        assert not [k for k in etcd.get_prefix(prefix) if "suspension" in k]
        for node in (a, b):
            await node.event("suspension_expired", id=s.id)
        await a.caught_up()
        await b.caught_up()
        assert a.pending() == [] and b.pending() == []  # announced once on each node
        # a sweeper that saw an older revision leaves an updated key alone
        clock.offset = 0
        s, _ = await a.mutations.suspend({"domain": "y.example", "reason": "r", "duration": "1m"}, "x")
        await b.event("suspension_added", id=s.id)
        stale = b.current.snapshot.suspensions[s.id]
        key = prefix + f"runtime/suspension/{s.id}"
        b.store.known.seen[key] = (b.store.known.seen[key][0] - 1, True)  # b is behind
        await b.store.remove_expired(stale)
        assert key in etcd.get_prefix(prefix)
        a.stop.set()
        b.stop.set()


async def test_a_compacted_revision_means_a_full_resync_announced_as_a_diff(etcd, prefix, tmp_path):
    async with trio.open_nursery() as nursery:
        a = await Node([etcd.url], prefix, tmp_path / "a").open(nursery)
        s1, _ = await a.mutations.suspend({"domain": "one.example", "reason": "r"}, "x")
        b = await Node([etcd.url], prefix, tmp_path / "b").open(follow=False)  # loaded at R, not watching
        assert b.held("one.example")
        s2, _ = await a.mutations.suspend({"domain": "two.example", "reason": "r"}, "x")
        await a.mutations.cancel_suspension(s1.id, "x")
        await a.mutations.pause("queue", "q.example", "x")
        etcd.compact()
        await nursery.start(
            lambda task_status: b.store.follow(b.mutations.apply_changes, stop=b.stop, task_status=task_status)
        )
        with trio.fail_after(5):
            diff = [await b.sub.receive.receive() for _ in range(3)]
        assert {(m["event"], m.get("id", m.get("queue"))) for m in diff} == {
            ("suspension_added", s2.id), ("suspension_removed", s1.id), ("queue_paused", "q.example")
        }
        assert len({m["generation"] for m in diff}) == 1  # one swap
        assert b.current.snapshot.runtime == a.current.snapshot.runtime
        # and it keeps following after the resync
        await a.mutations.resume("queue", "q.example", "x")
        await b.event("queue_resumed", queue="q.example")
        a.stop.set()
        b.stop.set()


async def test_unreachable_etcd_keeps_the_state_refuses_changes_and_the_local_copy_serves_a_start(
    tmp_path,
):
    cluster = EtcdCluster(tmp_path / "etcd").start()
    prefix = "/sluice/"
    try:
        async with trio.open_nursery() as nursery:
            a = await Node(cluster.endpoints, prefix, tmp_path / "a").open(nursery)
            flips = []
            a.store.on_degraded = lambda flag, reason: flips.append(flag)
            s, _ = await a.mutations.suspend({"domain": "held.example", "reason": "r"}, "x")
            await a.mutations.pause("queue", "p.example", "x")
            await a.caught_up()
            await a.store.copy.flush()  # the local copy is written
            await trio.to_thread.run_sync(cluster.stop)
            with pytest.raises(StateUnavailable) as info:
                await a.mutations.suspend({"domain": "other.example", "reason": "r"}, "x")
            assert info.value.status_hint == 503 and info.value.code == "STATE_UNAVAILABLE"
            assert isinstance(info.value, PolicyError)
            assert a.store.degraded and flips == [True]
            assert a.held("held.example") and a.held("p.example")  # holds stay
            assert a.current.snapshot.generation == 3

            # a node starting now serves the local copy, degraded
            c = Node(cluster.endpoints, prefix, tmp_path / "a")
            await c.open(nursery)
            assert c.loaded.stale and c.store.degraded
            assert c.held("held.example") and c.held("p.example")
            with pytest.raises(StateUnavailable):
                await c.mutations.resume("queue", "p.example", "x")

            # etcd is back: both reconnect with no restart, c resyncs
            await trio.to_thread.run_sync(cluster.start)
            with trio.fail_after(10):
                while a.store.degraded or c.store.degraded:
                    await trio.sleep(0.05)
            assert flips == [True, False]
            await a.mutations.cancel_suspension(s.id, "x")
            await c.event("suspension_removed", id=s.id)
            a.stop.set()
            c.stop.set()
    finally:
        cluster.close()


async def test_endpoints_are_tried_in_turn(etcd, prefix, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    async with trio.open_nursery() as nursery:
        a = await Node([dead, etcd.url], prefix, tmp_path / "a").open(nursery)
        assert not a.store.degraded
        await a.mutations.pause("queue", "q.example", "x")
        assert prefix + "runtime/queue/q.example" in etcd.get_prefix(prefix)
        a.stop.set()


async def test_username_and_password_and_a_refused_token_is_renewed(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd").start()
    try:
        for path, body in [
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/add", {"name": "root", "password": "rootpw"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/role/add", {"name": "sluice"}),
            ("/v3/auth/role/grant", {"name": "sluice", "perm": {"permType": "READWRITE", "key": b64("/sluice/"), "range_end": b64("/sluice0")}}),
            ("/v3/auth/user/add", {"name": "sluiced", "password": "s3cret"}),
            ("/v3/auth/user/grant", {"user": "sluiced", "role": "sluice"}),
            ("/v3/auth/enable", {}),
        ]:
            cluster.call(path, body)
        async with trio.open_nursery() as nursery:
            a = await Node(cluster.endpoints, "/sluice/", tmp_path / "a", username="sluiced", password="s3cret").open(nursery)
            b = await Node(cluster.endpoints, "/sluice/", tmp_path / "b", username="sluiced", password="s3cret").open(nursery)
            await a.mutations.pause("queue", "q.example", "x")
            await b.event("queue_paused", queue="q.example")
            a.store.gateway._tokens = {url: "expired.1" for url in cluster.endpoints}
            await a.mutations.resume("queue", "q.example", "x")
            await b.event("queue_resumed", queue="q.example")
            a.stop.set()
            b.stop.set()
        wrong = Node(cluster.endpoints, "/sluice/", tmp_path / "c", username="sluiced", password="nope")
        async with trio.open_nursery() as nursery:
            await wrong.open(nursery)
            assert wrong.store.degraded  # refused: it serves its (empty) local copy
            wrong.stop.set()
    finally:
        cluster.stop()
        cluster.close()


async def test_tls_with_a_client_certificate(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("sluiced")
    files = {}
    for name, blob in {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
    }.items():
        files[name] = tmp_path / name
        blob.write_to_path(str(files[name]))
    import ssl

    health_ctx = ssl.create_default_context(cafile=str(files["ca.pem"]))
    health_ctx.load_cert_chain(files["client.pem"], files["client.key"])
    cluster = EtcdCluster(
        tmp_path / "etcd",
        scheme="https",
        extra=(
            "--cert-file", str(files["server.pem"]), "--key-file", str(files["server.key"]),
            "--trusted-ca-file", str(files["ca.pem"]), "--client-cert-auth",
        ),
        health_client=httpx.Client(verify=health_ctx, timeout=1.0, trust_env=False),
    ).start()
    try:
        from sluice.daemon.config import load_config

        config = tmp_path / "sluiced.toml"
        config.write_text(
            f'state_dir = "state"\n[state]\nbackend = "etcd"\n[state.etcd]\n'
            f'endpoints = ["{cluster.url}"]\nca_file = "ca.pem"\ncert_file = "client.pem"\nkey_file = "client.key"\n'
        )
        store = open_store(load_config(config).store_settings())
        await store.put(
            __import__("sluice.policy.model", fromlist=["QueuePolicy"]).QueuePolicy(name="tls.example", paused=True)
        )
        loaded = await store.open()
        assert "tls.example" in loaded.runtime.queues and not loaded.stale
        await store.aclose()
        # without the client certificate etcd refuses: the store is unreachable for us
        config.write_text(config.read_text().replace('cert_file = "client.pem"\nkey_file = "client.key"\n', ""))
        store = open_store(load_config(config).store_settings())
        assert (await store.open()).stale
        await store.aclose()
    finally:
        cluster.stop()
        cluster.close()


async def test_a_member_without_quorum_is_not_followed_and_the_node_says_degraded(tmp_path):
    """Two of three members stop: the third still answers, but cannot commit or read linearizably."""
    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()
    try:
        async with trio.open_nursery() as nursery:
            a = await Node(cluster.endpoints, "/sluice/", tmp_path / "a").open(nursery)
            await a.mutations.pause("queue", "q.example", "x")
            await trio.to_thread.run_sync(lambda: cluster.stop(1, 2))
            with trio.fail_after(15):
                while not a.store.degraded:
                    await trio.sleep(0.05)
            assert a.held("q.example")
            with pytest.raises(StateUnavailable):
                await a.mutations.resume("queue", "q.example", "x")
            await trio.to_thread.run_sync(lambda: cluster.start(1))
            with trio.fail_after(15):
                while a.store.degraded:
                    await trio.sleep(0.05)
            await a.mutations.resume("queue", "q.example", "x")
            assert not a.held("q.example")
            a.stop.set()
    finally:
        cluster.stop()
        cluster.close()
