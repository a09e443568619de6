"""Schema migrations, run through Alembic's API with the scripts shipped inside the package.

`Store.open` calls `ensure_schema`: an empty database is created at once; a database from an older
kvpilot is refused with a message naming `kvpilot db upgrade`, so a running engine never migrates a shared
database behind the operator's back.
"""

from __future__ import annotations

import enum
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from kvpilot.storage.backends import Backend
from kvpilot.storage.errors import SchemaError, SchemaOutdatedError, SchemaTooNewError
from kvpilot.storage.schema import Base

VERSION_TABLE = "kvpilot_alembic_version"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class SchemaState(enum.Enum):
    EMPTY = "empty"  # no kvpilot tables yet
    CURRENT = "current"
    OUTDATED = "outdated"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"kvpilot migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def schema_state(conn: Connection, shown_url: str) -> tuple[SchemaState, str | None]:
    """Where the database's kvpilot schema stands; raises SchemaError when it cannot be used at all."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE not in tables:
        ours = tables & set(Base.metadata.tables)
        if ours:
            raise SchemaError(
                f"database {shown_url} has kvpilot-like tables ({', '.join(sorted(ours))}) but no "
                f"{VERSION_TABLE} table, so its schema version is unknown; point --db / KVPILOT_DB at a "
                "new database, or drop those tables"
            )
        return SchemaState.EMPTY, None
    rev = current_revision(conn)
    head = head_revision()
    if rev == head:
        return SchemaState.CURRENT, rev
    if rev is None:
        return SchemaState.EMPTY, None
    script = ScriptDirectory.from_config(alembic_config())
    try:
        script.get_revision(rev)
    except CommandError:
        raise SchemaTooNewError(
            f"database {shown_url} has kvpilot schema revision {rev!r}, which this kvpilot does not know "
            f"(its newest is {head!r}): it was migrated by a newer kvpilot; upgrade kvpilot "
            "(pip install -U kvpilot)"
        ) from None
    return SchemaState.OUTDATED, rev


def upgrade(engine: Engine, backend: Backend, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to `revision` in one transaction; safe when several processes do it at once.

    Returns (revision before, revision after).
    """
    with engine.connect().execution_options(kvpilot_write=True) as conn:
        with conn.begin():
            backend.migration_lock(conn)  # the later process waits, then sees the work done
            before = current_revision(conn) if _has_version_table(conn) else None
            command.upgrade(alembic_config(conn), revision)
            after = current_revision(conn)
    return before, after


def _has_version_table(conn: Connection) -> bool:
    return inspect(conn).has_table(VERSION_TABLE)


def outdated_message(shown_url: str, rev: str | None) -> str:
    return (
        f"database {shown_url} has kvpilot schema revision {rev!r}, older than this kvpilot's "
        f"{head_revision()!r}; migrate it with `kvpilot db upgrade --db {shown_url}` "
        "(stop engines writing to it first)"
    )


__all__ = [
    "VERSION_TABLE",
    "SchemaOutdatedError",
    "SchemaState",
    "current_revision",
    "head_revision",
    "outdated_message",
    "schema_state",
    "upgrade",
]
