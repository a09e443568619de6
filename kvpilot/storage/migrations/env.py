"""Alembic environment for kvpilot's own tables.

Run programmatically by `kvpilot.storage.migrate` with an open connection in `config.attributes`.
kvpilot keeps its revision in its own version table, so Optuna's `alembic_version` in the same database
is never touched, and autogenerate ignores every table that is not kvpilot's.
"""

from __future__ import annotations

from alembic import context

from kvpilot.storage.schema import Base

VERSION_TABLE = "kvpilot_alembic_version"


def _ours(name, type_, parent_names) -> bool:
    if type_ == "table":
        return name in Base.metadata.tables
    return True


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("kvpilot migrations run through kvpilot.storage.migrate (`kvpilot db upgrade`)")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        include_name=_ours,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
