"""How a sample table is declared once and everything else is derived from that declaration.

A sample table (layer stats, requests, memory samples, cache events) is one frozen dataclass: the record
readers return. Its fields are the table's columns in order; each field's `column(...)` metadata says
what the Python annotation cannot: the SQL type when it is not the default one, whether writers must give
it, its default, whether readers aggregate it, its help text and the OpenTelemetry instrument it feeds.
`SampleTable` turns that class into

- the SQLAlchemy `Table` (on the ORM's metadata, so Alembic compares it with the migrations),
- the writer's validation and dict -> tuple conversion (`tuples`), used by every `Store.add_*`,
- the readers' record conversion (`record`) and metric lists,
- the OpenTelemetry mapping (`instruments`), read by `kvpilot.probes.otel`,
- its per-minute and per-hour rollup tables (`kvpilot.storage.rollups`): `key` columns are kept per
  bucket, numeric columns get counts, sums, minima and maxima, other columns counts.

So a column is added in one place (plus an Alembic migration: migrations are history, never derived).
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import NoneType, UnionType
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Column, Index, Integer, MetaData, Table, text
from sqlalchemy.types import TypeEngine

from kvpilot.storage.errors import StoreError
from kvpilot.storage.rows import SampleRow

_META = "kvpilot.column"
OWNERS = ("instance_id", "run_id")


InstrumentKind = Literal["histogram", "counter", "updown", "gauge"]


@dataclass(frozen=True)
class Instrument:
    """The OpenTelemetry instrument a column feeds; names and units are listed in docs/telemetry.md.

    `kind`: "histogram" records every value, "counter" adds it; "updown" / "gauge" are observable
    instruments that report the latest value (per layer for per-layer tables). `attributes` are fixed extra attributes (e.g. the GenAI
    token type), `hw` adds `hw.id` / `hw.type` (NVML), `scale` multiplies the value (percent -> 0..1) and
    `when` (a row predicate) skips rows the metric does not describe."""

    name: str
    unit: str
    description: str
    kind: InstrumentKind = "histogram"
    buckets: tuple[float, ...] | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    hw: bool = False
    scale: float = 1.0
    when: Callable[[SampleRow], bool] | None = None


@dataclass(frozen=True)
class TableOtel:
    """How a table's rows reach OpenTelemetry besides their columns' instruments."""

    rows: Callable[[SampleRow], bool] | None = None  # which rows are exported (None: all)
    attributes: tuple[tuple[str, str], ...] = ()  # (attribute, column) added per row, e.g. the layer
    count: Instrument | None = None  # a counter incremented once per exported row
    hw_id: str | None = None  # the column naming the device that `hw` instruments describe


@dataclass(frozen=True)
class ColumnInfo:
    """What a column's field metadata declares beyond its Python type."""

    sql: TypeEngine[Any] | type[TypeEngine[Any]] | None = None
    required: bool = False
    default: Any = None
    metric: bool = False  # aggregated (averaged) by readers and the dashboard
    group: str = ""  # e.g. "skew": attention-skew metrics computed together by the skew probe
    help: str = ""
    choices: tuple[str, ...] | None = None
    otel: Instrument | None = None
    key: bool = False  # a rollup dimension (kept per bucket, like the owner), not an aggregated value


def column(
    sql: TypeEngine[Any] | type[TypeEngine[Any]] | None = None,
    *,
    required: bool = False,
    default: Any = None,
    metric: bool = False,
    group: str = "",
    help: str = "",
    choices: Sequence[str] | None = None,
    otel: Instrument | None = None,
    key: bool = False,
) -> Any:
    """A record field declaring one column (see the module docstring)."""
    info = ColumnInfo(sql, required, default, metric, group, help, tuple(choices) if choices else None, otel, key)
    return field(metadata={_META: info})


@dataclass(frozen=True)
class SampleRecord:
    """Columns every sample table starts with: its id, its time (epoch seconds) and its owner.

    Every row belongs to an engine instance, a run, or both (writers check)."""

    id: int
    ts: float
    instance_id: int | None
    run_id: int | None


class RaggedBatch(Exception):
    """Rows taken for a same-key batch hold other keys after all (found while a writer read a lazy column):
    the writer's transaction is rolled back and the rows go again row by row."""


class LazyColumn(Sequence[Any]):
    """One column of same-key dict rows, read from the rows when sliced: a writer reads it a chunk at a time,
    so on PostgreSQL reading the rows overlaps the server's work on the chunk before. A row without the key
    raises RaggedBatch."""

    __slots__ = ("_get", "_rows")

    def __init__(self, rows: list[SampleRow], key: str):
        self._rows, self._get = rows, itemgetter(key)

    def __len__(self) -> int:
        return len(self._rows)

    @typing.overload
    def __getitem__(self, index: int) -> Any: ...

    @typing.overload
    def __getitem__(self, index: slice) -> tuple[Any, ...]: ...

    def __getitem__(self, index: int | slice) -> Any:
        try:
            if isinstance(index, slice):
                return tuple(map(self._get, self._rows[index]))
            return self._get(self._rows[index])
        except KeyError:
            raise RaggedBatch(f"a row lacks {self._get!r}") from None

    def __iter__(self) -> typing.Iterator[Any]:
        return iter(self[:])


@dataclass(frozen=True)
class Batch:
    """Rows ready for a bulk insert, column by column: `data[i]` holds column `columns[i]` of every row (a
    column-major batch is what PostgreSQL's packing needs and what the writers' checks read), plus the distinct
    owner ids the rows name."""

    columns: tuple[str, ...]
    data: tuple[Sequence[Any], ...]
    instance_ids: frozenset[int]
    run_ids: frozenset[int]

    def __len__(self) -> int:
        return len(self.data[0]) if self.data else 0

    @property
    def rows(self) -> list[tuple]:
        """The rows as tuples in `columns` order."""
        return list(zip(*self.data, strict=True))

    @classmethod
    def of_rows(cls, columns: tuple[str, ...], rows: list[tuple], instance_ids: frozenset[int],
                run_ids: frozenset[int]) -> Batch:
        """A batch from row tuples."""
        data = tuple(zip(*rows, strict=True)) if rows else tuple(() for _ in columns)
        return cls(columns, data, instance_ids, run_ids)


def _ids(values: Iterable[Any]) -> frozenset[int]:
    return frozenset(v for v in set(values) if v is not None)


@dataclass(frozen=True)
class ColumnSpec:
    """One column as derived from its record field."""

    name: str
    python: type
    nullable: bool
    info: ColumnInfo

    @property
    def metric(self) -> bool:
        return self.info.metric

    @property
    def help(self) -> str:
        return self.info.help


R = TypeVar("R", bound=SampleRecord)


class SampleTable(Generic[R]):
    """A sample table derived from its record class; see the module docstring."""

    def __init__(
        self,
        name: str,
        record: type[R],
        metadata: MetaData,
        *,
        types: Mapping[type, Callable[[], TypeEngine[Any]]],
        id_type: TypeEngine[Any],
        indexes: Sequence[Sequence[str]] = (),
        owner_indexes: Sequence[str] = OWNERS,
        time_index: bool = False,
        otel: TableOtel | None = None,
    ):
        self.name = name
        self.owner_indexes = tuple(owner_indexes)
        self.time_index = time_index
        self.record = record
        self.otel = otel or TableOtel()
        self.doc = (record.__doc__ or "").strip()
        hints = typing.get_type_hints(record)
        self.columns: tuple[ColumnSpec, ...] = tuple(
            ColumnSpec(f.name, *_python_type(hints[f.name]), f.metadata.get(_META, ColumnInfo()))
            for f in dataclasses.fields(record)
        )
        self.by_name = {c.name: c for c in self.columns}
        self.table = _sql_table(name, self.columns, metadata, types, id_type, indexes, self.owner_indexes, time_index)
        # writer side: every column but the id, in table order
        self.writable = tuple(c.name for c in self.columns if c.name != "id")
        self._allowed = frozenset(self.writable)
        self._required = tuple(c.name for c in self.columns if c.info.required)
        self._defaults = {c: self.by_name[c].info.default for c in self.writable}
        self._getter = itemgetter(*self.writable)
        self._choices = [
            (self.writable.index(c.name), c.name, c.info.choices) for c in self.columns if c.info.choices
        ]
        self._json = [self.writable.index(c.name) for c in self.columns if c.python is dict and c.name != "id"]
        self._index = {c: i for i, c in enumerate(self.writable)}
        self._owner_index = (self._index["instance_id"], self._index["run_id"])
        self._json_names = frozenset(self.writable[i] for i in self._json)

    def __repr__(self) -> str:
        return f"SampleTable({self.name!r}, {self.record.__name__})"

    # ----- derived lists -------------------------------------------------------------------------------

    @property
    def metrics(self) -> tuple[ColumnSpec, ...]:
        """Columns readers aggregate (means per bucket, per layer, per run)."""
        return tuple(c for c in self.columns if c.info.metric)

    def names(self, *, group: str | None = None, metric: bool | None = None) -> tuple[str, ...]:
        """Column names, optionally only one group's or only metrics."""
        return tuple(
            c.name for c in self.columns
            if (group is None or c.info.group == group) and (metric is None or c.info.metric == metric)
        )

    def instruments(self) -> list[tuple[str, Instrument]]:
        """(column, instrument) pairs: the table's OpenTelemetry mapping."""
        return [(c.name, c.info.otel) for c in self.columns if c.info.otel is not None]

    # ----- writers ---------------------------------------------------------------------------------------

    def tuples(self, rows: Iterable[SampleRow], instance_id: int | None, run_id: int | None) -> list[tuple]:
        """Validated tuples in `writable` order: unknown keys and missing required values are refused, so a
        typo never silently drops a metric; `ts` defaults to now and the owners to the given ones."""
        rows = rows if isinstance(rows, list) else list(rows)
        return self._row_by_row(rows, instance_id, run_id) if rows else []

    def batch(self, rows: Iterable[SampleRow], instance_id: int | None, run_id: int | None, *,
              by_rows: bool = False) -> Batch:
        """The rows validated as `tuples` does, as a `Batch` for a bulk insert: the same values, but only the
        columns the rows give or that have a value (omitted ones are NULL).

        A batch whose rows all have the same keys (what probes and the recorder send) is checked a column at
        a time with C-level passes (`itemgetter`, `map`, `set`), not a dict merge per row: the columns it
        checks are read at once, the others as the writer sends them (`LazyColumn`). Any other batch, one with
        JSON values, or any batch with `by_rows`, goes row by row (`tuples`)."""
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return Batch.of_rows(self.writable, [], frozenset(), frozenset())
        fast = None if by_rows else self._columnar(rows, instance_id, run_id)
        if fast is not None:
            return fast
        out = self._row_by_row(rows, instance_id, run_id)
        i, r = self._owner_index
        return Batch.of_rows(self.writable, out, _ids(map(itemgetter(i), out)), _ids(map(itemgetter(r), out)))

    def _columnar(self, rows: list[SampleRow], instance_id: int | None, run_id: int | None) -> Batch | None:
        """`batch` for rows with the same keys, or None when they differ (or carry JSON): see `batch`."""
        keys = tuple(rows[0])
        if len(keys) < 2 or len(set(map(len, rows))) != 1 or any(k in self._json_names for k in keys):
            return None
        name = self.name
        if not self._allowed.issuperset(keys):
            unknown = sorted(set(keys) - self._allowed)
            raise StoreError(f"{name} row has unknown field(s) {unknown}; allowed: {', '.join(self.writable)}")
        # Same length and every key present means the same keys: the columns checked here are read now (one
        # C-level pass each), the others when the writer sends them (`LazyColumn`), which finds a missing key
        # then (RaggedBatch: the writer goes row by row).
        checked = {*OWNERS, *self._required, *(col for _, col, _ in self._choices)}
        try:
            data: list[Sequence[Any]] = [
                tuple(map(itemgetter(k), rows)) if k in checked else LazyColumn(rows, k) for k in keys
            ]
        except KeyError:
            return None
        n = len(rows)
        defaults = dict(self._defaults, ts=time.time(), instance_id=instance_id, run_id=run_id)
        const = {c: defaults[c] for c in self.writable if c not in keys}

        def column(col: str) -> set[Any]:
            """The distinct values of a column in this batch."""
            if col in const:
                return {const[col]}
            return set(data[keys.index(col)])

        owners = {o: column(o) for o in OWNERS}
        if None in owners["instance_id"] and None in owners["run_id"]:
            if "instance_id" in const or "run_id" in const or any(
                    i is None and r is None
                    for i, r in zip(data[keys.index("instance_id")], data[keys.index("run_id")], strict=True)):
                raise StoreError(f"{name} row belongs to no engine instance and no run: pass instance_id= or run_id=")
        for col in self._required:
            if None in column(col):
                bad = rows[0] if col in const else rows[list(data[keys.index(col)]).index(None)]
                raise StoreError(f"{name} row is missing {col!r}: {dict(bad)}")
        for _, col, allowed in self._choices:
            try:
                unknown_values = column(col) - set(allowed)
            except TypeError:  # unhashable: row by row names it
                return None
            if unknown_values:
                raise StoreError(f"{name} {col} {sorted(map(repr, unknown_values))[0]} unknown; allowed: "
                                 f"{', '.join(allowed)}")
        extra = tuple((c, v) for c, v in const.items() if v is not None)
        data += [(v,) * n for _, v in extra]  # a constant column: one tuple of the same object
        return Batch(keys + tuple(c for c, _ in extra), tuple(data), _ids(owners["instance_id"]),
                     _ids(owners["run_id"]))

    def _row_by_row(self, rows: list[SampleRow], instance_id: int | None, run_id: int | None) -> list[tuple]:
        base = dict(self._defaults, ts=time.time(), instance_id=instance_id, run_id=run_id)
        allowed, getter, required, name = self._allowed, self._getter, self._required, self.name
        out = []
        for row in rows:
            if not allowed.issuperset(row):
                unknown = sorted(set(row) - allowed)
                raise StoreError(f"{name} row has unknown field(s) {unknown}; allowed: {', '.join(self.writable)}")
            merged = {**base, **row}
            if merged["instance_id"] is None and merged["run_id"] is None:
                raise StoreError(f"{name} row belongs to no engine instance and no run: pass instance_id= or run_id=")
            for col in required:
                if merged[col] is None:
                    raise StoreError(f"{name} row is missing {col!r}: {dict(row)}")
            out.append(getter(merged))
        if self._choices or self._json:
            out = [self._finish(t) for t in out]
        return out

    def _finish(self, row: tuple) -> tuple:
        for i, col, allowed in self._choices:
            if row[i] not in allowed:
                raise StoreError(f"{self.name} {col} {row[i]!r} unknown; allowed: {', '.join(allowed)}")
        if not any(row[i] is not None for i in self._json):
            return row
        values = list(row)
        for i in self._json:
            if values[i] is not None:
                values[i] = json.dumps(json_safe(values[i]), default=str)
        return tuple(values)

    # ----- readers ---------------------------------------------------------------------------------------

    def record_of(self, row: Sequence[Any]) -> R:
        """The record for one result row of `select(*table.c)` (positional: columns are in field order)."""
        return self.record(*row)


def _python_type(annotation: Any) -> tuple[type, bool]:
    """(base type, nullable) of `int`, `int | None`, `dict[str, Any] | None`, ..."""
    args = typing.get_args(annotation) if isinstance(annotation, UnionType) else ()
    nullable = NoneType in args
    base = next((a for a in args if a is not NoneType), annotation) if args else annotation
    base = typing.get_origin(base) or base
    return base, nullable


def _sql_table(
    name: str,
    columns: Sequence[ColumnSpec],
    metadata: MetaData,
    types: Mapping[type, Callable[[], TypeEngine[Any]]],
    id_type: TypeEngine[Any],
    indexes: Sequence[Sequence[str]],
    owner_indexes: Sequence[str] = OWNERS,
    time_index: bool = False,
) -> Table:
    cols: list[Any] = []
    for c in columns:
        if c.name == "id":
            cols.append(Column("id", id_type, primary_key=True))
        elif c.name in OWNERS:
            # no foreign key: a per-row check on every bulk insert; writers check a batch's owners once
            # (`kvpilot.storage.samples`, migration 0010)
            cols.append(Column(c.name, Integer))
        else:
            sql = c.info.sql if c.info.sql is not None else types[c.python]()
            cols.append(Column(c.name, sql, nullable=c.nullable, default=c.info.default))
    # Dashboards read one instance or one run over a time window, and prune deletes per owner by time.
    # The indexes are partial (owner NOT NULL): engine rows without a run skip the run index entirely,
    # which is a third of the insert cost. Every sample row has an instance or a run (writers check).
    # A table written at high rates (layer stats) trades its (instance_id, ts) B-tree, which every row
    # descends into, for a time index: BRIN on PostgreSQL (rows arrive in time order, so each block range
    # covers a short span; an insert into the newest, unsummarised range costs almost nothing), a B-tree
    # appended at its right edge on SQLite. Readers filter the instance after the time range (migration 0011).
    if time_index:
        cols.append(Index(f"ix_{name}_ts", "ts", postgresql_using="brin"))
    for owner in owner_indexes:
        where = text(f"{owner} IS NOT NULL")
        cols.append(
            Index(f"ix_{name}_{owner.removesuffix('_id')}_ts", owner, "ts", sqlite_where=where, postgresql_where=where)
        )
    cols += [Index(f"ix_{name}_{'_'.join(ix)}", *ix) for ix in indexes]
    return Table(name, metadata, *cols)


def json_safe(value: Any) -> Any:
    """A copy of `value` that every database's JSON accepts: non-finite floats become None."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


__all__ = [
    "Batch", "ColumnInfo", "ColumnSpec", "Instrument", "InstrumentKind", "LazyColumn", "RaggedBatch", "SampleRecord",
    "SampleRow", "SampleTable", "TableOtel",
    "column", "json_safe",
]
