#!/usr/bin/env python3
"""Benchmark: mail through a real Postfix, with sluice, no policy service, an echo and postfwd.

Run from the repository root with the project's virtualenv, as root, with
Debian's ``postfix`` and ``postfwd`` packages (without postfwd its column is
skipped):

    .venv/bin/python bench/postfix_e2e.py            # 7 rounds of 2,000 messages (about 2 minutes)
    .venv/bin/python bench/postfix_e2e.py --quick    # 1 round of 500 messages

What it measures (DESIGN.md section 9, "end to end through a real
Postfix"): Postfix's ``smtp-source`` sends messages over 8 parallel SMTP
sessions (``-s 8``, each session kept open, ``-d``) to a throw-away Postfix
(``tests/parts/throwaway_postfix.py``), which relays them to ``smtp-sink``.
Its smtpd asks a policy service at RCPT time, one request per message, and
the figure is the messages it accepted per second: smtp-source's messages
divided by its run time. Four instances of the same Postfix run side by
side, each asking another service:

  none     no check_policy_service at all: the reference;
  sluice   the real sluiced on its policy unix socket, holding 1,000 domain
           suspensions (held0 .. held999.example);
  echo     the bare trio echo server of ``bench/postfix.py`` on a unix socket
           (``action=DUNNO`` to every request): the cost of a policy round
           trip alone;
  postfwd  postfwd2 (``tests/parts/postfwd_server.py``) on TCP, holding the
           same 1,000 domains as rules, its cache off.

The recipients are in a domain none of them holds (``open.example``, a
sequence number before each local part, ``-N``), so every message is
accepted and every RCPT still asks the policy service; each service is first
checked to defer a held domain. Rounds are interleaved (none, sluice, echo,
postfwd; the next round starts with sluice, the one after with echo, and so
on, so that no service always runs first), each run waits for its instance's queue to drain to
smtp-sink before the next starts (so deliveries do not take CPU from the next
run), and the best round of each is kept. Beside the rates: the policy
service's CPU per policy request (from /proc; sluice's requests counted by its
own ``sluice_decisions_total`` metric), the Postfix instance's CPU per
message (its master and every process it ran), and how busy the machine's 2
CPUs were during the run.
"""

from __future__ import annotations

import argparse
import os
import re
import smtplib
import statistics
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    ROOT, CpuShare, Http, Scratch, Sluiced, header, proc_cpu, proc_tree_cpu, stop_servers,
    table, verdict, wrap,
)
import postfwd_server  # tests/parts, put on sys.path by benchlib
import throwaway_postfix

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
HELD = [f"held{i}.example" for i in range(1000)]
RECIPIENT = "user@open.example"
SESSIONS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sluice_rules(domains: list[str]) -> str:
    return "".join(f'[[suspension]]\ndomain = "{d}"\nreason = "{d} on hold"\n\n' for d in domains)


# -- /proc ----------------------------------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def instance_cpu(master: int) -> float:
    """CPU seconds of a Postfix instance: its master, the children it reaped, the live ones."""
    with open(f"/proc/{master}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime
    return proc_tree_cpu(master) + reaped


# -- the parts ------------------------------------------------------------------


class Postfix(throwaway_postfix.Instance):
    """A throw-away Postfix relaying everything to smtp-sink on ``sink``."""

    def __init__(self, base: Path, policy: str, sink: int) -> None:
        super().__init__(base, policy, f"127.0.0.1:{free_port()}", settings={
            "default_transport": "smtp",
            "relay_transport": "smtp",
            "relayhost": f"[127.0.0.1]:{sink}",
        })
        self.port = int(self.listen.rsplit(":", 1)[1])

    @property
    def master(self) -> int:
        return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])

    def queued(self) -> int:
        """Messages in the queue: received, not yet delivered (or deferred)."""
        count = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.base / "queue" / sub):
                count += len(files)
        return count

    def drain(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.base.name}: {self.queued()} messages still queued "
                                   f"after {timeout:g} s; its log ends:\n{self.log()[-2000:]}")
            time.sleep(0.05)

    def rcpt(self, recipient: str) -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo("probe.localdomain")
            code, message = smtp.mail("sender@source.example")
            assert code == 250, message
            code, message = smtp.rcpt(recipient)
            return code, message.decode(errors="replace")


def send(port: int, messages: int) -> float:
    """smtp-source: ``messages`` over SESSIONS sessions to 127.0.0.1:``port``; the seconds it took."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(messages), "-d", "-N", "-l", "1000",
         "-M", "source.example", "-f", "sender@source.example", "-t", RECIPIENT,
         f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=600,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"smtp-source to port {port} failed: {done.stderr.strip()[-1000:]}")
    return seconds


class Service:
    """One policy service behind one Postfix instance: how to read its CPU and count its requests."""

    def __init__(self, name: str, postfix: Postfix, cpu=None, requests=None,
                 messages: int | None = None) -> None:
        self.name = name
        self.postfix = postfix
        self.messages = messages  # a run's messages, if not the bench's
        self.cpu = cpu  # () -> CPU seconds so far, or None (no service)
        self.requests = requests  # () -> policy requests answered so far, or None: one a message
        self.runs: list[dict] = []

    def run(self, messages: int) -> dict:
        messages = self.messages or messages
        busy0, total0 = machine_busy()
        pf0 = instance_cpu(self.postfix.master)
        cpu0 = self.cpu() if self.cpu else 0.0
        asked0 = self.requests() if self.requests else 0
        seconds = send(self.postfix.port, messages)
        cpu = (self.cpu() - cpu0) if self.cpu else None
        asked = (self.requests() - asked0) if self.requests else messages
        pf = instance_cpu(self.postfix.master) - pf0
        busy1, total1 = machine_busy()
        self.postfix.drain()  # the deliveries to smtp-sink, before the next run starts
        run = {
            "rate": messages / seconds, "seconds": seconds, "asked": asked,
            "service_us": None if cpu is None else cpu / max(1, asked) * 1e6,
            "service_share": None if cpu is None else cpu / seconds,
            "postfix_us": pf / messages * 1e6,
            "busy": (busy1 - busy0) / max(1e-9, total1 - total0),
        }
        self.runs.append(run)
        return run

    @property
    def best(self) -> dict:
        return max(self.runs, key=lambda r: r["rate"])

    def spread(self) -> str:
        return "/".join(f"{r['rate']:,.0f}" for r in self.runs)


def sluice_requests(daemon: Sluiced):
    """The Postfix decisions sluiced has counted, read from its /metrics on the admin socket."""
    pattern = re.compile(rb'^sluice_decisions_total\{outcome="\w+",source="postfix"\} (\S+)$', re.M)

    def count() -> int:
        client = Http(daemon.admin)
        try:
            status, body = client.request("GET", "/metrics")
        finally:
            client.close()
        assert status == 200, body[:200]
        return int(sum(float(v) for v in pattern.findall(body)))

    return count


def reachable(path: Path) -> None:
    """Let user postfix (smtpd) reach ``path``: every directory above it searchable."""
    for parent in [path, *path.parents]:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o755)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round of 500 messages")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 1)")
    ap.add_argument("--messages", type=int, help="messages a run (default 2,000, quick 500)")
    ap.add_argument("--postfwd-messages", type=int,
                    help="messages a postfwd run (default 400, or --messages if fewer)")
    args = ap.parse_args(argv)
    problems = throwaway_postfix.missing()
    problems += [f"{tool} is missing (apt-get install postfix)"
                 for tool in (SMTP_SOURCE, SMTP_SINK) if not Path(tool).exists()]
    if problems:
        print("postfix_e2e.py cannot run: " + "; ".join(problems))
        return 1
    rounds = args.rounds or (1 if args.quick else 7)
    messages = args.messages or (500 if args.quick else 2000)
    warmup = max(SESSIONS * 10, messages // 10)
    # postfwd accepts about 50 a second whatever the count: fewer keep its runs short
    postfwd_messages = args.postfwd_messages or min(messages, 400)

    share = CpuShare()
    header("postfix_e2e.py", args.quick, f"{rounds} interleaved rounds of {messages:,} messages "
           f"over {SESSIONS} sessions, best round kept")
    scratch = Scratch("postfix-e2e")
    reachable(scratch.path)
    procs: list[subprocess.Popen] = []
    instances: list[Postfix] = []
    daemon = Sluiced(scratch.sub("sluiced"), postfix_socket=True)
    daemon.write_policy("10-held.toml", sluice_rules(HELD))
    pfw = None
    skipped = ""
    try:
        sink = free_port()
        procs.append(subprocess.Popen([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{sink}", "256"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        daemon.start()
        reachable(daemon.postfix.parent)
        echo_path = scratch.path / "echo.sock"
        echo = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "postfix.py"), "--serve-echo", f"unix:{echo_path}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(echo)
        while not echo_path.exists():
            time.sleep(0.02)
        echo_path.chmod(0o666)

        def instance(name: str, policy: str) -> Postfix:
            postfix = Postfix(scratch.path / f"postfix-{name}", policy, sink)
            instances.append(postfix)
            postfix.start()
            return postfix

        services = [
            Service("none", instance("none", "")),
            Service("sluice", instance("sluice", f"unix:{daemon.postfix}"), daemon.cpu,
                    sluice_requests(daemon)),
            Service("echo", instance("echo", f"unix:{echo_path}"), lambda: proc_cpu(echo.pid)),
        ]
        if postfwd_server.missing():
            skipped = "postfwd not run: " + "; ".join(postfwd_server.missing())
        else:
            pfw = postfwd_server.Postfwd(scratch.path / "postfwd", free_port())
            pfw.start(HELD)
            services.append(Service("postfwd", instance("postfwd", f"inet:127.0.0.1:{pfw.port}"),
                                    lambda: proc_tree_cpu(pfw.pid()), messages=postfwd_messages))

        for service in services:  # each answers as it should, then warms up its smtpd processes
            code, message = service.postfix.rcpt(f"someone@{HELD[7]}")
            expected = 250 if service.name in ("none", "echo") else 450
            if code != expected:
                raise RuntimeError(f"{service.name}: RCPT to {HELD[7]} got {code} {message}")
            send(service.postfix.port, min(warmup, service.messages or warmup))
            service.postfix.drain()
        for r in range(rounds):
            # each round starts with the next service, so that none of them always runs
            # first (or right after the same one)
            first = r % len(services)
            rates = {s.name: s.run(messages)["rate"] for s in services[first:] + services[:first]}
            print(f"   round {r + 1}: " + ", ".join(f"{s.name} {rates[s.name]:,.0f}/s" for s in services),
                  f"(from {services[first].name})", flush=True)

        none = services[0]

        def row(service: Service) -> list[str]:
            b = service.best
            ratios = [r["rate"] / n["rate"] for r, n in zip(service.runs, none.runs)]
            ratio = statistics.median(ratios)
            target, ok = ("", None)
            if service.name == "sluice":
                target, ok = ">= 95% of none", ratio >= 0.95
            return [
                service.name, f"{b['rate']:,.0f}/s", service.spread(),
                f"{ratio:.0%} ({min(ratios):.0%}-{max(ratios):.0%})",
                f"{b['rate'] / none.best['rate']:.0%}",
                "" if b["service_us"] is None else f"{b['service_us']:.0f} µs",
                "" if b["service_share"] is None else f"{b['service_share']:.0%}",
                "" if service.requests is None else f"{b['asked']:,}",
                f"{b['postfix_us']:.0f} µs", f"{b['busy']:.0%}", target,
                "" if ok is None else verdict(ok),
            ]

        print()
        print(f"Messages accepted per second through a real Postfix, smtp-source -s {SESSIONS} -d "
              f"-m {messages:,} -> smtpd (check_policy_service at RCPT) -> smtp-sink")
        print(table(["policy service", "best", "rounds", "vs none: median (range)",
                     "best vs best", "service CPU/request",
                     "service CPU", "requests counted", "Postfix CPU/msg", "machine busy",
                     "target", "verdict"], [row(s) for s in services], "<>>>>>>>>><<"))
        print(wrap(
            f"vs none: the median over the rounds of the rate divided by that of Postfix asking "
            f"no policy service in the same round (the range: the lowest and highest), which "
            f"the verdict judges; best vs best: the best rounds' rates divided. The other "
            f"columns are of the best round. service CPU/request: the policy service's CPU time in the run divided by "
            f"its requests (sluice's as its own metric counted them; one a message otherwise); "
            f"service CPU: the share of one CPU it used. Postfix CPU/msg: the instance's CPU "
            f"(master, smtpd, cleanup, qmgr, smtp, ...) in the run per message, the deliveries "
            f"to smtp-sink included as far as they ran before smtp-source ended. machine busy: "
            f"both CPUs' busy share during the run (smtp-source, smtp-sink and other users of "
            f"the machine included). Each run starts with an empty queue; {warmup:,} messages "
            f"warmed each instance first. postfwd's runs are of {postfwd_messages:,} messages "
            f"(it accepts about 50 a second whatever their number)."
            + (f" {skipped}" if skipped else "")))
        print()
        print(share.line())
    finally:
        for postfix in instances:
            postfix.stop()
        if pfw is not None:
            pfw.stop()
        stop_servers(procs)
        daemon.close()
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
