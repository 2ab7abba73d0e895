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

from importlib.metadata import version

__version__ = version("sluice")  # one source: pyproject.toml
