"""Held-out validation, intervals, random seeds and reused trials, on the bundled model with a real store.

Slow: every trial and every validation is a real evaluation of passkey samples of ~400 tokens."""

from __future__ import annotations

import dataclasses
import json

import pytest
from optuna.trial import TrialState

from kvpilot.cli import main
from kvpilot.config import KVConfig
from kvpilot.evaluation import Evaluator, load_samples
from kvpilot.storage import Store
from kvpilot.tuner import SearchSpace, Tuner, TuningError
from kvpilot.tuner.heldout import HELDOUT_ATTR, pareto_front
from kvpilot.tuner.objectives import objective
from kvpilot.tuner.split import SplitError, split_evaluators, split_samples
from kvpilot.tuner.study import REUSED_ATTR, TrialOutcome
from kvpilot.workloads.sample import QA

SPACE = SearchSpace(policy=("tova", "knorm", "snapkv"), compression_ratio=(0.2, 0.5, 0.1),
                    layer_allocation=("uniform",), head_allocation=("uniform",), window=(32, 64),
                    scoring=("prompt",), granularity=("sentence",))


def test_split_is_seeded_disjoint_and_sized(bundled_engine):
    pool = load_samples(bundled_engine.tokenizer, "passkey", 6, 300, 0)
    search, held = split_samples(pool, 3, 2, seed=7)
    assert len(search) == 3 and len(held) == 2
    assert not {s.id for s in search} & {s.id for s in held}
    assert split_samples(pool, 3, 2, seed=7) == (search, held)  # same seed, same sets
    assert {s.id for s in split_samples(pool, 3, 2, seed=8)[0]} != {s.id for s in search} or \
        {s.id for s in split_samples(pool, 3, 2, seed=9)[0]} != {s.id for s in search}
    with pytest.raises(SplitError, match="fewer than 4 to search plus 3 held out"):
        split_samples(pool, 4, 3, seed=0)
    with pytest.raises(SplitError, match="at least 1 sample each"):
        split_samples(pool, 3, 0, seed=0)
    s, h = split_evaluators(bundled_engine, "passkey", 2, None, 300, 0, 0, results_root=None, progress=False)
    assert len(s.samples) == len(h.samples) == 2 and s.digest != h.digest  # same size by default
    assert "search2" in s.label and "heldout2" in h.label


def test_pareto_front_keeps_feasible_non_dominated_trials():
    objs = [objective("accuracy"), objective("kv_bytes")]

    def t(n, acc, kv, feasible=True, ratio=0.5):
        config = KVConfig(policy="snapkv", compression_ratio=ratio)
        return TrialOutcome(n, config, (acc, kv), {}, feasible)

    trials = [t(0, 1.0, 50.0, ratio=0.5), t(1, 0.8, 20.0, ratio=0.8), t(2, 0.8, 30.0, ratio=0.7),
              t(3, 1.0, 10.0, feasible=False, ratio=0.9), t(4, 1.0, 50.0, ratio=0.5)]
    assert [x.number for x in pareto_front(trials, objs)] == [0, 1]  # 2 dominated, 3 infeasible, 4 repeats 0


def test_the_front_is_validated_on_held_out_samples_before_a_push(bundled_engine, store, tmp_path):
    search, held = split_evaluators(bundled_engine, "passkey", 2, None, 400, 0, 0, results_root=tmp_path / "runs",
                                    progress=False)
    tuner = Tuner(search, study_name="ho", store=store, space=SPACE, constraints=["accuracy>=full"],
                  heldout=held, seed=3, progress=False)
    result = tuner.optimize(5)
    report = result.heldout
    assert report is not None and report.label == held.label
    assert report.baseline["n_questions"] == 2 and report.baseline["accuracy"] == 1.0
    front = pareto_front(result.trials, tuner.objectives)
    assert report.front_size == len(front) and len(report.validations) == len(front) >= 1
    for v in report.validations:  # both figures, each measured on its own set, with their intervals
        trial = next(t for t in result.trials if t.number == v.number)
        assert v.search == trial.metrics and v.heldout["samples_digest"] == held.digest
        assert v.heldout["accuracy_ci_low"] <= v.heldout["accuracy"] <= v.heldout["accuracy_ci_high"]
        assert v.feasible == (v.heldout["accuracy"] >= report.baseline["accuracy"])
    chosen = result.recommended
    assert chosen is not None and report.recommended.feasible and report.recommended.number == chosen.number
    # stored on the study for the dashboard, and `push` sends the validated config
    stored = tuner.study.user_attrs[HELDOUT_ATTR]
    assert stored["recommended"] == chosen.number and len(stored["validations"]) == len(front)
    assert tuner.push("chat").source == f"tuner:ho/{chosen.number}"
    assert store.active_version("chat").config() == chosen.config
    # 2 questions per set: the tuner says the figures rest on too few, for each set
    assert sum("questions (< 50)" in n for n in result.notes) == 2


def test_nothing_is_pushed_when_no_front_config_holds_up_on_the_held_out_set(bundled_engine, store):
    pool = load_samples(bundled_engine.tokenizer, "passkey", 2, 400, 0)
    # held out: the same kind of document, but asked for a key that is not in it, so no config can answer
    held_samples = [dataclasses.replace(s, id=f"{s.id}-absent",
                                        qa=[QA(q.question, ["00000"], q.answer_prefix) for q in s.qa])
                    for s in pool[1:]]
    search = Evaluator(bundled_engine, pool[:1], label="pk-search", results_root=None, progress=False)
    held = Evaluator(bundled_engine, held_samples, label="pk-absent", results_root=None, progress=False)
    tuner = Tuner(search, study_name="none", store=store, space=SPACE, constraints=["accuracy>=0.5"],
                  heldout=held, seed=1, progress=False)
    result = tuner.optimize(3)
    assert result.best is not None  # the search set alone would have pushed this
    assert result.recommended is None and result.heldout.recommended is None
    assert all(v.heldout["accuracy"] == 0.0 and not v.feasible for v in result.heldout.validations)
    assert "misses accuracy>=0.5 by 0.5" in result.heldout.reason
    with pytest.raises(TuningError, match="nothing to push: none of the"):
        tuner.push("chat")
    assert store.active_version("chat") is None
    with pytest.raises(TuningError, match="same samples"):
        Tuner(search, study_name="x", heldout=search)


def test_identical_configs_reuse_the_earlier_trial_and_seeds_are_random_unless_given(bundled_engine, tmp_path):
    one = SearchSpace(policy=("snapkv",), compression_ratio=(0.5, 0.5, 0.1), layer_allocation=("uniform",),
                      head_allocation=("uniform",), window=(32, 32), scoring=("window",), granularity=("token",))
    with Store.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
        evaluator = Evaluator.for_workload(bundled_engine, "passkey", 1, 300, 0, results_root=None,
                                           progress=False, recorder=store)
        tuner = Tuner(evaluator, study_name="same", store=store, space=one, progress=False, seed=5)
        result = tuner.optimize(3)
        trials = tuner.study.get_trials(states=(TrialState.COMPLETE,))
        assert [t.user_attrs.get(REUSED_ATTR) for t in trials] == [None, 0, 0] and result.reused_trials == 2
        assert len({t.values[1] for t in trials}) == 1
        # the target ran twice (the baseline and the first trial), not four times
        assert len(store.runs(kind="eval")) == 2 and len(store.runs(kind="tuning_trial")) == 3
    seeds = {Tuner(evaluator, study_name=f"s{i}", space=SPACE, progress=False).seed for i in range(3)}
    assert len(seeds) == 3
    first = []
    for _ in range(2):  # a given seed replays the same proposals
        t = Tuner(evaluator, study_name="fixed", space=SPACE, progress=False, seed=11, sampler="random")
        first.append(SPACE.suggest(t.study.ask()).to_dict())
    assert first[0] == first[1]


def test_tune_command_reports_search_and_held_out_side_by_side(tmp_path, capsys, monkeypatch):
    db, space = tmp_path / "t.db", tmp_path / "space.json"
    space.write_text(json.dumps(SPACE.to_dict()))
    args = ["tune", "-w", "passkey", "-n", "1", "-t", "300", "--trials", "2", "--db", str(db), "--out",
            str(tmp_path / "runs"), "--quiet", "--sampler", "random", "--constraint", "accuracy.lower>=0.1",
            "--space", str(space)]
    assert main([*args, "--push", "d"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "held-out validation on passkey-300t-2s-seed0-heldout1-split0" in out
    assert "accuracy search" in out and "accuracy held-out" in out and "recommendation: trial" in out
    assert "1.00 [0.21, 1.00]" in out  # one question right: its Wilson interval
    assert "sampler seed" in captured.err and "(< 50)" in captured.err
    assert "pushed to deployment 'd' as version 1" in out
    assert main([*args, "--json", "--study", "j", "--sampler-seed", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sampler_seed"] == 4 and doc["heldout"]["baseline"]["n_questions"] == 1
    assert doc["recommended"]["trial"] == doc["heldout"]["recommended"]
    assert main([*args, "--heldout", "-1"]) == 2
    assert "--heldout must be >= 0" in capsys.readouterr().err
    _dashboard_shows_both_figures(f"sqlite:///{db}", doc["study"], monkeypatch)


def _dashboard_shows_both_figures(url: str, study: str, monkeypatch) -> None:
    """The Tuning page shows the stored held-out report: search and held-out columns, the recommendation."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from kvpilot.dashboard import APP_PATH

    monkeypatch.setenv("KVPILOT_DB", url)
    try:
        at = AppTest.from_file(str(APP_PATH), default_timeout=60)
        at.run()
        at.switch_page("views/tuning.py").run()
        at.selectbox(key="study").set_value(study).run()
        assert not at.exception, [e.value for e in at.exception]
        assert "Held-out validation" in [h.value for h in at.subheader]
        table = next(d.value for d in at.dataframe if "accuracy (held-out)" in d.value.columns)
        assert {"accuracy (search)", "accuracy 95 % CI (held-out)", "recommended"} <= set(table.columns)
        assert table["config"].iloc[0] == "full cache" and table["recommended"].fillna(False).sum() == 1
        assert any("Recommended: **trial" in m.value for m in at.markdown)
    finally:
        st.cache_data.clear()
        st.cache_resource.clear()


def test_bad_split_flags_are_one_line_errors(tmp_path, capsys):
    db = str(tmp_path / "e.db")
    assert main(["tune", "-w", "agents", "--heldout", "2", "--db", db]) == 2
    assert "--heldout applies to question workloads" in capsys.readouterr().err
    assert main(["tune", "-w", "passkey", "--heldout", "-3", "--db", db]) == 2
    err = capsys.readouterr().err
    assert "--heldout must be >= 0" in err and "Traceback" not in err
