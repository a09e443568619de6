"""Errors meant for the user: printed as one clear message by the CLI, never as a bare traceback."""

from __future__ import annotations

import sys


class KVPilotError(Exception):
    """Base class of errors whose message tells the user what to fix."""


def report_user_error(exc: BaseException) -> int | None:
    """Print a user-facing error and return an exit code, or None if it is a bug to re-raise."""
    from kvpilot.config import KVConfigError
    from kvpilot.engine.model import ModelNotFoundError

    if isinstance(exc, (KVPilotError, KVConfigError, ModelNotFoundError, FileNotFoundError)):
        print(f"kvpilot: error: {exc}", file=sys.stderr)
        return 2
    return None
