"""SQLite: one file, WAL so readers never block the writer, explicit BEGIN IMMEDIATE for writes.

pysqlite's default transaction handling starts a deferred transaction that upgrades to a write lock at the
first INSERT; when two processes do that at once, one gets "database is locked" at once, without waiting
for the busy timeout. kvpilot therefore turns pysqlite's implicit transactions off and issues BEGIN itself:
BEGIN IMMEDIATE for write transactions (they queue on the busy timeout), plain BEGIN for reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import Integer, Table, cast, create_engine, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import ColumnElement

from kvpilot.storage.backends.base import Backend
from kvpilot.storage.errors import BadDatabaseURLError, StoreError

WRITE_OPTION = "kvpilot_write"
WAL_CHECKPOINT_PAGES = 10_000
VALUES_ROWS = 200  # rows per INSERT statement of a bulk insert
# host parameters one statement may bind: 32,766 since SQLite 3.32, 999 before
_MAX_VARIABLES = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def _in_wal(cur: sqlite3.Cursor) -> bool:
    return str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"


def _switch_to_wal(dbapi_conn: sqlite3.Connection, path: str, timeout_s: float) -> None:
    """Put a new database file in WAL mode, once, while other processes may be opening it too.

    Why a lock file: a new file stays empty until its first checkpoint, so a second process still
    reads "delete" from it after the first switched to WAL, and its own switch then needs an
    exclusive lock that WAL connections never give up (each holds a shared lock while open): it
    waits out the busy timeout and fails. Under the lock the first process switches, writes the
    header and checkpoints it into the file; the others then find the file in WAL and go on.
    """
    with FileLock(f"{path}.init-lock", timeout=timeout_s):
        cur = dbapi_conn.cursor()
        try:
            if _in_wal(cur):
                return
            cur.execute("PRAGMA journal_mode=WAL")
            file = Path(path)
            if not file.exists() or file.stat().st_size == 0:  # write page 1 (mode included) to the file
                cur.execute("PRAGMA user_version=0")
                cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            cur.close()


class SQLiteBackend(Backend):
    name = "sqlite"

    @classmethod
    def check_url(cls, url: URL) -> URL:
        driver = url.drivername.partition("+")[2]
        shown = url.render_as_string(hide_password=True)
        if driver not in ("", "pysqlite"):
            raise BadDatabaseURLError(
                f"database URL {shown!r}: SQLite driver {driver!r} is not supported; use sqlite:///PATH"
            )
        if url.host or url.username or url.port:  # `sqlite://x` would be an in-memory store, `sqlite://x/y.db` y.db
            path = "/".join(p for p in (url.host, url.database) if p)
            raise BadDatabaseURLError(
                f"database URL {shown!r}: a SQLite URL has no host; write sqlite:///{path} for a path relative to "
                f"the current folder, sqlite:////{path.lstrip('/')} for an absolute one, or just the path"
            )
        if url.database and url.database != ":memory:":
            parent = Path(url.database).expanduser().parent
            if not parent.is_dir():
                raise BadDatabaseURLError(
                    f"database URL {shown!r}: directory {str(parent)!r} does not exist; create it or pick another path"
                )
        return url.set(drivername="sqlite")

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
            if not memory and not _in_wal(cur):
                _switch_to_wal(dbapi_conn, str(url.database), busy_timeout_s)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA cache_size=-65536")  # 64 MiB: the time indexes of big sample tables stay hot
            # Checkpoint the WAL every 10,000 pages (about 40 MiB) instead of 1,000: a page rewritten by many
            # commits (the right edge of a table or index that bulk inserts append to) is copied into the
            # database once per checkpoint, not once per few batches. Commits stay as durable as before (WAL
            # with synchronous=NORMAL); the WAL file grows to about that size. The gain depends on the disk's
            # load: benchmarks/results/store_ingest_profile_0011.json compares both intervals.
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            write = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def bulk_insert(
        self, conn: Connection, table: Table, columns: Sequence[str], data: Sequence[Sequence[Any]]
    ) -> None:
        # Straight to sqlite3 on the raw connection, inside the transaction the store began, without
        # SQLAlchemy's per-row parameter processing: executemany of one INSERT with up to VALUES_ROWS rows
        # (prepared once, sqlite3's statement cache), so SQLite steps one statement per VALUES_ROWS rows
        # instead of per row (about x2 on the insert alone: benchmarks/results/store_ingest_profile_0011.json).
        # Each statement's flat parameters come from slices of the columns (lazy ones read their rows then),
        # zipped and chained in C. SQLite stores a NaN float as NULL by itself.
        n = len(data[0]) if data else 0
        per = max(1, min(VALUES_ROWS, _MAX_VARIABLES // max(1, len(columns))))
        head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        one = f"({', '.join('?' * len(columns))})"
        full = n // per

        def params(start: int, end: int) -> tuple:
            return tuple(chain.from_iterable(zip(*(c[start:end] for c in data), strict=True)))

        dbapi: Any = conn.connection.driver_connection
        sql = head + one
        try:
            if full:
                sql = head + ", ".join([one] * per)
                dbapi.executemany(sql, (params(k * per, (k + 1) * per) for k in range(full)))
            if n > full * per:
                sql = head + ", ".join([one] * (n - full * per))
                dbapi.execute(sql, params(full * per, n))
        except sqlite3.Error as exc:  # the raw connection bypasses SQLAlchemy: wrap like SQLAlchemy would
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"{table.name} row does not fit the column types ({exc})") from None

    def insert(self, table: Table) -> Any:
        return insert(table)

    def floor_div(self, column: ColumnElement[Any], width: float) -> ColumnElement[Any]:
        # The values are non-negative, so truncation is floor; SQLite may lack the floor() function.
        return cast(column / width, Integer)

    def is_transient(self, exc: BaseException) -> bool:
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        return isinstance(orig, sqlite3.OperationalError) and (
            "locked" in str(orig) or "busy" in str(orig)
        )

    def unavailable_message(self, shown_url: str, detail: str) -> str:
        return f"cannot open SQLite database {shown_url}: {detail}. Check the path and its permissions (--db / KVPILOT_DB)"

    def unusable_message(self, shown_url: str, detail: str) -> str | None:
        if any(w in detail for w in ("not a database", "malformed", "disk image")):
            return (
                f"cannot use SQLite database {shown_url}: {detail}. Is it a kvpilot database? "
                "Point --db / KVPILOT_DB at another file"
            )
        return None
