"""Probe store: deployments, engine instances, runs, samples, sensitivity profiles.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SAMPLES = ("layer_stats", "requests", "memory_samples", "cache_events")


def _owner_columns(table: str) -> list:
    """id, ts and the instance/run the sample belongs to."""
    return [
        sa.Column("id", BigId, nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["engine_instances.id"], name=f"fk_{table}_instance_id_engine_instances",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=f"fk_{table}_run_id_runs", ondelete="CASCADE"),
    ]


def _sample_indexes(table: str) -> None:
    """Partial (owner IS NOT NULL) indexes: rows without a run never touch the run index."""
    for owner in ("instance_id", "run_id"):
        where = sa.text(f"{owner} IS NOT NULL")
        op.create_index(
            f"ix_{table}_{owner.removesuffix('_id')}_ts", table, [owner, "ts"], sqlite_where=where,
            postgresql_where=where,
        )


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(500), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.UniqueConstraint("name", name="uq_deployments_name"),
    )
    op.create_table(
        "engine_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("last_heartbeat", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name="fk_engine_instances_deployment_id_deployments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_engine_instances"),
        sa.UniqueConstraint("deployment_id", "name", name="uq_engine_instances_deployment_id_name"),
    )
    op.create_index("ix_engine_instances_last_heartbeat", "engine_instances", ["last_heartbeat"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("study_name", sa.String(500), nullable=True),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("config", Json, nullable=True),
        sa.Column("params", Json, nullable=True),
        sa.Column("metrics", Json, nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name="fk_runs_deployment_id_deployments", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["engine_instances.id"], name="fk_runs_instance_id_engine_instances",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_started_at", "runs", ["started_at"])
    op.create_index("ix_runs_study_name_trial_number", "runs", ["study_name", "trial_number"])

    op.create_table(
        "layer_stats",
        *_owner_columns("layer_stats"),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("head", sa.SmallInteger(), nullable=False),
        *(
            sa.Column(name, sa.Double(), nullable=True)
            for name in ("entropy", "retained_mass", "tokens_90", "sink_mass", "recent_mass", "gini")
        ),
        sa.Column("kv_bytes", sa.BigInteger(), nullable=True),
        sa.Column("kept_tokens", sa.Integer(), nullable=True),
        sa.Column("seen_tokens", sa.Integer(), nullable=True),
    )
    op.create_table(
        "requests",
        *_owner_columns("requests"),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("ttft_s", sa.Double(), nullable=True),
        sa.Column("tpot_s", sa.Double(), nullable=True),
        sa.Column("e2e_s", sa.Double(), nullable=True),
        sa.Column("kv_bytes", sa.BigInteger(), nullable=True),
        sa.Column("compression_ratio", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_table(
        "memory_samples",
        *_owner_columns("memory_samples"),
        sa.Column("device", sa.String(50), nullable=True),
        *(
            sa.Column(name, sa.BigInteger(), nullable=True)
            for name in (
                "kv_bytes_physical", "kv_bytes_logical", "kv_bytes_peak", "device_allocated",
                "device_reserved", "device_peak", "nvml_used", "nvml_total",
            )
        ),
        sa.Column("nvml_util", sa.Double(), nullable=True),
        sa.Column("rss_bytes", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "cache_events",
        *_owner_columns("cache_events"),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("detail", Json, nullable=True),
    )
    for table in SAMPLES:
        _sample_indexes(table)
    op.create_index("ix_cache_events_kind_ts", "cache_events", ["kind", "ts"])

    op.create_table(
        "sensitivity_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("values", Json, nullable=False),
        sa.Column("meta", Json, nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_sensitivity_profiles_run_id_runs", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sensitivity_profiles"),
    )
    op.create_index("ix_sensitivity_profiles_model_created_at", "sensitivity_profiles", ["model", "created_at"])


def downgrade() -> None:
    for table in ("sensitivity_profiles", *SAMPLES, "runs", "engine_instances", "deployments"):
        op.drop_table(table)
