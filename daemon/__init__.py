"""sluiced and sluicectl: the trio shell around the ``sluice.policy`` core.

    config       sluiced.toml
    logs         structlog set-up
    systemd      sd_notify, watchdog, socket activation
    policy_dir   reading the policy directory, parsing only what changed
    parsing      parsing off the loop: large files in child processes (parse_child)
    current      the snapshot in force, its generation and the last reload
    events       change broadcast with bounded per-consumer buffers
    state/       runtime state behind one interface: files on this host, or etcd
    mutations    the one way to change runtime state
    reload       watcher, debounce, SIGHUP -> parse off-loop -> swap
    serving      what every listener shares: connection counts, caps, drain
    postfix      the Postfix policy delegation protocol
    http/        message types, the h11 connection loop, listeners, routes
    main         sluiced: build the app, serve its listeners, signals
    ctl          sluicectl
"""

import functools


@functools.cache
def _version() -> str:
    from importlib.metadata import version

    return version("sluice")  # one source: pyproject.toml


def __getattr__(name: str) -> str:
    # ``__version__`` looked up when asked for: importing importlib.metadata and
    # finding the distribution takes 30 ms that a policy parser process never needs
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
