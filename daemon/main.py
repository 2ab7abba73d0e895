"""sluiced: load the policy, bind the sockets, serve until told to stop.

The nursery tree mirrors the lifecycle:

    serve
    ├── background: policy watcher, runtime-state follower, sweeper, watchdog
    ├── signals: SIGHUP -> reload; SIGTERM/SIGINT -> shutdown
    └── connections: one listener task per socket, one task per connection

On SIGTERM the listeners stop accepting, idle connections are closed, and
requests in flight get ``GRACE`` seconds; every acknowledged change is
already durable (on disk, or committed by etcd). Sockets the daemon bound
are removed; sockets systemd passed in are systemd's to remove.
"""

from __future__ import annotations

import argparse
import functools
import gc
import grp
import os
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from sluice.daemon import __version__
from sluice.policy.errors import PolicyLoadError
from sluice.policy.snapshot import Snapshot

from . import logs
from .config import Config, ConfigError, load_config, socket_mode
from .current import Current, ReloadResult
from .events import Broadcaster
from .http.admin import add_admin_routes
from .http.auth import TcpAuth, TokenFile, parse_networks
from .http.check import add_check_routes
from .http.hookbridge import add_hookbridge_routes
from .http.qstash import add_qstash_routes
from .http.peer import Peer, may_change, unix_peer
from .http.routes import Router
from .http.server import Drain, Limits, serve_connection, serve_listener
from .metrics import Metrics
from .mutations import Mutations
from .policy_dir import PolicyReader
from .postfix import bind_loopback, refuse_postfix, serve_postfix_connection
from .reload import Reloader, Watcher, debounced, follow
from .state import open_store
from .systemd import Notifier, listen_fds, watchdog_interval
from .tcp import bind_tcp, parse_listen, server_tls

log = structlog.get_logger("sluice")

EX_CONFIG = 78
GRACE = 5.0


class StartupError(Exception):
    """The daemon cannot start; the message says why. Exit status EX_CONFIG."""


@dataclass
class Sockets:
    """The listening sockets and the paths this process bound (and must remove)."""

    admin: socket.socket | None = None
    postfix: socket.socket | None = None
    postfix_tcp: socket.socket | None = None
    http: socket.socket | None = None
    bound: list[Path] = field(default_factory=list)


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


def open_sockets(config: Config) -> Sockets:
    try:
        passed = listen_fds()
    except OSError as exc:
        raise StartupError(str(exc)) from None
    sockets = Sockets()
    if config.http.listen:
        try:
            address, port = parse_listen(config.http.listen)
        except ValueError as exc:
            raise StartupError(f"http.listen: {exc}") from None
        if not address.is_loopback and not (config.http.tls_cert and config.http.tls_key):
            raise StartupError(
                f"http.listen: {config.http.listen} is not a loopback address; "
                "set http.tls_cert and http.tls_key to serve it with TLS"
            )
        try:
            sockets.http = bind_tcp(address, port)
        except ValueError as exc:
            raise StartupError(f"http.listen: {exc}") from None
    if config.postfix.listen:  # first: refusing it leaves no socket file behind
        try:
            sockets.postfix_tcp = bind_loopback(config.postfix.listen)
        except ValueError as exc:
            raise StartupError(f"postfix.listen: {exc}") from None
    if passed.get("admin"):
        sockets.admin = passed["admin"][0]
    elif config.admin_socket is not None:
        sockets.admin = bind_unix(config.admin_socket, socket_mode(config.admin.mode), config.admin.group)
        sockets.bound.append(config.admin_socket)
    if passed.get("policy"):
        sockets.postfix = passed["policy"][0]
    elif config.postfix_socket is not None:
        sockets.postfix = bind_unix(config.postfix_socket, socket_mode(config.postfix.mode))
        sockets.bound.append(config.postfix_socket)
    return sockets


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


async def _sweeper(mutations: Mutations, clock, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        wake = mutations.expiry_changed
        at = mutations.next_expiry()
        delay = 60.0 if at is None else max(0.0, at - clock())
        with trio.move_on_after(delay):
            await wake.wait()
        try:
            await mutations.sweep()
        except OSError:
            log.exception("sweep_failed")
            await trio.sleep(1)


async def serve(
    config: Config,
    *,
    clock=time.time,
    task_status: trio.TaskStatus[Current] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM/SIGINT. Raises StartupError if it cannot start."""
    notifier = Notifier()
    reader = PolicyReader(config.policy_path)
    try:
        policy = await trio.to_thread.run_sync(reader.load)
    except PolicyLoadError as exc:
        raise StartupError("invalid policy:\n" + "\n".join(str(p) for p in exc.problems)) from None
    stop = trio.Event()
    watcher = Watcher(stop)  # one for the policy and the runtime state
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
    runtime, problems = loaded.runtime, loaded.problems
    if problems:
        raise StartupError(
            "invalid runtime state (fix or remove the file):\n"
            + "\n".join(f"{store.where}/{p}" for p in problems)
        )
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
    current = Current(Snapshot.build(policy, runtime, generation=1))
    gc.freeze()  # the policy just loaded lives on and holds no cycles: not the collector's
    current.degraded = store.degraded

    def on_degraded(degraded: bool, reason: str) -> None:
        current.degraded = degraded
        notifier.status(current.status_line(clock()))

    store.on_degraded = on_degraded
    current.last_reload = ReloadResult(ok=True, at=clock(), generation=1, files=policy.files)
    events = Broadcaster()
    mutations = Mutations(current, store, events, clock=clock)
    reloader = Reloader(reader, current, events, notifier, clock=clock, tokens=token_file)
    metrics = Metrics(current, clock)
    events.listeners.append(metrics.on_event)
    gid = admin_gid(config)
    router = Router(
        may_change=lambda peer: may_change(peer, gid),
        on_response=metrics.answered,
    )
    add_admin_routes(
        router, current=current, mutations=mutations, reload=reloader.reload, metrics=metrics,
        clock=clock,
    )
    add_check_routes(router, current=current, events=events, metrics=metrics, clock=clock)

    def file_time(source: str) -> float:
        """When the policy file behind ``source`` ("name:line") last changed."""
        return reader.mtimes.get(source.rpartition(":")[0] or source, current.started)

    add_qstash_routes(router, current=current, mutations=mutations, file_time=file_time, clock=clock)
    add_hookbridge_routes(router, current=current, mutations=mutations, file_time=file_time)
    sockets = open_sockets(config)
    limits = Limits()
    drain = Drain()
    # Postfix connections have their own count, so many smtpd processes
    # cannot crowd out the admin API's 256.
    postfix_limits = Limits(max_connections=1024)
    postfix_drain = Drain()

    async def handle_admin(stream: trio.SocketStream) -> None:
        try:
            peer = unix_peer(stream.socket)
        except OSError:
            peer = Peer()
        await serve_connection(stream, router.dispatch, peer, limits, drain)

    tcp_limits = Limits()
    tcp_drain = Drain()
    tcp_dispatch = functools.partial(
        router.dispatch, authenticate=TcpAuth(trusted, lambda: token_file.current)
    )

    async def handle_tcp(stream: trio.SocketStream) -> None:
        try:
            address = stream.socket.getpeername()[0]
        except OSError:
            return
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
            with trio.move_on_after(limits.request_timeout) as handshake:
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError:
                    log.info("tls_handshake_failed", peer=address)
                    return
            if handshake.cancelled_caught:
                await trio.aclose_forcefully(stream)
                return
        await serve_connection(stream, tcp_dispatch, Peer(address=address), tcp_limits, tcp_drain)

    async def handle_postfix(stream: trio.SocketStream) -> None:
        await serve_postfix_connection(stream, current, config.postfix, clock, postfix_drain)

    async def on_policy_change(batch) -> None:
        await reloader.reload("watch")

    try:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as received:
            async with trio.open_nursery() as background:
                policy_changes = watcher.tree(config.policy_path, token_file.path)
                await background.start(follow, debounced(policy_changes, delay), on_policy_change)
                await background.start(
                    functools.partial(store.follow, mutations.apply_changes, stop=stop)
                )
                await background.start(watcher.run)
                await background.start(_sweeper, mutations, clock)
                interval = watchdog_interval()
                if interval:
                    await background.start(_watchdog, notifier, interval)

                async with trio.open_nursery() as connections:
                    listeners = trio.CancelScope()

                    async def run_listeners(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
                        with listeners:
                            async with trio.open_nursery() as accepting:
                                if sockets.admin is not None:
                                    listener = trio.SocketListener(
                                        trio.socket.from_stdlib_socket(sockets.admin)
                                    )
                                    await accepting.start(
                                        serve_listener, listener, handle_admin, limits, drain,
                                        connections,
                                    )
                                if sockets.http is not None:
                                    listener = trio.SocketListener(
                                        trio.socket.from_stdlib_socket(sockets.http)
                                    )
                                    await accepting.start(
                                        serve_listener, listener, handle_tcp, tcp_limits,
                                        tcp_drain, connections,
                                    )
                                for sock in (sockets.postfix, sockets.postfix_tcp):
                                    if sock is not None:
                                        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                                        await accepting.start(
                                            functools.partial(
                                                serve_listener, refuse=refuse_postfix
                                            ),
                                            listener, handle_postfix, postfix_limits,
                                            postfix_drain, connections,
                                        )
                                task_status.started()

                    await connections.start(run_listeners)
                    notifier.ready(current.status_line(clock()))
                    log.info(
                        "ready",
                        version=__version__,
                        generation=current.snapshot.generation,
                        admin=str(config.admin_socket),
                        postfix=str(config.postfix_socket) if sockets.postfix is not None else None,
                        postfix_listen=config.postfix.listen or None,
                        http_listen=config.http.listen or None,
                        files=list(policy.files),
                    )
                    task_status.started(current)

                    async for signum in received:
                        if signum == signal.SIGHUP:
                            background.start_soon(reloader.reload, "SIGHUP")
                            continue
                        log.info("stopping", signal=signal.Signals(signum).name)
                        notifier.stopping()
                        break
                    listeners.cancel()
                    for path in sockets.bound:
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
                    events.close()  # event streams say "shutdown" and end
                    drain.start()  # idle connections close; requests in flight finish
                    postfix_drain.start()
                    tcp_drain.start()
                    with trio.move_on_after(GRACE):
                        await drain.wait_empty()
                        await tcp_drain.wait_empty()
                        await postfix_drain.wait_empty()
                    connections.cancel_scope.cancel()
                stop.set()
                background.cancel_scope.cancel()
            await store.aclose()
        # Shutdown is under way: a second SIGTERM must not turn exit 0 into a kill.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        for path in sockets.bound:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        notifier.close()
    log.info("stopped")


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
    try:
        # log lines are written once per pass of the event loop
        trio.run(serve, config, instruments=[logs.OUTPUT])
    except StartupError as exc:
        print(f"sluiced: {exc}", file=sys.stderr)
        log.error("startup_failed", error=str(exc))
        return EX_CONFIG
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
