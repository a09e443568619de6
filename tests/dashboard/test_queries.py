"""The dashboard's SQL aggregates (store methods taking a Scope) and Optuna helpers, checked against the
seed's known values and the store's readers, on SQLite and PostgreSQL."""

from __future__ import annotations

import optuna
import pytest

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.dashboard import tuning
from kvpilot.storage import Scope, bucket_width
from kvpilot.storage import aggregates as A
from tests.dashboard import seed as S


def scope(**kw) -> Scope:
    return Scope(S.DEPLOYMENT, **kw)


def test_is_empty(store, db_url):
    assert store.is_empty()
    store.ensure_deployment("x")
    assert not store.is_empty()


def test_request_totals_and_histogram(store, seeded):
    t = store.request_totals(scope())
    assert (t.requests, t.errors, t.prompt_tokens) == (S.REQUESTS, S.REQUEST_ERRORS, 1000 * S.REQUESTS)
    ttft = sorted(0.05 + 0.001 * i for i in range(S.REQUESTS))
    assert t.ttft_mean == pytest.approx(sum(ttft) / len(ttft))
    h = store.latency_histogram(scope(), "ttft_s", bins=40)
    assert h.total == S.REQUESTS and len(h.counts) == 40
    assert h.width == pytest.approx(max(ttft) / 40)
    for q in (0.5, 0.9, 0.99):
        exact = ttft[min(len(ttft) - 1, int(q * len(ttft)))]
        assert abs(h.quantile(q) - exact) <= h.width + 1e-9
    assert store.request_totals(scope(instance_id=seeded.engine1)).requests == 0
    assert store.latency_histogram(Scope(None), "tpot_s").total == 0
    # both columns in one read bin exactly as one column at a time
    both = store.latency_histograms(scope(), ("ttft_s", "tpot_s"), bins=40)
    assert both["ttft_s"] == h and both["tpot_s"] == store.latency_histogram(scope(), "tpot_s", bins=40)


def test_layer_view_matches_seed_and_store(store, seeded):
    view = store.layer_view(scope(), "entropy")
    assert not view.plan.sampled
    assert len(view.cells) == S.LAYERS * S.HEADS and len(view.layers) == S.LAYERS
    assert all(c.value == pytest.approx(S.entropy(c.layer, c.head)) for c in view.cells + view.layers)
    assert all(c.samples == 2 * S.STEPS for c in view.cells)  # two engines, one sample per step
    gini = store.layer_view(scope(), "gini")
    series = store.layer_stats_series(deployment=S.DEPLOYMENT, last_s=3600, bucket_s=gini.plan.bucket_s)
    expected = {(b.ts, b.layer): b.gini for b in series}
    assert {(ts, layer) for ts, layer, _ in gini.series} == set(expected)
    assert all(v == pytest.approx(expected[(ts, layer)]) for ts, layer, v in gini.series)
    shape = store.layer_shape(scope())
    assert (shape.num_layers, shape.seen_tokens) == (S.LAYERS, 2048)
    with pytest.raises(ValueError, match="unknown layer metric"):
        store.layer_view(scope(), "id; drop table")


def test_row_estimate_keeps_small_windows_exact(store, seeded, monkeypatch):
    # 10 minutes of seed: 14,400 layer rows, 2 engines x 120 rows every 10 s
    assert not store.layer_plan(scope(window_s=600)).sampled
    monkeypatch.setattr(A, "ROW_BUDGET", 5_000)
    assert store.layer_plan(scope(window_s=600)).sampled


def test_big_windows_are_sampled_in_slices(store, seeded, monkeypatch):
    monkeypatch.setattr(A, "ROW_BUDGET", -1)  # any estimate exceeds it
    sc = scope(window_s=3600, now=seeded.now + 1)
    view = store.layer_view(sc, "entropy")
    plan = view.plan
    assert plan.sampled and plan.bucket_s == 60 and "5 s (at a staggered offset) of every 60 s" in plan.describe()
    for a, b in plan.slices:  # one slice of at most 5 s inside each bucket
        assert 0 < b - a <= 5 and (a // 60) == ((b - 1e-9) // 60)
    assert len({round(a % 60) for a, _ in plan.slices}) > 10  # staggered, not all at the bucket start
    # exactly the seed samples whose time falls in a slice are averaged
    steps = [seeded.now - 600 + 10 * s + 5 for s in range(S.STEPS)]
    hit = sum(any(a <= t < b for a, b in plan.slices) for t in steps)
    assert all(c.samples == 2 * hit for c in view.cells)
    assert all(c.value == pytest.approx(S.entropy(c.layer, c.head)) for c in view.cells)  # constant per cell
    exact = store.layer_view(scope(window_s=300), "entropy")  # 5 s slices of 5 s buckets: no sampling
    assert not exact.plan.sampled


def test_event_totals_and_pool(store, seeded):
    totals = store.event_totals(scope())
    assert {k: (v.events, v.count, v.bytes) for k, v in totals.items()} == {
        k: (n, n * c, n * b) for k, (n, c, b) in S.EVENTS.items()
    }
    only = store.event_totals(scope(), ("hit", "miss"))
    assert set(only) == {"hit", "miss"}
    pool = store.pool_series(scope(), 60.0)
    assert pool and max(p.pool_sessions for p in pool) == 6
    assert max(p.pinned_bytes for p in pool) == 3 * 2**21


def test_window_excludes_old_rows(store, seeded):
    assert store.request_totals(scope(window_s=60)).requests < S.REQUESTS
    assert store.event_totals(scope(window_s=1)) == {}


@pytest.mark.parametrize(("window", "width"), [(300, 2), (3600, 30), (86400, 600), (604800, 7200), (1e9, 86400)])
def test_bucket_width_is_round(window, width):
    assert bucket_width(window) == width


def test_studies_front_importances_and_configs(store, seeded, db_url):
    storage = tuning.open_storage(db_url)
    assert tuning.has_studies_tables(store)
    assert [s.name for s in tuning.list_studies(storage)] == [S.STUDY]
    study = optuna.load_study(study_name=S.STUDY, storage=storage)
    assert tuning.pareto_numbers(study) == S.PARETO
    rows = tuning.trial_rows(study)
    assert [r["kv_mib"] for r in rows] == [t[2] for t in S.TRIALS]
    imp = tuning.importances(study, 1)
    assert set(imp) == {"compression_ratio", "policy"} and sum(imp.values()) == pytest.approx(1.0)
    assert tuning.trial_config(study.trials[3]) == KVConfig.parse({"policy": "h2o", "compression_ratio": 0.5})
    summary = tuning.trial_telemetry(store, S.STUDY, 1)
    assert summary is not None and summary.requests == 5
    assert tuning.trial_telemetry(store, S.STUDY, 0) is None
    storage.engine.dispose()


def test_trial_config_falls_back_to_params_and_rejects_bad_ones():
    study = optuna.create_study()
    dists = {"compression_ratio": optuna.distributions.FloatDistribution(0, 0.9),
             "policy": optuna.distributions.CategoricalDistribution(["snapkv", "bogus"]),
             "lr": optuna.distributions.FloatDistribution(0, 1)}
    ok = optuna.trial.create_trial(params={"compression_ratio": 0.4, "policy": "snapkv", "lr": 0.1},
                                   distributions=dists, value=1.0)
    assert tuning.trial_config(ok) == KVConfig.parse({"policy": "snapkv", "compression_ratio": 0.4})
    bad = optuna.trial.create_trial(params={"compression_ratio": 0.4, "policy": "bogus", "lr": 0.1},
                                    distributions=dists, value=1.0)
    with pytest.raises(KVConfigError):
        tuning.trial_config(bad)
    study.add_trial(ok)
    with pytest.raises(ValueError, match="at least 2"):
        tuning.importances(study)


def test_no_studies_tables_in_a_fresh_store(store):
    assert not tuning.has_studies_tables(store)
