"""Storage errors. Each message says what went wrong and how to fix it; the CLI prints it as one line."""

from __future__ import annotations

from kvpilot.errors import KVPilotError


class StoreError(KVPilotError):
    """Base class of every error the store raises on purpose."""


class BadDatabaseURLError(StoreError):
    """The database URL has a scheme or form kvpilot cannot use."""


class DatabaseUnavailableError(StoreError):
    """The database server cannot be reached, or the SQLite file cannot be opened."""


class SchemaError(StoreError):
    """The database schema does not match this version of kvpilot."""


class SchemaOutdatedError(SchemaError):
    """The database was created by an older kvpilot; `kvpilot db upgrade` migrates it."""


class SchemaTooNewError(SchemaError):
    """The database was migrated by a newer kvpilot than this one."""


class NotFoundError(StoreError, LookupError):
    """A deployment, instance, run or config version does not exist."""


class CorruptConfigError(StoreError):
    """A stored config version cannot be parsed back into a KVConfig."""

    def __init__(self, deployment: str, version: int, problem: str):
        self.deployment = deployment
        self.version = version
        self.problem = problem
        super().__init__(
            f"config version {version} of deployment {deployment!r} in the database is corrupt ({problem}); "
            f"push a good config with `kvpilot push --deployment {deployment} --config FILE` "
            f"or go back with `kvpilot rollback --deployment {deployment}`"
        )


class RegistryError(StoreError):
    """A control-plane operation cannot be done (e.g. nothing to roll back to)."""
