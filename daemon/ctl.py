"""sluicectl: the operator's command line.

Exit codes: 0 done, 1 refused (by the daemon, or an invalid policy), 2 usage,
3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from policy.errors import PolicyLoadError
from policy.files import combine

from .config import ConfigError, load_config
from .policy_dir import PolicyReader

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_CONFIG = "/etc/sluice/sluiced.toml"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def validate(directory: Path, out=sys.stdout, err=sys.stderr) -> int:
    """Check a policy directory offline, as the daemon would load it.

    Prints one summary line per file and returns 0, or prints every problem
    to ``err`` and returns 1. Suspensions already expired are noted, not
    refused: they simply no longer match.
    """
    reader = PolicyReader(directory)
    try:
        files = reader.read()
        policy = combine(files)
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(problem, file=err)
        print(
            f"{directory}: invalid: {_plural(len(exc.problems), 'problem')}",
            file=err,
        )
        return EXIT_REFUSED
    now = time.time()
    for f in files:
        c = f.counts()
        print(
            f"{f.name}: ok, {_plural(c['suspensions'], 'suspension')}, "
            f"{_plural(c['queues'], 'queue')}, {_plural(c['schedules'], 'schedule')}, "
            f"{_plural(c['endpoints'], 'endpoint')}",
            file=out,
        )
    for s in policy.suspensions:
        if not s.is_active(now):
            print(
                f"{s.source}: note: suspension {s.id} expired at "
                f"{s.expires.isoformat()} and no longer matches",
                file=err,
            )
    if not files:
        print(f"{directory}: ok, no policy files", file=out)
    return EXIT_OK


def _policy_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    config = load_config(args.config)
    return config.policy_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluicectl", description="Control and query the sluice delivery-policy daemon."
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("SLUICE_CONFIG", DEFAULT_CONFIG),
        help="sluiced.toml, for commands that need it (env SLUICE_CONFIG)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    v = commands.add_parser("validate", help="check policy files offline")
    v.add_argument("dir", nargs="?", help="policy directory (default: the config's policy_dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            return validate(_policy_dir(args))
    except ConfigError as exc:
        print(f"sluicectl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
