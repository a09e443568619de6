"""PostgreSQL (psycopg 3): binary COPY for bulk samples (`pgcopy`), advisory locks for migrations, LISTEN/NOTIFY for pushes."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Table, create_engine, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ColumnElement

from kvpilot.storage.backends import deadline as deadlines
from kvpilot.storage.backends.base import Backend, Listener
from kvpilot.storage.errors import BadDatabaseURLError

# libpq: probe an idle connection after 10 s, give up after 3 unanswered probes 5 s apart; drop a connection
# whose sent data stays unacknowledged for 30 s (a partition that drops packets). Operation deadlines
# (`deadline`) catch what these cannot: a peer whose kernel still acknowledges but never answers.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": 30_000}
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


class PostgresBackend(Backend):
    name = "postgresql"

    @classmethod
    def check_url(cls, url: URL) -> URL:
        driver = url.drivername.partition("+")[2]
        shown = url.render_as_string(hide_password=True)
        if driver not in ("", "psycopg"):
            raise BadDatabaseURLError(
                f"database URL {shown!r}: PostgreSQL driver {driver!r} is not installed; "
                "kvpilot uses psycopg 3: postgresql+psycopg://USER@HOST:PORT/DBNAME"
            )
        if not url.database:
            raise BadDatabaseURLError(
                f"database URL {shown!r} names no database; use postgresql+psycopg://USER@HOST:PORT/DBNAME"
            )
        return url.set(drivername="postgresql+psycopg")

    def create_engine(self, url: URL, *, busy_timeout_s: float, connect_timeout_s: float) -> Engine:
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            connect_args={"connect_timeout": max(1, int(connect_timeout_s)), **KEEPALIVES},
        )
        deadlines.install(engine)  # a frozen network: an operation past its deadline has its socket shut down
        return engine

    def deadline(self, engine: Engine) -> AbstractContextManager[None]:
        return deadlines.guard(engine)

    def bulk_insert(
        self, conn: Connection, table: Table, columns: Sequence[str], data: Sequence[Sequence[Any]]
    ) -> None:
        import psycopg

        from kvpilot.storage.backends.pgcopy import copy_columns

        dbapi: Any = conn.connection.driver_connection
        try:
            with dbapi.cursor() as cur:
                copy_columns(cur, table, columns, data)
        except psycopg.Error as exc:  # the raw cursor bypasses SQLAlchemy: wrap like SQLAlchemy would
            raise DBAPIError.instance(f"COPY {table.name}", None, exc, psycopg.Error) from exc

    def insert(self, table: Table) -> Any:
        return insert(table)

    def floor_div(self, column: ColumnElement[Any], width: float) -> ColumnElement[Any]:
        return func.floor(column / width)

    def begin_analytic_read(self, conn: Connection) -> None:
        # These short aggregates (a union of 60 index range scans for a sampled heatmap) have estimated
        # costs in the millions, which makes PostgreSQL JIT-compile for about 3 s to run a 0.2 s query.
        conn.exec_driver_sql("SET LOCAL jit = off")

    def is_transient(self, exc: BaseException) -> bool:
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        return getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES

    def unavailable_message(self, shown_url: str, detail: str) -> str:
        hint = "check that the PostgreSQL server is running and that the URL given by --db / KVPILOT_DB is right"
        if "does not exist" in detail and "database" in detail:
            hint = "create the database (e.g. `createdb NAME`) or fix the name in --db / KVPILOT_DB"
        elif "authentication" in detail or "password" in detail:
            hint = "check the user and password in --db / KVPILOT_DB"
        return f"cannot reach database {shown_url}: {detail}; {hint}"

    def notify(self, conn: Connection, channel: str, payload: str) -> None:
        conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (channel, payload))

    def listener(self, engine: Engine, channel: str) -> Listener | None:
        return _PgListener(engine, channel)

    def rollup_lock(self, conn: Connection, state: Table, raw: Table | None) -> None:
        # EXCLUSIVE still lets readers read the state; SHARE on the raw table waits for in-flight COPYs (a
        # sequence hands out ids before their transaction commits) and holds new ones off until commit.
        conn.exec_driver_sql(f"LOCK TABLE {state.name} IN EXCLUSIVE MODE")
        if raw is not None:
            conn.exec_driver_sql(f"LOCK TABLE {raw.name} IN SHARE MODE")

    def summarize_time_index(self, conn: Connection, table: Table) -> None:
        # A BRIN block range filled since the last summary is not summarised: every time-range scan reads it
        # whole until VACUUM (autovacuum may lag under steady inserts) or this call summarises it.
        conn.exec_driver_sql("SELECT brin_summarize_new_values(%s::regclass)", (f"ix_{table.name}_ts",))

    def migration_lock(self, conn: Connection) -> None:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(b"kvpilot-migrations"),))


class _PgListener(Listener):
    """A dedicated autocommit connection that LISTENs on one channel."""

    def __init__(self, engine: Engine, channel: str):
        import psycopg

        url = engine.url
        params: dict[str, Any] = {k: v for k, v in url.query.items() if isinstance(v, str)}  # e.g. options
        self._conn = psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=True,
            connect_timeout=5,
            **{**KEEPALIVES, **params},
        )
        self._conn.execute(f'LISTEN "{channel}"')

    def wait(self, timeout: float) -> bool:
        got = False
        for _ in self._conn.notifies(timeout=max(0.0, timeout), stop_after=1):
            got = True
        return got

    def close(self) -> None:
        self._conn.close()
