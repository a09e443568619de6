"""Store benchmark: sustained layer-stat ingest (rows/s) and dashboard query latency on 10M sample rows.

    python benchmarks/store_ingest.py                       # SQLite in /tmp, plus PostgreSQL if reachable
    python benchmarks/store_ingest.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/store_ingest.py --rows 1000000 --ingest-seconds 5 --skip-pg   # quick look

Ingest goes through the public API (`Store.add_layer_stats` with dict rows, 4 engine instances, batches of
120 rows per decode step x 100 steps) on a fresh store, alternating in the same run with the previous layout:
`--previous 0010` (default) is the same writer on a store at revision 0010 (layer_stats with its (instance_id, ts)
B-tree, before migration 0011's time index), `--previous 0007` the write path of revision 0007 kept verbatim
below; the time to build the dicts is not counted. The 10M-row store is
filled with INSERT ... SELECT (recursive CTE on SQLite, generate_series on PostgreSQL), then each dashboard
query runs 5 times (median and max reported). Writes benchmarks/results/store_ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy  # noqa: E402
from sqlalchemy import text  # noqa: E402

from kvpilot.storage import Store  # noqa: E402

LAYERS, HEADS = 30, 3  # the bundled model: 30 layers, 3 KV heads (+ the layer aggregate, head = -1)
ROWS_PER_STEP = LAYERS * (HEADS + 1)
INSTANCES = 4
RESULTS = Path(__file__).resolve().parent / "results" / "store_ingest.json"


def machine() -> dict:
    import sqlite3

    import psycopg

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
    }
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    info["uptime_at_start"] = uptime()
    return info


def uptime() -> str:
    """`uptime`'s line (load averages over 1, 5 and 15 minutes): the machine is shared."""
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ----- ingest -------------------------------------------------------------------------------------------
#
# The previous write path, kept here verbatim so one run measures old against new on the same machine and
# database, in alternating turns: the schema of revision 0007 (a foreign key per sample row to its instance
# and run), dicts merged and checked row by row, then sqlite3's executemany on SQLite and psycopg's typed
# binary COPY written row by row on PostgreSQL. The current path is `Store.add_layer_stats` on the head schema.


def _previous_tuples(spec, rows, instance_id, run_id) -> list[tuple]:
    """`SampleTable.tuples` as it was: a dict merge and checks per row (the dicts' JSON never applies here)."""
    base = dict(spec._defaults, ts=time.time(), instance_id=instance_id, run_id=run_id)
    allowed, getter, required, name = spec._allowed, spec._getter, spec._required, spec.name
    out = []
    for row in rows:
        if not allowed.issuperset(row):
            raise ValueError(f"{name} row has unknown field(s)")
        merged = {**base, **row}
        if merged["instance_id"] is None and merged["run_id"] is None:
            raise ValueError(f"{name} row belongs to no engine instance and no run")
        for col in required:
            if merged[col] is None:
                raise ValueError(f"{name} row is missing {col!r}")
        out.append(getter(merged))
    return out


def _previous_sqlite(conn, table, columns, rows) -> None:
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    conn.connection.driver_connection.executemany(sql, rows)


def _previous_postgres(conn, table, columns, rows) -> None:
    import math

    from kvpilot.storage.backends.pgcopy import copy_plan

    plan = copy_plan(table, tuple(columns))
    by_column = list(zip(*rows, strict=True))
    for i, column, low, high in plan.ints:
        values = [v for v in by_column[i] if v is not None] if None in by_column[i] else by_column[i]
        if values and (min(values) < low or max(values) > high):
            raise ValueError(f"{column} out of range")

    def finite(values) -> bool:
        if None in values:
            values = [v for v in values if v is not None]
        try:
            return math.isfinite(math.fsum(values))
        except (OverflowError, ValueError):
            return all(v is None or math.isfinite(v) for v in values)

    fix = [i for i in plan.floats if not finite(by_column[i])]
    for i in fix:
        by_column[i] = tuple(v if v is None or v.__class__ is not float or math.isfinite(v) else None
                             for v in by_column[i])
    if fix:
        rows = list(zip(*by_column, strict=True))
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy(plan.statement) as copy:
            copy.set_types(list(plan.types))
            write = copy.write_row
            for row in rows:
                write(row)


PREVIOUS = {"sqlite": _previous_sqlite, "postgresql": _previous_postgres}


def previous_store(url: str, revision: str = "0010") -> Store:
    """A store at an earlier `revision` (0007: sample rows with foreign keys; 0010: layer_stats with its
    (instance_id, ts) B-tree), opened without the schema check."""
    from kvpilot.storage import migrate
    from kvpilot.storage.backends import backend_for
    from kvpilot.storage.url import resolve_url

    checked = resolve_url(url)
    backend = backend_for(checked)
    engine = backend.create_engine(checked, busy_timeout_s=60.0, connect_timeout_s=5.0)
    if backend.name == "sqlite":  # the checkpoint interval SQLite stores had before (its default)
        sqlalchemy.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA wal_autocheckpoint=1000"))
    migrate.upgrade(engine, backend, revision)
    return Store(engine, backend, checked, busy_timeout_s=60.0)


def previous_add(store: Store, rows: list[dict], instance_id: int, revision: str = "0010") -> int:
    from kvpilot.storage.schema import LAYER_STATS

    if revision == "0010":
        return _previous_0010(store, rows, instance_id)

    tuples = _previous_tuples(LAYER_STATS, rows, instance_id, None)
    bulk = PREVIOUS[store.backend_name]
    store._write(lambda conn: bulk(conn, LAYER_STATS.table, LAYER_STATS.writable, tuples))
    return len(tuples)


def _previous_0010(store: Store, rows: list[dict], instance_id: int) -> int:
    """Revision 0010's `Store.add_layer_stats` for same-key rows (`store_ingest_previous`), in one transaction."""
    from store_ingest_previous import previous_columnar, previous_copy_rows

    from kvpilot.storage.samples import _check_owners
    from kvpilot.storage.schema import LAYER_STATS

    batch = previous_columnar(LAYER_STATS, rows, instance_id, None)
    assert batch is not None, "the benchmark's rows all have the same keys"
    table, columns = LAYER_STATS.table, batch.columns

    def write(conn) -> int:
        _check_owners(conn, "layer_stats", batch)
        dbapi = conn.connection.driver_connection
        if store.backend_name == "sqlite":
            dbapi.executemany(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
                              f"({', '.join('?' * len(columns))})", batch.rows)
        else:
            with dbapi.cursor() as cur:
                previous_copy_rows(cur, table, columns, batch.rows)
        return len(batch.rows)

    return store._write(write)


def _rows(rnd: random.Random, step: int, steps: int) -> list[dict]:
    now = time.time()
    return [
        {
            "ts": now,
            "step": step + s,
            "layer": layer,
            "head": head,
            "entropy": rnd.random() * 5,
            "retained_mass": rnd.random(),
            "tokens_90": rnd.random() * 500,
            "sink_mass": rnd.random() * 0.3,
            "recent_mass": rnd.random() * 0.3,
            "gini": rnd.random(),
            "kv_bytes": 4096 * (layer + 1),
            "kept_tokens": 256,
            "seen_tokens": 1024 + step,
        }
        for s in range(steps)
        for layer in range(LAYERS)
        for head in (-1, *range(HEADS))
    ]


def ingest(new: Store, old: Store, seconds: float, steps_per_call: int, calls_per_turn: int = 4,
           previous: str = "0010") -> dict:
    """The current write path (`new`, head schema) against the previous one (`old`, at revision `previous`).

    Turns of `calls_per_turn` calls alternate between the paths (new, old, old, new, ...), so load changes
    on the shared machine hit both; each pair of turns gives one new/old ratio. Building the dicts is not
    timed; validation, the transaction and the commit are. Automatic rollup refreshes are off in both."""
    new.rollup_every_s = old.rollup_every_s = None
    ids = {name: [s.register_instance("bench", f"engine-{i}").id for i in range(INSTANCES)]
           for name, s in (("new", new), ("previous", old))}
    add = {
        "new": lambda rows, iid: new.add_layer_stats(rows, instance_id=iid),
        "previous": lambda rows, iid: previous_add(old, rows, iid, previous),
    }
    rnd = random.Random(0)
    stats = {"new": {"rows": 0, "busy": 0.0, "rates": []}, "previous": {"rows": 0, "busy": 0.0, "rates": []}}
    ratios, loads = [], []
    step, calls, turn = 0, 0, 0
    wall0 = time.perf_counter()
    while time.perf_counter() - wall0 < seconds or turn % 2:
        order = ("new", "previous") if (turn // 2) % 2 == 0 else ("previous", "new")
        path = order[turn % 2]
        rows_turn, busy_turn = 0, 0.0
        for _ in range(calls_per_turn):
            rows = _rows(rnd, step, steps_per_call)
            t = time.perf_counter()
            n = add[path](rows, ids[path][calls % INSTANCES])
            dt = time.perf_counter() - t
            rows_turn += n
            busy_turn += dt
            stats[path]["rates"].append(n / dt)
            calls += 1
            step += steps_per_call
        stats[path]["rows"] += rows_turn
        stats[path]["busy"] += busy_turn
        stats[path].setdefault("turns", []).append(rows_turn / busy_turn)
        if turn % 2:
            n_new, n_old = stats["new"]["turns"][-1], stats["previous"]["turns"][-1]
            ratios.append(n_new / n_old)
            loads.append(round(os.getloadavg()[0], 2))
        turn += 1
    assert new.counts()["layer_stats"] == stats["new"]["rows"]
    assert old.counts()["layer_stats"] == stats["previous"]["rows"]

    def summary(s: dict) -> dict:
        return {
            "rows": s["rows"],
            "seconds_in_add_layer_stats": round(s["busy"], 3),
            "rows_per_s": round(s["rows"] / s["busy"]),
            "rows_per_s_median_turn": round(statistics.median(s["turns"])),
            "rows_per_s_best_turn": round(max(s["turns"])),
            "rows_per_s_p10_call": round(statistics.quantiles(s["rates"], n=10)[0]) if len(s["rates"]) >= 10 else None,
        }

    return {
        "previous_revision": previous,
        "rows_per_call": steps_per_call * ROWS_PER_STEP,
        "calls_per_turn": calls_per_turn,
        "pairs": len(ratios),
        "new": summary(stats["new"]),
        "previous": summary(stats["previous"]),
        "speedup_median_pair": round(statistics.median(ratios), 3),
        "speedup_pairs": [round(r, 3) for r in ratios],
        "loadavg_1min_per_pair": loads,
        "rows_per_s": round(stats["new"]["rows"] / stats["new"]["busy"]),
    }


# ----- the 10M-row store --------------------------------------------------------------------------------

FILL_COLUMNS = (
    "ts, instance_id, run_id, step, layer, head, entropy, retained_mass, tokens_90, sink_mass, recent_mass, gini, "
    "kv_bytes, kept_tokens, seen_tokens"
)


def _fill_select(backend: str, t0: float, run_from_step: int) -> str:
    """SELECT producing layer-stat rows from an integer series `i` (one step per second per instance)."""
    per_step = ROWS_PER_STEP * INSTANCES
    rnd = "(abs(random() % 1000) / 1000.0)" if backend == "sqlite" else "random()"

    def idiv(a: str, b: int) -> str:  # integer operands: integer division on both databases
        return f"({a} / {b})"

    step = idiv("i", per_step)
    inst = f"(1 + {idiv('i', ROWS_PER_STEP)} % {INSTANCES})"
    return (
        f"SELECT {t0} + {step}, {inst}, "
        f"CASE WHEN {inst} = 1 AND {step} >= {run_from_step} THEN 1 ELSE NULL END, "
        f"{step}, {idiv(f'(i % {ROWS_PER_STEP})', HEADS + 1)}, (i % {HEADS + 1}) - 1, "
        f"{rnd} * 5, {rnd}, {rnd} * 500, {rnd} * 0.3, {rnd} * 0.3, {rnd}, 4096, 256, 1024"
    )


def _escape(backend: str, sql: str) -> str:
    """psycopg reads % as a placeholder; double it for PostgreSQL."""
    return sql.replace("%", "%%") if backend == "postgresql" else sql


def _fast_fill(conn, backend: str) -> None:
    """PostgreSQL only, for this generator's transaction: no commit flush, and no per-row foreign-key
    trigger (the generated owners exist by construction; needs a superuser, as the test server's postgres)."""
    if backend == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        try:
            with conn.begin_nested():
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        except sqlalchemy.exc.DBAPIError:
            pass  # not a superuser: the triggers run, the fill is slower


def fill(store: Store, rows: int, chunk: int = 1_000_000) -> dict:
    """Fill layer_stats to `rows` rows ending now, plus memory samples, requests and events."""
    backend = store.backend_name
    per_step = ROWS_PER_STEP * INSTANCES
    steps = rows // per_step
    t0 = float(int(time.time()) - steps)
    ids = [store.register_instance("dash", f"engine-{i}").id for i in range(INSTANCES)]
    assert ids == [1, 2, 3, 4], "the fill expects a fresh database"
    run = store.start_run("serving", deployment="dash", instance_id=1, started_at=t0)
    run_from_step = steps - 1800  # the run covers the last 30 minutes of engine-0
    started = time.perf_counter()
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        sel = _fill_select(backend, t0, run_from_step)
        if backend == "sqlite":
            sql = (
                f"WITH RECURSIVE s(i) AS (SELECT {done} UNION ALL SELECT i + 1 FROM s WHERE i < {done + n - 1}) "
                f"INSERT INTO layer_stats ({FILL_COLUMNS}) {sel} FROM s"
            )
        else:
            sql = f"INSERT INTO layer_stats ({FILL_COLUMNS}) {sel} FROM generate_series({done}, {done + n - 1}) AS i"
        with store.engine.begin() as conn:
            _fast_fill(conn, backend)
            conn.exec_driver_sql(_escape(backend, sql))
        done += n
        print(f"  filled {done:,}/{rows:,} layer-stat rows ({time.perf_counter() - started:.0f} s)", flush=True)
    # one memory sample, request and two events per instance per second
    other = steps * INSTANCES
    series = (
        f"WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {other - 1}) "
        if backend == "sqlite"
        else ""
    )
    src = "FROM s" if backend == "sqlite" else f"FROM generate_series(0, {other - 1}) AS i"
    rnd = "(abs(random() % 1000) / 1000.0)" if backend == "sqlite" else "random()"
    with store.engine.begin() as conn:
        _fast_fill(conn, backend)

        def execute(sql: str) -> None:
            conn.exec_driver_sql(_escape(backend, sql))

        execute(
            f"{series}INSERT INTO memory_samples (ts, instance_id, kv_bytes_physical, kv_bytes_logical, kv_bytes_peak, "
            f"device_allocated, rss_bytes) SELECT {t0} + i / {INSTANCES}, 1 + i % {INSTANCES}, "
            f"CAST({rnd} * 1e8 AS INTEGER), 200000000, 150000000, 300000000, 900000000 {src}"
        )
        execute(
            f"{series}INSERT INTO requests (ts, instance_id, prompt_tokens, output_tokens, ttft_s, tpot_s, kv_bytes, "
            f"compression_ratio) SELECT {t0} + i / {INSTANCES}, 1 + i % {INSTANCES}, 1000, 64, {rnd}, {rnd} / 50, "
            f"50000000, 0.5 {src}"
        )
        for kind in ("evict", "hit"):
            execute(
                f"{series}INSERT INTO cache_events (ts, instance_id, kind, layer, count, bytes) "
                f"SELECT {t0} + i / {INSTANCES}, 1 + i % {INSTANCES}, '{kind}', i % {LAYERS}, 3, 12288 {src}"
            )
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    counts = store.counts()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "rows": counts,
        "total_rows": sum(counts.values()),
        "hours_of_data": round(steps / 3600, 2),
        "run_id": run,
        "t_start": t0,
        "t_end": t0 + steps,
    }


def queries(store: Store, run_id: int, t_start: float, t_end: float, repeat: int = 5) -> dict:
    """Latency of the dashboard's main queries (ms): median and max of `repeat` runs after one warm-up.

    Windows end where the generated data ends (`t_end`), as a live dashboard's end at "now"."""

    def last(seconds: float) -> dict:
        return {"since": t_end - seconds, "until": t_end}

    cases = {
        "layer_heatmap_deployment_last_10min_10s_buckets": lambda: store.layer_stats_series(
            deployment="dash", bucket_s=10, **last(600)
        ),
        "layer_heatmap_instance_last_1h_60s_buckets": lambda: store.layer_stats_series(
            instance_id=2, bucket_s=60, **last(3600)
        ),
        "head_heatmap_instance_last_10min": lambda: store.layer_stats_series(
            instance_id=2, bucket_s=10, level="head", **last(600)
        ),
        "layer_latest_deployment": lambda: store.layer_stats_latest(deployment="dash"),
        "head_latest_instance": lambda: store.layer_stats_latest(instance_id=3, level="head"),
        "layer_raw_window_instance_last_1min": lambda: store.layer_stats_window(instance_id=1, **last(60)),
        "memory_deployment_last_1h_auto_buckets": lambda: store.memory_window(deployment="dash", **last(3600)),
        "requests_deployment_last_1h_auto_buckets": lambda: store.requests_series(deployment="dash", **last(3600)),
        "events_deployment_last_1h_by_kind": lambda: store.event_series(deployment="dash", **last(3600)),
        "events_latest_100_evictions": lambda: store.events(deployment="dash", kinds=["evict"], limit=100),
        "run_summary_30min_run": lambda: store.run_summary(run_id),
        "instances_alive": lambda: store.instances("dash"),
        "layer_heatmap_whole_store_auto_buckets": lambda: store.layer_stats_series(
            deployment="dash", since=t_start, until=t_end
        ),
        "row_counts_whole_store": lambda: store.counts(),
    }
    out = {}
    for name, fn in cases.items():
        result = fn()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        size = len(result) if isinstance(result, list) else 1
        out[name] = {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), "result_rows": size}
        print(f"  {name:52} median {out[name]['median_ms']:9.2f} ms  max {out[name]['max_ms']:9.2f} ms  ({size} rows)")
    return out


def prune_cost(store: Store, t_start: float, t_end: float) -> dict:
    """Delete the oldest tenth of the samples by time (batched deletes through the time index)."""
    before = store.counts()["layer_stats"]
    cutoff = t_start + (t_end - t_start) / 10
    t = time.perf_counter()
    deleted = store.prune(time.time() - cutoff)
    return {"seconds": round(time.perf_counter() - t, 2), "deleted": deleted, "layer_stats_before": before}


# ----- driver -------------------------------------------------------------------------------------------


def _fresh_sqlite(path: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return f"sqlite:///{path}"


def _fresh_pg(url: str, schema: str) -> str:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql+psycopg")
    eng = create_engine(base)
    with eng.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    eng.dispose()
    return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def bench_backend(name: str, make_url, args) -> dict:
    print(f"[{name}] ingest for {args.ingest_seconds} s", flush=True)
    old = previous_store(make_url("ingest_previous"), args.previous)
    try:
        with Store.open(make_url("ingest")) as store:
            result = {"ingest": ingest(store, old, args.ingest_seconds, args.steps_per_call, previous=args.previous)}
            if name == "postgresql":
                with store.engine.connect() as conn:
                    result["server_version"] = conn.execute(text("SHOW server_version")).scalar()
    finally:
        old.close()
    ing = result["ingest"]
    print(f"[{name}] ingest: {ing['new']['rows_per_s']:,} rows/s now, {ing['previous']['rows_per_s']:,} rows/s on the "
          f"previous path; median pair ratio x{ing['speedup_median_pair']}", flush=True)
    if args.rows:
        print(f"[{name}] filling a store with {args.rows:,} layer-stat rows", flush=True)
        with Store.open(make_url("dash")) as store:
            result["fill"] = fill(store, args.rows)
            print(f"[{name}] dashboard queries", flush=True)
            result["queries"] = queries(
                store, result["fill"]["run_id"], result["fill"]["t_start"], result["fill"]["t_end"]
            )
            result["prune_oldest_tenth"] = prune_cost(store, result["fill"]["t_start"], result["fill"]["t_end"])
            print(f"[{name}] prune: {result['prune_oldest_tenth']}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sqlite-dir", default="/tmp", help="where the SQLite benchmark files go")
    ap.add_argument("--pg", default=os.environ.get("KVPILOT_TEST_DATABASE_URL"), help="PostgreSQL URL")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--rows", type=int, default=10_000_000, help="layer-stat rows for the query benchmark (0: skip)")
    ap.add_argument("--ingest-seconds", type=float, default=20.0)
    ap.add_argument("--steps-per-call", type=int, default=100, help="decode steps per add_layer_stats call")
    ap.add_argument("--previous", choices=("0010", "0007"), default="0010",
                    help="the layout and write path measured against (see the docstring)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    # the 10M-row generator's statements run for minutes: no client-side operation deadline for this process
    os.environ.setdefault("KVPILOT_DB_TIMEOUT_S", "0")

    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows_per_decode_step": ROWS_PER_STEP,
        "results": {},
    }
    sqlite_dir = Path(args.sqlite_dir)
    report["results"]["sqlite"] = bench_backend(
        "sqlite", lambda tag: _fresh_sqlite(sqlite_dir / f"kvpilot_bench_{tag}.db"), args
    )
    _write(report, args.out)
    if args.pg and not args.skip_pg:
        report["results"]["postgresql"] = bench_backend(
            "postgresql", lambda tag: _fresh_pg(args.pg, f"kvbench_{tag}"), args
        )
        _write(report, args.out)


def _write(report: dict, out: str) -> None:
    try:
        report["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    report["machine"]["uptime_at_end"] = uptime()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
