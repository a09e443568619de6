"""The layer-stat write path of revision 0010, kept verbatim so `store_ingest.py --previous 0010` measures it
against the current one in the same run: `SampleTable._columnar` building row tuples (`Batch.rows`), then
sqlite3's executemany over them, or on PostgreSQL a transpose per 2,000-row chunk and `pack_columns` checking
each column with `None in` before numpy converts it. Only the bodies are copied; helpers they call that did
not change are imported.
"""

# ruff: noqa
from __future__ import annotations

import time
from itertools import repeat
from operator import add, itemgetter
from typing import Any, NamedTuple

from kvpilot.storage.backends.pgcopy import _HEADER, _INT_RANGES, _PACKED, _TRAILER, CHUNK_ROWS, CopyPlan, copy_plan, prepare
from kvpilot.storage.errors import StoreError
from kvpilot.storage.rows import SampleRow
from kvpilot.storage.tabledef import OWNERS, _ids
from collections.abc import Sequence
from sqlalchemy import Table


class Batch(NamedTuple):
    """Revision 0010's batch: row tuples in `columns` order."""

    columns: tuple[str, ...]
    rows: list[tuple]
    instance_ids: frozenset[int]
    run_ids: frozenset[int]


def previous_columnar(self, rows: list[SampleRow], instance_id: int | None, run_id: int | None) -> Batch | None:
    """`batch` for rows with the same keys, or None when they differ (or carry JSON): see `batch`."""
    keys = tuple(rows[0])
    if len(keys) < 2 or len(set(map(len, rows))) != 1 or any(k in self._json_names for k in keys):
        return None
    name = self.name
    if not self._allowed.issuperset(keys):
        unknown = sorted(set(keys) - self._allowed)
        raise StoreError(f"{name} row has unknown field(s) {unknown}; allowed: {', '.join(self.writable)}")
    try:  # same length and every key present: the same keys
        values = list(map(itemgetter(*keys), rows))
    except KeyError:
        return None
    defaults = dict(self._defaults, ts=time.time(), instance_id=instance_id, run_id=run_id)
    const = {c: defaults[c] for c in self.writable if c not in keys}

    def column(col: str) -> set[Any]:
        """The distinct values of a column in this batch."""
        if col in const:
            return {const[col]}
        return set(map(itemgetter(keys.index(col)), values))

    owners = {o: column(o) for o in OWNERS}
    if None in owners["instance_id"] and None in owners["run_id"]:
        if "instance_id" in const or "run_id" in const or any(
                row[0] is None and row[1] is None
                for row in map(itemgetter(keys.index("instance_id"), keys.index("run_id")), values)):
            raise StoreError(f"{name} row belongs to no engine instance and no run: pass instance_id= or run_id=")
    for col in self._required:
        if None in column(col):
            bad = rows[0] if col in const else rows[[v[keys.index(col)] for v in values].index(None)]
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
    if extra:
        tail = tuple(v for _, v in extra)
        values = list(map(add, values, repeat(tail, len(values))))
    return Batch(keys + tuple(c for c, _ in extra), values, _ids(owners["instance_id"]), _ids(owners["run_id"]))

def previous_copy_rows(cursor: Any, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
    """Send `rows` (tuples in `columns` order) to `table` with one binary COPY on a psycopg cursor.

    The batch goes in chunks of CHUNK_ROWS, so packing overlaps the server's work on the chunk before. A chunk
    of plain numbers is packed by numpy (`pack_columns`); any other goes through psycopg's typed `write_row`
    in the same COPY stream. An error in any chunk fails the whole COPY (and its transaction)."""
    plan = copy_plan(table, tuple(columns))
    if not rows:
        return
    with cursor.copy(plan.statement) as copy:
        copy.set_types(list(plan.types))
        copy.write(_HEADER)
        by_rows = False  # psycopg ends a stream it wrote rows into with the trailer itself
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start:start + CHUNK_ROWS]
            by_column = list(zip(*chunk, strict=True))
            packed = previous_pack_columns(plan, table.name, by_column)
            if packed is not None:
                copy.write(packed)
                continue
            by_rows = True
            write = copy.write_row
            row: tuple = ()
            try:
                for row in prepare(plan, table.name, columns, chunk, by_column):
                    write(row)
            except (TypeError, ValueError, OverflowError) as exc:
                raise StoreError(f"{table.name} row does not fit the column types ({exc}): {row}") from None
        if not by_rows:
            copy.write(_TRAILER)



def previous_pack_columns(plan: CopyPlan, name: str, by_column: list[tuple]) -> bytes | None:
    """The binary COPY rows (no header or trailer) of a batch of numbers, packed a column at a time by numpy,
    or None when the batch needs the row-by-row path: a column mixing NULLs and values (rows of different
    lengths), a non-finite float (stored as NULL), a value that is not a plain int or float for its column,
    or a type numpy does not pack. Out-of-range integers are refused as on that path."""
    import numpy as np

    n = len(by_column[0])
    fields: list[tuple[str, str]] = [("count", ">i2")]
    arrays: list[tuple[int, Any]] = []
    for i, (typ, values) in enumerate(zip(plan.types, by_column, strict=True)):
        if None in values:
            if values.count(None) != n:
                return None
            fields.append((f"l{i}", ">i4"))  # NULL in every row: its length -1 only
            continue
        code = _PACKED.get(typ)
        if code is None:
            return None
        try:
            arr = np.array(values)
        except (ValueError, OverflowError):
            return None
        if code[1] == "f":
            if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
                return None
        elif arr.dtype.kind not in "iu":  # floats, bools or objects (ints beyond 64 bits) in an integer column
            return None
        else:
            low, high = _INT_RANGES[typ]
            lo, hi = int(arr.min()), int(arr.max())
            if lo < low or hi > high:
                bad = lo if lo < low else hi
                raise StoreError(f"{name} {plan.columns[i]} {bad!r} is out of range for its column ({low}..{high})")
        fields += [(f"l{i}", ">i4"), (f"v{i}", code)]
        arrays.append((i, arr))
    out = np.empty(n, dtype=np.dtype(fields))
    out["count"] = len(by_column)
    with_values = {i for i, _ in arrays}
    for i in range(len(by_column)):
        out[f"l{i}"] = np.dtype(_PACKED[plan.types[i]]).itemsize if i in with_values else -1
    for i, arr in arrays:
        out[f"v{i}"] = arr
    return out.tobytes()


