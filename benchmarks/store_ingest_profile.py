"""Where one `Store.add_layer_stats` batch spends its time, per backend, and what PostgreSQL's server spends on
each index of `layer_stats` during a COPY.

    python benchmarks/store_ingest_profile.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test

Splits (medians over `--batches` batches of 12,000 rows, 4 engine instances, fresh stores): building and
checking the batch (`SampleTable.batch`), the per-batch owner check, numpy packing (PostgreSQL), the bulk
insert itself (executemany / COPY, server work included) and the rest of the transaction (BEGIN, COMMIT).
With `--server-variants` (PostgreSQL superuser; the server must be able to read a file this process writes
under --tmp), the same batch is loaded by the server from a binary file (`COPY ... FROM 'file'`, no client
in the loop) into `layer_stats` as it is and with its indexes replaced or dropped, in a scratch schema.
Writes benchmarks/results/store_ingest_profile.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import store_ingest as B  # noqa: E402

from kvpilot.storage import Store  # noqa: E402
from kvpilot.storage import samples as samples_module  # noqa: E402
from kvpilot.storage.backends import pgcopy  # noqa: E402
from kvpilot.storage.schema import LAYER_STATS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "store_ingest_profile.json"


def splits(url: str, batches: int) -> dict:
    spent: dict[str, list[float]] = {k: [] for k in ("batch", "owners", "pack", "bulk_insert", "total")}
    current: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                current[name] = current.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    orig = (LAYER_STATS.batch, samples_module._check_owners, pgcopy.column_arrays, pgcopy._pack)
    with Store.open(url) as store:
        store.rollup_every_s = None
        ids = [store.register_instance("bench", f"engine-{i}").id for i in range(4)]
        LAYER_STATS.batch = timed("batch", orig[0])  # type: ignore[method-assign]
        samples_module._check_owners = timed("owners", orig[1])
        pgcopy.column_arrays = timed("pack", orig[2])
        pgcopy._pack = timed("pack", orig[3])
        bulk = store._backend.bulk_insert
        store._backend.bulk_insert = timed("bulk_insert", bulk)  # type: ignore[method-assign]
        try:
            rnd = random.Random(0)
            for k in range(batches + 1):
                rows = B._rows(rnd, k * 100, 100)
                current.clear()
                t = time.perf_counter()
                store.add_layer_stats(rows, instance_id=ids[k % 4])
                current["total"] = time.perf_counter() - t
                if k:  # the first batch warms caches and statements
                    for name in spent:
                        spent[name].append(current.get(name, 0.0))
        finally:
            del LAYER_STATS.batch
            samples_module._check_owners, pgcopy.column_arrays, pgcopy._pack = orig[1], orig[2], orig[3]
            store._backend.bulk_insert = bulk  # type: ignore[method-assign]
    med = {k: statistics.median(v) for k, v in spent.items()}
    ms = {f"{k}_ms": round(v * 1000, 2) for k, v in med.items()}
    ms["transaction_rest_ms"] = round((med["total"] - med["batch"] - med["owners"] - med["bulk_insert"]) * 1000, 2)
    ms["insert_without_pack_ms"] = round((med["bulk_insert"] - med["pack"]) * 1000, 2)
    ms["rows_per_batch"] = 12_000
    ms["rows_per_s_median_batch"] = round(12_000 / med["total"])
    return ms


def server_variants(pg: str, tmp: Path, reps: int) -> dict:
    """Server-only COPY of one 12,000-row batch from a file, per index layout of layer_stats."""
    import psycopg

    url = B._fresh_pg(pg, "kvbench_profile")
    with Store.open(url) as store:
        store.register_instance("bench", "engine-0")
    batch = LAYER_STATS.batch(B._rows(random.Random(0), 0, 100), 1, None)
    cols = ", ".join(batch.columns)
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o777)
    path = tmp / "layer_stats_batch.bin"
    from sqlalchemy.engine import make_url

    u = make_url(pg)
    conn = psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database,
                           options="-csearch_path=kvbench_profile")
    plan = pgcopy.copy_plan(LAYER_STATS.table, batch.columns)
    with conn.cursor() as cur, cur.copy(plan.statement) as copy:
        copy.write(pgcopy._HEADER + pgcopy.pack_columns(plan, "layer_stats", list(zip(*batch.rows, strict=True)))
                   + pgcopy._TRAILER)
    conn.execute(f"COPY (SELECT {cols} FROM layer_stats) TO '{path}' (FORMAT binary)")
    conn.execute("TRUNCATE layer_stats")
    conn.commit()

    def rate() -> int:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            conn.execute(f"COPY layer_stats ({cols}) FROM '{path}' (FORMAT binary)")
            conn.commit()
            times.append(time.perf_counter() - t)
        return round(len(batch.rows) / statistics.median(times))

    out = {}
    steps = [
        ("as migrated (pk btree, (instance, ts) and (run, ts) partial btrees)", []),
        ("pk btree + BRIN(ts) instead of (instance, ts)", [
            "DROP INDEX ix_layer_stats_instance_ts", "CREATE INDEX ix_b_ts ON layer_stats USING brin (ts)"]),
        ("BRIN(id) + BRIN(ts), no btree", [
            "ALTER TABLE layer_stats DROP CONSTRAINT pk_layer_stats",
            "CREATE INDEX ix_b_id ON layer_stats USING brin (id)"]),
        ("no index at all", ["DROP INDEX ix_b_id", "DROP INDEX ix_b_ts", "DROP INDEX ix_layer_stats_run_ts"]),
    ]
    for name, ddl in steps:
        for statement in ddl:
            conn.execute(statement)
        conn.commit()
        out[name] = rate()
        print(f"  server-only COPY, {name}: {out[name]:,} rows/s", flush=True)
    conn.close()
    path.unlink(missing_ok=True)
    B._fresh_pg(pg, "kvbench_profile")  # leave an empty schema behind, not the data
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=os.environ.get("KVPILOT_TEST_DATABASE_URL"))
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--server-variants", action="store_true")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--tmp", default="/tmp/kvpilot_profile")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("KVPILOT_DB_TIMEOUT_S", "0")
    report: dict = {"command": "python " + " ".join(sys.argv), "machine": B.machine(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "splits": {}}
    report["splits"]["sqlite"] = splits(B._fresh_sqlite(Path(args.tmp + "_sqlite.db")), args.batches)
    print("sqlite", report["splits"]["sqlite"], flush=True)
    if args.pg:
        report["splits"]["postgresql"] = splits(B._fresh_pg(args.pg, "kvbench_profile"), args.batches)
        print("postgresql", report["splits"]["postgresql"], flush=True)
        if args.server_variants:
            report["postgresql_server_only_copy_rows_per_s"] = server_variants(args.pg, Path(args.tmp), args.reps)
    for suffix in ("", "-wal", "-shm", ".init-lock"):
        Path(args.tmp + "_sqlite.db" + suffix).unlink(missing_ok=True)
    B._write(report, args.out)


if __name__ == "__main__":
    main()
