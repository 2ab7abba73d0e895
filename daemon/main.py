"""sluiced: load the policy, bind the sockets, serve until told to stop.

``serve`` is wiring: ``build_app`` makes the daemon's parts from its config
(the runtime store, the snapshot in force, mutations, events, the route
table), ``open_sockets`` binds the listening sockets, and ``run`` serves
them. Everything opened is closed by one exit stack, whatever happens. The
nursery tree mirrors the lifecycle:

    run
    ├── background: policy watcher, runtime-state follower, sweeper, watchdog
    └── connections: one task per connection
        └── accepting: trio.serve_listeners, one per socket

Signals: SIGHUP reloads; on SIGTERM/SIGINT accepting stops, idle
connections are closed, and the connections' nursery gets a deadline
``GRACE`` seconds away for the requests in flight; every acknowledged change
is already durable (on disk, or committed by etcd). Sockets the daemon bound
are removed; sockets systemd passed in are systemd's to remove.
"""

from __future__ import annotations

import argparse
import functools
import gc
import grp
import os
import resource
import signal
import socket
import ssl
import stat
import sys
import time
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from sluice.daemon import __version__
from sluice.policy.errors import PolicyLoadError
from sluice.policy.snapshot import Snapshot

from . import logs
from .automation import Automation
from .config import Config, ConfigError, ConnectionLimits, HttpConfig, load_config, socket_mode
from .current import Current, ReloadResult
from .events import Broadcaster
from .http.admin import add_admin_routes
from .http.auth import TcpAuth, TokenFile, parse_networks
from .http.check import add_check_routes
from .http.connection import Limits
from .http.hookbridge import add_hookbridge_routes
from .http.listener import tcp_service, unix_service
from .http.peer import may_change
from .http.publish import add_publish_routes
from .http.qstash import add_qstash_routes
from .http.routes import Router
from .http.subscribe import Subscribers, add_subscription_routes
from .metrics import Metrics
from .mutations import Mutations
from .parsing import Parser, PolicyNotRead, load
from .policy_dir import PolicyReader
from .postfix import bind_loopback, postfix_service
from .reload import Reloader, Watcher, debounced, follow
from .memory import Trimmer, map_large_blocks
from .serving import Service, Slots
from .state import open_store
from .state.base import RuntimeStore, StateUnavailable
from .systemd import Notifier, listen_fds, watchdog_interval
from .tcp import bind_tcp, parse_listen, server_tls

log = structlog.get_logger("sluice")

EX_CONFIG = 78
EX_TEMPFAIL = 75
GRACE = 5.0


class StartupError(Exception):
    """The daemon cannot start; the message says why.

    Exit status ``status``: EX_CONFIG (the files or the setup are wrong; a
    restart cannot help), or EX_TEMPFAIL (trying again may succeed).
    """

    def __init__(self, message: str, status: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Sockets:
    """The listening sockets and the paths this process bound (and must remove)."""

    admin: socket.socket | None = None
    postfix: socket.socket | None = None
    postfix_tcp: socket.socket | None = None
    http: socket.socket | None = None
    bound: list[Path] = field(default_factory=list)

    def unlink_bound(self) -> None:
        """Remove the socket files this process bound, once: later they may be another's."""
        for path in self.bound:
            path.unlink(missing_ok=True)
        self.bound.clear()


def bind_unix(path: Path, mode: int, group: str = "") -> socket.socket:
    """Bind a unix stream socket at ``path`` with ``mode`` and ``group``.

    A stale socket file is replaced only if it is a socket and nothing
    answers on it; any other file there is an error.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise StartupError(f"{path}: another process is listening on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise StartupError(f"group {group!r} does not exist") from None
            os.chown(path, -1, gid)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc.strerror}") from None
    return sock


def open_sockets(config: Config, stack: ExitStack | AsyncExitStack) -> Sockets:
    """Bind (or take from systemd) the listening sockets; ``stack`` closes them and removes their files."""
    try:
        passed = listen_fds()
    except OSError as exc:
        raise StartupError(str(exc)) from None
    sockets = Sockets()
    stack.callback(sockets.unlink_bound)
    if config.http.listen:
        sockets.http = stack.enter_context(_bind_http(config.http))
    if config.postfix.listen:  # first: refusing it leaves no socket file behind
        try:
            sockets.postfix_tcp = stack.enter_context(bind_loopback(config.postfix.listen))
        except ValueError as exc:
            raise StartupError(f"postfix.listen: {exc}") from None
    if passed.get("admin"):
        sockets.admin = stack.enter_context(passed["admin"][0])
    elif config.admin_socket is not None:
        admin = bind_unix(config.admin_socket, socket_mode(config.admin.mode), config.admin.group)
        sockets.admin = stack.enter_context(admin)
        sockets.bound.append(config.admin_socket)
    if passed.get("policy"):
        sockets.postfix = stack.enter_context(passed["policy"][0])
    elif config.postfix_socket is not None:
        policy = bind_unix(config.postfix_socket, socket_mode(config.postfix.mode))
        sockets.postfix = stack.enter_context(policy)
        sockets.bound.append(config.postfix_socket)
    return sockets


def _bind_http(http: HttpConfig) -> socket.socket:
    try:
        address, port = parse_listen(http.listen)
    except ValueError as exc:
        raise StartupError(f"http.listen: {exc}") from None
    if not address.is_loopback and not (http.tls_cert and http.tls_key):
        raise StartupError(
            f"http.listen: {http.listen} is not a loopback address; "
            "set http.tls_cert and http.tls_key to serve it with TLS"
        )
    try:
        return bind_tcp(address, port)
    except ValueError as exc:
        raise StartupError(f"http.listen: {exc}") from None


def admin_gid(config: Config) -> int | None:
    if not config.admin.group:
        return None
    try:
        return grp.getgrnam(config.admin.group).gr_gid
    except KeyError:
        raise StartupError(f"admin.group {config.admin.group!r} does not exist") from None


async def _watchdog(notifier: Notifier, interval: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


SWEEP_RETRY = 1.0
SWEEP_RETRY_MAX = 60.0


async def _sweeper(mutations: Mutations, clock, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Remove each runtime suspension from the store at its expiry, and announce it once.

    A sweep that the store refuses (a full or read-only disk, etcd away)
    changes nothing, so the expired entries are still in the snapshot: it is
    tried again, with backoff, until it succeeds.
    """
    task_status.started()
    retry = SWEEP_RETRY
    while True:
        wake = mutations.expiry_changed
        at = mutations.next_expiry()
        delay = 60.0 if at is None else max(0.0, at - clock())
        with trio.move_on_after(delay):
            await wake.wait()
        try:
            await mutations.sweep()
        except (OSError, StateUnavailable) as exc:
            log.error("sweep_failed", error=str(exc), retry_in=retry)
            await trio.sleep(retry)
            retry = min(retry * 2, SWEEP_RETRY_MAX)
        else:
            retry = SWEEP_RETRY


@dataclass
class App:
    """The daemon's parts, built from its config before any socket is opened."""

    files: list[str]  # the policy files loaded at start
    store: RuntimeStore
    current: Current
    events: Broadcaster
    mutations: Mutations
    reloader: Reloader
    metrics: Metrics
    automation: Automation
    router: Router
    token_file: TokenFile
    watcher: Watcher  # one for the policy and the runtime state
    tcp_auth: TcpAuth
    tls: ssl.SSLContext | None


async def build_app(
    config: Config, notifier: Notifier, clock, stack: AsyncExitStack, stop: trio.Event
) -> App:
    """Load the policy, the tokens and the runtime state, and build the daemon on them.

    ``stack`` closes the store; ``stop`` ends the watcher. Raises StartupError
    for anything that stops a start.
    """
    reader = PolicyReader(config.policy_path)
    parser = Parser()
    try:
        policy = await load(reader, parser)
    except PolicyNotRead as exc:  # killed (the kernel, for memory?): not the files' fault
        raise StartupError(
            "policy not read:\n" + "\n".join(str(p) for p in exc.problems), status=EX_TEMPFAIL
        ) from None
    except PolicyLoadError as exc:
        raise StartupError("invalid policy:\n" + "\n".join(str(p) for p in exc.problems)) from None
    watcher = Watcher(stop)
    store, runtime = await _open_store(config, clock, stack, watcher)
    token_file, trusted, tls = await _http_settings(config)
    current = Current(Snapshot.build(policy, runtime, generation=1))
    gc.freeze()  # the policy just loaded lives on and holds no cycles: not the collector's
    current.degraded = store.degraded

    def on_degraded(degraded: bool, reason: str) -> None:
        current.degraded = degraded
        current.degraded_reason = reason
        notifier.status(current.status_line(clock()))

    def on_invalid(problems: dict[str, str]) -> None:
        current.runtime_problems = problems
        notifier.status(current.status_line(clock()))

    store.on_degraded = on_degraded
    store.on_invalid = on_invalid
    current.last_reload = ReloadResult(ok=True, at=clock(), generation=1, files=policy.files)
    events = Broadcaster()
    mutations = Mutations(current, store, events, clock=clock)
    reloader = Reloader(reader, current, events, notifier, clock=clock, tokens=token_file, parser=parser)
    metrics = Metrics(current, clock)
    events.listeners.append(metrics.on_event)
    automation = Automation(current, mutations, config.state_path, metrics, clock)
    await automation.open()
    router = _routes(config, reader, current, events, mutations, reloader, metrics, automation, clock)
    return App(
        files=list(policy.files), store=store, current=current, events=events,
        mutations=mutations, reloader=reloader, metrics=metrics, automation=automation, router=router,
        token_file=token_file, watcher=watcher, tcp_auth=TcpAuth(trusted, lambda: token_file.current), tls=tls,
    )


async def _http_settings(config: Config) -> tuple[TokenFile, list, ssl.SSLContext | None]:
    """The tokens file (read), the trusted hosts, and the TLS context of the TCP listener."""
    token_file = TokenFile(config.path(config.http.tokens_file) if config.http.tokens_file else None)
    try:
        token_file.current = await trio.to_thread.run_sync(token_file.read)
        trusted = parse_networks(config.http.trusted_hosts)
        tls = (
            server_tls(config.path(config.http.tls_cert), config.path(config.http.tls_key))
            if config.http.tls_cert or config.http.tls_key
            else None
        )
    except PolicyLoadError as exc:
        raise StartupError("invalid tokens file:\n" + "\n".join(str(p) for p in exc.problems)) from None
    except ValueError as exc:
        raise StartupError(f"http: {exc}") from None
    return token_file, trusted, tls


async def _open_store(config: Config, clock, stack: AsyncExitStack, watcher: Watcher):
    """The runtime store, opened (``stack`` closes it), and the runtime state it holds.

    A file store learns of hand edits through ``watcher``.
    """
    delay = config.reload.debounce_ms / 1000
    try:
        store = open_store(
            config.store_settings(),
            changes=lambda directory: debounced(watcher.tree(directory), delay),
            clock=clock,
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    try:
        loaded = await store.open()
    except OSError as exc:
        raise StartupError(f"cannot read runtime state in {store.where}: {exc.strerror}") from None
    stack.push_async_callback(store.aclose)
    if loaded.problems:
        raise StartupError(
            "invalid runtime state (fix or remove the file):\n"
            + "\n".join(f"{store.where}/{p}" for p in loaded.problems)
        )
    return store, loaded.runtime


def _routes(
    config: Config,
    reader: PolicyReader,
    current: Current,
    events: Broadcaster,
    mutations: Mutations,
    reloader: Reloader,
    metrics: Metrics,
    automation: Automation,
    clock,
) -> Router:
    """The route table: sluice's own routes and the seeds'."""
    gid = admin_gid(config)
    router = Router(
        may_change=lambda peer: may_change(peer, gid),
        on_response=metrics.answered,
    )
    subscribers = Subscribers()
    add_admin_routes(
        router, current=current, mutations=mutations, reload=reloader.reload, metrics=metrics,
        clock=clock, sections={"subscription": lambda now: subscribers.status(current, now)},
    )
    add_check_routes(router, current=current, events=events, metrics=metrics, clock=clock)
    add_subscription_routes(router, current=current, events=events, subscribers=subscribers, clock=clock)

    def file_time(source: str) -> float:
        """When the policy file behind ``source`` ("name:line") last changed."""
        return reader.mtimes.get(source.rpartition(":")[0] or source, current.started)

    add_qstash_routes(router, current=current, mutations=mutations, file_time=file_time, clock=clock)
    add_hookbridge_routes(router, current=current, mutations=mutations, file_time=file_time)
    add_publish_routes(router, automation=automation)
    return router


def services(
    config: Config, app: App, sockets: Sockets, clock
) -> list[tuple[trio.abc.Listener, Service]]:
    """Each listening socket with the service that handles its connections."""
    admin = unix_service(app.router.dispatch, *_limits("admin", config.admin))
    tcp = tcp_service(
        functools.partial(app.router.dispatch, authenticate=app.tcp_auth), *_limits("http", config.http), app.tls
    )
    postfix = postfix_service(
        app.current, config.postfix, clock, app.metrics.decisions("postfix")
    )
    for service in (admin, tcp, postfix):
        app.metrics.count_connections(service.slots)
    served = [
        (sockets.admin, admin),
        (sockets.http, tcp),
        (sockets.postfix, postfix),
        (sockets.postfix_tcp, postfix),
    ]
    return [
        (trio.SocketListener(trio.socket.from_stdlib_socket(sock)), service)
        for sock, service in served
        if sock is not None
    ]


def _limits(name: str, section: ConnectionLimits) -> tuple[Limits, Slots]:
    """An HTTP listener's per-connection limits and its slots, from its config section."""
    limits = Limits(first_request_timeout=section.first_request_timeout)
    return limits, Slots(name, section.max_connections, section.max_unproven_per_peer)


async def _start_background(
    nursery: trio.Nursery, config: Config, app: App, notifier: Notifier, clock, stop: trio.Event
) -> None:
    """The policy watcher, the runtime-state follower, the sweeper and the watchdog, started."""

    async def on_policy_change(batch) -> None:
        await app.reloader.reload("watch")

    policy_changes = app.watcher.tree(config.policy_path, app.token_file.path)
    delay = config.reload.debounce_ms / 1000
    await nursery.start(follow, debounced(policy_changes, delay), on_policy_change)
    await nursery.start(functools.partial(app.store.follow, app.mutations.apply_changes, stop=stop))
    await nursery.start(app.watcher.run)
    await nursery.start(_sweeper, app.mutations, clock)
    interval = watchdog_interval()
    if interval:
        await nursery.start(_watchdog, notifier, interval)


async def serve(
    config: Config,
    *,
    clock=time.time,
    task_status: trio.TaskStatus[Current] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM/SIGINT. Raises StartupError if it cannot start."""
    async with AsyncExitStack() as stack:
        notifier = Notifier()
        stack.callback(notifier.close)
        stop = trio.Event()
        app = await build_app(config, notifier, clock, stack, stop)
        _room_for_connections(config)
        sockets = open_sockets(config, stack)
        # Once the signal receiver closes, shutdown is under way: a second
        # SIGTERM must not turn exit 0 into a kill while the store closes.
        stack.callback(_ignore_stop_signals)
        signals = stack.enter_context(
            trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        )
        async with trio.open_nursery() as background:
            await _start_background(background, config, app, notifier, clock, stop)
            served = services(config, app, sockets, clock)
            trimmer = Trimmer([service.slots for service in {service for _, service in served}])
            app.metrics.count_trims(trimmer)
            background.start_soon(trimmer.run)
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener, service in served:
                        await accepting.start(
                            functools.partial(
                                trio.serve_listeners, service, [listener], handler_nursery=connections
                            )
                        )
                    notifier.ready(app.current.status_line(clock()))
                    _log_ready(config, app, sockets)
                    task_status.started(app.current)
                    await _until_stopped(signals, background, app.reloader, notifier)
                    accepting.cancel_scope.cancel()
                sockets.unlink_bound()
                app.events.close()  # event streams say "shutdown" and end
                for service in {service for _, service in served}:
                    service.drain.start()  # idle connections close; requests in flight finish
                connections.cancel_scope.deadline = trio.current_time() + GRACE
            stop.set()
            background.cancel_scope.cancel()
    log.info("stopped")


# descriptors beyond the connections: listening sockets, the state and policy
# files, the watcher, etcd, the logs
FD_RESERVE = 256


def _room_for_connections(config: Config) -> None:
    """Raise the soft limit on open files to the hard one if the connection caps need more.

    Many systems start services with a soft limit of 1,024, below the caps'
    sum; past the limit every accept fails, and no one is served at all.
    Under systemd the unit's ``LimitNOFILE=`` sets it (its system call
    filter refuses setrlimit). A limit still too low is logged.
    """
    need = FD_RESERVE + config.admin.max_connections
    if config.http.listen:
        need += config.http.max_connections
    if config.postfix.socket or config.postfix.listen:
        need += config.postfix.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    except (OSError, ValueError):
        pass
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "open_files_limit_low", limit=soft, needed=need,
            hint="raise LimitNOFILE= (or ulimit -n), or lower the max_connections settings",
        )


def _log_ready(config: Config, app: App, sockets: Sockets) -> None:
    log.info(
        "ready",
        version=__version__,
        generation=app.current.snapshot.generation,
        admin=str(config.admin_socket),
        postfix=str(config.postfix_socket) if sockets.postfix is not None else None,
        postfix_listen=config.postfix.listen or None,
        http_listen=config.http.listen or None,
        files=app.files,
    )


async def _until_stopped(signals, background: trio.Nursery, reloader: Reloader, notifier: Notifier) -> None:
    """Reload on each SIGHUP; return at the first SIGTERM or SIGINT."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            background.start_soon(reloader.reload, "SIGHUP")
            continue
        log.info("stopping", signal=signal.Signals(signum).name)
        notifier.stopping()
        return


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluiced", description="sluice delivery-policy daemon")
    parser.add_argument("--config", default="/etc/sluice/sluiced.toml", help="path to sluiced.toml")
    parser.add_argument("--check", action="store_true", help="check the config and policy, then exit")
    parser.add_argument("--version", action="version", version=f"sluiced {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sluiced: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.check:
        from .ctl import validate

        return validate(config.policy_path)
    logs.configure(config.log.format, config.log.level)
    map_large_blocks()
    try:
        # log lines are written once per pass of the event loop
        trio.run(serve, config, instruments=[logs.OUTPUT])
    except StartupError as exc:
        print(f"sluiced: {exc}", file=sys.stderr)
        log.error("startup_failed", error=str(exc))
        return exc.status
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
