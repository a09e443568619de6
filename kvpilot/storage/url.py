"""Database URLs: the default location, the KVPILOT_DB override, and early checks with readable errors."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from kvpilot.paths import kvpilot_home
from kvpilot.storage.errors import BadDatabaseURLError

ENV_VAR = "KVPILOT_DB"
DEFAULT_FILENAME = "kvpilot.db"
HINT = "use sqlite:///PATH (or a plain file path) or postgresql+psycopg://USER@HOST:PORT/DBNAME"


def default_db_path() -> Path:
    """The SQLite file used when neither --db nor KVPILOT_DB is given."""
    return kvpilot_home() / DEFAULT_FILENAME


def resolve_url(url: str | URL | None = None) -> URL:
    """The URL to use: the argument, else $KVPILOT_DB, else the default SQLite file; checked and normalised.

    A plain path (no '://') means a SQLite file. `postgresql://` means psycopg 3, the driver kvpilot ships with.
    """
    if url is None or (isinstance(url, str) and not url.strip()):
        url = os.environ.get(ENV_VAR) or None
    if url is None:
        path = default_db_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return URL.create("sqlite", database=str(path))
    if isinstance(url, str):
        text = url.strip()
        if "://" not in text:
            return URL.create("sqlite", database=str(Path(text).expanduser()))
        try:
            parsed = make_url(text)
        except ArgumentError:
            raise BadDatabaseURLError(f"cannot parse database URL {text!r}: {HINT}") from None
    else:
        parsed = url
    return _check(parsed)


def _check(url: URL) -> URL:
    backend, _, driver = url.drivername.partition("+")
    shown = url.render_as_string(hide_password=True)
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise BadDatabaseURLError(f"database URL {shown!r}: SQLite driver {driver!r} is not supported; {HINT}")
        if url.database and url.database != ":memory:":
            parent = Path(url.database).expanduser().parent
            if not parent.is_dir():
                raise BadDatabaseURLError(
                    f"database URL {shown!r}: directory {str(parent)!r} does not exist; create it or pick another path"
                )
        return url.set(drivername="sqlite")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise BadDatabaseURLError(
                f"database URL {shown!r}: PostgreSQL driver {driver!r} is not installed; "
                "kvpilot uses psycopg 3: postgresql+psycopg://USER@HOST:PORT/DBNAME"
            )
        if not url.database:
            raise BadDatabaseURLError(f"database URL {shown!r} names no database; {HINT}")
        return url.set(drivername="postgresql+psycopg")
    raise BadDatabaseURLError(f"unsupported database URL scheme {url.drivername!r} in {shown!r}: {HINT}")


def describe(url: URL) -> str:
    """The URL as shown to users (password hidden)."""
    return url.render_as_string(hide_password=True)
