"""Eviction lineage: `eviction_lineage`, which units of a sampled request's context the cache forgot.

One row per sampled request (`kvpilot.attach(..., lineage=rate)`): the context as decoded token by token,
its units (turns, sentences, chunks or token spans) with character offsets into it and the share of their
(layer, KV head) slots still held, the answers, and a request key shared with the request's `quality`
event. See `kvpilot.engine.lineage` and `kvpilot.storage.lineage`.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TABLE = "eviction_lineage"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("request_key", sa.String(64), nullable=False),
        sa.Column("config", Json, nullable=True),
        sa.Column("config_version", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("context_tokens", sa.Integer(), nullable=False),
        sa.Column("kept_fraction", sa.Double(), nullable=False),
        sa.Column("evicted_units", sa.Integer(), nullable=False),
        sa.Column("total_units", sa.Integer(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("units", Json, nullable=False),
        sa.Column("answers", Json, nullable=True),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], name=f"fk_{TABLE}_deployment_id_deployments",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["instance_id"], ["engine_instances.id"],
                                name=f"fk_{TABLE}_instance_id_engine_instances", ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=f"fk_{TABLE}_run_id_runs", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TABLE}"),
    )
    op.create_index(f"ix_{TABLE}_request_key", TABLE, ["request_key"])
    op.create_index(f"ix_{TABLE}_deployment_id_ts", TABLE, ["deployment_id", "ts"])
    op.create_index(f"ix_{TABLE}_ts", TABLE, ["ts"])


def downgrade() -> None:
    op.drop_index(f"ix_{TABLE}_ts", table_name=TABLE)
    op.drop_index(f"ix_{TABLE}_deployment_id_ts", table_name=TABLE)
    op.drop_index(f"ix_{TABLE}_request_key", table_name=TABLE)
    op.drop_table(TABLE)
