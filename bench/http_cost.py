#!/usr/bin/env python3
"""Benchmark aid: what one admin check request costs the server, counted rather than timed.

Run from the repository root with the project's virtualenv (needs valgrind:
``apt-get install valgrind``):

    .venv/bin/python bench/http_cost.py            # 3,000 requests a server (about 2 minutes)
    .venv/bin/python bench/http_cost.py --quick    # 600 requests a server

The real sluiced (the example policy of ``etc/policy.d``) and the bare
trio + h11 server of ``admin_http.py`` each run under valgrind's callgrind
with its cache simulation. After a warm-up, the counters are zeroed, the
same ``GET /api/check/v1?queue=`` is sent N times over 8 keep-alive
connections (8 requests written, 8 answers read, and again), and the
counters are dumped. Per request it prints the instructions the server's
process ran (every thread) and its first-level instruction- and data-cache
misses. The counts repeat within about 1% from run to run, where a rate on
this shared machine moves by a third; they are what to compare when
changing the request path. A miss costs 10-15 cycles, so a change that
touches less code and data can help more than its instruction count says.
There is no target: ``admin_http.py`` holds the rate target.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT, Scratch, Sluiced, header, request_bytes, spawn_server, table, wrap

CONNECTIONS = 8
EVENTS = ("Ir", "I1mr", "D1mr", "D1mw")


def exchange(address: str, request: bytes, count: int) -> int:
    """``count`` requests (rounded down to whole rounds) over CONNECTIONS connections."""
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(CONNECTIONS)]
    for s in socks:
        s.connect(address)
        s.settimeout(60)
    try:
        for _ in range(count // CONNECTIONS):
            for s in socks:
                s.sendall(request)
            for s in socks:
                answer = s.recv(65536)
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {answer[:200]!r}")
    finally:
        for s in socks:
            s.close()
    return count // CONNECTIONS * CONNECTIONS


def totals(pid: int, out: Path) -> dict[str, int]:
    """Dump callgrind's counters of ``pid`` and read the totals of the new dump."""
    before = set(out.parent.glob(out.name + ".*"))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while True:
        new = set(out.parent.glob(out.name + ".*")) - before
        if new:
            dump = max(new, key=lambda p: p.stat().st_mtime)
            text = dump.read_text()
            if "\ntotals:" in text or "\nsummary:" in text:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no dump for {pid}")
        time.sleep(0.1)
    names: list[str] = []
    for line in text.splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith(("totals:", "summary:")):
            return dict(zip(names, map(int, line.split()[1:])))
    raise RuntimeError(f"no totals in {dump}")


def measure(pid: int, address: str, out: Path, request: bytes, count: int) -> dict[str, float]:
    exchange(address, request, 400)  # warm: imports, caches, the decision memo
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    sent = exchange(address, request, count)
    counts = totals(pid, out)
    return {name: counts.get(name, 0) / sent for name in EVENTS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="600 requests a server")
    ap.add_argument("--requests", type=int, help="requests a server (default 3,000)")
    args = ap.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"http_cost.py needs {' and '.join(missing)} (apt-get install valgrind)")
        return 1
    count = args.requests or (600 if args.quick else 3000)
    header("http_cost.py", args.quick, f"{count:,} requests a server under callgrind")
    scratch = Scratch("cost")
    request = request_bytes("GET", "/api/check/v1?queue=newsletter:acme@bench.example")

    def launcher(name: str) -> tuple[Path, tuple[str, ...]]:
        out = scratch.path / f"{name}.callgrind"
        return out, ("valgrind", "--tool=callgrind", "--cache-sim=yes", "--dump-instr=no",
                     f"--callgrind-out-file={out}")

    rows = []
    daemon = None
    bare = None
    try:
        out, command = launcher("sluiced")
        daemon = Sluiced(scratch.sub("sluiced"), launcher=command)
        for f in sorted((ROOT / "etc" / "policy.d").glob("*.toml")):
            shutil.copy(f, daemon.policy / f.name)
        daemon.start()
        ours = measure(daemon.pid, str(daemon.admin), out, request, count)
        daemon.stop()

        out, command = launcher("bare")
        bare_path = scratch.path / "bare.sock"
        script = str(Path(__file__).resolve().parent / "admin_http.py")
        bare = spawn_server([script, "--serve-bare", f"unix:{bare_path}"], str(bare_path),
                            scratch.path / "bare.log", launcher=command, timeout=120)
        reference = measure(bare.pid, str(bare_path), out, request, count)
    finally:
        if daemon is not None:
            daemon.close()
        if bare is not None:
            bare.kill()
            bare.wait()
        scratch.close()

    for name, figures in (("sluice check", ours), ("bare h11", reference)):
        rows.append([name] + [f"{figures[e]:,.0f}" for e in EVENTS] + [
            "" if figures is reference else f"{figures['Ir'] / reference['Ir']:.2f}x",
            "" if figures is reference else
            f"{(figures['I1mr'] + figures['D1mr']) / (reference['I1mr'] + reference['D1mr']):.2f}x"])
    print()
    print("Per request, in the server's process (callgrind, all threads)")
    print(table(["server", "instructions", "I1 misses", "D1 read misses", "D1 write misses",
                 "instructions vs bare", "misses vs bare"], rows, "<>>>>>>"))
    print(wrap(
        "I1/D1: first-level instruction and data cache, as callgrind simulates them for this "
        "machine. The bare server is admin_http.py's (trio + h11, a fixed answer). "
        f"{CONNECTIONS} keep-alive connections, {count:,} requests each server after 400 of "
        "warm-up."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
