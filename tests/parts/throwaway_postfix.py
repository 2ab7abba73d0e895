#!/usr/bin/env python3
"""A throw-away Postfix instance whose smtpd asks a policy service at RCPT time.

    throwaway_postfix.py start BASE POLICY [--listen 127.0.0.1:2626] [--then permit]
    throwaway_postfix.py stop BASE

POLICY is where the policy service listens, as Postfix writes it:
``unix:/abs/path.sock`` or ``inet:127.0.0.1:PORT`` (empty: no policy service
is asked). The instance lives in BASE (its main.cf, queue, data and
``maillog``); it relays nothing: every transport is ``discard``, so a message
it accepts is dropped (``Instance(settings=...)`` may say otherwise: each
replaces or adds one ``main.cf`` parameter). ``--then`` is what follows
``check_policy_service`` in ``smtpd_recipient_restrictions``.

Needs root and Debian's postfix package (``apt-get install postfix``, "No
configuration"). Chroot is off everywhere, so smtpd reaches a policy socket
anywhere user postfix can search. Standard library only; the tests and the
benches import it, and it runs as a script.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
meta_directory = /etc/postfix
daemon_directory = /usr/lib/postfix/sbin
command_directory = /usr/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = policy-test.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
local_recipient_maps =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = {restrictions}
smtpd_policy_service_timeout = 10s
smtpd_policy_service_max_idle = 60s
smtpd_delay_reject = yes
default_transport = discard
relay_transport = discard
local_transport = discard
smtputf8_enable = no
"""

# (service, type, private, unprivileged, chroot, wakeup, maxproc, command)
SERVICES = [
    ("{listen}", "inet", "n", "-", "n", "-", "-", "smtpd"),
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
]


def mail_version() -> tuple[int, ...]:
    """The installed Postfix's version (``postconf -d mail_version``), (0,) if it cannot be read."""
    done = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"], capture_output=True, text=True)
    try:
        return tuple(int(part) for part in done.stdout.strip().split(".")[:2])
    except ValueError:
        return (0,)


def missing() -> list[str]:
    """What this machine lacks to run an instance; empty when it can."""
    problems = []
    if not Path(POSTFIX).exists():
        problems.append("Postfix is not installed (apt-get install postfix)")
    elif (version := mail_version()) < (3, 4):
        problems.append(f"Postfix {'.'.join(map(str, version))} is older than 3.4, which has maillog_file")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        problems.append("there is no 'postfix' user (Debian's postfix package makes it)")
    if os.geteuid() != 0:
        problems.append("starting a Postfix instance needs root")
    return problems


class Instance:
    """One instance in ``base``: ``start()`` returns once its smtpd greets."""

    def __init__(
        self,
        base: Path,
        policy: str,
        listen: str = "127.0.0.1:2626",
        then: str = "permit",
        settings: dict[str, str] | None = None,
    ):
        self.base = Path(base)
        self.policy = policy
        self.listen = listen
        self.then = then
        self.settings = settings or {}
        self.config = self.base / "etc"
        self.maillog = self.base / "maillog"

    def write(self) -> None:
        for sub in ("etc", "queue", "data"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.base / "data", user="postfix")
        self.base.chmod(0o755)
        restrictions = f"check_policy_service {self.policy}, {self.then}" if self.policy else self.then
        parameters = {}
        for line in MAIN_CF.format(base=self.base, restrictions=restrictions).splitlines():
            name, _, value = line.partition("=")
            parameters[name.strip()] = value.strip()
        parameters.update(self.settings)
        (self.config / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in parameters.items())
        )
        master = "".join(
            " ".join(fields).format(listen=self.listen) + "\n" for fields in SERVICES
        )
        (self.config / "master.cf").write_text(master)

    def postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config), *args], capture_output=True, text=True, timeout=120
        )

    def start(self, timeout: float = 20.0) -> None:
        self.write()
        self.postfix("stop")  # a leftover instance in the same base
        for step in ("check", "start"):
            done = self.postfix(step)
            if done.returncode != 0:
                raise RuntimeError(f"postfix {step} failed: {done.stderr.strip() or done.stdout.strip()}")
        host, port = self.listen.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=1) as probe:
                    if probe.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = self.maillog.read_text(errors="replace")[-2000:] if self.maillog.exists() else ""
                raise RuntimeError(f"postfix did not greet on {self.listen}; its log ends:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if (self.config / "main.cf").exists():
            self.postfix("stop")

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start")
    start.add_argument("base", type=Path)
    start.add_argument("policy")
    start.add_argument("--listen", default="127.0.0.1:2626")
    start.add_argument("--then", default="permit")
    stop = commands.add_parser("stop")
    stop.add_argument("base", type=Path)
    args = parser.parse_args(argv)
    if problems := missing():
        print("; ".join(problems), file=sys.stderr)
        return 2
    if args.command == "start":
        instance = Instance(args.base, args.policy, args.listen, args.then)
        instance.start()
        print(f"postfix up: smtpd on {args.listen} asks {args.policy}; log {instance.maillog}")
    else:
        Instance(args.base, "").stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
