"""Canary rollouts: the `canaries` table, and the config version that served each request.

A canary is a pushed version served to a fraction of requests next to the deployment's active version
(the incumbent) until the control plane promotes it or rolls it back. `requests.config_version` tags each
request row with the version that served it; the requests rollups keep it as a key, so per-version
figures survive the raw rows' retention.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ROLLUPS = ("requests_1m", "requests_1h")


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) works on SQLite without rebuilding the table.
    for table in ("requests", *ROLLUPS):
        op.add_column(table, sa.Column("config_version", sa.Integer(), nullable=True))
    op.create_table(
        "canaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("baseline_version", sa.Integer(), nullable=False),
        sa.Column("fraction", sa.Double(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("decided_at", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("figures", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name="fk_canaries_deployment_id_deployments", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_canaries_run_id_runs", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_canaries"),
    )
    op.create_index("ix_canaries_deployment_id_status", "canaries", ["deployment_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_canaries_deployment_id_status", table_name="canaries")
    op.drop_table("canaries")
    for table in (*ROLLUPS, "requests"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("config_version")
