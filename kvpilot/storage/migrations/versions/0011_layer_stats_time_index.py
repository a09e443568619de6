"""layer_stats: a time index (BRIN on PostgreSQL) instead of the (instance_id, ts) B-tree.

Layer stats arrive at hundreds of thousands of rows per second from a fleet; each row descended the partial
(instance_id, ts) B-tree, which cost PostgreSQL's COPY about a fifth of its server time at 12,000-row batches
(benchmarks/results/store_ingest_profile_0011.json). Rows arrive in time order, so a BRIN index on `ts`
(one summary per block range) serves the time windows readers ask for at almost no insert cost; on SQLite,
which has no BRIN, the same declaration is a B-tree on `ts`, appended at its right edge. Readers filter the
instance after the time range; the newest sample per instance comes from the per-minute rollup and the raw rows
not yet rolled up (`kvpilot.storage.queries`), and prune deletes layer stats by time
(`kvpilot.storage.entities`). The (run_id, ts) partial index stays: run summaries need it and engine rows
without a run skip it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_layer_stats_instance_ts", table_name="layer_stats")
    op.create_index("ix_layer_stats_ts", "layer_stats", ["ts"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("ix_layer_stats_ts", table_name="layer_stats")
    where = sa.text("instance_id IS NOT NULL")
    op.create_index("ix_layer_stats_instance_ts", "layer_stats", ["instance_id", "ts"], sqlite_where=where,
                    postgresql_where=where)
