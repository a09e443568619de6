"""The interface each database backend implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.sql import ColumnElement


class Listener(abc.ABC):
    """Wakes a waiting watcher when a config is pushed (PostgreSQL LISTEN); the default never wakes early."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True if a notification arrived."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the listening connection."""


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def create_engine(self, url: URL, *, busy_timeout_s: float, connect_timeout_s: float) -> Engine:
        """An engine configured for kvpilot's access pattern (many short writes, a few readers)."""

    @abc.abstractmethod
    def bulk_insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
        """Insert many rows (tuples in `columns` order) as fast as the database allows, in `conn`'s transaction."""

    @abc.abstractmethod
    def insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        """Insert one row unless its primary key exists; True when it was inserted (in `conn`'s transaction)."""

    @abc.abstractmethod
    def time_bucket(self, column: ColumnElement[Any], width_s: float) -> ColumnElement[Any]:
        """SQL for the start of the `width_s`-second bucket holding `column` (epoch seconds)."""

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """True for errors that a retry of the whole transaction may fix (lock timeouts, deadlocks)."""

    def notify(self, conn: Connection, channel: str, payload: str) -> None:  # noqa: B027 - optional hook
        """Tell listeners that something changed (sent when `conn`'s transaction commits)."""

    def listener(self, engine: Engine, channel: str) -> Listener | None:
        """A Listener for `channel`, or None when the database has no notifications."""
        return None

    def migration_lock(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Serialise concurrent first-time migrations, inside `conn`'s transaction."""
