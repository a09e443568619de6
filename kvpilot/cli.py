"""`kvpilot` command line. Each subcommand lives in `kvpilot.commands.<name>` with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

# One line per command module; each adds its own subcommands and sets `func` on its parser.
COMMAND_MODULES = [
    "kvpilot.commands.demo",
    "kvpilot.commands.db",
    "kvpilot.commands.configs",
    "kvpilot.commands.canary",
    "kvpilot.commands.eval",
    "kvpilot.commands.dashboard",
    "kvpilot.commands.probe",
    "kvpilot.commands.profile",
    "kvpilot.commands.tune",
    "kvpilot.commands.replay",
    "kvpilot.commands.surrogate",
    "kvpilot.commands.vllm",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvpilot",
        description="Observe and tune the KV cache of a running LLM engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def check_db_url(db: str | None) -> None:
    """`sqlite:` followed by a single slash is neither a URL (`sqlite:///`) nor a plain path; without this check
    it would silently become a file named `sqlite:` in the current folder."""
    import os
    import re

    from kvpilot.errors import KVPilotError

    for where, url in (("--db", db), ("KVPILOT_DB", None if db else os.environ.get("KVPILOT_DB"))):
        m = re.match(r"^\s*sqlite:/?(?!/)(.*)$", url or "")
        if m:
            path = m.group(1)
            raise KVPilotError(f"{where} {url!r} is not a SQLite URL: write sqlite:///{path} for a path relative to "
                               f"the current folder, sqlite:////{path.lstrip('/')} for an absolute one, or just the path")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from kvpilot.errors import report_user_error

    try:
        check_db_url(getattr(args, "db", None))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors get one clear line; real bugs keep their traceback
        code = report_user_error(exc)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
