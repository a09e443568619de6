"""Where one `Store.add_layer_stats` batch spends its time, per backend, and what PostgreSQL's server spends on
each index of `layer_stats` during a COPY.

    python benchmarks/store_ingest_profile.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test

Splits (medians over `--batches` batches of 12,000 rows, 4 engine instances, fresh stores): building and
checking the batch (`SampleTable.batch`), the per-batch owner check, numpy packing (PostgreSQL), the bulk
insert itself (executemany / COPY, server work included) and the rest of the transaction (BEGIN, COMMIT).
With `--server-variants` (PostgreSQL superuser; the server must be able to read a file this process writes
under --tmp), the same batch is loaded by the server from a binary file (`COPY ... FROM 'file'`, no client
in the loop) into copies of `layer_stats` with the index layouts of revisions 0010 and 0011, in a scratch
schema. With `--sqlite-variants`, SQLite's insert alone (no writer around it) at revisions 0010 and 0011, with
the bulk insert and checkpoint interval of before and of now. Writes benchmarks/results/store_ingest_profile.json.

    python benchmarks/store_ingest_profile.py --pg URL --server-variants --sqlite-variants
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
    """Server-only COPY of one 12,000-row batch from a file into copies of layer_stats with different index
    layouts, in round-robin turns (so load changes hit every layout): median rows/s per layout."""
    import psycopg

    url = B._fresh_pg(pg, "kvbench_profile")
    with Store.open(url) as store:
        store.register_instance("bench", "engine-0")
    batch = LAYER_STATS.batch(B._rows(random.Random(0), 0, 100), 1, None)
    cols = ", ".join(batch.columns)
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o777)
    path, with_ids = tmp / "layer_stats_batch.bin", tmp / "layer_stats_batch_ids.bin"
    from sqlalchemy.engine import make_url

    u = make_url(pg)
    conn = psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database,
                           options="-csearch_path=kvbench_profile")
    plan = pgcopy.copy_plan(LAYER_STATS.table, batch.columns)
    with conn.cursor() as cur, cur.copy(plan.statement) as copy:
        copy.write(pgcopy._HEADER + pgcopy.pack_columns(plan, "layer_stats", batch.data) + pgcopy._TRAILER)
    conn.execute(f"COPY (SELECT {cols} FROM layer_stats) TO '{path}' (FORMAT binary)")
    conn.commit()
    # each layout on a copy of layer_stats with the primary key and the partial (run_id, ts) index, plus:
    layouts = {
        "0010: (instance_id, ts) B-tree": "CREATE INDEX {t}_i ON {t} (instance_id, ts) WHERE instance_id IS NOT NULL",
        "0011: BRIN (ts)": "CREATE INDEX {t}_b ON {t} USING brin (ts)",
        "0011, ids sent by the client (no nextval per row)": "CREATE INDEX {t}_b ON {t} USING brin (ts)",
        "primary key only": None,
    }
    for k, ddl in enumerate(layouts.values()):
        conn.execute(f"CREATE TABLE v{k} (LIKE layer_stats INCLUDING DEFAULTS)")
        conn.execute(f"ALTER TABLE v{k} ADD PRIMARY KEY (id)")
        conn.execute(f"CREATE INDEX v{k}_r ON v{k} (run_id, ts) WHERE run_id IS NOT NULL")
        if ddl:
            conn.execute(ddl.format(t=f"v{k}"))
    conn.commit()
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for r in range(reps):
        # fresh ids for the layout that is sent them, above every id the sequence hands out here
        conn.execute(f"COPY (SELECT id + {10**9 + r * 10**6}, {cols} FROM layer_stats) TO '{with_ids}' (FORMAT binary)")
        conn.commit()
        order = list(enumerate(layouts)) if r % 2 == 0 else list(reversed(list(enumerate(layouts))))
        for k, name in order:
            source = f"v{k} (id, {cols}) FROM '{with_ids}'" if "ids sent" in name else f"v{k} ({cols}) FROM '{path}'"
            t = time.perf_counter()
            conn.execute(f"COPY {source} (FORMAT binary)")
            conn.commit()
            times[name].append(time.perf_counter() - t)
    out = {name: round(len(batch) / statistics.median(ts)) for name, ts in times.items()}
    for name, rate in out.items():
        print(f"  server-only COPY, {name}: {rate:,} rows/s", flush=True)
    conn.close()
    path.unlink(missing_ok=True)
    with_ids.unlink(missing_ok=True)
    B._fresh_pg(pg, "kvbench_profile")  # leave an empty schema behind, not the data
    return out


def sqlite_variants(tmp: Path, reps: int) -> dict:
    """SQLite without the writer around it: one 12,000-row batch per transaction (BEGIN IMMEDIATE, insert,
    COMMIT) into stores at revision 0010 and at head, with executemany per row or per multi-row INSERT and the
    WAL checkpoint interval of before (1,000 pages) or now, in round-robin turns: median rows/s per variant."""
    import sqlite3
    from itertools import chain, islice

    from kvpilot.storage import migrate
    from kvpilot.storage.backends import backend_for
    from kvpilot.storage.url import resolve_url

    variants = {  # (revision, rows per INSERT, checkpoint pages)
        "0010, executemany per row, checkpoint 1000": ("0010", 1, 1000),
        "0011, executemany per row, checkpoint 1000": ("head", 1, 1000),
        "0011, executemany per row, checkpoint 10000": ("head", 1, 10_000),
        "0011, 200 rows per INSERT, checkpoint 10000": ("head", 200, 10_000),
    }
    conns = {}
    for k, (name, (revision, _, pages)) in enumerate(variants.items()):
        url = resolve_url(B._fresh_sqlite(tmp.parent / f"{tmp.name}_sqlite_v{k}.db"))
        backend = backend_for(url)
        engine = backend.create_engine(url, busy_timeout_s=60.0, connect_timeout_s=5.0)
        migrate.upgrade(engine, backend, revision)
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO deployments (id, name, created_at) VALUES (1, 'bench', 0)")
            c.exec_driver_sql("INSERT INTO engine_instances (id, deployment_id, name, started_at, last_heartbeat) "
                              "VALUES (1, 1, 'engine-0', 0, 0)")
        engine.dispose()
        conn = sqlite3.connect(str(url.database), isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
        conns[name] = conn
    times: dict[str, list[float]] = {name: [] for name in variants}
    rnd = random.Random(0)
    for r in range(reps):
        batch = LAYER_STATS.batch(B._rows(rnd, r * 100, 100), 1, None)
        head = f"INSERT INTO layer_stats ({', '.join(batch.columns)}) VALUES "
        one = f"({', '.join('?' * len(batch.columns))})"
        for name in (variants if r % 2 == 0 else reversed(list(variants))):
            conn, per = conns[name], variants[name][1]
            rows = zip(*batch.data, strict=True)
            t = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            if per == 1:
                conn.executemany(head + one, rows)
            else:  # 12,000 rows: 60 statements of 200
                conn.executemany(head + ", ".join([one] * per),
                                 (tuple(chain.from_iterable(islice(rows, per))) for _ in range(len(batch) // per)))
            conn.execute("COMMIT")
            times[name].append(time.perf_counter() - t)
    out = {name: round(12_000 / statistics.median(ts)) for name, ts in times.items()}
    for k, (name, conn) in enumerate(conns.items()):
        assert conn.execute("SELECT count(*) FROM layer_stats").fetchone()[0] == 12_000 * reps
        conn.close()
        for suffix in ("", "-wal", "-shm", ".init-lock"):
            Path(f"{tmp.parent / f'{tmp.name}_sqlite_v{k}.db'}{suffix}").unlink(missing_ok=True)
        print(f"  SQLite insert only, {name}: {out[name]:,} rows/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=os.environ.get("KVPILOT_TEST_DATABASE_URL"))
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--server-variants", action="store_true")
    ap.add_argument("--sqlite-variants", action="store_true")
    ap.add_argument("--reps", type=int, default=30, help="turns per layout in the variant comparisons")
    ap.add_argument("--tmp", default="/tmp/kvpilot_profile")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("KVPILOT_DB_TIMEOUT_S", "0")
    report: dict = {"command": "python " + " ".join(sys.argv), "machine": B.machine(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "splits": {}}
    if args.sqlite_variants:
        report["sqlite_insert_only_rows_per_s"] = sqlite_variants(Path(args.tmp), args.reps)
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
