"""Rollups: their values equal aggregates of the raw rows, readers answer the same from them as from raw rows,
late rows and concurrent refreshes are counted once, and prune keeps them after the raw rows are gone."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from sqlalchemy import func, select

from kvpilot.storage import Scope
from kvpilot.storage.rollup_jobs import STATE
from kvpilot.storage.rollups import GRAINS, plan_segments
from kvpilot.storage.schema import ROLLUPS, SAMPLES

T0 = 1_800_000_000.0
HOURS = 3
END = T0 + HOURS * 3600


@pytest.fixture
def filled(store):
    """Three hours of every sample table for two engines of one deployment and a run, NULLs included."""
    a = store.register_instance("chat", "engine-a").id
    b = store.register_instance("chat", "engine-b").id
    run = store.start_run("eval", deployment="chat", instance_id=a, started_at=T0)
    rnd = random.Random(7)
    for inst in (a, b):
        store.add_layer_stats(
            [
                {"ts": T0 + t + rnd.random(), "step": t, "layer": layer, "head": head,
                 "entropy": rnd.random() * 4 if rnd.random() > 0.1 else None, "gini": rnd.random(),
                 "kv_bytes": rnd.randrange(1, 10**9), "kept_tokens": rnd.randrange(100)}
                for t in range(0, HOURS * 3600, 45)
                for layer in range(3)
                for head in (-1, 0, 1)
            ],
            instance_id=inst,
        )
        store.add_requests(
            [
                {"ts": T0 + t, "prompt_tokens": rnd.randrange(2000), "output_tokens": rnd.randrange(200),
                 "ttft_s": rnd.random(), "tpot_s": rnd.random() / 50 if t % 3 else None, "e2e_s": rnd.random() * 5,
                 "kv_bytes": rnd.randrange(10**8), "compression_ratio": rnd.random(),
                 "error": "oom" if t % 11 == 0 else None}
                for t in range(0, HOURS * 3600, 7)
            ],
            instance_id=inst,
        )
        store.add_memory_samples(
            [
                {"ts": T0 + t, "kv_bytes_physical": rnd.randrange(10**8), "kv_bytes_logical": 2 * 10**8,
                 "kv_bytes_peak": rnd.randrange(10**8), "nvml_util": rnd.random() * 100, "rss_bytes": 10**9 + t}
                for t in range(0, HOURS * 3600, 10)
            ],
            instance_id=inst,
        )
        store.add_events(
            [
                {"ts": T0 + t, "kind": ("evict", "hit", "miss")[t % 3], "layer": t % 3,
                 "count": rnd.randrange(1, 9), "bytes": rnd.randrange(10**6) if t % 4 else None}
                for t in range(0, HOURS * 3600, 5)
            ],
            instance_id=inst,
        )
        store.add_vllm_samples(
            [
                {"ts": T0 + t, "interval_s": 15.0 if t else None, "kv_usage": rnd.random(),
                 "kv_bytes": rnd.randrange(10**9), "kv_capacity_bytes": 10**9, "requests_running": rnd.randrange(8),
                 "prefix_queries": rnd.randrange(10**5), "prefix_hits": rnd.randrange(10**4),
                 "prefix_hit_ratio": rnd.random() if t % 4 else None, "ttft_p99_s": rnd.random(),
                 "cache_config": {"block_size": "16"} if t == 0 else None}
                for t in range(0, HOURS * 3600, 15)
            ],
            instance_id=inst,
        )
    store.add_requests([{"ts": T0 + t, "ttft_s": 0.5, "prompt_tokens": 10} for t in range(0, 3600, 30)], run_id=run)
    return {"a": a, "b": b, "run": run}


def _raw_only(store):
    """Make readers ignore the rollups (as before any refresh) for one comparison."""
    with store.engine.begin() as conn:
        conn.execute(STATE.update().values(covered_until=0.0))


def _plain(value):
    """Dataclasses as dicts, tuples as lists, all the way down (to compare with `_approx`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _approx(value):
    """pytest.approx through dataclasses, lists and dicts (sums of floats differ in the last bits by order)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _approx(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_approx(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-11, abs=1e-9)
    return value


def _answers(store, ids):
    """Every rollup-backed reader, over windows whose edges are not on minute or hour boundaries."""
    dep = Scope("chat", since=T0 + 123.4, until=END - 77.7)
    inst = Scope("chat", ids["b"], since=T0 + 61.0, until=END - 1000.5)
    run = Scope(run_id=ids["run"], since=T0, until=END)
    out = {}
    for name, sc in (("deployment", dep), ("instance", inst), ("run", run)):
        out[name] = {
            "totals": store.request_totals(sc),
            "requests_5m": store.requests_series(sc, bucket_s=300),
            "requests_1h": store.requests_series(sc, bucket_s=3600),
            "requests_7s": store.requests_series(sc, bucket_s=7),
            "memory_10m": store.memory_window(sc, bucket_s=600),
            "events_1h": store.event_series(sc, bucket_s=3600),
            "events_2m": store.event_series(sc, kinds=["evict", "miss"], bucket_s=120),
            "event_totals": store.event_totals(sc),
            "hit_totals": store.event_totals(sc, ("hit",)),
            "layers_1h": store.layer_stats_series(sc, bucket_s=3600, level="all"),
            "layers_5m_heads": store.layer_stats_series(sc, bucket_s=300, level="head", layers=[1, 2]),
            "ttft_histogram": dataclasses.asdict(store.latency_histogram(sc, "ttft_s")),
        }
        view = store.layer_view(dataclasses.replace(sc), "entropy", points=30)
        out[name]["layer_view"] = (view.cells, view.layers, view.series)
    return out


def test_rollup_rows_equal_aggregates_of_raw_rows(store, filled):
    """Every rollup table, grouped by its bucket, owner and keys, against GROUP BY over the raw rows."""
    rolled = store.refresh_rollups(lag_s=0)
    assert rolled == {name: n for name, n in store.counts().items()}
    backend = store._backend
    with store.engine.connect() as conn:
        for name, rollups in ROLLUPS.items():
            raw = SAMPLES[name].table
            for r in rollups:
                keys = [raw.c.instance_id, raw.c.run_id, *(raw.c[k] for k in r.keys)]
                bucket = backend.time_bucket(raw.c.ts, r.grain_s)
                expected_q = select(bucket, *keys, func.count(), *(
                    agg for c in r.numeric for agg in (func.count(raw.c[c]), func.sum(raw.c[c]),
                                                       func.min(raw.c[c]), func.max(raw.c[c]))
                ), *(func.count(raw.c[c]) for c in r.counted)).group_by(bucket, *keys)
                t = r.table.c
                got_q = select(t.bucket, t.instance_id, t.run_id, *(t[k] for k in r.keys), func.sum(t.n), *(
                    agg for c in r.numeric for agg in (func.sum(t[f"{c}_n"]), func.sum(t[f"{c}_sum"]),
                                                       func.min(t[f"{c}_min"]), func.max(t[f"{c}_max"]))
                ), *(func.sum(t[f"{c}_n"]) for c in r.counted)).group_by(t.bucket, t.instance_id, t.run_id,
                                                                          *(t[k] for k in r.keys))

                def rows(q):
                    return sorted(
                        (tuple(v if v is None or isinstance(v, str) else float(v) for v in row)
                         for row in conn.execute(q)),
                        key=lambda row: tuple((v is None, str(v)) for v in row),
                    )

                expected, got = rows(expected_q), rows(got_q)
                assert len(got) == len(expected) > 0, r.name
                assert got == [tuple(_approx(v) for v in e) for e in expected], r.name


def test_readers_answer_the_same_from_rollups_as_from_raw_rows(store, filled):
    raw = _answers(store, filled)  # no refresh yet: raw rows only
    store.refresh_rollups(lag_s=0)
    rolled = _answers(store, filled)
    assert _plain(rolled) == _approx(raw)
    view = store.layer_view(Scope("chat", since=T0 + 123.4, until=END - 77.7), "entropy", points=30)
    assert view.plan.rollups == ("1m",) and not view.plan.sampled  # 600 s buckets: minutes, not hours
    assert "1m rollups" in view.plan.describe()


def test_late_rows_are_added_once_and_concurrent_refreshes_count_once(store, filled):
    store.refresh_rollups(lag_s=0, chunk_ids=5_000)  # many small chunks
    # a late batch for an hour that is rolled up already, and new rows at the end
    store.add_requests([{"ts": T0 + 100 + i, "ttft_s": 9.0, "prompt_tokens": 1} for i in range(10)],
                       instance_id=filled["a"])
    store.add_layer_stats([{"ts": END + i, "layer": 0, "entropy": 1.0} for i in range(5)], instance_id=filled["a"])
    assert store.refresh_rollups(lag_s=0) == {**dict.fromkeys(SAMPLES, 0), "layer_stats": 5, "requests": 10}
    assert store.refresh_rollups(lag_s=0) == dict.fromkeys(SAMPLES, 0)  # nothing twice
    rolled = _answers(store, filled)
    _raw_only(store)
    assert _plain(rolled) == _approx(_answers(store, filled))


def test_writers_refresh_the_rollups_themselves(store, filled):
    store.rollup_every_s = 0.0
    store.add_requests([{"ts": END, "ttft_s": 0.1}], instance_id=filled["a"])  # first write: starts the clock
    store.add_requests([{"ts": END + 1, "ttft_s": 0.2}], instance_id=filled["a"])
    with store.engine.connect() as conn:
        state = dict(conn.execute(select(STATE.c.table_name, STATE.c.last_id)).all())
        top = conn.execute(select(func.max(SAMPLES["requests"].table.c.id))).scalar()
    assert state["requests"] == top


def test_prune_keeps_rollups_longer_than_raw_rows(store, filled):
    """Retention by downsampling: after the raw rows of the first two hours are gone, hour-bucket answers for
    those hours are unchanged; a minute-rollup age then drops the minute rollups but keeps the hourly ones."""
    sc = Scope("chat", since=T0, until=T0 + 2 * 3600)
    before = (store.request_totals(sc), store.requests_series(sc, bucket_s=3600),
              store.event_totals(sc), store.layer_stats_series(sc, bucket_s=3600))
    deleted = store.prune(END - (T0 + 2 * 3600), now=END)  # refreshes the rollups first
    assert deleted["requests"] > 0 and deleted["layer_stats"] > 0
    assert store.requests_window(sc) == []  # the raw rows are gone
    after = (store.request_totals(sc), store.requests_series(sc, bucket_s=3600),
             store.event_totals(sc), store.layer_stats_series(sc, bucket_s=3600))
    assert _plain(after) == _approx(before)

    deleted = store.prune(END - (T0 + 2 * 3600), now=END, minute_rollups_older_than=3600)
    assert deleted["requests_1m"] > 0 and "requests_1h" not in deleted
    assert _plain(store.requests_series(sc, bucket_s=3600)) == _approx(before[1])  # from the hourly rollups alone
    assert store.requests_series(sc, bucket_s=300) == []  # minutes: raw and minute rollups both gone


def test_segments_take_whole_buckets_coarsest_first():
    rollups = ROLLUPS["requests"]
    segs = plan_segments(rollups, 90.0, 3 * 3600 + 200.0, 3 * 3600 + 150.0, None)
    assert [(s.rollup and s.rollup.label, s.start, s.end) for s in segs] == [
        (None, 90.0, 120.0), ("1m", 120.0, 3600.0), ("1h", 3600.0, 10800.0), ("1m", 10800.0, 10800.0 + 120),
        (None, 10920.0, 10950.0), (None, 10950.0, 11000.0),
    ]
    # buckets of 300 s: hours do not fit, minutes do; of 7 s: only raw rows; nothing rolled up: only raw rows
    assert {s.rollup.label for s in plan_segments(rollups, 0.0, 7200.0, 7200.0, 300.0) if s.rollup} == {"1m"}
    assert all(s.rollup is None for s in plan_segments(rollups, 0.0, 7200.0, 7200.0, 7.0))
    assert all(s.rollup is None for s in plan_segments(rollups, 0.0, 7200.0, None, None))
    assert [g for g, _ in GRAINS] == ["1m", "1h"] and not math.isnan(segs[0].end)


def test_a_long_window_histogram_is_read_from_slices_and_scaled(store, filled, monkeypatch):
    from kvpilot.storage import aggregates

    store.refresh_rollups(lag_s=0)
    sc = Scope("chat", since=T0, until=END)
    exact = store.latency_histogram(sc, "ttft_s")
    exact_tpot = store.latency_histogram(sc, "tpot_s")
    monkeypatch.setattr(aggregates, "HISTOGRAM_ROW_BUDGET", 600)
    sampled = store.latency_histogram(sc, "ttft_s")
    assert exact.sampled == 0 and 400 < sampled.sampled < 900
    assert sampled.width == exact.width  # the same maximum, from the rollups
    assert abs(sampled.total - exact.total) <= len(exact.counts)  # scaled to the exact count (rounding per bin)
    for q in (0.25, 0.5, 0.9):  # ttft is uniform on [0, 1): a sample of ~600 keeps its quantiles within 0.1
        assert abs(sampled.quantile(q) - exact.quantile(q)) < 0.1
    both = store.latency_histograms(sc, ("ttft_s", "tpot_s"))  # two columns from the same slices
    assert both["ttft_s"] == sampled and both["tpot_s"].sampled > 0
    assert abs(both["tpot_s"].total - exact_tpot.total) <= len(exact.counts)


def test_a_retention_policy_prunes_raw_rows_and_minutes_but_keeps_hours(db_url, monkeypatch):
    import time

    from kvpilot.storage import Store, StoreError

    monkeypatch.setenv("KVPILOT_RETENTION", "raw=1h, 1m=2h")
    now = time.time()
    with Store.open(db_url) as s:
        assert (s.retention.raw_s, s.retention.minute_s, s.retention.hour_s) == (3600, 7200, None)
        inst = s.register_instance("chat", "engine-0").id
        ages = (3 * 3600, 90 * 60, 10)  # seconds before now
        s.add_requests([{"ts": now - age, "ttft_s": 0.1} for age in ages], instance_id=inst)  # applies the policy
        assert [round(now - r.ts) for r in s.requests_window(instance_id=inst)] == [10]  # raw: the last hour
        with s.engine.connect() as conn:
            minutes = conn.execute(select(ROLLUPS["requests"][0].table.c.bucket)).scalars().all()
            hours = conn.execute(select(func.sum(ROLLUPS["requests"][1].table.c.n))).scalar()
        assert minutes and min(minutes) >= now - 7200 - 60  # the 3 h old minute is gone
        assert hours == 3  # every sample is still in the hourly rollups
    monkeypatch.setenv("KVPILOT_RETENTION", "raw=soon")
    with pytest.raises(StoreError, match=r"\$KVPILOT_RETENTION: cannot read duration 'soon'"):
        Store.open(db_url)


def test_rows_of_an_engine_deleted_by_hand_do_not_stop_the_refresh(store):
    """Raw tables keep no foreign keys, rollups do: a raw row whose engine was deleted (by hand, in SQL) is left
    out of the rollups instead of failing every later refresh, and the other engines' rows still roll up."""
    from kvpilot.storage.schema import EngineInstance

    kept = store.register_instance("chat", "kept").id
    gone = store.register_instance("chat", "gone").id
    for inst in (kept, gone):
        store.add_requests([{"ts": T0 + i, "ttft_s": 0.5, "prompt_tokens": 10} for i in range(20)], instance_id=inst)
    with store.engine.begin() as conn:
        conn.execute(EngineInstance.__table__.delete().where(EngineInstance.__table__.c.id == gone))
    assert store.refresh_rollups(lag_s=0)["requests"] == 20  # the kept engine's rows; no error
    assert store.refresh_rollups(lag_s=0)["requests"] == 0  # the orphans are passed, not retried
    minute = ROLLUPS["requests"][0].table
    with store.engine.connect() as conn:
        owners = conn.execute(select(minute.c.instance_id, func.sum(minute.c.n)).group_by(minute.c.instance_id)).all()
    assert owners == [(kept, 20)]
