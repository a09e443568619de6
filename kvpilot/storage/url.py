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
            from kvpilot.storage.backends import url_forms

            raise BadDatabaseURLError(f"cannot parse database URL {text!r}: use {url_forms()}") from None
    else:
        parsed = url
    return _check(parsed)


def _check(url: URL) -> URL:
    """The registered backend for the URL's scheme checks and normalises it."""
    from kvpilot.storage.backends import spec_for

    return spec_for(url).load().check_url(url)


def describe(url: URL) -> str:
    """The URL as shown to users (password hidden)."""
    return url.render_as_string(hide_password=True)


def missing_sqlite_file(url: URL) -> str | None:
    """Why a store that must not be created cannot be opened at a SQLite ``url`` (no file, or an empty one),
    or None. Checked before connecting: SQLite creates a missing file, and switching an empty one to WAL
    turns it into a database, which a read command must never do."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database).expanduser()
    if not path.exists():
        return (f"database {describe(url)} does not exist; check --db / KVPILOT_DB, or create it with "
                "`kvpilot db upgrade`")
    if path.is_file() and path.stat().st_size == 0:
        return (f"database {describe(url)} is an empty file, not a kvpilot database; check --db / KVPILOT_DB, "
                "or make it one with `kvpilot db upgrade`")
    return None
