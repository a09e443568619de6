"""The Store's plumbing: opening a database, schema checks, transactions with retries, error translation.

Every public store method runs its SQL through `_read` or `_write`, so database failures reach callers
as `StoreError`s with a message that names the fix, and lock contention is retried instead of crashing a
writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TypeVar

from sqlalchemy import inspect
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from kvpilot.storage import migrate
from kvpilot.storage.backends import Backend, backend_for
from kvpilot.storage.errors import DatabaseUnavailableError, SchemaOutdatedError, StoreError
from kvpilot.storage.tabledef import json_safe
from kvpilot.storage.url import OPTUNA_TABLES, describe, resolve_url, sqlite_refusal

__all__ = ["RETRIES", "StoreCore", "json_safe", "open_for_migration"]

T = TypeVar("T")
S = TypeVar("S", bound="StoreCore")

RETRIES = 5


class StoreCore:
    """Engine, backend and transaction helpers shared by the store's parts."""

    def __init__(self, engine: Engine, backend: Backend, url: URL, *, busy_timeout_s: float):
        self._engine = engine
        self._backend = backend
        self._url = url
        self._busy_timeout_s = busy_timeout_s

    # ----- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls: type[S],
        url: str | URL | None = None,
        *,
        create: bool = True,
        upgrade: bool = False,
        busy_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> S:
        """Open the store at `url` (else $KVPILOT_DB, else `$KVPILOT_HOME/kvpilot.db`).

        An empty database gets kvpilot's tables when `create` is true. A database from an older kvpilot
        raises SchemaOutdatedError (naming `kvpilot db upgrade`) unless `upgrade` is true.
        """
        checked = resolve_url(url)
        if refusal := sqlite_refusal(checked, create=create):  # read-only checks before SQLite writes anything
            raise StoreError(refusal)
        backend = backend_for(checked)
        engine = backend.create_engine(checked, busy_timeout_s=busy_timeout_s, connect_timeout_s=connect_timeout_s)
        store = cls(engine, backend, checked, busy_timeout_s=busy_timeout_s)
        try:
            store._ensure_schema(create=create, upgrade=upgrade)
        except BaseException:
            engine.dispose()
            raise
        return store

    def _ensure_schema(self, *, create: bool, upgrade: bool) -> None:
        state, rev = self._read(lambda conn: migrate.schema_state(conn, self.url))
        if state is migrate.SchemaState.CURRENT:
            return
        if state is migrate.SchemaState.OUTDATED and not upgrade:
            raise SchemaOutdatedError(migrate.outdated_message(self.url, rev))
        if state is migrate.SchemaState.EMPTY and not create:
            raise StoreError(f"database {self.url} has no kvpilot tables; create them with `kvpilot db upgrade`")
        if state is migrate.SchemaState.EMPTY and (others := self._read(_foreign_tables)):
            raise StoreError(f"database {self.url} holds another application's tables ({', '.join(others[:5])}) "
                             "and no kvpilot schema; kvpilot adds its tables there only when asked: "
                             "`kvpilot db upgrade --db ...`, or point --db / KVPILOT_DB at its own database")
        self.upgrade_schema()

    def upgrade_schema(self) -> tuple[str | None, str | None]:
        """Migrate the database to this kvpilot's schema; returns (revision before, revision after)."""
        return self._guard(lambda: migrate.upgrade(self._engine, self._backend), bounded=False)

    def schema_revision(self) -> str | None:
        return self._read(lambda conn: migrate.current_revision(conn))

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return describe(self._url)

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for tools that need raw SQL (benchmarks, migrations)."""
        return self._engine

    # ----- transactions ----------------------------------------------------------------------------

    def _read(self, fn: Callable[[Connection], T], *, analytic: bool = False) -> T:
        """Run `fn` on a read connection; `analytic` for aggregates over many index ranges (dashboards)."""

        def run() -> T:
            with self._engine.connect() as conn:
                if analytic:
                    self._backend.begin_analytic_read(conn)
                return fn(conn)

        return self._guard(run)

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction, retrying the whole of it on lock timeouts or deadlocks."""

        def run() -> T:
            with self._engine.connect().execution_options(kvpilot_write=True) as conn:
                with conn.begin():
                    return fn(conn)

        return self._guard(run, retry=True)

    def _write_orm(self, fn: Callable[[Session], T]) -> T:
        """Like `_write`, with an ORM session joined to the transaction (metadata tables)."""

        def body(conn: Connection) -> T:
            with Session(bind=conn, expire_on_commit=False, autoflush=True) as session:
                out = fn(session)
                session.flush()
                return out

        return self._write(body)

    def _read_orm(self, fn: Callable[[Session], T]) -> T:
        def body(conn: Connection) -> T:
            with Session(bind=conn) as session:
                return fn(session)

        return self._read(body)

    def _guard(self, run: Callable[[], T], *, retry: bool = False, bounded: bool = True) -> T:
        delay = 0.05
        for attempt in range(RETRIES):
            try:
                with self._backend.deadline(self._engine) if bounded else nullcontext():  # a frozen network
                    return run()
            except DBAPIError as exc:
                if retry and attempt < RETRIES - 1 and self._backend.is_transient(exc):
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise self._translate(exc) from exc
        raise AssertionError("unreachable")

    def _translate(self, exc: DBAPIError) -> Exception:
        """A StoreError naming the fix for failures users can act on; other errors pass unchanged."""
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        if self._backend.is_transient(exc):
            return StoreError(
                f"database {self.url} stayed locked for more than {self._busy_timeout_s:g} s ({detail}); another "
                "process holds a long transaction. Retry, or use PostgreSQL when many processes write"
            )
        if isinstance(exc, IntegrityError):
            return StoreError(f"database {self.url} refused the write: {detail}")
        if isinstance(exc, DataError):  # e.g. a name longer than its column (PostgreSQL checks, SQLite does not)
            return StoreError(f"database {self.url} refused a value: {detail}; names (deployment, instance, "
                              "run, study, --by) hold at most 200 characters, --source 500")
        if isinstance(exc, (OperationalError, InterfaceError)):
            return DatabaseUnavailableError(self._backend.unavailable_message(self.url, detail))
        if isinstance(exc, SADatabaseError):
            unusable = self._backend.unusable_message(self.url, detail)
            if unusable is not None:
                return DatabaseUnavailableError(unusable)
        return exc


def _foreign_tables(conn: Connection) -> list[str]:
    """Tables of another application in a database without a kvpilot schema."""
    return sorted(set(inspect(conn).get_table_names()) - OPTUNA_TABLES)


def open_for_migration(url: str | URL | None) -> StoreCore:
    """A handle that skips schema checks, for `kvpilot db upgrade`."""
    checked = resolve_url(url)
    backend = backend_for(checked)
    engine = backend.create_engine(checked, busy_timeout_s=60.0, connect_timeout_s=5.0)
    return StoreCore(engine, backend, checked, busy_timeout_s=60.0)
