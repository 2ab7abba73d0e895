#!/usr/bin/env python3
"""Benchmark: kumod's log records through POST /publish_log_v1, with 100 automation rules.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/automation.py            # full run (about 1.5 minutes)
    .venv/bin/python bench/automation.py --quick    # smoke run (about 15 s)
    .venv/bin/python bench/automation.py --profile  # the daemon under cProfile

One sluiced holds 100 ``[[automation]]`` rules (25 recipient domains, 4 rules
each: Gmail-, Yahoo- and Microsoft-style regexes, every action, immediate and
threshold triggers) and is posted batches of 100 log records as kumod writes
them (``tests/parts/kumod_log.py``: every field of ``JsonLogRecord``, about
1.3 KB each) on its admin unix socket, by ``benchlib.http_load`` (raw
sockets, a separate process, N keep-alive connections, one outstanding
request each). The records: 60% TransientFailure, 10% Bounce, 30% Delivery;
recipients over 200 domains, a third of them domains with rules; among the
failures to two "incident" domains half carry the answer a rule matches, so
holds are made and, as the flood goes on, lengthened (records are stamped a
little ahead, so each counts as the moment it is read, as a live stream's
would, and a hold's expiry moves every second), and threshold counts are
written to disk. Every answer is a 2xx or the run says so.

Beside it, in the same rounds:

- the bare JSON server: trio + h11 taking the same bodies, decoding them
  with ``msgspec.json.decode`` and answering the record count (the cost of
  HTTP and JSON alone, with no rules and nothing stored);
- the same daemon's ``POST /api/check/v1`` with batches of 100 queue names
  (names decided per second, the daemon's other batch route).

Targets (DESIGN.md section 10, the issue): at least 20,000 records/s in
batches of 100; a record's hold in force, asked of the check API, within
50 ms of its answer. The second is measured after the load: a record that
fires a new hold (an immediate rule, a new tenant each time) is posted, and
on its answer the check API is asked for that tenant's queue; the time from
the answer to a check answering ``deliver: false`` is the figure (and the
publish's own round trip, a durable write included, is printed beside).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from admin_http import measure, serve_bare
from benchlib import (
    Best, ClientPool, CpuShare, Http, Scratch, Sluiced, header, ms, percentile, print_profile,
    request_bytes, spawn_server, stop_servers, table, verdict, wrap,
)
from kumod_log import body, record

BATCH = 100
TARGET_RPS = 20_000
TARGET_VISIBLE = 0.050

# (regex, action, trigger, response that matches it)
RULE_SHAPES = [
    ("4\\\\.7\\\\.28", '"SuspendTenant"', '{ Threshold = "50/m" }',
     (421, (4, 7, 28), "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail")),
    ("\\\\[TS0[1-4]\\\\]", '["Suspend"]', '{ Threshold = "1000/hr" }',
     (421, (4, 7, 0), "[TS03] All messages from 192.0.2.1 will be permanently deferred")),
    ("421 .*temporarily rate limited", '"SuspendCampaign"', '"Immediate"',
     (421, (4, 7, 1), "temporarily rate limited, try again later")),
    ("5\\\\.7\\\\.1 .*(blocked|spamhaus)", '["SuspendTenant", "Suspend"]', '{ Threshold = "200/5min" }',
     (550, (5, 7, 1), "Service unavailable; client host [192.0.2.1] blocked using spamhaus")),
]
OTHER_ANSWERS = [
    (421, (4, 4, 2), "Connection dropped"),
    (450, (4, 2, 1), "The user you are trying to contact is receiving mail too quickly"),
    (550, (5, 1, 1), "The email account that you tried to reach does not exist"),
    (452, (4, 2, 2), "The email account that you tried to reach is over quota"),
]
RULE_DOMAINS = [f"rules{i}.example" for i in range(25)]
INCIDENT = RULE_DOMAINS[:2]
OTHER_DOMAINS = [f"other{i}.example" for i in range(175)]
TENANTS = [f"tenant{i}" for i in range(20)]
CAMPAIGNS = [f"campaign{i}" for i in range(5)]


def rules_text() -> str:
    tables = []
    for domain in RULE_DOMAINS:
        for regex, action, trigger, _ in RULE_SHAPES:
            tables.append(
                f'[[automation]]\ndomain = "{domain}"\nregex = "{regex}"\naction = {action}\n'
                f'duration = "2h"\ntrigger = {trigger}\n'
            )
    assert len(tables) == 100
    return "\n".join(tables)


def make_records(rng: random.Random, count: int, ahead: float) -> list[dict]:
    out = []
    for _ in range(count):
        kind = rng.choices(["TransientFailure", "Bounce", "Delivery"], [60, 10, 30])[0]
        domain = rng.choice(RULE_DOMAINS) if rng.random() < 1 / 3 else rng.choice(OTHER_DOMAINS)
        if kind == "Delivery":
            code, enhanced, content = 250, (2, 0, 0), "OK ids=8a5475ccbbc611eda12250ebf67f93bd"
        elif domain in INCIDENT and rng.random() < 0.5:
            code, enhanced, content = rng.choice(RULE_SHAPES)[3]
        else:
            code, enhanced, content = rng.choice(OTHER_ANSWERS)
        queue = f"{rng.choice(CAMPAIGNS)}:{rng.choice(TENANTS)}@{domain}"
        out.append(record(kind=kind, recipient=f"user{rng.randrange(10**6)}@{domain}", queue=queue,
                          code=code, enhanced=enhanced, content=content, at=time.time() + ahead))
    return out


def serve_json(address: str) -> None:
    """The bare JSON server: admin_http.py's bare trio + h11 server, each body decoded
    with msgspec and its record count answered."""
    import msgspec

    def count(body: bytes) -> bytes:
        value = msgspec.json.decode(body)
        return b'{"records":%d}\n' % (len(value) if isinstance(value, list) else 1)

    serve_bare(address, answer=count)


def visible_after_answer(daemon: Sluiced, probes: int) -> tuple[list[float], list[float]]:
    """(publish round trips, answer-to-held times) of records that each fire a new hold."""
    publisher, checker = Http(daemon.admin), Http(daemon.admin)
    rtts, visible = [], []
    try:
        for i in range(probes):
            tenant = f"probe{i}"
            queue = f"{tenant}@{RULE_DOMAINS[-1]}"
            one = record(queue=f"x:{queue}", recipient=f"u@{RULE_DOMAINS[-1]}",
                         code=421, enhanced=(4, 7, 1), content="temporarily rate limited")
            t0 = time.perf_counter()
            status, answer = publisher.request("POST", "/publish_log_v1", body(one))
            answered = time.perf_counter()
            assert status == 200 and json.loads(answer)["holds"][0]["change"] == "added", answer
            while True:
                status, decision = checker.request("GET", f"/api/check/v1?queue=x:{queue}")
                if status == 200 and not json.loads(decision)["deliver"]:
                    break
                if time.perf_counter() - answered > 5:
                    raise AssertionError(f"the hold of {queue} is not in force 5 s after its answer")
            visible.append(time.perf_counter() - answered)
            rtts.append(answered - t0)
    finally:
        publisher.close()
        checker.close()
    return rtts, visible


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, short runs: a smoke run")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--profile", action="store_true",
                    help="run sluiced under cProfile (its figures then drop) and print its hot spots")
    ap.add_argument("--serve-json", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_json:
        serve_json(args.serve_json)
        return 0
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    seconds, warmup = (1.5, 0.3) if quick else (4.0, 0.5)
    conn_counts = (4,) if quick else (1, 4, 16)
    probes = 20 if quick else 200

    share = CpuShare()
    header("automation.py", quick, f"{rounds} interleaved rounds, best round kept")
    scratch = Scratch("automation")
    daemon = Sluiced(scratch.sub("sluiced"), profile=scratch.path / "profile" if args.profile else None)
    daemon.write_policy("50-automation.toml", rules_text())
    servers = []
    pool = None
    try:
        daemon.start()
        script = str(Path(__file__).resolve())
        bare_path = scratch.path / "json.sock"
        bare = spawn_server([script, "--serve-json", f"unix:{bare_path}"], str(bare_path),
                            scratch.path / "json.log")
        servers.append(bare)
        pool = ClientPool(1)

        rng = random.Random(19)
        bodies = [body(*make_records(rng, BATCH, ahead=3600), array=True) for _ in range(40)]
        publish = [request_bytes("POST", "/publish_log_v1", b) for b in bodies]
        names = [json.dumps({"queues": [r["queue"] for r in json.loads(b)]}).encode() for b in bodies]
        check = [request_bytes("POST", "/api/check/v1", n) for n in names]
        size = sum(len(b) for b in bodies) / len(bodies)
        # sanity: the records are read, matched and held
        status, answer = Http(daemon.admin).request("POST", "/publish_log_v1", bodies[0])
        assert status == 200, answer
        first = json.loads(answer)
        assert first["records"] == BATCH and first["matched"] > 0, first

        kinds = [
            ("sluice /publish_log_v1", str(daemon.admin), publish, daemon.pid),
            ("bare trio + h11 + msgspec", str(bare_path), publish, bare.pid),
            ("sluice /api/check/v1 (names)", str(daemon.admin), check, daemon.pid),
        ]
        results = {(name, c): Best() for name, *_ in kinds for c in conn_counts}
        for _ in range(rounds):
            for c in conn_counts:
                for name, address, reqs, pid in kinds:
                    results[name, c].add(measure(pool, address, reqs, c, seconds, warmup, pid,
                                                 log=daemon.log if pid == daemon.pid else None))

        print()
        print(f"Records per second through POST /publish_log_v1, batches of {BATCH} kumod records "
              f"({size / 1024:.0f} KiB a body), 100 rules; beside it the bare JSON server and "
              "the daemon's batch check")
        rows = []
        for c in conn_counts:
            ref = results["bare trio + h11 + msgspec", c]
            for name, *_ in kinds:
                best = results[name, c]
                b = best.best
                rate = best.rps * BATCH
                ratio = "" if best is ref else f"{best.rps / ref.rps:.0%} of bare"
                rows.append([str(c), name, f"{rate:,.0f}/s", "/".join(f"{r['rps'] * BATCH / 1000:.1f}k" for r in best.runs),
                             ratio, ms(b["p50"]), ms(b["p99"]), f"{b.get('server_us', 0) / BATCH:.1f} µs",
                             f"{b['client_cpu']:.0%}"])
            rows.append([""] * 9)
        print(table(["conns", "server", "records/s", "rounds", "vs bare", "p50", "p99",
                     "server CPU/record", "client CPU"], rows[:-1], "<<>>>>>>>"))
        best_rate = max(results["sluice /publish_log_v1", c].rps for c in conn_counts) * BATCH

        rtts, visible = visible_after_answer(daemon, probes)
        rtts.sort()
        visible.sort()
        print()
        print(f"A record's hold in force after its answer ({probes} records, each a new hold)")
        print(table(
            ["", "p50", "p99", "max"],
            [["publish round trip (durable write included)", ms(percentile(rtts, 0.5), 2),
              ms(percentile(rtts, 0.99), 2), ms(rtts[-1], 2)],
             ["answer -> check says held", ms(percentile(visible, 0.5), 2),
              ms(percentile(visible, 0.99), 2), ms(visible[-1], 2)]],
            "<>>>",
        ))

        print()
        print("Targets")
        print(table(["target", "sluice", "reference", "verdict"], [
            [f"records/s, batches of {BATCH}, 100 rules", f"{best_rate:,.0f}/s", f">= {TARGET_RPS:,}/s",
             verdict(best_rate >= TARGET_RPS)],
            ["hold in force after the answer (max)", ms(visible[-1], 2), f"<= {ms(TARGET_VISIBLE, 0)}",
             verdict(visible[-1] <= TARGET_VISIBLE)],
        ], "<>>>"))
        status, listed = Http(daemon.admin).request("GET", "/api/admin/suspend/v1")
        holds = json.loads(listed)
        print()
        print(wrap(f"After the run the daemon holds {len(holds)} automated suspensions "
                   f"({sum(1 for h in holds if h['tenant'] is None)} of whole domains); the threshold "
                   f"counts file is {(daemon.state / 'automation-windows.json').stat().st_size:,} bytes."))
    finally:
        if pool is not None:
            pool.close()
        stop_servers(servers)
        daemon.close()
        if args.profile and daemon.profiles:
            print_profile(daemon.profiles[-1], "sluiced, event-loop thread")
        print()
        print(wrap(share.line()))
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
