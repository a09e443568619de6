"""The interface each database backend implements, and the spec that registers it."""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
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
    """What one database does differently; the Store is written once against this."""

    name: str

    @classmethod
    @abc.abstractmethod
    def check_url(cls, url: URL) -> URL:
        """`url` normalised to the driver kvpilot uses, or BadDatabaseURLError saying what to fix."""

    @abc.abstractmethod
    def create_engine(self, url: URL, *, busy_timeout_s: float, connect_timeout_s: float) -> Engine:
        """An engine configured for kvpilot's access pattern (many short writes, a few readers)."""

    @abc.abstractmethod
    def insert(self, table: Table) -> Any:
        """The dialect's INSERT for `table`, with `on_conflict_do_nothing` / `on_conflict_do_update`."""

    @abc.abstractmethod
    def bulk_insert(
        self, conn: Connection, table: Table, columns: Sequence[str], data: Sequence[Sequence[Any]]
    ) -> None:
        """Insert many rows, given column by column (`data[i]`: column `columns[i]` of every row), as fast as the
        database allows, in `conn`'s transaction."""

    def insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        """Insert one row unless its primary key exists; True when it was inserted (in `conn`'s transaction)."""
        key = list(table.primary_key.columns)[0]
        stmt = self.insert(table).values(**values).on_conflict_do_nothing().returning(key)
        return conn.execute(stmt).first() is not None  # RETURNING: psycopg reports no rowcount here

    @abc.abstractmethod
    def floor_div(self, column: ColumnElement[Any], width: float) -> ColumnElement[Any]:
        """SQL for floor(column / width) of a non-negative column: a bucket or histogram bin index."""

    def time_bucket(self, column: ColumnElement[Any], width_s: float) -> ColumnElement[Any]:
        """SQL for the start of the `width_s`-second bucket holding `column` (epoch seconds)."""
        return self.floor_div(column, width_s) * width_s

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """True for errors that a retry of the whole transaction may fix (lock timeouts, deadlocks)."""

    @abc.abstractmethod
    def unavailable_message(self, shown_url: str, detail: str) -> str:
        """The message for a database that cannot be reached or opened, naming the fix."""

    def unusable_message(self, shown_url: str, detail: str) -> str | None:
        """The message for a database error that means 'this is not a usable database', else None."""
        return None

    def begin_analytic_read(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Prepare `conn`'s transaction for a short aggregate over many index ranges (dashboard queries)."""

    def notify(self, conn: Connection, channel: str, payload: str) -> None:  # noqa: B027 - optional hook
        """Tell listeners that something changed (sent when `conn`'s transaction commits)."""

    def listener(self, engine: Engine, channel: str) -> Listener | None:
        """A Listener for `channel`, or None when the database has no notifications."""
        return None

    def rollup_lock(self, conn: Connection, state: Table, raw: Table | None) -> None:  # noqa: B027 - optional hook
        """Serialise rollup refreshes on `state`, inside `conn`'s write transaction; with `raw`, also wait for
        the transactions writing to it, so every id up to the max(id) read next is committed (SQLite's
        BEGIN IMMEDIATE already gives both)."""

    def summarize_time_index(self, conn: Connection, table: Table) -> None:  # noqa: B027 - optional hook
        """Bring `table`'s time index up to date with the rows stored since the last call, where the index
        lags (PostgreSQL's BRIN); called after each rollup refresh."""

    def deadline(self, engine: Engine) -> AbstractContextManager[None]:
        """A guard bounding how long one store operation may block on the network (none by default)."""
        return nullcontext()

    def migration_lock(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Serialise concurrent first-time migrations, inside `conn`'s transaction."""


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: its name, the URL schemes it answers, what it is for, and its class.

    The class is named as "module:Class", so listing backends (docs, `--db` help) imports no driver."""

    name: str
    schemes: tuple[str, ...]  # the URL's scheme before any "+driver"
    url_form: str  # how users write its URL, for help texts and errors
    description: str
    target: str  # "package.module:ClassName" of the Backend subclass

    def load(self) -> type[Backend]:
        module, _, attr = self.target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"backend {self.name!r}: {self.target} is not a Backend class")
        return cls
