#!/usr/bin/env python3
"""Load for a Postfix policy service, as smtpd gives it: RCPT-state requests.

    policy_load.py --target unix:/run/sluice/policy.sock [--conns 8] [--seconds 5]
    policy_load.py --target inet:127.0.0.1:10045 --domains 1000 --json

Each of ``--conns`` persistent connections sends one request at a time, back
to back (smtpd never has two in flight on one connection; ``--pause MS``
makes each wait after an answer, as an smtpd busy with its mail does), with
every attribute smtpd 3.x sends; the recipient domain cycles over d0.example ..
d{N-1}.example. Prints requests/s, latency percentiles and how many answers
began with each action (DUNNO, DEFER_IF_PERMIT, HOLD, ...); ``--json`` prints
one JSON object. ``--procs P`` spreads the connections over P processes (on 2
cores the generator itself can be what limits a fast server). A connection
that closes, or an answer that does not start with ``action=``, is an error,
and the exit status is then 1. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import time
from collections import Counter


def request(i: int, domains: int) -> bytes:
    """Request ``i``: what smtpd sends at RCPT, in smtpd's attribute order."""
    d = i % domains
    tenant = f"tenant{d % 97}"
    attributes = [
        ("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("protocol_name", "ESMTP"),
        ("client_address", "127.0.0.1"), ("client_name", "localhost"),
        ("reverse_client_name", "localhost"), ("helo_name", "client.example"),
        ("sender", f"news@{tenant}.example"), ("recipient", f"user{i}@d{d}.example"),
        ("recipient_count", "0"), ("queue_id", ""), ("instance", f"{i:x}.{d:x}.0"),
        ("size", "12345"), ("etrn_domain", ""), ("stress", ""), ("sasl_method", ""),
        ("sasl_username", tenant), ("sasl_sender", ""), ("ccert_subject", ""),
        ("ccert_issuer", ""), ("ccert_fingerprint", ""), ("ccert_pubkey_fingerprint", ""),
        ("encryption_protocol", ""), ("encryption_cipher", ""), ("encryption_keysize", "0"),
        ("server_address", "127.0.0.1"), ("server_port", "25"), ("policy_context", ""),
        ("compatibility_level", "3.6"), ("mail_version", "3.7.11"),
    ]
    return "".join(f"{name}={value}\n" for name, value in attributes).encode() + b"\n"


async def connect(target: str):
    if target.startswith("unix:"):
        # a blocking connect waits while the listen queue is full
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await asyncio.to_thread(sock.connect, target[len("unix:"):])
        sock.setblocking(False)
        return await asyncio.open_unix_connection(sock=sock)
    host, port = target.removeprefix("inet:").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.actions: Counter = Counter()
        self.errors: list[str] = []


async def one_connection(target, requests, measure_from, until, tally: Tally, first: int, pause: float) -> None:
    try:
        reader, writer = await connect(target)
    except OSError as exc:
        tally.errors.append(f"connect: {exc}")
        return
    clock = time.perf_counter
    i = first
    try:
        while (sent := clock()) < until:
            writer.write(requests[i % len(requests)])
            i += 1
            answer = await reader.readuntil(b"\n\n")
            if not answer.startswith(b"action="):
                tally.errors.append(f"not an action: {answer[:80]!r}")
                return
            if sent >= measure_from:
                tally.latencies.append(clock() - sent)
                tally.actions[answer[7:].split(None, 1)[0].decode(errors="replace")] += 1
            if pause:
                await asyncio.sleep(pause)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def group(
    target: str, conns: int, seconds: float, warmup: float, domains: int, first: int, pause: float = 0.0
) -> Tally:
    requests = [request(i, domains) for i in range(max(domains, 1) * 4)]
    measure_from = time.perf_counter() + warmup
    tally = Tally()
    await asyncio.gather(*(
        one_connection(target, requests, measure_from, measure_from + seconds, tally, (first + c) * 7919, pause)
        for c in range(conns)
    ))
    return tally


def run_group(job: tuple) -> tuple[list[float], dict, list[str]]:
    tally = asyncio.run(group(*job))
    return tally.latencies, dict(tally.actions), tally.errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="unix:/path.sock, inet:HOST:PORT or HOST:PORT")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time, after the warm-up")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--domains", type=int, default=1000, help="distinct recipient domains")
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--pause", type=float, default=0.0, metavar="MS",
                        help="each connection waits this long after an answer, as smtpd between mails")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = parser.parse_args(argv)

    procs = max(1, min(args.procs, args.conns))
    shares = [args.conns // procs + (p < args.conns % procs) for p in range(procs)]
    jobs = [
        (args.target, shares[p], args.seconds, args.warmup, args.domains, sum(shares[:p]), args.pause / 1000)
        for p in range(procs)
    ]
    if procs == 1:
        results = [run_group(jobs[0])]
    else:
        with multiprocessing.Pool(procs) as pool:
            results = pool.map(run_group, jobs)
    latencies = sorted(x for r in results for x in r[0])
    actions: Counter = Counter()
    for r in results:
        actions.update(r[1])
    errors = [e for r in results for e in r[2]]

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    out = {
        "target": args.target, "conns": args.conns, "procs": procs, "domains": args.domains,
        "seconds": args.seconds, "requests": len(latencies), "rps": round(len(latencies) / args.seconds, 1),
        "p50_ms": round(percentile(0.50), 3), "p99_ms": round(percentile(0.99), 3),
        "max_ms": round(percentile(1.0), 3), "actions": dict(actions), "errors": len(errors),
        "first_errors": errors[:3],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['rps']:.0f} req/s over {args.conns} connections ({procs} client processes), "
              f"p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms, max {out['max_ms']:.1f} ms")
        print("actions: " + (", ".join(f"{k} {v}" for k, v in sorted(actions.items())) or "none"))
        if errors:
            print(f"errors: {len(errors)} (first: {errors[0]})")
    return 1 if errors or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
