"""Errors meant for the user: printed as one clear message by the CLI, never as a bare traceback.

This is the bottom of the package: it imports nothing from kvpilot. Every area's user-facing errors
derive from `KVPilotError` (e.g. `KVConfigError(KVPilotError, ValueError)`), which is how the CLI
recognises them without knowing the areas.
"""

from __future__ import annotations

import sys


class KVPilotError(Exception):
    """Base class of errors whose message tells the user what to fix."""


# Besides KVPilotError: a missing file (a model directory, a workload file) is the user's to fix too.
USER_ERRORS: tuple[type[BaseException], ...] = (KVPilotError, FileNotFoundError)


def report_user_error(exc: BaseException) -> int | None:
    """Print a user-facing error and return an exit code, or None if it is a bug to re-raise."""
    if isinstance(exc, USER_ERRORS):
        print(f"kvpilot: error: {exc}", file=sys.stderr)
        return 2
    return None
