#!/usr/bin/env python3
"""Benchmark: the Postfix policy protocol next to a bare echo server and postfwd; batch checks.

Run from the repository root with the project's virtualenv (postfwd needs
root and Debian's ``postfwd`` package; without it that row is skipped):

    .venv/bin/python bench/postfix.py            # full run (about 1.5 minutes)
    .venv/bin/python bench/postfix.py --quick    # smoke run (under 20 s)

What it measures (DESIGN.md section 9), everything in one run, in
interleaved rounds (each server once per round), each figure the best round:

1. Postfix policy requests per second and latency with 8 persistent
   connections (one outstanding request each, as smtpd does), driven by
   ``tests/parts/policy_load.py`` (one client process, RCPT-state
   requests of 26 attributes, recipient domains d0.example .. d999.example,
   ``sasl_username`` tenant97 style), against:
     sluice      the real sluiced, on its policy unix socket and on its
                 loopback TCP listener (``[postfix] listen``);
     echo        a bare trio server written below that answers
                 ``action=DUNNO`` to every request (every blank line), on a
                 unix socket and on TCP: the cost of trio and the sockets alone;
     postfwd     postfwd2 (Debian), started by ``tests/parts/postfwd_server.py``
                 on TCP with its cache off (every request walks the rules), with
                 100 rules and, in the full run, 1,000 rules. Instances share
                 postfwd's cache port, so one runs at a time: each is started
                 for its run, checked to apply its rules, and stopped.
   The rules are the same everywhere: one DEFER_IF_PERMIT per held domain,
   the 100 domains d0, d10, ... d990.example that the load asks about (10% of
   requests are held), plus held0 .. held899.example in the 1,000-rule set.
   sluice holds the 1,000 (its lookups do not depend on the count); the
   answers are checked to be the same mix everywhere. Beside each: the
   server's CPU time per request (sluice and echo from /proc; postfwd summed
   over its processes) and the client's CPU use, so a client-bound figure
   shows as such.
   1b. The same connections on the unix sockets paced as smtpd paces them:
   each waits ``PAUSE_MS`` after an answer, so the server is woken afresh
   for nearly every request; the server's CPU per request (no target).
2. Batch checks: ``POST /api/check/v1`` with 10,000 queue names over the
   admin socket, against a daemon holding 100,000 suspensions of decide.py's
   mixed shapes (quick: 10,000), as decisions per second; beside it the same
   decisions made in this process with ``Snapshot.decide(parse(name))`` on
   the same policy (the work without HTTP).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchlib import (
    PARTS, CpuShare, Http, Scratch, Sluiced, header, ms, print_profile, proc_cpu,
    proc_tree_cpu, request_bytes, stop_servers, table, verdict, wrap,
)
import postfwd_server  # tests/parts, put on sys.path by benchlib

LOAD = PARTS / "policy_load.py"
PAUSE_MS = 6.0  # the paced runs: about an smtpd's time between two mails on this machine
DOMAINS = 1000  # the load's recipient domains d0 .. d999.example
HELD = [f"d{i}.example" for i in range(0, DOMAINS, 10)]  # 10% of requests


def rule_domains(count: int) -> list[str]:
    return HELD + [f"held{j}.example" for j in range(count - len(HELD))]


def sluice_rules(domains: list[str]) -> str:
    # The same answer text as postfwd's rules: "<domain> on hold".
    return "".join(f'[[suspension]]\ndomain = "{d}"\nreason = "{d} on hold"\n\n' for d in domains)


# -- the bare echo server (its own process) ------------------------------------


def serve_echo(address: str) -> None:
    """Answer ``action=DUNNO`` to every request (an empty line ends one), many per connection."""
    import trio

    answer = b"action=DUNNO\n\n"

    async def handle(stream) -> None:
        tail = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                data = tail + data
                n = data.count(b"\n\n")
                if n:
                    tail = data[data.rfind(b"\n\n") + 2:]
                    await stream.send_all(answer * n)
                else:
                    tail = data
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def main() -> None:
        if address.startswith("unix:"):
            path = address[5:]
            if os.path.exists(path):
                os.unlink(path)
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await sock.bind(path)
            sock.listen(512)
            listeners = [trio.SocketListener(sock)]
        else:
            host, port = address[4:].rsplit(":", 1)
            listeners = await trio.open_tcp_listeners(int(port), host=host)
        await trio.serve_listeners(handle, listeners)

    trio.run(main)


# -- helpers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Postfwd(postfwd_server.Postfwd):
    """postfwd2 holding ``domains``, checked to apply its rules on 8 connections at once."""

    def __init__(self, base: Path, domains: list[str], port: int) -> None:
        super().__init__(base, port)
        base.parent.chmod(0o755)  # postfwd runs as nobody, which must reach its rules
        self.start(domains)
        deadline = time.monotonic() + 20
        while True:
            socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
            for s in socks:
                s.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\n"
                          b"recipient=probe@" + HELD[1].encode() + b"\n\n")
            answers = [s.recv(512) for s in socks]
            for s in socks:
                s.close()
            if all(a.startswith(b"action=DEFER_IF_PERMIT") for a in answers):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postfwd does not apply its rules: {answers[0]!r}")
            time.sleep(0.2)

    def cpu(self) -> float:
        return proc_tree_cpu(self.pid())


def run_load(target: str, conns: int, seconds: float, warmup: float, cpu_of, pause_ms: float = 0) -> dict:
    """One run of policy_load.py; adds the server's and the client's CPU use."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = cpu_of()
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(LOAD), "--target", target, "--conns", str(conns), "--seconds",
         str(seconds), "--warmup", str(warmup), "--domains", str(DOMAINS), "--pause", str(pause_ms),
         "--json"],
        capture_output=True, text=True, timeout=seconds + warmup + 60,
    )
    wall = time.perf_counter() - t0
    server = cpu_of() - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"policy_load failed on {target}: {done.stdout} {done.stderr}") from None
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    total = out["requests"] * (seconds + warmup) / seconds  # requests answered in the whole run
    out["server_us"] = server / max(1.0, total) * 1e6
    out["server_share"] = server / wall
    out["client_share"] = client / wall
    if out["errors"]:
        print(f"   !! {target}: {out['errors']} errors, first {out['first_errors']}")
    return out


class Runs:
    def __init__(self) -> None:
        self.runs: list[dict] = []

    def add(self, r: dict) -> None:
        self.runs.append(r)

    @property
    def best(self) -> dict:
        return max(self.runs, key=lambda r: r["rps"])

    def spread(self) -> str:
        return "/".join(f"{r['rps'] / 1000:.1f}k" for r in self.runs)


def held_share(actions: dict) -> str:
    total = sum(actions.values())
    return f"{actions.get('DEFER_IF_PERMIT', 0) / total:.1%}" if total else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, short runs: a smoke run")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--profile", action="store_true",
                    help="run sluiced under cProfile (its figures then drop) and print its hot "
                    "spots (the event-loop thread only)")
    ap.add_argument("--conns", type=int, default=8, help="persistent connections (default 8)")
    ap.add_argument("--serve-echo", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0

    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    seconds, warmup = (1.0, 0.3) if quick else (3.0, 0.5)
    rule_counts = (100,) if quick else (100, 1000)
    batch_rules = 10_000 if quick else 100_000
    batch_repeats = 3 if quick else 10

    share = CpuShare()
    header("postfix.py", quick, f"{rounds} interleaved rounds, best round kept, "
           f"{args.conns} connections")
    scratch = Scratch("postfix")
    tcp_port, echo_port = free_port(), free_port()
    profile = scratch.path / "sluiced.prof" if args.profile else None
    daemon = Sluiced(scratch.sub("sluiced"), postfix_socket=True,
                     postfix_listen=f"127.0.0.1:{tcp_port}", profile=profile)
    daemon.write_policy("10-held.toml", sluice_rules(rule_domains(1000)))

    # the batch workload: decide.py's mixed shapes, loaded by the daemon and by this process
    import decide
    from sluice.policy import queue_name
    from sluice.policy.files import combine, parse_policy
    from sluice.policy.snapshot import Snapshot

    rng = random.Random(20251123)
    now_dt = datetime.now(timezone.utc).replace(microsecond=0)
    rules = decide.make_rules(batch_rules, rng, now_dt)
    text = decide.to_toml(rules)
    daemon.write_policy("20-mixed.toml", text)
    names = decide.make_queries(rules, 10_000, rng)

    procs = []
    postfwds: dict[int, Postfwd] = {}
    skipped = ""
    try:
        daemon.start()
        script = str(Path(__file__).resolve())
        echo_unix = scratch.path / "echo.sock"
        for address in (f"unix:{echo_unix}", f"tcp:127.0.0.1:{echo_port}"):
            procs.append(subprocess.Popen([sys.executable, script, "--serve-echo", address],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_port(echo_port)
        while not echo_unix.exists():
            time.sleep(0.02)
        echo_pid_unix, echo_pid_tcp = procs[0].pid, procs[1].pid
        targets = [
            ("sluice", "unix", f"unix:{daemon.postfix}", daemon.cpu),
            ("echo", "unix", f"unix:{echo_unix}", lambda: proc_cpu(echo_pid_unix)),
            ("sluice", "tcp", f"inet:127.0.0.1:{tcp_port}", daemon.cpu),
            ("echo", "tcp", f"inet:127.0.0.1:{echo_port}", lambda: proc_cpu(echo_pid_tcp)),
        ]
        results = {(name, kind): Runs() for name, kind, *_ in targets}
        paced = {name: Runs() for name, kind, *_ in targets if kind == "unix"}
        for count in rule_counts:
            results[f"postfwd {count} rules", "tcp"] = Runs()
        for _ in range(rounds):
            for name, kind, target, cpu_of in targets:
                results[name, kind].add(run_load(target, args.conns, seconds, warmup, cpu_of))
            for name, kind, target, cpu_of in targets:
                if kind == "unix":
                    paced[name].add(run_load(target, args.conns, seconds, warmup, cpu_of, PAUSE_MS))
            # postfwd instances share a cache port: one at a time, started for each run
            for count in rule_counts if not skipped else ():
                try:
                    pfw = Postfwd(scratch.path / f"postfwd{count}", rule_domains(count),
                                  free_port())
                except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
                    skipped = f"postfwd not run: {exc}"
                    break
                postfwds[count] = pfw
                try:
                    results[f"postfwd {count} rules", "tcp"].add(
                        run_load(f"inet:127.0.0.1:{pfw.port}", args.conns, seconds, warmup,
                                 pfw.cpu))
                finally:
                    pfw.stop()
                    del postfwds[count]
        postfwd_counts = [c for c in rule_counts if results[f"postfwd {c} rules", "tcp"].runs]

        def row(name, kind, ref=None, target="", ok=None):
            runs = results[name, kind]
            b = runs.best
            ratio = "" if ref is None else f"{b['rps'] / results[ref].best['rps']:.0%}"
            return [kind, name, f"{b['rps']:,.0f}/s", runs.spread(), ms(b["p50_ms"] / 1000, 2),
                    ms(b["p99_ms"] / 1000, 2), f"{b['server_us']:.0f} µs",
                    f"{b['server_share']:.0%}", f"{b['client_share']:.0%}",
                    held_share(b["actions"]), ratio, target,
                    "" if ok is None else verdict(ok)]

        def rps(name, kind):
            return results[name, kind].best["rps"]

        rows = [
            row("sluice", "unix", ("echo", "unix"), ">= 60% of echo",
                rps("sluice", "unix") >= 0.6 * rps("echo", "unix")),
            row("echo", "unix"),
            row("sluice", "tcp", ("echo", "tcp"), ">= 60% of echo",
                rps("sluice", "tcp") >= 0.6 * rps("echo", "tcp")),
            row("echo", "tcp"),
        ]
        for count in postfwd_counts:
            name = f"postfwd {count} rules"
            rows.append(row(name, "tcp", ("sluice", "tcp"), "slower than sluice",
                            rps(name, "tcp") < rps("sluice", "tcp")))
        print()
        print(f"1. Postfix policy protocol, {args.conns} persistent connections, "
              f"policy_load.py (1 client process)")
        print(table(["socket", "server", "best", "rounds", "p50", "p99", "server CPU/req",
                     "server CPU", "client CPU", "held", "ratio", "target", "verdict"],
                    rows, "<<>>>>>>>>><<"))
        print(wrap(
            f"ratio: sluice vs echo on the same kind of socket; postfwd vs sluice on TCP. "
            f"server CPU/req: CPU time of the server per answered request; server CPU and "
            f"client CPU: share of one CPU each used during the run (2 CPUs in all). Each run "
            f"{seconds:g} s after {warmup:g} s of warm-up. sluice remembers DUNNO answers for "
            f"all of a service's connections within a snapshot (the load repeats 1,000 domains x 4 recipients), "
            f"postfwd's request cache is off (tests/parts/postfwd_server.py). held: share of DEFER_IF_PERMIT "
            f"answers (10% expected)." + (f" {skipped}" if skipped else "")))

        print()
        print(f"1b. Paced as smtpd: {args.conns} connections on the unix sockets, each waiting "
              f"{PAUSE_MS:g} ms after an answer (no target: where a real Postfix's time goes)")
        rows = []
        for name, runs in paced.items():
            cpu = sorted(r["server_us"] for r in runs.runs)
            rows.append([name, f"{statistics.median(r['rps'] for r in runs.runs):,.0f}/s",
                         f"{statistics.median(cpu):.0f} µs", "/".join(f"{c:.0f}" for c in cpu),
                         ms(runs.best["p50_ms"] / 1000, 2)])
        print(table(["server", "requests", "server CPU/req (median)", "rounds (µs)", "p50"], rows, "<>>><"))
        print(wrap(
            "smtpd keeps one request in flight per connection and works on its mail between "
            "requests, so a policy service is woken afresh for nearly every request: what a "
            "request costs the service here, not at full load, is what it takes from Postfix "
            "on shared CPUs (postfix_e2e.py measures that through a real Postfix)."))

        # -- 2: batch checks ----------------------------------------------------
        body = json.dumps({"queues": names}).encode()
        req = request_bytes("POST", "/api/check/v1", body)
        client = Http(daemon.admin)
        status, answer = client.send_raw(req)
        assert status == 200, answer[:300]
        answered = json.loads(answer)["results"]
        assert len(answered) == len(names)
        held_http = sum(1 for r in answered if not r.get("deliver", True))

        snap = Snapshot.build(combine([parse_policy(text, "20-mixed.toml"),
                                       parse_policy(sluice_rules(rule_domains(1000)),
                                                    "10-held.toml")]))
        parse = queue_name.parse
        import msgspec
        encoder = msgspec.json.Encoder()
        http_best = inproc_best = encode_best = float("inf")
        for _ in range(batch_repeats):  # interleaved: HTTP, in-process, HTTP, ...
            t0 = time.perf_counter()
            client.send_raw(req)
            http_best = min(http_best, time.perf_counter() - t0)
            now = time.time()
            t0 = time.perf_counter()
            decisions = [snap.decide(parse(n), now) for n in names]
            inproc_best = min(inproc_best, time.perf_counter() - t0)
            t0 = time.perf_counter()
            encoder.encode({"results": decisions, "generation": 1})
            encode_best = min(encode_best, time.perf_counter() - t0)
        client.close()
        held_local = sum(1 for d in decisions if not d.deliver)
        n = len(names)
        print()
        print(f"2. Batch checks: POST /api/check/v1 with {n:,} names, daemon holding "
              f"{batch_rules:,} mixed suspensions (+1,000 domain rules)")
        rows = [
            ["HTTP batch (admin socket, round trip)", f"{n / http_best:,.0f}/s", ms(http_best),
             f"{n / inproc_best:,.0f}/s in-process", f"{inproc_best / http_best:.0%}",
             ">= 200,000/s", verdict(n / http_best >= 200_000)],
            ["in-process decide(parse(name))", f"{n / inproc_best:,.0f}/s", ms(inproc_best),
             "", "", "", ""],
            ["in-process msgspec encode of the answer", "", ms(encode_best), "", "", "", ""],
        ]
        print(table(["measure", "decisions/s", "best time", "reference", "ratio", "target",
                     "verdict"], rows, "<>>><<<"))
        print(wrap(
            f"best of {batch_repeats}, interleaved; {len(body) / 1e3:.0f} kB request, "
            f"{len(answer) / 1e3:.0f} kB answer; held: {held_http:,} over HTTP, {held_local:,} "
            f"in-process (must be equal). The batch handler runs on the event loop, so "
            f"every other request on the daemon waits for the whole batch (see the best "
            f"time)."))
        print()
        print(share.line())
        if profile is not None:
            daemon.stop()
            print_profile(daemon.profiles[0], "the Postfix runs and the batch checks")
    finally:
        for pfw in postfwds.values():
            pfw.stop()
        stop_servers(procs)
        daemon.close()
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
