"""Memory taken by a burst of Postfix connections is given back once they close.

Each of 400 connections sends a request of about 56 KiB (eight long
attributes) and then the same again without its end, so the daemon holds
it; all close, and after the daemon trims its heap its resident size is
back near where it started.
"""

from __future__ import annotations

import re
import resource
import socket
import time

import pytest

from harness import TIMEOUT, Daemon

CONNECTIONS = 400
REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=user@example.com\n"
    + b"".join(b"x%d=" % i + b"y" * 7000 + b"\n" for i in range(8))
    + b"\n"
)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


def ask(sock: socket.socket) -> bytes:
    sock.sendall(REQUEST)
    answer = b""
    while not answer.endswith(b"\n\n"):
        data = sock.recv(4096)
        assert data, "the daemon closed the connection"
        answer += data
    return answer


def metric(d: Daemon, pattern: str) -> float:
    found = re.search("^" + pattern + r" (\S+)", d.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def until(condition, what: str) -> None:
    """Poll the daemon's metrics until ``condition`` holds (the trimmer looks every 2 s)."""
    deadline = time.monotonic() + 4 * TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.1)


def test_memory_of_closed_postfix_connections_is_given_back(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * CONNECTIONS + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = Daemon(tmp_path)
    d.config.write_text(d.config.read_text().replace('[postfix]\nsocket = ""\n', '[postfix]\nsocket = "run/policy.sock"\n'))
    d.start()
    try:
        path = str(d.dir / "run" / "policy.sock")
        with socket.socket(socket.AF_UNIX) as warm:
            warm.connect(path)
            assert ask(warm) == b"action=DUNNO\n\n"
        before = memory(d.proc.pid)["VmRSS"]
        socks = []
        try:
            for _ in range(CONNECTIONS):
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(path)
                socks.append(sock)
                assert ask(sock) == b"action=DUNNO\n\n"
            for sock in socks:
                sock.sendall(REQUEST[:-1])  # held, unfinished
        finally:
            for sock in socks:
                sock.close()
        until(lambda: metric(d, r'sluice_connections\{listener="postfix"\}') == 0, "close of every connection")
        until(lambda: metric(d, "sluice_memory_trims_total") >= 1, "trim after the burst")
        after = memory(d.proc.pid)
        grown = after["VmHWM"] - before
        assert grown > 10_000, f"the burst took only {grown} KiB; the test shows nothing"
        kept = after["VmRSS"] - before
        assert kept < 0.35 * grown, f"kept {kept} KiB of the {grown} KiB the burst took"
    finally:
        d.close()
