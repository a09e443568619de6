"""Database URLs: the default location, the KVPILOT_DB override, and early checks with readable errors."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from kvpilot.paths import kvpilot_home
from kvpilot.storage.errors import BadDatabaseURLError

ENV_VAR = "KVPILOT_DB"
KVPILOT_VERSION_TABLE = "kvpilot_alembic_version"  # kvpilot.storage.migrate.VERSION_TABLE
# Optuna keeps its studies in kvpilot's database (kvpilot.tuner.storage): its tables are not foreign.
OPTUNA_TABLES = frozenset({
    "alembic_version", "version_info", "studies", "study_directions", "study_user_attributes",
    "study_system_attributes", "trials", "trial_params", "trial_values", "trial_intermediate_values",
    "trial_user_attributes", "trial_system_attributes", "trial_heartbeats",
})
DEFAULT_FILENAME = "kvpilot.db"
# `sqlite:` then at most one slash, then not a slash: neither a URL (`sqlite:///`) nor a plain path
_ONE_SLASH_SQLITE = re.compile(r"^\s*sqlite:/?(?!/)(.*)$")


def one_slash_sqlite_message(text: str, where: str = "database URL") -> str | None:
    """What is wrong with ``sqlite:PATH`` / ``sqlite:/PATH``, or None for any other text.

    Without this check such a string has no '://' and would be taken for a plain path: a file named
    `sqlite:` (or `sqlite:one.db`) in the current folder.
    """
    m = _ONE_SLASH_SQLITE.match(text)
    if not m:
        return None
    path = m.group(1)
    return (f"{where} {text!r} is not a SQLite URL: write sqlite:///{path} for a path relative to the current "
            f"folder, sqlite:////{path.lstrip('/')} for an absolute one, or just the path")


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
        if problem := one_slash_sqlite_message(text):
            raise BadDatabaseURLError(problem)
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


def sqlite_refusal(url: URL, *, create: bool) -> str | None:
    """Why kvpilot must not open the SQLite file at ``url``, found without writing to it, or None.

    Opening writes (SQLite creates a missing file; the store switches the file to WAL), so these checks
    read first, in read-only mode: a read command (``create=False``) needs an existing kvpilot database,
    and no command adds kvpilot's tables to a file that holds another application's tables.
    """
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database).expanduser()
    fix = "check --db / KVPILOT_DB, or create it with `kvpilot db upgrade`"
    if not path.exists():
        return None if create else f"database {describe(url)} does not exist; {fix}"
    if not path.is_file():
        return None  # let SQLite say what is wrong (a directory: cannot open)
    if path.stat().st_size == 0:
        return None if create else f"database {describe(url)} is an empty file, not a kvpilot database; {fix}"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # not a database, locked, unreadable: the store's own error says it
    from kvpilot.storage.schema import Base

    if KVPILOT_VERSION_TABLE in tables or tables & set(Base.metadata.tables):
        return None  # kvpilot's (or kvpilot-like without a version: the schema check says so)
    foreign = sorted(t for t in tables - OPTUNA_TABLES if not t.startswith("sqlite_"))
    if foreign:
        return (f"database {describe(url)} holds another application's tables ({', '.join(foreign[:5])}) and no "
                "kvpilot schema; kvpilot adds its tables there only when asked (`kvpilot db upgrade --db ...`); "
                "point --db / KVPILOT_DB at a kvpilot database")
    return None if create else f"database {describe(url)} has no kvpilot tables; {fix}"
