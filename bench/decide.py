#!/usr/bin/env python3
"""Benchmark: in-process decisions and policy loading at 10 to 100,000 suspensions.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/decide.py            # full run (about 2 minutes)
    .venv/bin/python bench/decide.py --quick    # smoke run (a few seconds)

What it measures (DESIGN.md section 9), in one thread (``--pin CPU`` pins it
to one CPU), every figure the best of 3, the sizes measured in interleaved
rounds so that a burst of load elsewhere on the machine hurts one round
rather than one size. A warm decision is a few dictionary probes, so its time
is mostly memory: where the interpreter put the names, the memo and the
decisions. That layout changes from one process to the next and moves the
figure by up to 2x at any size, so decide is measured in 5 processes (this
one and 4 fresh ones, ``--trials``): each figure is the best of all, and the
slowdown at the largest size is the median over the processes of the ratio
measured within each. The query names are strings of their own, as a
request's are, made for every size before any policy is loaded, so that they
lie alike in memory at every size.

1. ``Snapshot.decide`` decisions per second with 10, 10,000 and 100,000
   active suspensions of mixed shapes, for pre-generated query names of which
   about 20% are held:
     warm        names repeat, so ``queue_name.parse`` answers from its
                 lru_cache (the steady state of a delivery engine);
     cold parse  the same names parsed on every call, bypassing the cache
                 through ``parse.__wrapped__`` and handing decide a QueueName;
     cache miss  names that are all distinct and more numerous than the
                 cache (65,536), passed as strings: every call misses and evicts.
2. a naive linear scan over the same suspensions (parse, then
   ``[s for s in suspensions if s.is_active(now) and s.matches(q)]``).
3. the section 9 targets at the largest size, with PASS/FAIL.
4. loading a 100,000-suspension policy file: ``tomllib.loads`` and
   ``tomli.loads`` on their own, then ``parse_policy`` + ``combine`` +
   ``Snapshot.build`` (the daemon's path) once at start and then as a reload
   (the previous snapshot still in memory), and ``Snapshot.build`` alone.

Suspensions are built the realistic way: TOML text is generated and read with
``parse_policy``. Before timing, decide and the naive scan are checked to
agree (same suspension ids) on every scanned query; a disagreement exits 1.
Performance targets that are missed do not change the exit status. The last
line says how much of the run's wall time the processes had a CPU for; well
under 100% means other load on the machine disturbed the figures.

``--quick`` runs sizes 10, 1,000 and 10,000, loads a 10,000-suspension file,
and measures once in one process: a smoke run for tests, not the contract's
figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import textwrap
import time
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import tomli

from sluice.policy import queue_name
from sluice.policy.files import combine, parse_policy
from sluice.policy.snapshot import Snapshot

# -- workload ---------------------------------------------------------------

SHAPES = (
    "domain",
    "tenant",
    "campaign+tenant",
    "queue_names",
    "campaign",
    "tenant+domain",
    "campaign+tenant+domain",
)
SHAPE_WEIGHTS = (30, 25, 25, 14, 2, 2, 2)  # percent
HIT_RATE = 0.20
# Query forms for names that match nothing: plain domain, tenant@domain,
# campaign:tenant@domain.
MISS_FORMS = (0.40, 0.35, 0.25)

DOMAIN_WORDS = ("mail", "mx", "smtp", "inbound", "post", "relay", "news", "shop")
TLDS = ("com", "net", "org", "de", "co.uk", "io", "fr", "example")
TENANT_WORDS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne")
CAMPAIGN_WORDS = ("newsletter", "spring-sale", "onboarding", "digest", "promo")
REASONS = (
    "421 4.7.28 rate limited; backing off",
    "550 5.7.1 blocked by recipient; ticket OPS-{i}",
    "customer asked to hold this campaign",
    "warming up new IPs",
    'deferred: "too many connections" from {i}',
)


def _domain(i: int, j: int | None = None) -> str:
    base = f"{DOMAIN_WORDS[i % len(DOMAIN_WORDS)]}{i}"
    if j is not None:
        base += f"-{j}"
    return f"{base}.{TLDS[(i // 3) % len(TLDS)]}"


def _tenant(i: int, j: int | None = None) -> str:
    return f"{TENANT_WORDS[i % len(TENANT_WORDS)]}{i}" + ("" if j is None else f"-{j}")


def _campaign(i: int, j: int | None = None) -> str:
    return f"{CAMPAIGN_WORDS[i % len(CAMPAIGN_WORDS)]}-{i}" + ("" if j is None else f"-{j}")


# Components that no rule holds: queries built from them never match.
def _miss_domain(j: int) -> str:
    return f"rcpt{j}.example.org"


def _miss_tenant(j: int) -> str:
    return f"sender{j}"


def _miss_campaign(j: int) -> str:
    return f"batch{j}"


def make_rules(n: int, rng: random.Random, now: datetime) -> list[dict]:
    """``n`` suspensions of mixed shapes, criteria all distinct (ids derive from them)."""
    shapes = list(SHAPES[: min(n, len(SHAPES))])  # every shape present, even at 10
    shapes += rng.choices(SHAPES, SHAPE_WEIGHTS, k=n - len(shapes))
    rng.shuffle(shapes)
    rules = []
    for i, shape in enumerate(shapes):
        r: dict = {"shape": shape}
        if shape == "queue_names":
            names = []
            for j in range(rng.randint(1, 3)):
                form = rng.randrange(3)
                d = _domain(i, j)
                names.append(
                    d if form == 0
                    else f"{_tenant(i, j)}@{d}" if form == 1
                    else f"{_campaign(i, j)}:{_tenant(i, j)}@{d}"
                )
            r["queue_names"] = names
        else:
            if "campaign" in shape:
                r["campaign"] = _campaign(i)
            if "tenant" in shape:
                r["tenant"] = _tenant(i)
            if "domain" in shape:
                r["domain"] = _domain(i)
        r["reason"] = REASONS[i % len(REASONS)].format(i=i)
        roll = rng.random()
        if roll < 0.25:  # a TOML offset date-time in the future
            r["expires"] = now + timedelta(hours=rng.randint(1, 24 * 365))
        elif roll < 0.30:  # an RFC 3339 string, also accepted
            r["expires_str"] = (now + timedelta(minutes=rng.randint(10, 100_000))).isoformat(
                timespec="seconds"
            )
        rules.append(r)
    return rules


def _toml_datetime(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_toml(rules: list[dict]) -> str:
    out = ["# generated by bench/decide.py\n"]
    q = json.dumps  # a JSON string of ASCII text is a TOML basic string
    for r in rules:
        out.append("\n[[suspension]]\n")
        for key in ("campaign", "tenant", "domain"):
            if key in r:
                out.append(f"{key} = {q(r[key])}\n")
        if "queue_names" in r:
            out.append(f"queue_names = [{', '.join(q(n) for n in r['queue_names'])}]\n")
        out.append(f"reason = {q(r['reason'])}\n")
        if "expires" in r:
            out.append(f"expires = {_toml_datetime(r['expires'])}\n")
        elif "expires_str" in r:
            out.append(f"expires = {q(r['expires_str'])}\n")
    return "".join(out)


def _maybe_shout(domain: str, rng: random.Random) -> str:
    # A few queries spell the domain in capitals; it normalises to the rule's.
    return domain.upper() if rng.random() < 0.05 else domain


def _hit_query(r: dict, rng: random.Random, j: int) -> str:
    shape = r["shape"]
    md, mt, mc = _miss_domain(j), _miss_tenant(j), _miss_campaign(j)
    if shape == "domain":
        d = _maybe_shout(r["domain"], rng)
        form = rng.randrange(3)
        return d if form == 0 else f"{mt}@{d}" if form == 1 else f"{mc}:{mt}@{d}"
    if shape == "tenant":
        return f"{r['tenant']}@{md}" if rng.random() < 0.6 else f"{mc}:{r['tenant']}@{md}"
    if shape == "campaign+tenant":
        return f"{r['campaign']}:{r['tenant']}@{md}"
    if shape == "queue_names":
        return rng.choice(r["queue_names"])
    if shape == "campaign":
        return f"{r['campaign']}:{mt}@{md}"
    if shape == "tenant+domain":
        d = _maybe_shout(r["domain"], rng)
        return f"{r['tenant']}@{d}" if rng.random() < 0.6 else f"{mc}:{r['tenant']}@{d}"
    return f"{r['campaign']}:{r['tenant']}@{r['domain']}"


def _miss_query(rules: list[dict], rng: random.Random, j: int) -> str:
    md, mt, mc = _miss_domain(j), _miss_tenant(j), _miss_campaign(j)
    if rng.random() < 0.3:
        # A near miss: a rule's component in a combination the rule does not cover.
        r = rng.choice(rules)
        if "campaign" in r and "tenant" in r:  # its campaign with another tenant, or
            if "domain" in r or rng.random() < 0.5:  # its tenant without the campaign
                return f"{r['campaign']}:{mt}@{md}"
            return f"{r['tenant']}@{md}"
        if r["shape"] == "tenant+domain":
            return f"{r['tenant']}@{md}"
    roll = rng.random()
    if roll < MISS_FORMS[0]:
        return md
    if roll < MISS_FORMS[0] + MISS_FORMS[1]:
        return f"{mt}@{md}"
    return f"{mc}:{mt}@{md}"


def make_queries(rules: list[dict], count: int, rng: random.Random) -> list[str]:
    """``count`` distinct query names, about HIT_RATE of them held by some rule."""
    seen: set[str] = set()
    out: list[str] = []
    j = 0
    while len(out) < count:
        hit = rng.random() < HIT_RATE
        for _ in range(100):  # exact-name hits repeat: draw again, keeping the kind
            j += 1
            if hit:
                name = _hit_query(rng.choice(rules), rng, j)
            else:
                name = _miss_query(rules, rng, j)
            if name not in seen:
                seen.add(name)
                out.append(name)
                break
    return out


def load(text: str, name: str = "bench.toml") -> Snapshot:
    parsed = parse_policy(text, name)
    if not parsed.ok:
        sys.exit("generated policy refused:\n" + "\n".join(str(p) for p in parsed.problems[:10]))
    snapshot = Snapshot.build(combine([parsed]))
    # As sluiced does after every load and reload: the policy lives on and
    # holds no cycles, so it is kept out of the cyclic collector's sight.
    gc.freeze()
    return snapshot


# -- timing -----------------------------------------------------------------
#
# The machine may be shared and noisy, so the sizes are measured in
# interleaved rounds (10, 10k, 100k, 10, 10k, 100k, ...) and the best round of
# each kept: a burst of noise then hurts one round, not one size.


def timed(run) -> float:
    gc.collect()
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def best_of(repeats: int, run) -> float:
    """Smallest wall time of ``run()`` over ``repeats`` runs (gc collected before each)."""
    return min(timed(run) for _ in range(repeats))


def decide_warm(snap: Snapshot, calls: list[str], pool: list[str], now: float):
    """One timed run of warm decisions; returns (seconds, parse-cache misses during it)."""
    decide = snap.decide
    for name in pool:  # warm the parse cache (and everything else)
        decide(name, now)

    def run() -> None:
        for name in calls:
            decide(name, now)

    before = queue_name.parse.cache_info().misses
    seconds = timed(run)
    return seconds, queue_name.parse.cache_info().misses - before


def decide_cold(snap: Snapshot, calls: list[str], now: float) -> float:
    decide = snap.decide
    raw_parse = queue_name.parse.__wrapped__  # the uncached function

    def run() -> None:
        for name in calls:
            decide(raw_parse(name), now)

    return timed(run)


def decide_unique(snap: Snapshot, names: list[str], now: float) -> float:
    decide = snap.decide
    queue_name.parse.cache_clear()

    def run() -> None:
        for name in names:
            decide(name, now)

    seconds = timed(run)
    info = queue_name.parse.cache_info()
    assert info.hits == 0, f"unique-name run hit the cache: {info}"
    return seconds


def rate_scan(suspensions: tuple, names: list[str], now: float, repeats: int):
    parse = queue_name.parse
    results: list[list] = []

    def run() -> None:
        results.clear()
        for name in names:
            q = parse(name)
            results.append([s for s in suspensions if s.is_active(now) and s.matches(q)])

    return len(names) / best_of(repeats, run), results


def measure(cases: list["Case"], repeats: int, now: float) -> int:
    """Each kind of decide, at every size in interleaved rounds; returns the warm parse misses."""
    warm_misses = 0
    for _ in range(repeats):
        for case in cases:
            seconds, misses = decide_warm(case.snap, case.calls, case.pool, now)
            warm_misses += misses
            case.keep("warm", seconds, len(case.calls))
    for _ in range(repeats):
        for case in cases:
            case.keep("cold", decide_cold(case.snap, case.cold, now), len(case.cold))
    for _ in range(repeats):
        for case in cases:
            case.keep("unique", decide_unique(case.snap, case.unique, now), len(case.unique))
    return warm_misses


def fresh_trial(argv: list[str]) -> dict:
    """The decide figures of this script run again in a new process (``--worker``).

    A warm decision costs a few dictionary probes, so its time is mostly
    memory: where the interpreter happened to put the names, the memo and the
    decisions, which changes from process to process by up to 2x at any size.
    Trials in fresh processes give every size several layouts.
    """
    argv = [a for a in argv if a != "--profile"]
    done = subprocess.run([sys.executable, __file__, *argv, "--worker"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def calibrate() -> float:
    """Calls per second of a no-op Python function in a loop: how fast this machine is now."""

    def noop(a, b):
        return None

    items = list(range(1_000_000))

    def run() -> None:
        for i in items:
            noop(i, 0.0)

    return len(items) / best_of(3, run)


# -- report -----------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time of this process and of the trials it has run."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}/s"


def fmt_us(rate: float) -> str:
    return f"{1e6 / rate:,.2f} µs"


def pin_cpu(cpu: int | None) -> str:
    if cpu is None:
        return "not pinned to a CPU (--pin N to pin)"
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError) as exc:
        return f"not pinned ({exc})"
    return f"pinned to CPU {cpu}"


def table(headers: list[str], rows: list[list[str]], align: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(cells, widths, align)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class Case:
    """One size: its snapshot, its queries, and its best figures so far."""

    def __init__(self, n: int, snap: Snapshot, names: list[str], now: float,
                 distinct: int, warm_calls: int, cold_calls: int, unique_calls: int) -> None:
        self.n = n
        self.snap = snap
        self.suspensions = tuple(self.snap.suspensions.values())
        assert len(self.suspensions) == n and all(s.is_active(now) for s in self.suspensions)
        self.pool = names[:distinct]
        self.calls = (self.pool * (warm_calls // distinct + 1))[:warm_calls]
        self.cold = self.calls[:cold_calls]
        self.unique = names[:unique_calls]
        self.held = sum(1 for name in self.pool if not self.snap.decide(name, now).deliver)
        self.best = {"warm": math.inf, "cold": math.inf, "unique": math.inf}
        self.rate: dict[str, float] = {}

    def keep(self, kind: str, seconds: float, count: int) -> None:
        self.best[kind] = min(self.best[kind], seconds)
        self.rate[kind] = count / self.best[kind]


def bench_load(text: str, size: int, repeats: int) -> tuple[dict[str, float], Snapshot]:
    """Section 4's figures, and the last snapshot built (section 1 uses it at this size).

    The daemon reloads while the previous snapshot is still in memory, which
    gives the garbage collector more to walk, so the whole path is run once
    with nothing loaded (a start) and then ``repeats`` times with the previous
    run's snapshot still alive (a reload); the steps are reported for the
    reload runs.
    """
    out = {
        "tomllib": best_of(repeats, lambda: tomllib.loads(text)),
        "tomli": best_of(repeats, lambda: tomli.loads(text)),
    }
    for key in ("parse_policy", "combine", "build", "total"):
        out[key] = math.inf
    snap = None
    for attempt in range(repeats + 1):
        gc.collect()
        t0 = time.perf_counter()
        parsed = parse_policy(text, "bench.toml")
        t1 = time.perf_counter()
        policy_set = combine([parsed])
        t2 = time.perf_counter()
        new = Snapshot.build(policy_set)
        t3 = time.perf_counter()
        assert parsed.ok and len(new.suspensions) == size
        del parsed
        snap = new  # the previous one stays alive until here, as in a reload
        if attempt == 0:
            out["start"] = t3 - t0
            continue
        for key, value in (("parse_policy", t1 - t0), ("combine", t2 - t1),
                           ("build", t3 - t2), ("total", t3 - t0)):
            out[key] = min(out[key], value)
    policy_set = snap.policy
    out["build_alone"] = best_of(repeats, lambda: Snapshot.build(policy_set))
    return out, snap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    ap.add_argument("--seed", type=int, default=20251123, help="random seed (default %(default)s)")
    ap.add_argument("--pin", type=int, metavar="CPU",
                    help="pin the process to this CPU (on a shared machine this can hurt: "
                    "the scheduler can no longer move it off a busy CPU)")
    ap.add_argument("--profile", action="store_true",
                    help="also print a cProfile of warm decide at the largest size")
    ap.add_argument("--trials", type=int, metavar="N",
                    help="measure decide in N processes, this one and N-1 fresh ones, and keep "
                    "each figure's best (default 5, 1 with --quick)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    trials = args.trials or (1 if args.quick else 5)

    if args.quick:
        sizes = (10, 1_000, 10_000)
        repeats = 1
        distinct, warm_calls, cold_calls, unique_calls = 5_000, 50_000, 10_000, 70_000
        scan_queries = {10: 2_000, 1_000: 200, 10_000: 30}
        load_size = 10_000
    else:
        sizes = (10, 10_000, 100_000)
        repeats = 3
        distinct, warm_calls, cold_calls, unique_calls = 20_000, 400_000, 60_000, 100_000
        scan_queries = {10: 20_000, 10_000: 300, 100_000: 100}
        load_size = 100_000
    large = sizes[-1]
    assert len(sizes) * distinct <= queue_name.parse.cache_info().maxsize  # all pools fit

    pinned = pin_cpu(args.pin)
    rng = random.Random(args.seed)
    now_dt = datetime.now(timezone.utc).replace(microsecond=0)
    now = now_dt.timestamp()
    info = queue_name.parse.cache_info()
    started, cpu_started = time.perf_counter(), _cpu_seconds()

    print(f"sluice bench/decide.py ({'quick' if args.quick else 'full'} run)")
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}, {pinned}, one thread, seed {args.seed}, best of {repeats}"
    )
    print(
        f"parse cache: functools.lru_cache(maxsize={info.maxsize:,}) on policy.queue_name.parse; "
        f"tomli {getattr(tomli, '__version__', '?')} "
        f"({'compiled' if tomli.__file__.endswith(('.so', '.pyd')) else 'pure Python'}), "
        f"tomllib (stdlib, pure Python)"
    )
    print(
        "rule shapes (weights %): "
        + ", ".join(f"{s} {w}" for s, w in zip(SHAPES, SHAPE_WEIGHTS))
        + f"; no `everything` rule; ~{HIT_RATE:.0%} of queries held"
    )
    print(f"machine speed now: {calibrate():,.0f} no-op Python calls/s in a loop "
          "(to compare runs)")
    print()

    # -- 1 and 2: decide and the naive scan at each size ----------------------
    # Every size's rules and queries are made before any policy is loaded.
    # The query names are then copied into strings of their own, all at once:
    # a request's name is a fresh string, never a rule's (a hit could be the
    # very string of a rule's domain or queue name, lying wherever that rule
    # was built), and copies made together lie alike in memory at every
    # size. Made after a large load, they would be scattered through the
    # holes it leaves, and decide at that size would pay for the scatter
    # (which pages the names lie on), not for its rules.
    work = []
    for n in sizes:
        rules = make_rules(n, rng, now_dt)
        work.append((n, rules, make_queries(rules, max(distinct, unique_calls), rng)))
    work = [(n, rules, [name.encode().decode() for name in names]) for n, rules, names in work]
    gc.collect()

    # Section 4 runs first (with the heap still small) and lends its last
    # snapshot to section 1; its figures are printed last.
    cases = []
    while work:
        n, rules, names = work.pop(0)
        if n == load_size and not args.worker:
            text = to_toml(rules)
            loading, snap = bench_load(text, n, repeats)
            text_size, text_lines = len(text), text.count("\n")
            del text
        else:
            snap = load(to_toml(rules))
        cases.append(Case(n, snap, names, now, distinct, warm_calls, cold_calls, unique_calls))
        del rules, names, snap

    if args.worker:
        warm_misses = measure(cases, repeats, now)
        print(json.dumps({"rates": {case.n: case.rate for case in cases}, "misses": warm_misses}))
        return 0

    # -- the naive scan, then decide in this process and in fresh ones --------
    # the naive scan first: its answers check decide's
    mismatches = 0
    scans: dict[int, float] = {}
    for case in cases:
        sample = case.pool[: scan_queries[case.n]]
        scans[case.n], answers = rate_scan(case.suspensions, sample, now, repeats)
        for name, want in zip(sample, answers):
            got = {h.id for h in case.snap.decide(name, now).holds if h.kind == "suspension"}
            if got != {s.id for s in want}:
                mismatches += 1
                print(f"MISMATCH at {case.n}: {name!r}: decide {sorted(got)} scan "
                      f"{sorted(s.id for s in want)}", file=sys.stderr)

    warm_misses = measure(cases, repeats, now)
    trial_warm = [{case.n: case.rate["warm"] for case in cases}]
    for trial in range(1, trials):
        out = fresh_trial(argv if argv is not None else sys.argv[1:])
        warm_misses += out["misses"]
        trial_warm.append({})
        for case in cases:
            rates = out["rates"][str(case.n)]
            trial_warm[-1][case.n] = rates["warm"]
            for kind, rate in rates.items():
                case.rate[kind] = max(case.rate[kind], rate)

    rows = []
    for case in cases:
        r = case.rate
        scan = scans[case.n]
        rows.append([
            f"{case.n:,}", f"{case.held / len(case.pool):.1%}",
            fmt_rate(r["warm"]), fmt_us(r["warm"]),
            fmt_rate(r["cold"]), fmt_us(r["cold"]),
            fmt_rate(r["unique"]), fmt_us(r["unique"]),
            fmt_rate(scan), f"{scan_queries[case.n]:,}", f"{r['warm'] / scan:,.0f}x",
        ])
    print("1-2. Decisions per second, Snapshot.decide vs a naive linear scan (one core)")
    print(table(
        ["rules", "held", "decide warm", "", "cold parse", "", "cache miss", "",
         "naive scan", "scanned", "warm/scan"],
        rows, "<>>>>>>>>>>",
    ))
    print(textwrap.fill(
        f"warm: {distinct:,} distinct names cycled to {warm_calls:,} calls; the parse cache "
        f"is in effect ({warm_misses} misses in all timed warm runs). cold parse: "
        f"{cold_calls:,} calls, each name parsed by parse.__wrapped__ (no cache) and decide "
        f"given the QueueName. cache miss: {unique_calls:,} distinct names (more than the "
        f"cache's {info.maxsize:,}) as strings, cache cleared first: every call misses, and "
        f"evicts once the cache is full. naive scan: parse (warm) + [s for s in suspensions "
        f"if s.is_active(now) and s.matches(q)] over the first 'scanned' names. Sizes are "
        f"measured in interleaved rounds, in {trials} process{'es' if trials > 1 else ''}, "
        f"each figure the best. decide agreed with the scan on every scanned name "
        f"({mismatches} mismatches).",
        width=92, initial_indent="   ", subsequent_indent="   ",
    ))
    if trials > 1:
        print(f"   warm decide in each process (at {' / '.join(f'{n:,}' for n in sizes)}; "
              f"{large:,} vs {sizes[0]}):")
        for i, rates in enumerate(trial_warm, 1):
            print(f"     {i}: " + " / ".join(f"{rates[n] / 1e6:.2f}M" for n in sizes)
                  + f"  {rates[sizes[0]] / rates[large]:.2f}x")
    print()

    # -- 3: the section 9 targets ---------------------------------------------
    small, big = cases[0].rate, cases[-1].rate
    big_scan = scans[large]
    # Within a process the sizes are measured side by side; across processes
    # the memory layout differs. The slowdown is therefore a within-process
    # ratio, and the verdict takes its median over the processes.
    ratios = sorted(rates[sizes[0]] / rates[large] for rates in trial_warm)
    slowdown = statistics.median(ratios)
    spread = f" (median of {trials}: {ratios[0]:.2f}-{ratios[-1]:.2f}x)" if trials > 1 else ""
    vs_scan = big["warm"] / big_scan
    rows = [
        [f"slowdown decide@{large:,} vs decide@{sizes[0]}{spread}",
         f"{slowdown:.2f}x", f"{fmt_rate(big['warm'])} vs {fmt_rate(small['warm'])} (best)",
         "<= 1.3x", verdict(slowdown <= 1.3)],
        [f"decide@{large:,} / scan@{large:,}",
         f"{vs_scan:,.0f}x", f"{fmt_rate(big['warm'])} vs {fmt_rate(big_scan)}",
         ">= 100x", verdict(vs_scan >= 100)],
        [f"decide@{large:,} absolute", fmt_rate(big["warm"]), "300,000/s (target)",
         ">= 300,000/s", verdict(big["warm"] >= 300_000)],
        [f"  (cold parse) slowdown vs @{sizes[0]}", f"{small['cold'] / big['cold']:.2f}x",
         f"{fmt_rate(big['cold'])} vs {fmt_rate(small['cold'])}", "info", ""],
        [f"  (cold parse) decide@{large:,} absolute", fmt_rate(big["cold"]),
         "300,000/s (target)", "info", ""],
        [f"  (cache miss) decide@{large:,} absolute", fmt_rate(big["unique"]),
         "300,000/s (target)", "info", ""],
    ]
    title = "3. Targets (DESIGN.md section 9), judged on the warm figures"
    if args.quick:
        title += f" -- QUICK RUN: largest size {large:,}, not the 100,000 of the contract"
    print(title)
    print(table(["measure", "ours", "reference", "target", "verdict"], rows, "<>><<"))
    print()

    profile_case = cases[-1] if args.profile else None
    del cases
    gc.collect()

    # -- 4: loading a policy file ---------------------------------------------
    t_tomli, t_tomllib = loading["tomli"], loading["tomllib"]
    faster, slower = ("tomli", "tomllib") if t_tomli < t_tomllib else ("tomllib", "tomli")
    factor = max(t_tomli, t_tomllib) / min(t_tomli, t_tomllib)

    print(f"4. Loading a {load_size:,}-suspension policy file "
          f"({text_size / 1e6:.1f} MB, {text_lines:,} lines of TOML)")
    sec = lambda key: f"{loading[key]:.3f} s"  # noqa: E731
    rows = [
        ["(a) tomllib.loads (raw parse)", sec("tomllib"), "", ""],
        ["(b) tomli.loads (raw parse)", sec("tomli"), "", ""],
        ["(c) parse_policy (tomli + checked entries)", sec("parse_policy"), "", ""],
        ["    combine", sec("combine"), "", ""],
        ["    Snapshot.build", sec("build"), "", ""],
        ["(c) whole path, as a reload", sec("total"),
         "<= 2 s (reload target)", verdict(loading["total"] <= 2.0)],
        ["(c) whole path, at start (1 run)", sec("start"), "", ""],
        ["Snapshot.build alone (from the PolicySet)", sec("build_alone"), "", ""],
    ]
    print(table(["step", "best", "reference", "verdict"], rows, "<><<"))
    print(textwrap.fill(
        f"raw parse: {faster} is faster, {factor:.1f}x {slower}. (c) is parse_policy + "
        f"combine + Snapshot.build; as a reload it runs with the previous {load_size:,}-"
        f"suspension snapshot still in memory, as the daemon's reload does (best of "
        f"{repeats}; each step its own best, the total the best whole run); at start nothing "
        f"else is loaded. The reload target covers the daemon's whole reload (reading the "
        f"file too); (c) is its core.",
        width=92, initial_indent="   ", subsequent_indent="   ",
    ))
    print()
    wall = time.perf_counter() - started
    share = (_cpu_seconds() - cpu_started) / wall
    print(f"total bench time {wall:.0f} s; this process had the CPU {share:.0%} of that time"
          + ("" if share >= 0.95 else " (other load on the machine: figures disturbed)"))

    if profile_case is not None:
        import cProfile
        import pstats

        decide = profile_case.snap.decide
        calls = profile_case.calls[:200_000]
        for name in profile_case.pool:
            decide(name, now)
        prof = cProfile.Profile()
        prof.enable()
        for name in calls:
            decide(name, now)
        prof.disable()
        print()
        print(f"cProfile of warm decide at {large:,} suspensions ({len(calls):,} calls)")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(12)

    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
