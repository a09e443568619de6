"""Exactly-once sample ingest: the ids of recorder parts already stored.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingested_parts",
        sa.Column("part_id", sa.String(200), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("part_id", name="pk_ingested_parts"),
    )
    op.create_index("ix_ingested_parts_ts", "ingested_parts", ["ts"])


def downgrade() -> None:
    op.drop_table("ingested_parts")
