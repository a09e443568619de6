"""SQLite: one file, WAL so readers never block the writer, explicit BEGIN IMMEDIATE for writes.

pysqlite's default transaction handling starts a deferred transaction that upgrades to a write lock at the
first INSERT; when two processes do that at once, one gets "database is locked" at once, without waiting
for the busy timeout. kvpilot therefore turns pysqlite's implicit transactions off and issues BEGIN itself:
BEGIN IMMEDIATE for write transactions (they queue on the busy timeout), plain BEGIN for reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, Table, cast, create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import ColumnElement

from kvpilot.storage.backends.base import Backend

WRITE_OPTION = "kvpilot_write"


class SQLiteBackend(Backend):
    name = "sqlite"

    def create_engine(self, url: URL, *, busy_timeout_s: float, connect_timeout_s: float) -> Engine:
        memory = url.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": busy_timeout_s}}
        if memory:
            kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
        engine = create_engine(url, **kwargs)
        busy_ms = int(busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _setup(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA cache_size=-65536")  # 64 MiB: the time indexes of big sample tables stay hot
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            write = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def bulk_insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
        # SQLite stores a NaN float as NULL by itself, so rows go to the driver untouched.
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        conn.exec_driver_sql(sql, rows)

    def insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        from sqlalchemy.dialects.sqlite import insert

        key = list(table.primary_key.columns)[0]
        stmt = insert(table).values(**values).on_conflict_do_nothing().returning(key)
        return conn.execute(stmt).first() is not None  # RETURNING: psycopg reports no rowcount here

    def time_bucket(self, column: ColumnElement[Any], width_s: float) -> ColumnElement[Any]:
        # Timestamps are positive, so truncation is floor; SQLite may lack the floor() function.
        return cast(column / width_s, Integer) * width_s

    def is_transient(self, exc: BaseException) -> bool:
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        return isinstance(orig, sqlite3.OperationalError) and (
            "locked" in str(orig) or "busy" in str(orig)
        )
