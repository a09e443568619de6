"""PostgreSQL bulk loading through psycopg 3's binary COPY with typed rows.

Binary COPY skips the server's text parsing and psycopg's text formatting: each value is packed by the C
dumper of the column's own type (`Copy.set_types`). Two things the text format did for free are checked
here, per batch and column (C-level passes over the transposed batch, not a Python loop per value):

- a NaN or infinite float would be stored as such and poison every AVG(); it becomes NULL, as on SQLite;
- binary integers are packed to the column's width without a range check (2**40 into an `integer` column
  arrives as 0), so an out-of-range value is refused with a StoreError instead.

JSON columns arrive as JSON text (the writers serialise them) and are wrapped so psycopg sends that text as
jsonb instead of encoding it a second time.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from kvpilot.storage.errors import StoreError

_INT_RANGES = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class CopyPlan:
    """How one table's columns are sent: their PostgreSQL type names and which need a batch check."""

    statement: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    floats: tuple[int, ...]
    ints: tuple[tuple[int, str, int, int], ...]  # (index, column, low, high) for columns narrower than Python ints
    json: tuple[int, ...]


@lru_cache(maxsize=64)
def copy_plan(table: Table, columns: tuple[str, ...]) -> CopyPlan:
    """The binary COPY statement and column types for `columns` of `table` (cached per table)."""
    types: list[str] = []
    floats, ints, json = [], [], []
    for i, name in enumerate(columns):
        sql = re.sub(r"\(.*\)", "", table.c[name].type.compile(dialect=_DIALECT)).strip().lower()
        types.append(sql)
        if sql in ("double precision", "real", "float"):
            floats.append(i)
        elif sql in _INT_RANGES:
            ints.append((i, name, *_INT_RANGES[sql]))
        elif sql in ("json", "jsonb"):
            json.append(i)
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    return CopyPlan(statement, tuple(columns), tuple(types), tuple(floats), tuple(ints), tuple(json))


CHUNK_ROWS = 2_000  # rows packed and sent at a time: the server loads one chunk while the next is packed


def copy_rows(cursor: Any, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
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
            packed = pack_columns(plan, table.name, by_column)
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


# numpy's big-endian types for the binary format's fixed-width values
_PACKED = {"double precision": ">f8", "real": ">f4", "smallint": ">i2", "integer": ">i4", "bigint": ">i8"}
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)


def pack_columns(plan: CopyPlan, name: str, by_column: list[tuple]) -> bytes | None:
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


def prepare(plan: CopyPlan, name: str, columns: Sequence[str], rows: list[tuple],
            by_column: list[tuple] | None = None) -> list[tuple]:
    """`rows` with non-finite floats as NULL and JSON wrapped; out-of-range integers refused."""
    if not rows:
        return rows
    by_column = list(zip(*rows, strict=True)) if by_column is None else list(by_column)
    for i, column, low, high in plan.ints:
        values = [v for v in by_column[i] if v is not None] if None in by_column[i] else by_column[i]
        if values and (min(values) < low or max(values) > high):
            bad = next(v for v in values if v < low or v > high)
            raise StoreError(f"{name} {column} {bad!r} is out of range for its column ({low}..{high})")
    fix = [i for i in plan.floats if not _all_finite(by_column[i])]
    if not fix and not plan.json:
        return rows
    from psycopg.types.json import Jsonb

    for i in fix:
        by_column[i] = tuple(v if v is None or v.__class__ is not float or math.isfinite(v) else None
                             for v in by_column[i])
    for i in plan.json:
        by_column[i] = tuple(None if v is None else Jsonb(v, dumps=_as_is) for v in by_column[i])
    return list(zip(*by_column, strict=True))


def _all_finite(values: Sequence[Any]) -> bool:
    """True when no value is a NaN or infinite float (one C-level sum; None and ints pass)."""
    if None in values:
        values = [v for v in values if v is not None]
    try:
        return math.isfinite(math.fsum(values))
    except (OverflowError, ValueError):  # inf - inf, or a sum beyond float range: look value by value
        return all(v is None or math.isfinite(v) for v in values)
    except TypeError:  # not numbers at all: psycopg's dumper refuses them with the column named
        return True


def _as_is(text: str) -> str:
    return text
