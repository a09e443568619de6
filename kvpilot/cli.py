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
    """`sqlite:` followed by a single slash is neither a URL (`sqlite:///`) nor a plain path: one clear error
    naming where it came from (Store.open raises the same error without the `--db` / `KVPILOT_DB` label)."""
    import os

    from kvpilot.storage.errors import BadDatabaseURLError
    from kvpilot.storage.url import ENV_VAR, one_slash_sqlite_message

    for where, url in (("--db", db), (ENV_VAR, None if db else os.environ.get(ENV_VAR))):
        if url and (problem := one_slash_sqlite_message(url, where)):
            raise BadDatabaseURLError(problem)


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
