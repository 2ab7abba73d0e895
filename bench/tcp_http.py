#!/usr/bin/env python3
"""Benchmark: the check API over TCP with a bearer token, next to the unix socket.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/tcp_http.py            # full run (about 2.5 minutes)
    .venv/bin/python bench/tcp_http.py --quick    # smoke run (under 20 s)

One sluiced (the example policy, ``[http] listen`` on 127.0.0.1 and a tokens
file holding one read token) answers ``GET /api/check/v1?queue=`` from the
same client (``benchlib.http_load``: raw sockets, one separate process, N
keep-alive connections, one outstanding request each) with the same request
bytes, ``Authorization: Bearer <token>`` included, on its admin unix socket
and on TCP; the unix socket ignores the header, TCP hashes the token and
compares it with the file's digest on every request (DESIGN.md section 4b).
Beside them, the bare trio + h11 server of ``admin_http.py`` on a unix socket
and on TCP, so the cost of TCP itself is told apart from sluice's (the
authentication), and the canned server (no HTTP parsing) on TCP as the
client's ceiling. Rounds are interleaved, each figure the best round.
DESIGN.md sets no TCP target; the unix socket's (at least 70% of bare) is
shown against the bare server on TCP for information.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import shutil
import sys
from pathlib import Path

from admin_http import measure
from benchlib import (
    ROOT, Best, ClientPool, CpuShare, Http, Scratch, Sluiced, header, ms, request_bytes,
    spawn_server, stop_servers, table, verdict, wrap,
)
from postfix import free_port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, short runs: a smoke run")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    args = ap.parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    seconds, warmup = (1.0, 0.3) if quick else (2.5, 0.5)
    conn_counts = (8,) if quick else (1, 8, 32)

    share = CpuShare()
    header("tcp_http.py", quick, f"{rounds} interleaved rounds, best round kept")
    scratch = Scratch("tcp")
    token = "sluice_bench_" + secrets.token_hex(16)
    digest = hashlib.sha256(token.encode()).hexdigest()
    port, bare_port, canned_port = free_port(), free_port(), free_port()
    daemon = Sluiced(scratch.sub("sluiced"), http_listen=f"127.0.0.1:{port}", tokens=(
        f'[[token]]\nname = "bench"\nsha256 = "{digest}"\nrole = "read"\n'))
    for f in sorted((ROOT / "etc" / "policy.d").glob("*.toml")):
        shutil.copy(f, daemon.policy / f.name)
    servers = []
    pool = None
    try:
        daemon.start()
        script = str(Path(__file__).resolve().parent / "admin_http.py")
        bare_unix = scratch.path / "bare.sock"
        bare_u = spawn_server([script, "--serve-bare", f"unix:{bare_unix}"], str(bare_unix),
                              scratch.path / "bare-unix.log")
        bare_t = spawn_server([script, "--serve-bare", f"tcp:127.0.0.1:{bare_port}"],
                              ("127.0.0.1", bare_port), scratch.path / "bare-tcp.log")
        canned = spawn_server([script, "--serve-canned", f"tcp:127.0.0.1:{canned_port}"],
                              ("127.0.0.1", canned_port), scratch.path / "canned.log")
        servers += [bare_u, bare_t, canned]
        pool = ClientPool(1)

        auth = (("Authorization", f"Bearer {token}"),)
        target = "/api/check/v1?queue=newsletter:acme@bench.example"
        req = request_bytes("GET", target, headers=auth)
        tcp = ("127.0.0.1", port)
        # sanity: the token is needed and accepted on TCP; the unix socket answers the same
        assert Http(tcp).request("GET", target)[0] == 401
        st_tcp, body_tcp = Http(tcp, auth).request("GET", target)
        st_unix, body_unix = Http(daemon.admin, auth).request("GET", target)
        assert st_tcp == st_unix == 200, (body_tcp, body_unix)

        kinds = [
            ("sluice", "unix", str(daemon.admin), daemon.pid),
            ("sluice", "tcp + token", tcp, daemon.pid),
            ("bare h11", "unix", str(bare_unix), bare_u.pid),
            ("bare h11", "tcp", ("127.0.0.1", bare_port), bare_t.pid),
        ]
        results = {(name, sock, c): Best() for name, sock, *_ in kinds for c in conn_counts}
        ceiling = {c: Best() for c in conn_counts}
        for r in range(rounds):
            for c in conn_counts:
                for name, sock, address, pid in kinds:
                    results[name, sock, c].add(measure(pool, address, [req], c, seconds, warmup,
                                                       pid))
                ceiling[c].add(measure(pool, ("127.0.0.1", canned_port), [req], c, seconds,
                                       warmup, canned.pid))

        print()
        print("Check requests per second, same daemon and same client, unix socket vs TCP with "
              "a bearer token")
        rows = []
        for c in conn_counts:
            su, st = results["sluice", "unix", c], results["sluice", "tcp + token", c]
            bu, bt = results["bare h11", "unix", c], results["bare h11", "tcp", c]
            for (name, sock), best, ref, note in (
                (("sluice", "unix"), su, None, ""),
                (("sluice", "tcp + token"), st, su, "vs sluice unix"),
                (("bare h11", "unix"), bu, None, ""),
                (("bare h11", "tcp"), bt, bu, "vs bare unix"),
            ):
                b = best.best
                ratio = f"{best.rps / ref.rps:.0%} {note}" if ref is not None else ""
                info = ""
                if (name, sock) == ("sluice", "tcp + token"):
                    info = f"{st.rps / bt.rps:.0%} of bare tcp (>= 70%: {verdict(st.rps >= 0.7 * bt.rps)})"
                rows.append([str(c), name, sock, f"{best.rps:,.0f}/s", best.spread(),
                             f"{b['server_us']:.0f} µs", ms(b["p50"], 2), ms(b["p99"], 2),
                             f"{b['client_cpu']:.0%}", ratio, info])
            cb = ceiling[c].best
            rows.append([str(c), "(canned: client ceiling)", "tcp", f"{ceiling[c].rps:,.0f}/s",
                         ceiling[c].spread(), f"{cb['server_us']:.0f} µs", ms(cb["p50"], 2),
                         ms(cb["p99"], 2), f"{cb['client_cpu']:.0%}", "", ""])
        print(table(["conns", "server", "socket", "best", "rounds", "server CPU/req", "p50",
                     "p99", "client CPU", "ratio", "info (no TCP target in DESIGN)"],
                    rows, "><<>>>>>><<"))
        print(wrap(
            f"Every request carries `Authorization: Bearer <token>` (a read token; 401 without "
            f"it on TCP, checked). TCP is loopback with TCP_NODELAY on the client; no TLS "
            f"(a loopback listener needs none). server CPU/req: the server process's CPU per "
            f"answered request. Each run {seconds:g} s after {warmup:g} s of warm-up."))
        print()
        print(share.line())
    finally:
        if pool is not None:
            pool.close()
        stop_servers(servers)
        daemon.close()
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
