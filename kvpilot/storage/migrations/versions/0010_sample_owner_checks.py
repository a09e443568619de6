"""Raw sample tables without per-row foreign keys: owners are checked once per batch by the writers.

Each raw sample row named its engine instance and run through a foreign key, so every row of a bulk insert
ran two lookups (on PostgreSQL a trigger per row: about half of a binary COPY's time on layer stats). The
writers now check a batch's distinct owner ids once, inside the insert's transaction (PostgreSQL locks the
owner rows FOR KEY SHARE as the trigger did; SQLite's write transactions are serialised already), see
`kvpilot.storage.samples`. Nothing in kvpilot deletes instances or runs; a row whose owner is deleted by hand
is no longer deleted with it, and `kvpilot db prune` (which deletes per existing owner) leaves such rows to a
manual DELETE. Rollup tables keep their foreign keys (few rows, written by INSERT ... SELECT).

SQLite cannot drop a constraint in place: each table is rebuilt (Alembic's batch mode), its indexes dropped
first and created again after, so partial indexes keep their WHERE clause.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SAMPLES = ("layer_stats", "requests", "memory_samples", "cache_events", "vllm_samples")
EXTRA_INDEXES = {"cache_events": [("ix_cache_events_kind_ts", ["kind", "ts"])]}


def _drop_indexes(table: str) -> None:
    for owner in ("instance", "run"):
        op.drop_index(f"ix_{table}_{owner}_ts", table_name=table)
    for name, _ in EXTRA_INDEXES.get(table, []):
        op.drop_index(name, table_name=table)


def _create_indexes(table: str) -> None:
    for owner in ("instance_id", "run_id"):
        where = sa.text(f"{owner} IS NOT NULL")
        op.create_index(f"ix_{table}_{owner.removesuffix('_id')}_ts", table, [owner, "ts"], sqlite_where=where,
                        postgresql_where=where)
    for name, cols in EXTRA_INDEXES.get(table, []):
        op.create_index(name, table, cols)


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    for table in SAMPLES:
        fks = (f"fk_{table}_instance_id_engine_instances", f"fk_{table}_run_id_runs")
        if not _sqlite():
            for fk in fks:
                op.drop_constraint(fk, table, type_="foreignkey")
            continue
        _drop_indexes(table)
        with op.batch_alter_table(table, recreate="always") as batch:
            for fk in fks:
                batch.drop_constraint(fk, type_="foreignkey")
        _create_indexes(table)


def downgrade() -> None:
    for table in SAMPLES:
        if _sqlite():
            _drop_indexes(table)
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(f"fk_{table}_instance_id_engine_instances", "engine_instances",
                                     ["instance_id"], ["id"], ondelete="CASCADE")
            batch.create_foreign_key(f"fk_{table}_run_id_runs", "runs", ["run_id"], ["id"], ondelete="CASCADE")
        if _sqlite():
            _create_indexes(table)
