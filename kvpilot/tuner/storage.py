"""Optuna's storage on the store's own database, so studies sit next to the telemetry they explain.

Optuna keeps its tables (and its own `alembic_version`) in the same database; kvpilot's migrations use a
version table of their own, so the two histories never collide. On SQLite every transaction takes the write
lock when it begins, so the local processes of `tune --workers` claim each queued trial once; several
workers on several hosts share a PostgreSQL store.
"""

from __future__ import annotations

from typing import Any

import optuna
from sqlalchemy import URL, Engine, event, inspect

from kvpilot.storage import Store, resolve_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(url: str | URL | None) -> str:
    """The full SQLAlchemy URL (password kept) Optuna needs for the store at `url` (None: the default)."""
    return resolve_url(url).render_as_string(hide_password=False)


def has_studies_tables(store: Store) -> bool:
    """True when Optuna's tables exist, so opening its storage read-only creates nothing."""
    return inspect(store.engine).has_table("studies")


def _write_locked_transactions(engine: Engine) -> None:
    """Make every transaction on this SQLite engine take the write lock when it begins (BEGIN IMMEDIATE).

    Python's sqlite3 module begins a transaction only at the first write, so Optuna's read-then-update steps
    (claiming a queued trial: read WAITING, write RUNNING) are not atomic across processes: two `--workers`
    processes claimed the same queued trial and the second to finish failed. Taking the lock at BEGIN makes
    each step atomic; readers in WAL mode are not blocked by it."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the module's own deferred BEGIN off; SQLAlchemy's below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners (Optuna's start-up checks) are not reused


def open_storage(url: str | URL | None, *, create: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the store's database; `create=False` never creates tables (readers)."""
    full = storage_url(url)
    sqlite = full.startswith("sqlite")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 20}} if sqlite else {}
    storage = optuna.storages.RDBStorage(full, engine_kwargs=kwargs, skip_table_creation=not create)
    if sqlite:
        _write_locked_transactions(storage.engine)
    return storage
