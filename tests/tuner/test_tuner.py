"""The tuner on the bundled model, with the study in a real store (SQLite, and PostgreSQL when configured).

Slow: every trial is a real evaluation (2 passkey samples of ~500 tokens)."""

from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState

from kvpilot.cli import main
from kvpilot.evaluation import Evaluator
from kvpilot.storage import Store
from kvpilot.tuner import SearchSpace, Tuner, trial_config
from kvpilot.tuner.study import BASELINE_ATTR, INVALID_CONSTRAINT

pytestmark = pytest.mark.slow

SPACE = SearchSpace(policy=("snapkv", "knorm", "streaming"), compression_ratio=(0.5, 0.7, 0.1),
                    layer_allocation=("uniform", "pyramid"), head_allocation=("uniform",), window=(32, 64),
                    scoring=("window", "prompt"), granularity=("token", "sentence"))


def _evaluator(engine, root, seed=0):
    return Evaluator.for_workload(engine, "passkey", 2, 500, seed, results_root=root, progress=False)


def test_tuner_finds_a_smaller_cache_at_full_accuracy_and_pushes_it(bundled_engine, store, tmp_path):
    tuner = Tuner(_evaluator(bundled_engine, tmp_path / "runs"), study_name="pk", store=store, space=SPACE,
                  constraints=["accuracy>=full"], deployment="chat", progress=False, seed=0)
    result = tuner.optimize(6)
    base = result.baseline
    assert base["accuracy"] == 1.0 and base["kv_bytes"] > 0
    assert len(result.trials) == 6 and result.failed_trials == 0
    # the winner keeps the full cache's accuracy and holds less KV: a measured improvement, not a given
    best = result.best
    assert best is not None and best.feasible
    assert best.metrics["accuracy"] >= base["accuracy"] and best.metrics["kv_bytes"] < 0.6 * base["kv_bytes"]
    assert all(best.metrics["kv_bytes"] <= t.metrics["kv_bytes"] for t in result.trials if t.feasible)

    # the study is in the store's database, each trial with its config and a tuning_trial run
    study = tuner.study
    assert study.user_attrs[BASELINE_ATTR]["accuracy"] == 1.0
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert trial_config(t).compresses and t.constraints.keys() == {"accuracy>=full"}
    runs = {r.trial_number: r for r in store.runs(kind="tuning_trial")}
    assert set(runs) == {t.number for t in result.trials}
    assert all(r.status == "completed" and r.study_name == "pk" and "accuracy" in r.metrics for r in runs.values())

    version = tuner.push("chat")
    assert version.version == 1 and version.source == f"tuner:pk/{best.number}"
    assert store.active_version("chat").config() == best.config

    # resume: a new process (new Evaluator, same run folders) adds trials without recomputing the baseline
    again = Tuner(_evaluator(bundled_engine, tmp_path / "runs"), study_name="pk", store=store, space=SPACE,
                  constraints=["accuracy>=full"], progress=False, seed=0)
    more = again.optimize(2)
    assert len(more.trials) == 8 and more.baseline == base
    assert again.evaluator.computed_runs <= 2  # the full cache is not run again; repeated configs are loaded
    assert more.best.metrics["kv_bytes"] <= best.metrics["kv_bytes"]


def test_configs_the_model_cannot_run_are_infeasible_not_failures(bundled_engine, tmp_path):
    wrong = SearchSpace(policy=("snapkv",), layer_allocation=("sensitivity",), head_allocation=("uniform",),
                        scoring=("window",), granularity=("token",), fixed={"sensitivity_profile": [1.0] * 4})
    tuner = Tuner(_evaluator(bundled_engine, None), study_name="bad", space=wrong, progress=False)
    result = tuner.optimize(2)
    assert result.best is None and result.trials == [] and result.failed_trials == 0
    (t, _) = tuner.study.get_trials(states=(TrialState.COMPLETE,))
    assert t.constraints[INVALID_CONSTRAINT] == 1.0 and "30 layers" in t.user_attrs["error"]


def test_tune_command(tmp_path, capsys, monkeypatch):
    db = tmp_path / "t.db"
    code = main(["tune", "-w", "passkey", "-n", "1", "-t", "400", "--trials", "3", "--db", str(db), "--out",
                 str(tmp_path / "runs"), "--quiet", "--push", "d", "--sampler", "random", "--heldout", "0",
                 "--sampler-seed", "2"])  # seed 2 draws a feasible trial in the default space
    out = capsys.readouterr().out
    assert code == 0, out
    assert "winner: trial" in out and "pushed to deployment 'd' as version 1" in out
    with Store.open(str(db)) as store:
        assert len(store.runs(kind="tuning_trial")) == 3
    _dashboard_shows_the_study(f"sqlite:///{db}", monkeypatch)
    assert main(["tune", "-w", "passkey", "--objective", "speed", "--db", str(db)]) == 2
    assert "unknown objective 'speed'" in capsys.readouterr().err
    assert main(["tune", "-w", "passkey", "--constraint", "accuracy>0.5", "--db", str(db)]) == 2


def _dashboard_shows_the_study(url: str, monkeypatch) -> None:
    """The dashboard's Tuning page reads what the tuner wrote: the study, its trials and their configs."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from kvpilot.dashboard import APP_PATH

    monkeypatch.setenv("KVPILOT_DB", url)
    try:
        at = AppTest.from_file(str(APP_PATH), default_timeout=60)
        at.run()
        at.switch_page("views/tuning.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert {m.label: m.value for m in at.metric}["Trials"] == "3"
        assert not at.error, [e.value for e in at.error]  # every trial has a valid KVConfig
    finally:
        st.cache_data.clear()
        st.cache_resource.clear()


def test_tuner_searches_the_session_ttl_on_an_agent_replay(bundled_engine, tmp_path):
    from kvpilot.tuner.replay_target import ReplayTarget
    from tests.engine.test_replay import _trace

    target = ReplayTarget(bundled_engine, _trace(), max_response_tokens=2)
    space = SearchSpace(policy=("full",), session_ttl=("none", "fixed", "cdf"),
                        params={"session_ttl.fixed.ttl_s": (1.0, 60.0)})
    with Store.open(f"sqlite:///{tmp_path / 'ttl.db'}") as store:
        tuner = Tuner(target, study_name="ttl", store=store, space=space, objectives=["hit_ratio", "pinned_gib_s"],
                      pick="hit_ratio", sampler="random", progress=False, seed=0)
        result = tuner.optimize(6)
    assert result.baseline["hits"] == 0 and result.baseline["pinned_gib_s"] == 0
    best = result.best
    assert best.config.session_ttl != "none" and best.metrics["hit_ratio"] >= 5 / 6
    assert best.metrics["reprefilled_tokens"] < result.baseline["reprefilled_tokens"]
    assert target.computed_runs <= 7  # the baseline plus each distinct config once
    # a TTL-only space may keep the full cache; params are KVConfig fields
    assert all(t.config.policy == "full" for t in result.trials)


def test_tune_command_on_agent_sessions(tmp_path, capsys):
    db = tmp_path / "a.db"
    code = main(["tune", "-w", "agents", "--programs", "2", "--token-scale", "0.02", "--max-new-tokens", "1",
                 "--trials", "3", "--sampler", "random", "--db", str(db), "--quiet", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objectives"] == ["mean_jct_s", "pinned_gib_s"] and out["trials"] == 3
    assert out["best"]["config"]["policy"] == "full"


@pytest.mark.postgres
def test_two_tune_processes_share_one_study_on_postgresql(db_url, tmp_path):
    """Optuna's distributed mode: workers given the same --study and a PostgreSQL store split the trials."""
    import os
    import subprocess
    import sys

    import optuna

    from kvpilot.tuner.storage import open_storage

    if not db_url.startswith("postgresql"):
        pytest.skip("several tuning processes need PostgreSQL (Optuna advises one process per SQLite file)")
    base = [sys.executable, "-m", "kvpilot.cli", "tune", "-w", "passkey", "-n", "1", "-t", "300", "--no-fidelity",
            "--constraint", "none", "--study", "shared", "--db", db_url, "--out", str(tmp_path / "runs"), "--quiet",
            "--sampler", "random", "--heldout", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([*base, "--trials", "0"], env=env, capture_output=True).returncode == 0  # create it
    workers = [subprocess.Popen([*base, "--trials", "2", "--sampler-seed", str(i)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=open_storage(db_url))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.number for t in complete) == [0, 1, 2, 3]
    with Store.open(db_url) as store:
        assert sorted(r.trial_number for r in store.runs(kind="tuning_trial")) == [0, 1, 2, 3]
