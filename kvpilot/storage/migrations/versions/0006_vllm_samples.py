"""vLLM server scrapes: KV usage, prefix-cache hits, preemptions, rates and latency quantiles per interval.

Numbered 0006 because it was written while 0004 (rollups) landed in parallel; it follows the newest
migration before it (the table does not depend on it).

Revision ID: 0006
Revises: 0004_rollups
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0004_rollups"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TABLE = "vllm_samples"
METRICS: tuple[tuple[str, sa.types.TypeEngine], ...] = (
    ("interval_s", sa.Double()),
    ("kv_usage", sa.Double()),
    ("kv_bytes", sa.BigInteger()),
    ("kv_capacity_bytes", sa.BigInteger()),
    ("requests_running", sa.Integer()),
    ("requests_waiting", sa.Integer()),
    ("prefix_queries", sa.BigInteger()),
    ("prefix_hits", sa.BigInteger()),
    ("prefix_hit_ratio", sa.Double()),
    ("preemptions", sa.Integer()),
    ("prompt_tokens_per_s", sa.Double()),
    ("generation_tokens_per_s", sa.Double()),
    ("requests_per_s", sa.Double()),
    ("ttft_p50_s", sa.Double()),
    ("ttft_p99_s", sa.Double()),
    ("tpot_p50_s", sa.Double()),
    ("tpot_p99_s", sa.Double()),
    ("e2e_p50_s", sa.Double()),
    ("e2e_p99_s", sa.Double()),
)


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", BigId, nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        *(sa.Column(name, type_, nullable=True) for name, type_ in METRICS),
        sa.Column("cache_config", Json, nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TABLE}"),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["engine_instances.id"], name=f"fk_{TABLE}_instance_id_engine_instances",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=f"fk_{TABLE}_run_id_runs", ondelete="CASCADE"),
    )
    for owner in ("instance_id", "run_id"):
        where = sa.text(f"{owner} IS NOT NULL")
        op.create_index(
            f"ix_{TABLE}_{owner.removesuffix('_id')}_ts", TABLE, [owner, "ts"], sqlite_where=where,
            postgresql_where=where,
        )


def downgrade() -> None:
    op.drop_table(TABLE)
