"""What differs between SQLite and PostgreSQL, behind one small interface (like Optuna's storages).

The `Store` is written once against `Backend`; each backend module holds only what its database does
differently: connection setup, how a write transaction starts, bulk loading, time bucketing and
notifications.
"""

from __future__ import annotations

from sqlalchemy.engine import URL

from kvpilot.storage.backends.base import Backend, Listener


def backend_for(url: URL) -> Backend:
    """The backend for a checked URL (see `kvpilot.storage.url.resolve_url`)."""
    if url.get_backend_name() == "sqlite":
        from kvpilot.storage.backends.sqlite import SQLiteBackend

        return SQLiteBackend()
    from kvpilot.storage.backends.postgres import PostgresBackend

    return PostgresBackend()


__all__ = ["Backend", "Listener", "backend_for"]
