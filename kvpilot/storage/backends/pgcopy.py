"""PostgreSQL bulk loading through psycopg 3's binary COPY with typed rows.

Binary COPY skips the server's text parsing and psycopg's text formatting: each value is packed by the C
dumper of the column's own type (`Copy.set_types`). Two things the text format did for free are checked
here, per batch and column (numpy and C-level passes over the batch's columns, not a Python loop per value):

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


def copy_columns(cursor: Any, table: Table, columns: Sequence[str], data: Sequence[Sequence[Any]]) -> None:
    """Send a batch given column by column (`data[i]`: column `columns[i]` of every row, sliceable) to `table`
    with one binary COPY on a psycopg cursor.

    The batch goes in chunks of CHUNK_ROWS rows, each sliced from the columns (lazy columns read their rows
    then), converted by numpy once per column (`column_arrays`) and packed, so reading and packing a chunk
    overlaps the server's work on the chunk before; a chunk that is not all plain numbers goes through
    psycopg's typed `write_row` (`prepare`) in the same stream. An error in any chunk fails the whole COPY
    (and its transaction)."""
    plan = copy_plan(table, tuple(columns))
    n = len(data[0]) if data else 0
    if not n:
        return
    with cursor.copy(plan.statement) as copy:
        copy.set_types(list(plan.types))
        copy.write(_HEADER)
        by_rows = False  # psycopg ends a stream it wrote rows into with the trailer itself
        for start in range(0, n, CHUNK_ROWS):
            chunk = [tuple(c[start:start + CHUNK_ROWS]) for c in data]  # a tuple's slice is one already
            arrays = column_arrays(plan, table.name, chunk)
            if arrays is not None:
                copy.write(_pack(_layout(plan, arrays), arrays, 0, len(chunk[0])))
                continue
            by_rows = True
            write = copy.write_row
            row: tuple = ()
            try:
                for row in prepare(plan, table.name, columns, list(zip(*chunk, strict=True)), chunk):
                    write(row)
            except (TypeError, ValueError, OverflowError) as exc:
                raise StoreError(f"{table.name} row does not fit the column types ({exc}): {row}") from None
        if not by_rows:
            copy.write(_TRAILER)


# numpy's big-endian types for the binary format's fixed-width values
_PACKED = {"double precision": ">f8", "real": ">f4", "smallint": ">i2", "integer": ">i4", "bigint": ">i8"}
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)


def column_arrays(plan: CopyPlan, name: str, by_column: Sequence[Sequence[Any]]) -> list[Any] | None:
    """One numpy array per column (None for a column NULL in every row), or None when the batch needs the
    row-by-row path: a column mixing NULLs and values, a non-finite float (stored as NULL), a value that is not
    a plain int or float for its column, or a type numpy does not pack. Out-of-range integers are refused as on
    that path.

    NULLs are found from the arrays' dtype (a None makes numpy fall back to objects), not by scanning each
    column for None in Python."""
    import numpy as np

    arrays: list[Any] = []
    for i, (typ, values) in enumerate(zip(plan.types, by_column, strict=True)):
        code = _PACKED.get(typ)
        if code is None:
            return None
        try:
            arr = np.array(values)
        except (ValueError, OverflowError):
            return None
        if arr.dtype.kind == "O":  # None among the values, or ints beyond 64 bits
            if list(values).count(None) == len(values):
                arrays.append(None)
                continue
            return None
        if code[1] == "f":
            if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
                return None
        elif arr.dtype.kind not in "iu":  # floats, bools or strings in an integer column
            return None
        else:
            low, high = _INT_RANGES[typ]
            lo, hi = int(arr.min()), int(arr.max())
            if lo < low or hi > high:
                bad = lo if lo < low else hi
                raise StoreError(f"{name} {plan.columns[i]} {bad!r} is out of range for its column ({low}..{high})")
        arrays.append(arr)
    return arrays


def _layout(plan: CopyPlan, arrays: list[Any]) -> Any:
    """The numpy record type of one binary COPY row: the field count, then per column its length (-1: NULL)
    and, when not NULL, its big-endian value."""
    import numpy as np

    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, arr in enumerate(arrays):
        fields.append((f"l{i}", ">i4"))
        if arr is not None:
            fields.append((f"v{i}", _PACKED[plan.types[i]]))
    return np.dtype(fields)


def _pack(layout: Any, arrays: list[Any], start: int, end: int) -> bytes:
    """Rows start..end of the arrays as binary COPY rows (no header or trailer)."""
    import numpy as np

    out = np.empty(end - start, dtype=layout)
    out["count"] = len(arrays)
    for i, arr in enumerate(arrays):
        if arr is None:
            out[f"l{i}"] = -1
            continue
        out[f"l{i}"] = layout[f"v{i}"].itemsize
        out[f"v{i}"] = arr[start:end]
    return out.tobytes()


def pack_columns(plan: CopyPlan, name: str, by_column: Sequence[Sequence[Any]]) -> bytes | None:
    """The binary COPY rows (no header or trailer) of a batch given column by column, or None when it needs the
    row-by-row path (see `column_arrays`)."""
    arrays = column_arrays(plan, name, by_column)
    if arrays is None:
        return None
    return _pack(_layout(plan, arrays), arrays, 0, len(by_column[0]))


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
