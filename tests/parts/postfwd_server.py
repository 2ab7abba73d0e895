#!/usr/bin/env python3
"""postfwd2 (the Perl Postfix policy server) holding one DEFER rule per domain.

    postfwd_server.py start BASE DOMAINS_FILE [--port 10045]
    postfwd_server.py stop BASE

Each domain in DOMAINS_FILE (one a line; blank lines and ``#`` comments
skipped) becomes ``id=H<n>; recipient_domain==<domain>;
action=DEFER_IF_PERMIT 4.7.1 <domain> on hold``, and a last rule answers
DUNNO. Its request cache, DNS and logging are off, so every request walks the
rule list, as postfwd does for a request it has not seen. It runs as user
nobody, so BASE and the rules must be readable by that user. ``start`` returns
once a held domain is deferred. Needs root and Debian's postfwd package.
Standard library only; the benches import it, and it runs as a script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

POSTFWD = "postfwd2"
CACHE_PORT = 10043  # postfwd's cache process; instances share it


def missing() -> list[str]:
    problems = []
    if shutil.which(POSTFWD) is None:
        problems.append("postfwd2 is not installed (apt-get install postfwd)")
    if os.geteuid() != 0:
        problems.append("postfwd2 drops to user nobody, which needs root")
    return problems


def rules(domains: list[str]) -> str:
    lines = [
        f"id=H{n}; recipient_domain=={d}; action=DEFER_IF_PERMIT 4.7.1 {d} on hold"
        for n, d in enumerate(domains, 1)
    ]
    return "\n".join([*lines, "id=DEFAULT; action=DUNNO"]) + "\n"


def ask(port: int, domain: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=probe@%s\n\n" % domain.encode())
        return sock.recv(512)


class Postfwd:
    def __init__(self, base: Path, port: int = 10045) -> None:
        self.base = Path(base)
        self.port = port
        self.pidfile = self.base / "postfwd2.pid"

    def args(self) -> list[str]:
        return [
            POSTFWD, "--file", str(self.base / "rules.cf"), "--interface", "127.0.0.1",
            "--port", str(self.port), "--pidfile", str(self.pidfile), "--user", "nobody",
            "--group", "nogroup", "--cache=0", "--no_parent_cache", "--nodns", "--perfmon",
        ]

    def start(self, domains: list[str], timeout: float = 20.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        (self.base / "rules.cf").write_text(rules(domains))
        subprocess.run([*self.args(), "--kill"], capture_output=True, timeout=30)
        done = subprocess.run(self.args(), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"postfwd2 did not start: {done.stderr.strip() or done.stdout.strip()}")
        deadline = time.monotonic() + timeout
        probe = domains[0] if domains else None
        while True:
            try:
                answer = ask(self.port, probe or "open.invalid")
                if answer.startswith(b"action=DEFER_IF_PERMIT" if probe else b"action="):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postfwd2 on 127.0.0.1:{self.port} does not apply its rules")
            time.sleep(0.1)

    def pid(self) -> int:
        return int(self.pidfile.read_text().split()[0])

    def stop(self, timeout: float = 20.0) -> None:
        """Stop it and wait until it and its cache process are gone."""
        try:
            pid = self.pid()
        except (OSError, ValueError):
            pid = None
        subprocess.run([*self.args(), "--kill"], capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = pid is not None and os.path.exists(f"/proc/{pid}")
            try:
                socket.create_connection(("127.0.0.1", CACHE_PORT), timeout=1).close()
                cache = True
            except OSError:
                cache = False
            if not alive and not cache:
                return
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start")
    start.add_argument("base", type=Path)
    start.add_argument("domains", type=Path)
    start.add_argument("--port", type=int, default=10045)
    stop = commands.add_parser("stop")
    stop.add_argument("base", type=Path)
    stop.add_argument("--port", type=int, default=10045)
    args = parser.parse_args(argv)
    if problems := missing():
        print("; ".join(problems), file=sys.stderr)
        return 2
    server = Postfwd(args.base, args.port)
    if args.command == "start":
        domains = [
            line.strip() for line in args.domains.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        server.start(domains)
        print(f"postfwd2 up on 127.0.0.1:{args.port} with {len(domains)} hold rules")
    else:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
