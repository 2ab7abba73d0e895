"""sluicectl: the operator's command line.

A client of sluiced's admin API on its unix socket (``daemon.client``), never
a second implementation of the policy; plus two offline commands, ``validate``
and ``edit``, that use the daemon's own policy reader.

Exit codes: 0 done, 1 refused (by the daemon, or an invalid policy), 2 usage,
3 daemon unreachable. Errors become exit codes here, in ``main``, and only
here.

The socket is, first found: ``--socket``; the ``[admin] socket`` of a config
given with ``--config``; ``$SLUICE_SOCKET``; that of ``$SLUICE_CONFIG``; that
of /etc/sluice/sluiced.toml if it exists; /run/sluice/admin.sock. Flags beat
the environment, the environment beats defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sluice.policy.duration import format_duration
from sluice.policy.times import rfc3339
from sluice.policy.tokens import NAME as TOKEN_NAME
from sluice.policy.tokens import new_token

from . import __version__
from .client import AdminClient, Refused, Reply, Unreachable
from .config import Config, ConfigError, load_config
from .offline import edit, plural, validate

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
DEFAULT_CONFIG = "/etc/sluice/sluiced.toml"
DEFAULT_SOCKET = "/run/sluice/admin.sock"
DEFAULT_MAIL_LOG = "/var/log/mail.log"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Aligned columns; an empty cell is '-'; the last column is not padded."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        line = "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths))
        print(f"{line}  {row[-1]}" if line else row[-1], file=out)


def matches(s: dict[str, Any]) -> str:
    """A suspension's criteria, compactly: ``tenant=acme domain=gmail.com``, ``queues=a,b``."""
    if s.get("everything"):
        return "everything"
    if s.get("queue_names"):
        return "queues=" + ",".join(s["queue_names"])
    return " ".join(f"{k}={s[k]}" for k in ("campaign", "tenant", "domain") if s.get(k) is not None)


def _when(iso: str | None) -> str | None:
    """An API time, to the second."""
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return rfc3339(moment, "seconds")


def _hold(h: dict[str, Any]) -> str:
    where = [h["kind"].replace("_", " "), h.get("source") or "?"]
    if h.get("expires"):
        where.append(f"until {_when(h['expires'])}")
    return f"{h.get('reason') or 'no reason given'} [{', '.join(where)}]"


def decision_text(d: dict[str, Any]) -> str:
    """``deliver`` (or ``run`` for a schedule), else ``held: <reasons>``."""
    go = d["run"] if "schedule" in d else d["deliver"]
    if go:
        word = "run" if "schedule" in d else "deliver"
        return f"{word} (parallelism {d['parallelism']})" if d.get("parallelism") else word
    text = "held: " + "; ".join(_hold(h) for h in d.get("holds", ()))
    if d.get("retry_after") is not None:
        text += f" (retry after {format_duration(d['retry_after'])})"
    return text


def event_text(e: dict[str, Any]) -> str:
    """One event of the stream as a line: time, generation, name, its fields."""
    at = e.get("at")
    if isinstance(at, (int, float)):  # seconds since the epoch, as the first daemons sent it
        when = rfc3339(at, "seconds")
    else:
        when = _when(at) if isinstance(at, str) else "-"
    parts = [when, f"gen {e.get('generation', '-')}", str(e.get("event", "?"))]
    for key, value in e.items():
        if key in ("at", "generation", "event") or value is None:
            continue
        if key == "changes" and isinstance(value, list):
            value = ", ".join(f"{c.get('action')} {c.get('kind')} {c.get('key')}" for c in value) or "none"
        elif key == "errors" and isinstance(value, list):
            value = "; ".join(map(str, value))
        elif not isinstance(value, str):
            value = json.dumps(value)
        parts.append(f"{key}={json.dumps(value) if (' ' in value or not value) else value}")
    return " ".join(parts)


# -- commands that ask the daemon -------------------------------------------------------
#
# Each takes the parsed arguments, a client and stdout, and returns an exit
# code; with --json each prints the API's answer as the daemon sent it.


def _print_json(reply: Reply, out: TextIO) -> None:
    out.write(reply.text if reply.text.endswith("\n") else reply.text + "\n")


def cmd_suspend(args, client: AdminClient, out: TextIO) -> int:
    body: dict[str, Any] = {
        k: getattr(args, k) for k in ("campaign", "tenant", "domain") if getattr(args, k) is not None
    }
    if args.queue:
        body["queue_names"] = args.queue
    if args.everything:
        body["everything"] = True
    body["reason"] = args.reason
    if args.duration is not None:
        body["duration"] = args.duration
    if args.expires is not None:
        body["expires"] = args.expires
    reply = client.suspend(body)
    if args.json:
        _print_json(reply, out)
        return EXIT_OK
    how = f", for {args.duration}" if args.duration else f", until {args.expires}" if args.expires else ""
    print(f"suspension {reply.data['id']}: {matches(body)}{how}", file=out)
    return EXIT_OK


def cmd_suspend_list(args, client: AdminClient, out: TextIO) -> int:
    reply = client.suspensions()
    if args.json:
        _print_json(reply, out)
    elif not reply.data:
        print("no active suspensions", file=out)
    else:
        rows = [
            (s["id"], matches(s), s["duration"] if s.get("expires") else None, s.get("source"), s.get("reason"))
            for s in reply.data
        ]
        table(("ID", "MATCHES", "REMAINING", "SOURCE", "REASON"), rows, out)
    return EXIT_OK


def cmd_suspend_cancel(args, client: AdminClient, out: TextIO) -> int:
    reply = client.cancel_suspension(args.id)
    if args.json:
        _print_json(reply, out)
    else:
        print(f"suspension {args.id}: cancelled", file=out)
    return EXIT_OK


# (noun for messages, path word, how the answer says whether it is paused)
_KINDS: dict[str, tuple[str, str, Callable[[Any], bool]]] = {
    "queue": ("queue", "queues", lambda d: bool(d.get("paused"))),
    "schedule": ("schedule", "schedules", lambda d: bool(d.get("paused"))),
    "endpoint": ("endpoint", "endpoints", lambda d: bool(d["data"]["paused"])),
    "flow_control": ("flow-control key", "flow-controls", lambda d: bool(d.get("paused"))),
}


def _pause_or_resume(kind: str, pause: bool) -> Callable[..., int]:
    noun, path, is_paused = _KINDS[kind]

    def run(args, client: AdminClient, out: TextIO) -> int:
        reply = client.pause(path, args.name, args.reason) if pause else client.resume(path, args.name)
        if args.json:
            _print_json(reply, out)
        else:
            name = reply.data.get("name", args.name) if kind == "queue" else args.name
            print(f"{noun} {name}: {'paused' if is_paused(reply.data) else 'resumed'}", file=out)
        return EXIT_OK

    return run


def _state(item: dict[str, Any]) -> str:
    return "paused" if item["paused"] else "active"


def _lister(
    path: str,
    empty: str,
    headers: tuple[str, ...],
    row: Callable[[dict[str, Any]], tuple],
    items: Callable[[Any], list] = lambda data: data,
) -> Callable[..., int]:
    """A list command: the admin API's listing at ``path``, as a table (or its JSON)."""

    def run(args, client: AdminClient, out: TextIO) -> int:
        reply = client.listing(path)
        listed = items(reply.data)
        if args.json:
            _print_json(reply, out)
        elif not listed:
            print(empty, file=out)
        else:
            table(headers, [row(item) for item in listed], out)
        return EXIT_OK

    return run


cmd_list_queues = _lister(
    "queues", "no paused queues", ("QUEUE", "SINCE", "PARALLELISM", "SOURCE", "REASON"),
    lambda q: (q["name"], _when(q.get("updated_at")), q.get("parallelism"), q.get("source"), q.get("reason")),
)
cmd_list_schedules = _lister(
    "schedules", "no schedules", ("ID", "STATE", "CRON", "NEXT", "PAUSED-BY", "SOURCE", "REASON"),
    lambda s: (s["id"], _state(s), s.get("cron"), _when(s.get("next_fire")), s.get("paused_by"),
               s.get("source"), s.get("reason")),
)
cmd_list_endpoints = _lister(
    "endpoints", "no endpoints", ("ID", "STATE", "URL", "PAUSED-BY", "SOURCE", "REASON"),
    lambda e: (e["id"], _state(e), e.get("url"), e.get("paused_by"), e.get("source"), e.get("reason")),
    items=lambda data: data["data"],
)
cmd_list_flow_controls = _lister(
    "flow-controls", "no flow-control keys held", ("KEY", "STATE", "PARALLELISM", "RATE", "SOURCE", "REASON"),
    lambda c: (c["key"], _state(c), c.get("parallelism"),
               f"{c['rate']}/{c['period']}s" if c.get("rate") else None, c.get("source"), c.get("reason")),
)

# What ``check`` may be asked about, each its own option (a queue is the positional one).
CHECK_KINDS = ("queue", "schedule", "endpoint", "flow_control")


def cmd_check(args, client: AdminClient, out: TextIO) -> int:
    (kind,) = [k for k in CHECK_KINDS if getattr(args, k) is not None]
    reply = client.check(**{kind: getattr(args, kind)})
    if args.json:
        _print_json(reply, out)
    else:
        print(decision_text(reply.data), file=out)
    return EXIT_OK


def cmd_status(args, client: AdminClient, out: TextIO) -> int:
    reply = client.status()
    if args.json:
        _print_json(reply, out)
        return EXIT_OK
    s = reply.data
    print(
        f"sluiced {s['version']}, up {format_duration(s['uptime'])}, generation {s['generation']}",
        file=out,
    )
    print(f"policy files: {', '.join(s['files']) or 'none'}", file=out)
    last = s.get("last_reload")
    if last:
        if last["ok"]:
            print(f"last reload: ok at {last['at']} (generation {last['generation']})", file=out)
        else:
            print(f"last reload: FAILED at {last['at']}; the previous policy is in force:", file=out)
            for error in last["errors"]:
                print(f"  {error}", file=out)
    c = s["counts"]
    print(
        f"in force: {plural(c['suspensions'], 'suspension')}, "
        f"{plural(c['paused_queues'], 'paused queue')}, "
        f"{c['paused_schedules']} of {plural(c['schedules'], 'schedule')} paused, "
        f"{c['paused_endpoints']} of {plural(c['endpoints'], 'endpoint')} paused",
        file=out,
    )
    if s.get("degraded"):
        print("state store: DEGRADED (serving the last state it had; changes are refused)", file=out)
    return EXIT_OK


def cmd_reload(args, client: AdminClient, out: TextIO) -> int:
    reply = client.reload()
    if args.json:
        _print_json(reply, out)
    else:
        r = reply.data
        print(
            f"reloaded: generation {r['generation']}, {plural(r['changes'], 'change')}, "
            f"{plural(len(r['files']), 'file')}",
            file=out,
        )
    return EXIT_OK


def cmd_watch(args, client: AdminClient, out: TextIO) -> int:
    try:
        for line in client.events():
            if args.json:
                print(line, file=out, flush=True)
                continue
            try:
                event = json.loads(line)
            except ValueError:
                print(line, file=out, flush=True)
                continue
            print(event_text(event), file=out, flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


# -- arguments ---------------------------------------------------------------------------


def _common(sub: bool) -> argparse.ArgumentParser:
    """Options taken before or after the command (after it, they win)."""
    quiet = argparse.SUPPRESS if sub else None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--socket", default=quiet, metavar="PATH",
        help=f"the admin socket (env SLUICE_SOCKET; default: the config's, else {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--config", default=quiet, metavar="FILE",
        help="sluiced.toml, for the socket and the policy directory "
        f"(env SLUICE_CONFIG; default {DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if sub else False,
        help="print the API's JSON as the daemon sent it, for scripts",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluicectl",
        description="Control and query the sluice delivery-policy daemon.",
        epilog="Exit codes: 0 done, 1 refused (by the daemon, or an invalid policy), "
        "2 usage, 3 daemon unreachable.",
        parents=[_common(sub=False)],
    )
    parser.add_argument("--version", action="version", version=f"sluicectl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_common(sub=True)]

    def command(name: str, run: Callable[..., int] | None, help: str, **kw) -> argparse.ArgumentParser:
        description = kw.pop("description", help)
        p = commands.add_parser(name, help=help, description=description, parents=common, **kw)
        p.set_defaults(run=run)
        return p

    _add_change_commands(command)
    _add_query_commands(command)
    _add_follow_command(command)
    _add_offline_commands(command, commands, common)
    return parser


Command = Callable[..., argparse.ArgumentParser]


def _add_change_commands(command: Command) -> None:
    """Commands that change the runtime: suspend, cancel, pause, resume."""
    p = command(
        "suspend", cmd_suspend, "suspend delivery to matching queues",
        description="Suspend delivery to the queues that match. A suspension with the same "
        "criteria as an active one updates it (new reason and expiry) and keeps its id.",
    )
    p.add_argument("--domain")
    p.add_argument("--campaign")
    p.add_argument("--tenant")
    p.add_argument("--queue", action="append", metavar="NAME", help="an exact queue name (repeatable)")
    p.add_argument("--everything", action="store_true", help="every queue")
    p.add_argument("--reason", required=True)
    until = p.add_mutually_exclusive_group()
    until.add_argument(
        "--duration", help="how long: 5m, '1 hour', 2h37m, or seconds (the daemon's default: 5m)"
    )
    until.add_argument("--expires", metavar="TIME", help="until when: RFC 3339 with an offset")

    command("suspend-list", cmd_suspend_list, "list active suspensions")
    p = command("suspend-cancel", cmd_suspend_cancel, "cancel a runtime suspension")
    p.add_argument("id", metavar="ID")

    for kind in ("queue", "schedule", "endpoint", "flow_control"):
        what = {"queue": "NAME", "flow_control": "KEY"}.get(kind, "ID")
        noun = _KINDS[kind][0]
        a = "an" if kind == "endpoint" else "a"
        name = kind.replace("_", "-")
        p = command(f"pause-{name}", _pause_or_resume(kind, True), f"pause {a} {noun}")
        p.add_argument("name", metavar=what)
        p.add_argument("--reason")
        p = command(f"resume-{name}", _pause_or_resume(kind, False), f"resume {a} {noun}")
        p.add_argument("name", metavar=what)


def _add_query_commands(command: Command) -> None:
    """Commands that ask the daemon: lists, check, status, reload, watch."""
    command("list-queues", cmd_list_queues, "list paused queues")
    command("list-schedules", cmd_list_schedules, "list schedules")
    command("list-endpoints", cmd_list_endpoints, "list endpoints")
    command("list-flow-controls", cmd_list_flow_controls, "list held flow-control keys (QStash)")

    p = command(
        "check", cmd_check, "the delivery decision for a queue, schedule or endpoint",
        description="Print the delivery decision: 'deliver' (a schedule: 'run') or "
        "'held: <reasons>'. Exits 0 either way: a hold is an answer, not a refusal; "
        "scripts read the decision from the output or from --json.",
    )
    p.add_argument("queue", nargs="?", metavar="QUEUE")
    p.add_argument("--schedule", metavar="ID")
    p.add_argument("--endpoint", metavar="ID")
    p.add_argument("--flow-control", dest="flow_control", metavar="KEY")
    p.set_defaults(usage=p)

    command("status", cmd_status, "the daemon's state: generation, files, last reload, counts")
    command("reload", cmd_reload, "reload the policy files now")
    command(
        "watch", cmd_watch, "follow the events stream",
        description="Print one line per policy change as it happens, or the stream's JSON "
        "lines with --json. Ends when the daemon ends the stream; ctrl-C exits 0.",
    )



def _add_follow_command(command: Command) -> None:
    p = command(
        "follow-postfix-log", None, "post a Postfix mail log's delivery outcomes to automation",
        description="Follow a Postfix mail log as 'tail -F' does (rotation and truncation "
        "included) and post each deferral and bounce the remote answered, joined by queue id "
        "to its message's sasl_username, to the daemon's automation (POST /publish_log_v1). "
        "Where it stopped is kept in a state file, so a restart goes on from there and posts "
        "nothing twice; with no state it starts at the log's end. While the daemon is away it "
        "waits and posts the same batch again. '-' reads standard input to its end (no state). "
        "Stopped by SIGTERM or ctrl-C, it exits 0.",
        epilog="The state file is, unless --state says: <state_dir>/follow-postfix-log.<the "
        "log's path, / as ->.json, state_dir being the config's (default /var/lib/sluice); "
        "the tenant of a SASL login user@realm is user unless the config's [postfix] "
        "strip_realm is false, as at the policy socket.",
    )
    p.add_argument("file", nargs="?", default=DEFAULT_MAIL_LOG, metavar="FILE|-",
                   help=f"the mail log (default {DEFAULT_MAIL_LOG}); '-' for standard input")
    p.add_argument("--state", metavar="FILE", help="where the position is kept (default: see below)")
    p.add_argument("--from-start", action="store_true",
                   help="with no state, read the log from its start rather than its end")
    p.add_argument("--batch", type=_positive, default=500, metavar="N",
                   help="at most N outcomes a request (default 500)")
    p.add_argument("--max-queue-ids", type=_positive, default=100_000, metavar="N",
                   help="remember the tenants of at most N queued messages (default 100000)")
    p.add_argument("--poll", type=float, default=0.25, metavar="SECONDS",
                   help="how often an idle log is looked at (default 0.25)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def follow_postfix_log(args: argparse.Namespace) -> int:
    """sluicectl follow-postfix-log: runs until stopped (a file) or to the end of stdin."""
    from sluice.policy.postfix_log import Joiner

    from .follow import Guard, LogFile, Publisher, StateFile, Stopped, default_state_path, follow, stdin_lines
    from .logs import configure

    configure("auto", args.log_level)
    path, asked = _config_path(args)
    config = load_config(path) if asked or Path(path).exists() else Config()
    guard = Guard()
    guard.install()
    state = None
    if args.file != "-":
        log_path = Path(args.file)
        state = StateFile(Path(args.state) if args.state else default_state_path(config.state_path, log_path))
    try:
        with AdminClient(admin_socket(args)) as client:
            publisher = Publisher(client, guard)
            if state is None:
                joiner = Joiner(max_queue_ids=args.max_queue_ids, strip_realm=config.postfix.strip_realm)
                follow(stdin_lines(sys.stdin.buffer), joiner, publisher, None, batch=args.batch)
                return EXIT_OK
            stored = state.load()
            joiner = Joiner(
                () if stored is None else stored.tenants.items(),
                max_queue_ids=args.max_queue_ids,
                strip_realm=config.postfix.strip_realm,
            )
            source = LogFile(log_path, poll=args.poll)
            source.start(None if stored is None else stored.position, from_start=args.from_start)
            follow(source.lines(), joiner, publisher, state, batch=args.batch)
    except Stopped:
        pass
    except OSError as exc:
        where = exc.filename or args.file
        print(f"sluicectl: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _add_offline_commands(command: Command, commands: Any, common: list) -> None:
    """Commands that work without the daemon: validate, edit, token, state."""
    p = command("validate", None, "check policy files offline")
    p.add_argument("dir", nargs="?", help="policy directory (default: the config's policy_dir)")
    p = command(
        "edit", None, "edit a policy file safely (visudo-style)",
        description="Edit a copy of FILE with $VISUAL, $EDITOR or vi; install it atomically "
        "only if the policy directory, with it in place of FILE, is valid; otherwise show "
        "the problems and ask whether to edit again. FILE may be new.",
    )
    p.add_argument("file", metavar="FILE")
    token = commands.add_parser("token", help="tokens for the TCP listener")
    token_commands = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    p = token_commands.add_parser(
        "new", parents=common, help="make a token: print it once, and the entry to add",
        description="Print a fresh random token (shown only this once) and the [[token]] "
        "entry, holding only its sha256, to add to the tokens file.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", choices=("admin", "read"), default="read")
    state = commands.add_parser("state", help="move runtime state between backends")
    state_commands = state.add_subparsers(dest="state_command", metavar="COMMAND", required=True)
    p = state_commands.add_parser(
        "export", parents=common, help="write the configured backend's runtime state out",
        description="Write the runtime state of the backend in the config ([state]) to TARGET: "
        "'-' (stdout) or a *.toml file for one document, any other path for a directory "
        "of one file per entry. Run it while the daemon is stopped, or accept a moment's view.",
    )
    p.add_argument("target", nargs="?", default="-", metavar="TARGET")
    p = state_commands.add_parser(
        "import", parents=common, help="write runtime state into the configured backend",
        description="Write the entries in SOURCE ('-', a TOML document, or a directory) into "
        "the backend in the config. Every entry is checked before anything is written.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--replace", action="store_true", help="remove stored entries not in SOURCE")


def state_transfer(args: argparse.Namespace) -> int:
    """sluicectl state export / import; the counts go to stderr, the data to its target."""
    from .state.transfer import StoreUnreachable, TransferError, export_state, import_state

    config = load_config(_config_path(args)[0])
    try:
        if args.state_command == "export":
            count = export_state(config.store_settings(), args.target)
            print(f"exported {count} entries", file=sys.stderr)
        else:
            count = import_state(config.store_settings(), args.source, replace=args.replace)
            print(f"imported {count} entries", file=sys.stderr)
    except StoreUnreachable as exc:
        print(f"sluicectl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TransferError as exc:
        print(f"sluicectl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def token_new(name: str, role: str, out: TextIO) -> int:
    """Print a new token and its tokens-file entry; the token is not kept anywhere."""
    if not TOKEN_NAME.match(name):
        print("sluicectl: NAME must be letters, digits, '.', '_', '@' or '-' (at most 64)", file=sys.stderr)
        return EXIT_USAGE
    token, digest = new_token()
    print(f"token (shown once; give it to {name}):\n  {token}\n", file=out)
    print("add to the tokens file:\n", file=out)
    print(f'[[token]]\nname = "{name}"\nsha256 = "{digest}"\nrole = "{role}"', file=out)
    return EXIT_OK


def _config_path(args: argparse.Namespace) -> tuple[str, bool]:
    """The config file to read, and whether it was asked for (not the default)."""
    if args.config:
        return args.config, True
    if os.environ.get("SLUICE_CONFIG"):
        return os.environ["SLUICE_CONFIG"], True
    return DEFAULT_CONFIG, False


def admin_socket(args: argparse.Namespace) -> Path:
    """Which socket to speak to (see the module docstring); raises ConfigError."""
    if args.socket:
        return Path(args.socket)
    if not args.config and os.environ.get("SLUICE_SOCKET"):
        return Path(os.environ["SLUICE_SOCKET"])
    path, asked = _config_path(args)
    if asked or Path(path).exists():
        return load_config(path).admin_socket or Path(DEFAULT_SOCKET)
    return Path(DEFAULT_SOCKET)


def _policy_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    return load_config(_config_path(args)[0]).policy_path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    asked = [getattr(args, k, None) for k in CHECK_KINDS]
    if args.command == "check" and sum(v is not None for v in asked) != 1:
        args.usage.error("give exactly one of QUEUE, --schedule ID, --endpoint ID or --flow-control KEY")
    try:
        if args.command == "validate":
            return validate(_policy_dir(args))
        if args.command == "edit":
            return edit(Path(args.file))
        if args.command == "state":
            return state_transfer(args)
        if args.command == "follow-postfix-log":
            return follow_postfix_log(args)
        if args.command == "token":
            return token_new(args.name, args.role, sys.stdout)
        with AdminClient(admin_socket(args)) as client:
            return args.run(args, client, sys.stdout)
    except ConfigError as exc:
        print(f"sluicectl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        if args.json:
            sys.stdout.write(exc.body if exc.body.endswith("\n") else exc.body + "\n")
        print(f"sluicectl: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except Unreachable as exc:
        print(f"sluicectl: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (| head): not an error; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
