"""Dashboard latency on a generated store: every query a page makes, and every page rendered whole by
Streamlit's AppTest with cold caches, for several time windows, on SQLite and PostgreSQL.

    python benchmarks/dashboard_latency.py --rows 100000000 --drop-after   # 100M layer-stat rows (58 h)
    python benchmarks/dashboard_latency.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/dashboard_latency.py --rows 1000000 --skip-pg     # quick look
    python benchmarks/dashboard_latency.py --skip-pg --rows 100000000 --sqlite-file dash100.db --fill-only
    python benchmarks/dashboard_latency.py --skip-pg --sqlite-file dash100.db --reuse   # measure it later

Windows end at the time of measurement; a store measured long after its fill holds no raw rows in its
newest minutes (`--reuse` prints the data's time span).

After the fill the rollups are brought up to date (`Store.refresh_rollups`, timed), as engines' writers keep
them; the 24 h window is then read from hourly and per-minute rollups plus the newest raw rows.

The store is filled by `benchmarks/store_ingest.py`'s bulk INSERT ... SELECT (4 engines of one deployment,
30 layers x (3 KV heads + the layer row) per second each, ending now; plus a memory sample, a request and two
events per engine per second), then given a config, a sensitivity profile and a 200-trial Optuna study. Page
times include Streamlit running the page script and serialising its charts, not the browser drawing them.
Writes benchmarks/results/dashboard_latency.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import store_ingest  # noqa: E402

from kvpilot.storage import SESSION_KINDS, Scope, Store  # noqa: E402
from kvpilot.storage import aggregates as A  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "dashboard_latency.json"
DEPLOYMENT = "dash"
WINDOWS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}
PAGES = ("overview", "runs", "layers", "sessions", "events", "tuning", "configs")


def extras(store: Store, url: str, trials: int) -> None:
    """What the fill lacks for every panel to have data: a config, a profile, an Optuna study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store.push(DEPLOYMENT, {"policy": "snapkv", "compression_ratio": 0.5, "layer_allocation": "pyramid"},
               pushed_by="bench")
    store.save_profile("bench-model", "kl", [0.5 + 0.01 * i for i in range(store_ingest.LAYERS)])
    study = optuna.create_study(study_name="bench", storage=url, directions=["minimize", "maximize"])
    dists = {"compression_ratio": optuna.distributions.FloatDistribution(0.0, 0.95),
             "policy": optuna.distributions.CategoricalDistribution(["snapkv", "h2o", "tova"])}
    for i in range(trials):
        ratio, policy = (i * 37 % 95) / 100, ("snapkv", "h2o", "tova")[i % 3]
        study.add_trial(optuna.trial.create_trial(
            params={"compression_ratio": ratio, "policy": policy}, distributions=dists,
            values=[100 * (1 - ratio), 1 - ratio ** 3 / (1 + i % 3)],
            user_attrs={"config": {"policy": policy, "compression_ratio": ratio}}))


def page_queries(store: Store, scope: Scope) -> dict[str, Callable[[], object]]:
    """The queries each page makes, with the arguments the views pass."""
    width, width60 = scope.bucket_s(), scope.bucket_s(60)
    return {
        "sidebar: deployments + instances + is_empty": lambda: (
            store.deployments(), store.instances(DEPLOYMENT), store.is_empty()),
        "overview: request totals": lambda: store.request_totals(scope),
        "overview: requests series": lambda: store.requests_series(scope, bucket_s=width),
        "overview: memory series": lambda: store.memory_window(scope, bucket_s=width),
        "overview: TTFT + TPOT histograms": lambda: store.latency_histograms(scope, ("ttft_s", "tpot_s")),
        "overview: vLLM series": lambda: store.vllm_series(scope, bucket_s=width),
        "layers: layer x head view (entropy)": lambda: store.layer_view(scope, "entropy"),
        "layers: shape (latest samples)": lambda: store.layer_shape(scope),
        "sessions: totals + series + pool": lambda: (
            store.event_totals(scope, SESSION_KINDS),
            store.event_series(scope, kinds=list(SESSION_KINDS), bucket_s=width60),
            store.pool_series(scope, width60)),
        "events: totals + series + latest 100": lambda: (
            store.event_totals(scope), store.event_series(scope, bucket_s=width60),
            store.events(scope, limit=100)),
    }


def rollup_rows(store: Store) -> dict[str, int]:
    from sqlalchemy import func, select

    from kvpilot.storage.schema import ROLLUPS

    with store.engine.connect() as conn:
        return {r.name: int(conn.execute(select(func.count()).select_from(r.table)).scalar_one())
                for rs in ROLLUPS.values() for r in rs}


def time_queries(store: Store, scope: Scope, repeat: int) -> dict:
    out = {}
    for name, fn in page_queries(store, scope).items():
        fn()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        out[name] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}
        print(f"    {name:46} median {out[name]['median_ms']:8.1f} ms  max {out[name]['max_ms']:8.1f} ms", flush=True)
    view = store.layer_view(scope, "entropy")
    out["layers: plan"] = view.plan.describe()
    # what one page's queries cost together (the sidebar runs on every page), medians summed
    sidebar = out["sidebar: deployments + instances + is_empty"]["median_ms"]
    pages: dict[str, float] = {}
    for name, timing in out.items():
        page = name.split(":")[0]
        if isinstance(timing, dict) and page != "sidebar":
            pages[page] = pages.get(page, sidebar) + timing["median_ms"]
    out["page totals (ms, with the sidebar)"] = {p: round(v, 1) for p, v in pages.items()}
    print(f"    page totals: {out['page totals (ms, with the sidebar)']}", flush=True)
    return out


def time_pages(url: str, windows: list[str], repeat: int) -> dict:
    """Each page rendered by AppTest after clearing Streamlit's caches (a first viewer's wait)."""
    import logging

    import streamlit as st
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    from kvpilot.dashboard import APP_PATH

    set_log_level(logging.ERROR)  # quiet the "no runtime" notices from clearing caches outside a server

    os.environ["KVPILOT_DB"] = url
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP_PATH), default_timeout=300)
    at.run()
    for page in PAGES:  # warm-up: imports (optuna on Tuning), connections
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
    out: dict[str, dict] = {}
    for window in windows:
        at.selectbox(key="window").set_value(window).run()
        out[window] = {}
        for page in PAGES:
            times = []
            for _ in range(repeat):
                st.cache_data.clear()
                t = time.perf_counter()
                at.switch_page(f"views/{page}.py").run()
                times.append((time.perf_counter() - t) * 1000)
                assert not at.exception, (page, [e.value for e in at.exception])
            out[window][page] = {"median_ms": round(statistics.median(times)), "max_ms": round(max(times))}
            print(f"    page {page:10} window {window:4} median {out[window][page]['median_ms']:6} ms  "
                  f"max {out[window][page]['max_ms']:6} ms", flush=True)
    st.cache_resource.clear()
    return out


def bench_backend(name: str, url: str, args: argparse.Namespace) -> dict:
    rows = args.pg_rows if name == "postgresql" and args.pg_rows else args.rows
    with Store.open(url) as store:
        if args.reuse and store.counts()["layer_stats"]:
            print(f"[{name}] reusing the store at {url}", flush=True)
            if not store.list_versions(DEPLOYMENT):  # a fill that stopped before its extras
                extras(store, url, args.trials)
            fill = reused(store)
        else:
            print(f"[{name}] filling a store with {rows:,} layer-stat rows", flush=True)
            fill = store_ingest.fill(store, rows)
            extras(store, url, args.trials)
            print(f"  [{name}] rolling up", flush=True)
            t = time.perf_counter()
            rolled = store.refresh_rollups()
            fill["rollup_refresh"] = {"seconds": round(time.perf_counter() - t, 1), "raw_rows": rolled,
                                      "rollup_rows": rollup_rows(store)}
            print(f"  [{name}] rollups: {fill['rollup_refresh']}", flush=True)
        if args.fill_only:
            return {"fill": fill}
        result = {"fill": fill, "queries": {}}
        for window in args.windows:
            print(f"  [{name}] queries, window {window}", flush=True)
            scope = Scope(DEPLOYMENT, window_s=WINDOWS[window])
            result["queries"][window] = time_queries(store, scope, args.repeat)
    if args.page_repeat:
        print(f"  [{name}] whole pages (AppTest, cold caches)", flush=True)
        result["pages"] = time_pages(url, args.windows, args.page_repeat)
    if args.drop_after:
        drop(name, url)
    return result


def reused(store: Store) -> dict:
    """What a previous run's fill made (`--reuse`): counts and time span, read back from the store."""
    from sqlalchemy import func, select

    from kvpilot.storage.schema import LAYER_STATS

    t = LAYER_STATS.table
    with store.engine.connect() as conn:
        lo, hi = conn.execute(select(func.min(t.c.ts), func.max(t.c.ts))).one()
    counts = store.counts()
    t0 = time.perf_counter()
    rolled = store.refresh_rollups()
    return {"reused": True, "rows": counts, "total_rows": sum(counts.values()),
            "hours_of_data": round((hi - lo) / 3600, 2), "t_start": lo, "t_end": hi,
            "rollup_refresh": {"seconds": round(time.perf_counter() - t0, 1), "raw_rows": rolled,
                               "rollup_rows": rollup_rows(store)}}


def drop(name: str, url: str) -> None:
    """Delete a generated store (they take tens of GiB at 100M rows)."""
    from pathlib import Path

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    if name == "sqlite":
        path = make_url(url).database
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return
    options = make_url(url).query.get("options", "")
    schema = str(options).removeprefix("-csearch_path=")
    eng = create_engine(make_url(url).set(query={}))
    with eng.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    eng.dispose()


def _pg_url(url: str, schema: str) -> str:
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql+psycopg")
    return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000_000, help="layer-stat rows in the store")
    ap.add_argument("--sqlite-dir", default="/tmp")
    ap.add_argument("--pg", default=os.environ.get("KVPILOT_TEST_DATABASE_URL"), help="PostgreSQL URL")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--pg-schema", default="kvbench_dashboard", help="the PostgreSQL schema the store is made in")
    ap.add_argument("--pg-rows", type=int, default=None, help="layer-stat rows on PostgreSQL (default: --rows)")
    ap.add_argument("--windows", default="15m,1h,6h,24h", help=f"comma-separated, from {', '.join(WINDOWS)}")
    ap.add_argument("--trials", type=int, default=200, help="trials in the Optuna study")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per query")
    ap.add_argument("--page-repeat", type=int, default=3, help="timed renders per page (0: skip the AppTest pages)")
    ap.add_argument("--drop-after", action="store_true", help="delete each generated store when measured")
    ap.add_argument("--reuse", action="store_true", help="measure the store a previous run left (no --drop-after) "
                    "instead of filling it again")
    ap.add_argument("--fill-only", action="store_true", help="fill the store (and roll it up), measure nothing")
    ap.add_argument("--sqlite-file", default="kvpilot_bench_dashboard.db", help="the SQLite store's file name")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    # the generator's statements and a first rollup refresh of a large store run for minutes: no client-side
    # operation deadline (`kvpilot.storage.backends.deadline`, 30 s by default) for this process
    os.environ.setdefault("KVPILOT_DB_TIMEOUT_S", "0")
    args.windows = [w for w in args.windows.split(",") if w]
    unknown = set(args.windows) - set(WINDOWS)
    if unknown:
        ap.error(f"unknown window(s) {sorted(unknown)}")

    import altair
    import optuna
    import streamlit

    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": store_ingest.machine(),
        "versions": {"streamlit": streamlit.__version__, "altair": altair.__version__, "optuna": optuna.__version__},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "row_budget_before_sampling": A.ROW_BUDGET,
        "results": {},
    }
    if not args.skip_sqlite:
        path = Path(args.sqlite_dir) / args.sqlite_file
        sqlite_url = f"sqlite:///{path}" if args.reuse else store_ingest._fresh_sqlite(path)
        report["results"]["sqlite"] = bench_backend("sqlite", sqlite_url, args)
        store_ingest._write(report, args.out)
    if args.pg and not args.skip_pg:
        pg_url = (_pg_url(args.pg, args.pg_schema) if args.reuse else store_ingest._fresh_pg(args.pg, args.pg_schema))
        report["results"]["postgresql"] = bench_backend("postgresql", pg_url, args)
        store_ingest._write(report, args.out)


if __name__ == "__main__":
    main()
