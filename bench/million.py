#!/usr/bin/env python3
"""Benchmark: 1,000,000 mixed suspensions, in process and in the real daemon.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/million.py            # 1,000,000 suspensions (about 4 minutes, 4 GB)
    .venv/bin/python bench/million.py --quick    # 100,000 (under a minute)

The next scale's figures, beside the targets DESIGN.md section 9 sets at
100,000 (only the decision rate is judged here). The suspensions are
decide.py's mixed shapes (``make_rules``/``to_toml``), split into ten policy
files of 100,000 each, as an operator with that many would keep them.

1. In this process: the ten files read the daemon's way (``parse_policy``
   each, ``combine``, ``Snapshot.build``), its time and this process's RSS
   growth; then ``Snapshot.decide`` decisions per second for query names
   made from the rules (about 20% held), as decide.py measures them: warm
   (20,000 names repeating, the steady state of a delivery engine), every
   name parsed afresh, and 100,000 names each a miss of the parse cache.
   Target: at least 300,000 decisions/s (warm), as at 100,000.
2. The real sluiced (``python -m sluice.daemon.main``) on the ten files: start
   to READY=1, VmRSS after READY, one check over the admin socket; then
   reloads by ``POST /api/admin/reload/v1`` (its round trip; the answer comes
   once the new policy is in force): nothing changed, one of the ten files
   changed (every reason edited), all ten changed; VmRSS after each.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import time
from datetime import datetime, timezone

import decide
from benchlib import CpuShare, Http, Scratch, Sluiced, header, table, verdict, wrap

from sluice.policy import queue_name
from sluice.policy.files import combine, parse_policy
from sluice.policy.snapshot import Snapshot

FILES = 10
TARGET = 300_000  # decisions/s, DESIGN.md section 9 (at 100,000)
POOL, WARM_CALLS, COLD_CALLS = 20_000, 400_000, 60_000  # decide.py's full-run sizes


def texts_of(rules: list[dict], edited: bool = False) -> list[str]:
    """The rules as FILES policy texts; ``edited``: every reason changed."""
    if edited:
        rules = [{**r, "reason": r["reason"] + " (edited)"} for r in rules]
    per = len(rules) // FILES
    return [decide.to_toml(rules[i * per:(i + 1) * per]) for i in range(FILES)]


def self_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def in_process(texts: list[str], names: list[str], now: float) -> list[list[str]]:
    """Part 1: load the files as the daemon does, then decide."""
    rss0 = self_rss_mb()
    t0 = time.perf_counter()
    parsed = [parse_policy(text, f"{i:02d}-bulk.toml") for i, text in enumerate(texts)]
    for p in parsed:
        if not p.ok:
            sys.exit("generated policy refused:\n" + "\n".join(str(x) for x in p.problems[:10]))
    t1 = time.perf_counter()
    snapshot = Snapshot.build(combine(parsed))
    t2 = time.perf_counter()
    del parsed
    gc.freeze()  # as sluiced does: the policy lives on and holds no cycles
    rss1 = self_rss_mb()
    active = snapshot.counts(now)["suspensions"]

    pool = names[:POOL]  # as decide.py: distinct names within the parse cache, cycled
    calls = pool * (WARM_CALLS // POOL)
    warm, misses = min(decide.decide_warm(snapshot, calls, pool, now) for _ in range(2))
    cold = min(decide.decide_cold(snapshot, names[:COLD_CALLS], now) for _ in range(2))
    unique = decide.decide_unique(snapshot, names, now)
    held = sum(not snapshot.decide(n, now).deliver for n in names)
    rate = len(calls) / warm
    rows = [
        ["parse_policy, ten files", f"{t1 - t0:.1f} s", "", ""],
        ["combine + Snapshot.build", f"{t2 - t1:.1f} s", "", ""],
        ["RSS growth of this process", f"{rss1 - rss0:,.0f} MB", "", ""],
        ["decide, warm", f"{rate:,.0f}/s", f">= {TARGET:,}/s", verdict(rate >= TARGET)],
        ["decide, every name parsed afresh", f"{COLD_CALLS / cold:,.0f}/s", "", ""],
        ["decide, every name a parse-cache miss", f"{len(names) / unique:,.0f}/s", "", ""],
    ]
    print(f"\n1. In process: {active:,} active suspensions in {len(texts)} files; "
          f"{len(names):,} query names, {held:,} held")
    print(table(["measure", "figure", "target", "verdict"], rows, "<><<"))
    print(wrap(f"warm: {POOL:,} distinct names cycled to {len(calls):,} calls ({misses} parse-cache "
               f"misses); afresh: {COLD_CALLS:,} names each parsed without the cache; cache miss: "
               f"all {len(names):,} names as strings, more than the parse cache holds. Best of 2."))
    del snapshot
    gc.unfreeze()
    gc.collect()
    queue_name.parse.cache_clear()
    return rows


def in_daemon(scratch: Scratch, texts: list[str], edited: list[str], name: str) -> None:
    """Part 2: the real daemon on the same files."""
    daemon = Sluiced(scratch.sub("sluiced"))
    for i, text in enumerate(texts):
        daemon.write_policy(f"{i:02d}-bulk.toml", text)
    rows = []
    try:
        ready = daemon.start()
        rss, hwm = daemon.rss()
        client = Http(daemon.admin)
        t0 = time.perf_counter()
        status, body = client.request("GET", f"/api/check/v1?queue={name}")
        check = time.perf_counter() - t0
        assert status == 200 and json.loads(body)["deliver"] is False, body[:300]
        counts = json.loads(client.request("GET", "/api/status/v1")[1])["counts"]
        rows.append(["start to READY=1", f"{ready:.1f} s", f"{rss:,.0f} MB", f"{hwm:,.0f} MB"])
        rows.append(["first check after READY", f"{check * 1000:.1f} ms", "", ""])

        def reload(label: str, changed: list[tuple[int, str]]) -> None:
            for i, text in changed:
                daemon.write_policy(f"{i:02d}-bulk.toml", text)
            t0 = time.perf_counter()
            status, body = client.request("POST", "/api/admin/reload/v1")
            seconds = time.perf_counter() - t0
            assert status == 200, body[:300]
            rss, hwm = daemon.rss()
            rows.append([label, f"{seconds:.2f} s", f"{rss:,.0f} MB", f"{hwm:,.0f} MB"])

        reload("reload, nothing changed", [])
        reload("reload, one file of ten changed", [(3, edited[3])])
        reload("reload, all ten changed", list(enumerate(edited)))
        reload("reload, all ten changed back", list(enumerate(texts)))
        client.close()
    finally:
        daemon.close()
    print(f"\n2. The real sluiced: {counts['suspensions']:,} active suspensions in {len(texts)} files "
          "and nothing else")
    print(table(["measure", "time", "VmRSS after", "VmHWM"], rows, "<>>>"))
    print(wrap("reloads are POST /api/admin/reload/v1 round trips right after the files were "
               "replaced (one rename each); the answer comes once the new policy is in force. "
               "VmHWM: the peak RSS so far."))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 suspensions: a smoke run")
    ap.add_argument("--seed", type=int, default=20251203)
    args = ap.parse_args(argv)
    total = 100_000 if args.quick else 1_000_000
    share = CpuShare()
    header("million.py", args.quick, f"{total:,} suspensions in {FILES} files")
    rng = random.Random(args.seed)
    now_dt = datetime.now(timezone.utc).replace(microsecond=0)
    t0 = time.perf_counter()
    rules = decide.make_rules(total, rng, now_dt)
    names = decide.make_queries(rules, 100_000, rng)
    texts = texts_of(rules)
    edited = texts_of(rules, edited=True)
    print(f"   generated in {time.perf_counter() - t0:.0f} s: "
          f"{sum(map(len, texts)) / 1e6:,.0f} MB of TOML")
    del rules
    in_process(texts, names, now_dt.timestamp())
    # a name the policy holds, for the daemon's first check
    probe = Snapshot.build(combine([parse_policy(texts[0], "00-bulk.toml")]))
    held_name = next(n for n in names if not probe.decide(n, now_dt.timestamp()).deliver)
    del probe
    gc.collect()
    scratch = Scratch("million")
    try:
        in_daemon(scratch, texts, edited, held_name)
    finally:
        scratch.close()
    print()
    print(f"   this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    print(share.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
