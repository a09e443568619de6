"""Rollups: per-minute and per-hour aggregates of every sample table, derived from its declaration.

A rollup row holds, for one time bucket, owner (instance, run) and key (e.g. layer and head), the number of
raw rows `n` and, per aggregated column `c` (`ts` included): `c_n` (non-null values), and for numeric
columns `c_sum`, `c_min`, `c_max`. Means, sums, counts and extremes of any set of buckets follow exactly from these, so a
reader combines rollup rows and raw rows with the same expressions (`Agg`).

Rollup tables are append-only: each refresh adds the aggregates of the raw rows stored since the last one
(by id, a watermark kept in `rollup_state`), so a row that arrives late for an old bucket adds a second
partial row for that bucket instead of rewriting it; readers always aggregate over rollup rows. Which
columns are keys and which are aggregated comes from the sample table's declaration (`column(key=True)`),
so a new sample table or column gets its rollups by adding it there (plus the migration).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.types import TypeEngine

from kvpilot.storage.tabledef import OWNERS, ColumnSpec, SampleTable

# (label, seconds), finest first; readers try the coarsest that fits a query's buckets.
GRAINS: tuple[tuple[str, int], ...] = (("1m", 60), ("1h", 3600))
NUMERIC = (int, float)


@dataclass(frozen=True)
class RollupTable:
    """One sample table's rollup at one grain."""

    source: SampleTable[Any]
    label: str
    grain_s: int
    table: Table
    keys: tuple[str, ...]
    numeric: tuple[str, ...]  # columns with _n, _sum, _min, _max
    counted: tuple[str, ...]  # non-numeric columns with _n only

    @property
    def name(self) -> str:
        return self.table.name


def rollup_columns(spec: SampleTable[Any]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(keys, numeric, counted) columns of a sample table's rollups, from its declaration."""
    skip = {"id", *OWNERS}
    cols = [c for c in spec.columns if c.name not in skip]
    keys = tuple(c.name for c in cols if c.info.key)
    # ts too: its minimum and maximum keep a window's first and last sample time exact
    numeric = tuple(c.name for c in cols if not c.info.key and c.python in NUMERIC)
    counted = tuple(c.name for c in cols if not c.info.key and c.python not in NUMERIC)
    return keys, numeric, counted


def derive_rollup(
    spec: SampleTable[Any], label: str, grain_s: int, metadata: MetaData, id_type: TypeEngine[Any]
) -> RollupTable:
    """The rollup table of `spec` at `grain_s` seconds, on `metadata` (so Alembic compares it too)."""
    keys, numeric, counted = rollup_columns(spec)
    name = f"{spec.name}_{label}"
    cols: list[Any] = [
        Column("id", id_type, primary_key=True),
        Column("bucket", Double, nullable=False),
        Column("instance_id", Integer, ForeignKey("engine_instances.id", ondelete="CASCADE")),
        Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE")),
    ]
    for k in keys:
        src = spec.table.c[k]
        cols.append(Column(k, src.type, nullable=src.nullable))
    cols.append(Column("n", BigInteger, nullable=False))
    for c in numeric:
        typ = spec.table.c[c].type
        cols += [
            Column(f"{c}_n", BigInteger, nullable=False),
            Column(f"{c}_sum", Double),
            Column(f"{c}_min", typ),
            Column(f"{c}_max", typ),
        ]
    cols += [Column(f"{c}_n", BigInteger, nullable=False) for c in counted]
    for owner in OWNERS:
        where = text(f"{owner} IS NOT NULL")
        cols.append(Index(f"ix_{name}_{owner.removesuffix('_id')}_bucket", owner, "bucket",
                          sqlite_where=where, postgresql_where=where))
    return RollupTable(spec, label, grain_s, Table(name, metadata, *cols), keys, numeric, counted)


# ----- refreshing ---------------------------------------------------------------------------------------


def refresh_select(rollup: RollupTable, bucket: ColumnElement[Any], after_id: int, upto_id: int) -> Select[Any]:
    """The aggregates of raw rows with after_id < id <= upto_id, in the rollup's column order."""
    raw = rollup.source.table.c
    group = [bucket, raw.instance_id, raw.run_id, *(raw[k] for k in rollup.keys)]
    aggs: list[ColumnElement[Any]] = [func.count()]
    for c in rollup.numeric:
        aggs += [func.count(raw[c]), func.sum(cast(raw[c], Double)), func.min(raw[c]), func.max(raw[c])]
    aggs += [func.count(raw[c]) for c in rollup.counted]
    return (
        select(*group, *aggs)
        .where(raw.id > after_id, raw.id <= upto_id, *_owned(rollup, raw))
        .group_by(*group)
    )


def _owned(rollup: RollupTable, raw: Any) -> list[ColumnElement[Any]]:
    """Raw rows whose engine and run still exist: raw tables keep no foreign keys (the writer checks a batch's
    owners once), rollups do; a row of an owner deleted since (by hand) would otherwise fail every refresh."""
    conditions: list[ColumnElement[Any]] = []
    for owner in OWNERS:
        for fk in rollup.table.c[owner].foreign_keys:
            conditions.append(or_(raw[owner].is_(None), raw[owner].in_(select(fk.column))))
    return conditions


def coarsen_select(rollup: RollupTable, finer: RollupTable, bucket: ColumnElement[Any], after_id: int) -> Select[Any]:
    """The aggregates of `finer`'s rows with id > after_id at `rollup`'s grain (a multiple of the finer one):
    sums of counts and sums, minima of minima, maxima of maxima equal the aggregates of the raw rows."""
    f = finer.table.c
    group = [bucket, f.instance_id, f.run_id, *(f[k] for k in rollup.keys)]
    aggs: list[ColumnElement[Any]] = [func.sum(f.n)]
    for c in rollup.numeric:
        aggs += [func.sum(f[f"{c}_n"]), func.sum(f[f"{c}_sum"]), func.min(f[f"{c}_min"]), func.max(f[f"{c}_max"])]
    aggs += [func.sum(f[f"{c}_n"]) for c in rollup.counted]
    return select(*group, *aggs).where(f.id > after_id).group_by(*group)


def insert_columns(rollup: RollupTable) -> list[str]:
    """The rollup's columns in `refresh_select` order (all but the id)."""
    return [c.name for c in rollup.table.c if c.name != "id"]


# ----- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A part of a window read from one rollup (or from raw rows when `rollup` is None), [start, end)."""

    rollup: RollupTable | None
    start: float
    end: float


def plan_segments(
    rollups: Sequence[RollupTable], start: float, end: float, covered_until: float | None, width: float | None
) -> list[Segment]:
    """Cut [start, end) into rollup segments (coarsest grain first) and raw rest.

    A rollup serves only whole buckets below `covered_until` (where the last refresh stopped) and, when the
    query groups by time buckets of `width` seconds, only grains that divide `width`, so each query bucket is
    made of whole rollup buckets."""
    usable = [r for r in rollups if width is None or (width >= r.grain_s and width % r.grain_s == 0)]
    usable.sort(key=lambda r: -r.grain_s)
    limit = end if covered_until is None else min(end, covered_until)
    if not usable or covered_until is None or limit <= start:
        return [Segment(None, start, end)]
    return _cut(usable, start, limit) + ([Segment(None, limit, end)] if limit < end else [])


def _cut(rollups: Sequence[RollupTable], start: float, end: float) -> list[Segment]:
    if end <= start:
        return []
    if not rollups:
        return [Segment(None, start, end)]
    g = rollups[0].grain_s
    a = -(-start // g) * g if math.isfinite(start) else start  # the first whole bucket
    b = (end // g) * g
    if a >= b:
        return _cut(rollups[1:], start, end)
    return [*_cut(rollups[1:], start, a), Segment(rollups[0], a, b), *_cut(rollups[1:], b, end)]


def segment_select(
    seg: Segment,
    spec: SampleTable[Any],
    owner: Sequence[ColumnElement[bool]],
    keys: Sequence[str],
    numeric: Sequence[str],
    counted: Sequence[str] = (),
) -> Select[Any]:
    """One segment as rows of the normalised form (ts, instance_id, run_id, keys, n, c_n, c_sum, c_min,
    c_max): rollup rows as stored, raw rows as rollups of one row. `owner` must use the segment's table."""
    if seg.rollup is not None:
        t = seg.rollup.table.c
        cols: list[ColumnElement[Any]] = [t.bucket.label("ts"), t.instance_id, t.run_id, *(t[k] for k in keys), t.n]
        for c in numeric:
            cols += [t[f"{c}_n"], t[f"{c}_sum"], t[f"{c}_min"], t[f"{c}_max"]]
        cols += [t[f"{c}_n"] for c in counted]
        bounds = [t.bucket >= seg.start] if math.isfinite(seg.start) else []
        return select(*cols).where(*owner, *bounds, t.bucket < seg.end)
    r = spec.table.c
    cols = [r.ts.label("ts"), r.instance_id, r.run_id, *(r[k] for k in keys), literal(1).label("n")]
    for c in numeric:
        cols += [
            _present(r[c]).label(f"{c}_n"), cast(r[c], Double).label(f"{c}_sum"),
            r[c].label(f"{c}_min"), r[c].label(f"{c}_max"),
        ]
    cols += [_present(r[c]).label(f"{c}_n") for c in counted]
    bounds = [r.ts >= seg.start] if math.isfinite(seg.start) else []
    bounds += [r.ts < seg.end] if math.isfinite(seg.end) else []
    return select(*cols).where(*owner, *bounds)


def _present(col: ColumnElement[Any]) -> ColumnElement[Any]:
    return case((col.is_(None), 0), else_=1)


class Agg:
    """Aggregate expressions over a normalised source (see `segment_select`), equal to the raw aggregates."""

    def __init__(self, src: Any):
        self.c = src.c

    def count(self) -> ColumnElement[Any]:
        return func.sum(self.c.n)

    def count_of(self, col: str) -> ColumnElement[Any]:
        return func.sum(self.c[f"{col}_n"])

    def sum(self, col: str) -> ColumnElement[Any]:
        return func.sum(self.c[f"{col}_sum"])

    def avg(self, col: str) -> ColumnElement[Any]:
        return func.sum(self.c[f"{col}_sum"]) / func.nullif(func.sum(self.c[f"{col}_n"]), 0)

    def max(self, col: str) -> ColumnElement[Any]:
        return func.max(self.c[f"{col}_max"])

    def min(self, col: str) -> ColumnElement[Any]:
        return func.min(self.c[f"{col}_min"])


__all__ = [
    "GRAINS", "Agg", "ColumnSpec", "RollupTable", "Segment", "coarsen_select", "derive_rollup", "insert_columns",
    "plan_segments",
    "refresh_select", "rollup_columns", "segment_select",
]
