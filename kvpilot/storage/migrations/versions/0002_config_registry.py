"""Control plane: versioned configs per deployment, activation history, engine acknowledgements.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _deployment_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["deployment_id"], ["deployments.id"], name=f"fk_{table}_deployment_id_deployments", ondelete="CASCADE"
    )


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) works on SQLite without rebuilding the table.
    op.add_column("deployments", sa.Column("active_version", sa.Integer(), nullable=True))
    op.add_column("engine_instances", sa.Column("config_version", sa.Integer(), nullable=True))
    op.create_table(
        "config_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("pushed_by", sa.String(200), nullable=True),
        sa.Column("source", sa.String(500), nullable=True),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        _deployment_fk("config_versions"),
        sa.PrimaryKeyConstraint("id", name="pk_config_versions"),
        sa.UniqueConstraint("deployment_id", "version", name="uq_config_versions_deployment_id_version"),
    )
    op.create_table(
        "config_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("by", sa.String(200), nullable=True),
        sa.Column("ts", sa.Double(), nullable=False),
        _deployment_fk("config_activations"),
        sa.PrimaryKeyConstraint("id", name="pk_config_activations"),
    )
    op.create_index("ix_config_activations_deployment_id", "config_activations", ["deployment_id"])
    op.create_table(
        "config_acks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ts", sa.Double(), nullable=False),
        _deployment_fk("config_acks"),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["engine_instances.id"], name="fk_config_acks_instance_id_engine_instances",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_config_acks"),
    )
    op.create_index("ix_config_acks_deployment_id_version", "config_acks", ["deployment_id", "version"])
    op.create_index("ix_config_acks_instance_id_ts", "config_acks", ["instance_id", "ts"])


def downgrade() -> None:
    op.drop_table("config_acks")
    op.drop_table("config_activations")
    op.drop_table("config_versions")
    with op.batch_alter_table("engine_instances") as batch:
        batch.drop_column("config_version")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("active_version")
