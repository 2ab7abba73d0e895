"""Shared pieces of the daemon benchmarks: the real sluiced, raw clients, reports.

Not a benchmark itself. The scripts in ``bench/`` import it by name (a script's
own directory is first on ``sys.path``), as they import ``decide`` for its
workload generators and its table.

- ``Sluiced`` starts the real daemon (``python -m sluice.daemon.main``) on a
  temporary directory, as ``tests/daemon/harness.py`` does: readiness is the
  READY=1 it sends to a datagram NOTIFY_SOCKET owned by the bench, never a
  sleep. A thread timestamps every notification, so READY=1, RELOADING=1 and,
  with ``watchdog_usec``, the WATCHDOG=1 pings the daemon's event loop sends
  on a timer (an inside view of loop stalls) can be read afterwards.
- ``Http`` is a blocking keep-alive HTTP/1.1 client on raw sockets (unix or
  TCP), for latency probes; ``http_load`` is a load generator (selectors,
  raw sockets, N sequential keep-alive connections) meant to run in its own
  process through ``ClientPool``, which also reports the CPU time the client
  used, to show whether it was the limit.
- ``proc_cpu`` and ``proc_rss`` read /proc, for CPU per request and memory.

The clock shared between processes is ``time.monotonic`` (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import array
import multiprocessing
import os
import platform
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PARTS = ROOT / "tests" / "parts"  # the real parts the tests drive: Postfix, postfwd, load
TIMEOUT = 30.0

try:
    import sluice.policy  # noqa: F401
except ImportError:
    sys.exit("bench: install the project first (README: pip install -e '.[test]'), then run with .venv/bin/python")
sys.path.insert(0, str(PARTS))

from decide import fmt_rate, table, verdict  # noqa: E402,F401  (re-exported)


# -- reports ------------------------------------------------------------------


def tree_state() -> str:
    """The commit measured, and whether the daemon's code had uncommitted edits."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "daemon", "policy"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    count = len(dirty.splitlines())
    return f"commit {head or '?'}" + (f" + {count} uncommitted files in daemon/ and policy/"
                                      if count else "")


def header(script: str, quick: bool, extra: str = "") -> None:
    print(f"sluice bench/{script} ({'quick' if quick else 'full'} run), "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {tree_state()}")
    load = os.getloadavg()
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start" + (f"; {extra}" if extra else ""))


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:,.{digits}f} ms"


def wrap(text: str) -> str:
    return textwrap.fill(text, width=92, initial_indent="   ", subsequent_indent="   ")


class CpuShare:
    """How much of the wall time this process had a CPU (as decide.py reports)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def line(self) -> str:
        wall = time.perf_counter() - self.wall
        load = os.getloadavg()
        return (f"total bench time {wall:.0f} s; load average at the end {load[0]:.2f} "
                f"{load[1]:.2f} {load[2]:.2f} (2 CPUs: above 2 means others were waiting too)")


def percentile(sorted_values, p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


# -- /proc --------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds used by ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (postfwd forks workers)."""
    total = proc_cpu(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            total += proc_tree_cpu(int(child))
        except OSError:
            pass
    return total


def proc_rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB (10^6 bytes)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values["VmRSS"], values["VmHWM"]


# -- the daemon ---------------------------------------------------------------


class Notifications:
    """A datagram NOTIFY_SOCKET; a thread keeps (monotonic time, message) of each message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.seen: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            at = time.monotonic()
            with self.cond:
                self.seen.append((at, data.decode(errors="replace")))
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.seen)

    def wait_for(self, field: str, since: int = 0, timeout: float = TIMEOUT) -> float:
        """The time of the first message at index >= ``since`` holding line ``field``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, message in self.seen[since:]:
                    if field in message.split("\n"):
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {field} notification within {timeout} s")
                self.cond.wait(remaining)

    def times(self, field: str, since: int = 0) -> list[float]:
        with self.cond:
            return [at for at, m in self.seen[since:] if field in m.split("\n")]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Sluiced:
    """The real sluiced on a temporary directory, with the production log settings.

    The layout is a production one in miniature: config and policy under
    ``etc/`` (the policy watcher watches ``etc/``, the parent of
    ``policy.d``), runtime state under ``state/``, sockets under ``run/``.
    Logs (JSON lines, level info, one line per request, as under systemd) go
    to ``sluiced.log`` in the directory rather than to journald.
    """

    def __init__(
        self,
        directory: Path,
        *,
        postfix_socket: bool = False,
        postfix_listen: str = "",
        http_listen: str = "",
        tokens: str = "",
        debounce_ms: int = 50,
        log_level: str = "info",
        watchdog_usec: int | None = None,
        profile: Path | None = None,
        module: str = "sluice.daemon.main",
        launcher: tuple[str, ...] = (),
    ) -> None:
        self.dir = directory
        self.etc = directory / "etc"
        self.policy = self.etc / "policy.d"
        self.policy.mkdir(parents=True, exist_ok=True)
        self.state = directory / "state"
        self.runtime = self.state / "runtime"
        self.admin = directory / "run" / "admin.sock"
        self.postfix = directory / "run" / "policy.sock" if postfix_socket else None
        self.config = self.etc / "sluiced.toml"
        self.log = directory / "sluiced.log"
        self.watchdog_usec = watchdog_usec
        self.profile = profile  # run under cProfile: stats of start i go to "<profile>.<i>"
        self.profiles: list[Path] = []
        self.module = module  # another entry point wrapping sluice.daemon.main, for experiments
        self.launcher = launcher  # a command the daemon runs under (valgrind ...)
        http = f'listen = "{http_listen}"\n'
        if tokens:
            (self.etc / "tokens.toml").write_text(tokens)
            http += 'tokens_file = "tokens.toml"\n'
        self.config.write_text(
            f'policy_dir = "policy.d"\nstate_dir = "{self.state}"\n'
            f'[admin]\nsocket = "{self.admin}"\n'
            f'[postfix]\nsocket = "{self.postfix or ""}"\n'
            f'listen = "{postfix_listen}"\n'
            f"[http]\n{http}"
            f"[reload]\ndebounce_ms = {debounce_ms}\n"
            f'[log]\nformat = "json"\nlevel = "{log_level}"\n'
        )
        self.proc: subprocess.Popen | None = None
        self.notify: Notifications | None = None
        self.ready_seconds = float("nan")

    def write_policy(self, name: str, text: str) -> float:
        """Replace policy file ``name`` in one rename; returns the monotonic time of the rename."""
        tmp = self.etc / f".{name}.tmp"  # outside policy.d: the watcher sees one event
        tmp.write_text(text)
        os.replace(tmp, self.policy / name)
        return time.monotonic()

    def start(self) -> float:
        """Start and wait for READY=1; returns (and keeps) the seconds from spawn to READY."""
        if self.notify is None:
            self.notify = Notifications(self.dir / "notify.sock")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        mark = self.notify.mark()
        self._logfile = open(self.log, "a")
        prof: list[str] = []
        if self.profile:
            self.profiles.append(Path(f"{self.profile}.{len(self.profiles)}"))
            prof = ["-m", "cProfile", "-o", str(self.profiles[-1])]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, *prof,
             "-m", self.module, "--config", str(self.config)],
            stdout=self._logfile, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        deadline = t0 + 120
        while True:
            try:
                at = self.notify.wait_for("READY=1", mark, timeout=0.2)
                break
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text()[-3000:]
                    raise RuntimeError(f"sluiced did not become ready:\n{tail}") from None
        self.ready_seconds = at - t0
        return self.ready_seconds

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> tuple[float, float]:
        return proc_rss(self.pid)

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
            self._logfile.close()

    def close(self) -> None:
        self.stop()
        if self.notify is not None:
            self.notify.close()
            self.notify = None


class Scratch:
    """A temporary directory under /tmp (the same ext4 disk as the state would be on here)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"sluice-bench-{prefix}-"))

    def sub(self, name: str) -> Path:
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def wait_connectable(address, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = connect(address)
            s.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def spawn_server(args: list[str], address, log: Path, launcher: tuple[str, ...] = (),
                 timeout: float = TIMEOUT) -> subprocess.Popen:
    """A reference server from a bench script (``python bench/X.py --serve ...``)."""
    out = open(log, "a")
    proc = subprocess.Popen([*launcher, sys.executable, *args], stdout=out,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_connectable(address, timeout)
    except OSError:
        proc.kill()
        raise RuntimeError(f"reference server {args} did not come up: {log.read_text()[-2000:]}")
    return proc


def stop_servers(procs: list[subprocess.Popen]) -> None:
    """Kill and reap reference server processes (from ``spawn_server`` or Popen)."""
    for proc in procs:
        proc.kill()
        proc.wait()


# -- raw HTTP -----------------------------------------------------------------


def connect(address) -> socket.socket:
    """``address``: a unix socket path (str or Path), or (host, port)."""
    if isinstance(address, tuple):
        s = socket.create_connection(address)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(address))
    return s


def request_bytes(method: str, target: str, body: bytes = b"", headers: tuple = ()) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: sluice"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT", "DELETE"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _content_length(head: bytes) -> int:
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i < 0:
        return 0
    j = lower.find(b"\r\n", i + 17)
    return int(lower[i + 17: j if j >= 0 else len(lower)])


class Http:
    """A blocking keep-alive HTTP/1.1 client on one raw socket."""

    def __init__(self, address, headers: tuple = ()) -> None:
        self.address = address
        self.headers = headers
        self.sock = connect(address)
        self.buf = bytearray()

    def send_raw(self, data: bytes) -> tuple[int, bytes]:
        self.sock.sendall(data)
        return self.read_response()

    def read_response(self) -> tuple[int, bytes]:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                total = end + 4 + _content_length(bytes(buf[:end]))
                if len(buf) >= total:
                    status = int(buf[9:12])
                    body = bytes(buf[end + 4: total])
                    del buf[:total]
                    return status, body
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            buf += data

    def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        return self.send_raw(request_bytes(method, target, body, self.headers))

    def close(self) -> None:
        self.sock.close()


def http_load(address, reqs: list[bytes], conns: int, seconds: float, warmup: float,
              cycle: bool = True, start_at: float = 0.0) -> dict:
    """N keep-alive connections, one outstanding request each, for ``seconds`` after ``warmup``.

    With ``cycle`` the requests in ``reqs`` repeat; without, each is sent once
    (the run ends early when they run out). Returns counts, latencies of the
    measured window, and the CPU seconds this process used meanwhile.
    Runs in the calling process; ``ClientPool`` runs it in others.
    """
    if start_at:
        time.sleep(max(0.0, start_at - time.monotonic()))
    sel = selectors.EpollSelector()
    socks = []
    state = {}
    clock = time.perf_counter
    n = len(reqs)
    next_index = 0
    lat = array.array("d")
    statuses: dict[int, int] = {}
    errors: list[str] = []
    t_start = clock()
    warm_until = t_start + warmup
    deadline = warm_until + seconds
    measured = 0
    for c in range(conns):
        s = connect(address)
        s.setblocking(False)
        socks.append(s)
        state[s.fileno()] = [s, bytearray(), 0.0]
        sel.register(s, selectors.EVENT_READ)

    def send_next(st) -> bool:
        nonlocal next_index
        if next_index >= n and not cycle:
            return False
        data = reqs[next_index % n]
        next_index += 1
        st[2] = clock()
        if len(data) > 65536:  # a large body (a batch of log records) may not fit the buffer at once
            st[0].setblocking(True)
            st[0].sendall(data)
            st[0].setblocking(False)
        else:
            st[0].sendall(data)  # small: fits the socket buffer
        return True

    for s in socks:
        send_next(state[s.fileno()])
    active = conns
    m0 = None
    stopping = False
    answered = 0  # every 2xx answer, warm-up and drain included
    answered_all = 0  # every answer
    while active:
        events = sel.select(1.0)
        now = clock()
        if now >= deadline and not stopping:
            # stop sending; collect the answers still outstanding (bounded)
            stopping = True
            end_t, end_cpu = now, time.process_time()
        if stopping and now >= deadline + 10:
            errors.append(f"{active} answers still outstanding 10 s after the run")
            break
        for key, _ in events:
            st = state[key.fd]
            try:
                data = st[0].recv(262144)
            except BlockingIOError:
                continue
            if not data:
                errors.append("server closed a connection")
                sel.unregister(st[0])
                active -= 1
                continue
            buf = st[1]
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            total = end + 4 + _content_length(bytes(buf[:end]))
            if len(buf) < total:
                continue
            status = int(buf[9:12])
            del buf[:total]
            answered += 200 <= status < 300
            answered_all += 1
            if stopping:
                sel.unregister(st[0])
                active -= 1
                continue
            if st[2] >= warm_until:
                if m0 is None:
                    m0 = (now, time.process_time())
                lat.append(now - st[2])
                statuses[status] = statuses.get(status, 0) + 1
                measured += 1
            if not send_next(st):
                sel.unregister(st[0])
                active -= 1
    if not stopping:
        end_t, end_cpu = clock(), time.process_time()
    cpu = end_cpu
    for s in socks:
        s.close()
    if m0 is None:
        m0 = (end_t, cpu)
    window = end_t - m0[0]
    lat_sorted = sorted(lat)
    return {
        "requests": measured,
        "seconds": window,
        "rps": measured / window if window > 0 else 0.0,
        "client_cpu": (cpu - m0[1]) / window if window > 0 else 0.0,
        "p50": percentile(lat_sorted, 0.50),
        "p99": percentile(lat_sorted, 0.99),
        "max": lat_sorted[-1] if lat_sorted else float("nan"),
        "statuses": statuses,
        "errors": errors,
        "sent": next_index,
        "answered": answered,
        "answered_all": answered_all,
    }


def _load_job(args):
    return http_load(*args)


class ClientPool:
    """Client processes (spawned once, reused), each running ``http_load``."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.pool = multiprocessing.get_context("spawn").Pool(procs)
        self.pool.map(time.sleep, [0] * procs)  # started and imported

    def run(self, address, reqs_per_proc: list[list[bytes]], conns: int, seconds: float,
            warmup: float, cycle: bool = True) -> dict:
        """Spread ``conns`` over the processes; ``reqs_per_proc[i]`` is process i's list."""
        procs = min(self.procs, conns)
        share = [conns // procs + (1 if p < conns % procs else 0) for p in range(procs)]
        start_at = time.monotonic() + 0.05
        jobs = [(address, reqs_per_proc[p % len(reqs_per_proc)], share[p], seconds, warmup,
                 cycle, start_at) for p in range(procs)]
        results = self.pool.map(_load_job, jobs)
        return merge(results)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def merge(results: list[dict]) -> dict:
    out = {
        "requests": sum(r["requests"] for r in results),
        "rps": sum(r["rps"] for r in results),
        "client_cpu": sum(r["client_cpu"] for r in results),
        "p50": max(r["p50"] for r in results),
        "p99": max(r["p99"] for r in results),
        "max": max(r["max"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "errors": [e for r in results for e in r["errors"]],
        "statuses": {},
        "sent": sum(r["sent"] for r in results),
        "answered": sum(r["answered"] for r in results),
        "answered_all": sum(r["answered_all"] for r in results),
    }
    for r in results:
        for k, v in r["statuses"].items():
            out["statuses"][k] = out["statuses"].get(k, 0) + v
    return out


@dataclass
class Best:
    """The best (highest rate) of several rounds of one measurement, and every round's rate."""

    runs: list[dict] = field(default_factory=list)

    def add(self, result: dict) -> dict:
        self.runs.append(result)
        return result

    @property
    def best(self) -> dict:
        return max(self.runs, key=lambda r: r["rps"])

    @property
    def rps(self) -> float:
        return self.best["rps"]

    def spread(self) -> str:
        return "/".join(f"{r['rps'] / 1000:.1f}k" for r in self.runs)


def print_profile(path: Path, title: str, limit: int = 25) -> None:
    """The top of a cProfile written by a daemon run with ``profile=``, by own time."""
    import io
    import pstats

    print()
    print(f"cProfile of sluiced: {title}")
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    text = out.getvalue()
    print(text[text.find("   ncalls"):].rstrip() if "   ncalls" in text else text)
