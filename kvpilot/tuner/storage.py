"""Optuna's storage on the store's own database, so studies sit next to the telemetry they explain.

Optuna keeps its tables (and its own `alembic_version`) in the same database; kvpilot's migrations use a
version table of their own, so the two histories never collide. One process per SQLite file (Optuna's
advice); several workers on several hosts share a PostgreSQL store.
"""

from __future__ import annotations

from typing import Any

import optuna
from sqlalchemy import URL, inspect

from kvpilot.storage import Store, resolve_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(url: str | URL | None) -> str:
    """The full SQLAlchemy URL (password kept) Optuna needs for the store at `url` (None: the default)."""
    return resolve_url(url).render_as_string(hide_password=False)


def has_studies_tables(store: Store) -> bool:
    """True when Optuna's tables exist, so opening its storage read-only creates nothing."""
    return inspect(store.engine).has_table("studies")


def open_storage(url: str | URL | None, *, create: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the store's database; `create=False` never creates tables (readers)."""
    full = storage_url(url)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 20}} if full.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(full, engine_kwargs=kwargs, skip_table_creation=not create)
