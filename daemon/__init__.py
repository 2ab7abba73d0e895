"""sluiced and sluicectl: the trio shell around the ``sluice.policy`` core.

    config       sluiced.toml
    logs         structlog set-up
    systemd      sd_notify, watchdog, socket activation
    policy_dir   reading the policy directory, parsing only what changed
    current      the snapshot in force, its generation and the last reload
    events       change broadcast with bounded per-consumer buffers
    state/       runtime state on disk
    mutations    the one way to change runtime state
    reload       watcher, debounce, SIGHUP -> parse off-loop -> swap
    postfix      the Postfix policy delegation protocol
    http/        h11 adapter, route table, error envelope, routes
    main         sluiced: arguments, the nursery tree, signals
    ctl          sluicectl
"""

from importlib.metadata import version

__version__ = version("sluice")  # one source: pyproject.toml
