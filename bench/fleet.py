#!/usr/bin/env python3
"""Benchmark: a fleet sharing runtime state through etcd, beside the files backend.

Run from the repository root with the project's virtualenv (needs ``etcd``,
Debian's etcd-server):

    .venv/bin/python bench/fleet.py            # about 30 s
    .venv/bin/python bench/fleet.py --quick    # a smoke run, a few seconds

It starts, in one go, a single-member etcd on loopback (temporary data
directory), two sluiced nodes A and B with ``[state] backend = "etcd"``, and
one sluiced F with the files backend, all real processes, and measures:

1. propagation: a suspension posted on A until B's decision changes, timed
   two ways: until the change arrives on B's events stream (B publishes it
   right after swapping in the snapshot that holds it), and until a client
   polling B's check API in a tight loop sees ``deliver: false``. p50, p99
   and max; DESIGN 8b's target is p99 under 100 ms on loopback (and within
   1 s anywhere).
2. acknowledged changes per second: 100 concurrent clients creating
   suspensions on A (etcd) and on F (files), each change acknowledged only
   once durable (etcd commit / fsync). DESIGN 9's target for the files
   backend is at least 300/s. Then one client in a loop: the latency of
   one acknowledged change, p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "daemon"))

import httpx  # noqa: E402

from harness import Daemon  # noqa: E402
from test_store_etcd import EtcdCluster  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def quiet(d: Daemon) -> Daemon:
    d.config.write_text(d.config.read_text().replace('level = "debug"', 'level = "warning"'))
    return d


def node(root: Path, name: str, etcd: EtcdCluster | None) -> Daemon:
    (root / name).mkdir()
    extra = ""
    if etcd is not None:
        endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
        extra = f'[state]\nbackend = "etcd"\n[state.etcd]\nendpoints = [{endpoints}]\nprefix = "/bench/"\n'
    return quiet(Daemon(root / name, config_extra=extra)).start()


class Arrivals:
    """B's events stream in a thread: when each suspension id arrived."""

    def __init__(self, d: Daemon) -> None:
        self.at: dict[str, float] = {}
        self.cond = threading.Condition()
        self.client = d.client()
        self.client.timeout = httpx.Timeout(30, read=None)
        started = threading.Event()

        def pump() -> None:
            try:
                with self.client.stream("GET", "/api/events/v1") as stream:
                    for line in stream.iter_lines():
                        now = time.perf_counter()
                        started.set()
                        if not line.strip():
                            continue
                        message = json.loads(line)
                        if message["event"] == "suspension_added":
                            with self.cond:
                                self.at[message["id"]] = now
                                self.cond.notify_all()
            except httpx.HTTPError:
                pass

        threading.Thread(target=pump, daemon=True).start()
        started.wait(10)

    def wait(self, ident: str, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while ident not in self.at:
                if not self.cond.wait(deadline - time.monotonic()):
                    raise TimeoutError(ident)
            return self.at[ident]


def propagation(a: Daemon, b: Daemon, n: int) -> tuple[list[float], list[float]]:
    """Milliseconds from POST on A to the event on B, and to a changed decision on B."""
    arrivals = Arrivals(b)
    by_event, by_check = [], []
    with a.client() as ca, b.client() as cb:
        for i in range(n):
            domain = f"lat{i}-{os.urandom(3).hex()}.example"
            seen = threading.Event()
            stop = threading.Event()
            decided: list[float] = []

            def poll() -> None:
                seen.set()
                while not stop.is_set():
                    if not cb.get("/api/check/v1", params={"queue": domain}).json()["deliver"]:
                        decided.append(time.perf_counter())
                        return

            poller = threading.Thread(target=poll)
            poller.start()
            seen.wait()
            t0 = time.perf_counter()
            ident = ca.post("/api/admin/suspend/v1", json={"domain": domain, "reason": "bench"}).json()["id"]
            at = arrivals.wait(ident)
            poller.join(5)
            stop.set()
            by_event.append((at - t0) * 1000)
            if decided:
                by_check.append((decided[0] - t0) * 1000)
    arrivals.client.close()
    return by_event, by_check


def throughput(d: Daemon, clients: int, total: int) -> float:
    """Acknowledged changes per second with ``clients`` concurrent clients."""
    work: queue.Queue = queue.Queue()
    for i in range(total):
        work.put(i)
    tag = os.urandom(3).hex()
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        with d.client() as c:
            barrier.wait()
            while True:
                try:
                    i = work.get_nowait()
                except queue.Empty:
                    return
                r = c.post("/api/admin/suspend/v1", json={"domain": f"t{i}-{tag}.example", "reason": "bench"})
                if r.status_code != 200:
                    failures.append(r.text)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{len(failures)} changes refused: {failures[0]}")
    return total / elapsed


def one_by_one(d: Daemon, n: int) -> list[float]:
    times = []
    tag = os.urandom(3).hex()
    with d.client() as c:
        for i in range(n):
            t0 = time.perf_counter()
            r = c.post("/api/admin/suspend/v1", json={"domain": f"s{i}-{tag}.example", "reason": "bench"})
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    args = ap.parse_args()
    n_prop, n_total, n_seq = (20, 200, 20) if args.quick else (300, 3000, 300)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        etcd = EtcdCluster(root / "etcd")
        daemons: list[Daemon] = []
        try:
            etcd.start()
            a = node(root, "a", etcd)
            b = node(root, "b", etcd)
            f = node(root, "f", None)
            daemons += [a, b, f]
            print(f"etcd {etcd.url} (one member), sluiced A and B on etcd, F on files; loopback\n")

            by_event, by_check = propagation(a, b, n_prop)
            print(f"propagation, change on A -> B ({n_prop} suspensions, one at a time)")
            for label, values in (("event on B's stream", by_event), ("B's check API says held", by_check)):
                print(
                    f"  {label:26} p50 {statistics.median(values):6.1f} ms   p99 {percentile(values, 99):6.1f} ms"
                    f"   max {max(values):6.1f} ms   (target: p99 < 100 ms)"
                )
            print()
            print(f"acknowledged changes/s, 100 concurrent clients, {n_total} suspensions each run")
            rate_etcd = throughput(a, 100, n_total)
            rate_files = throughput(f, 100, n_total)
            print(f"  etcd backend  {rate_etcd:8.0f} /s   (committed by etcd)")
            print(f"  files backend {rate_files:8.0f} /s   (fsynced; DESIGN 9 target >= 300/s)")
            print(f"  etcd / files  {rate_etcd / rate_files:8.2f}")
            print()
            print(f"one client, one change at a time ({n_seq} suspensions): time to acknowledgement")
            for label, d in (("etcd backend", a), ("files backend", f)):
                values = one_by_one(d, n_seq)
                print(f"  {label:14} p50 {statistics.median(values):6.2f} ms   p99 {percentile(values, 99):6.2f} ms")
        finally:
            for d in daemons:
                d.stop()
                d.close()
            etcd.stop()
            etcd.close()
    wall = time.perf_counter() - wall0
    print(f"\nwall {wall:.1f} s; this process had a CPU for {100 * (time.process_time() - cpu0) / wall:.0f}% of it"
          " (the daemons and etcd run in their own processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
