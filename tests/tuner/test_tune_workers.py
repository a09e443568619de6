"""`kvpilot tune --workers N`: N local processes on one study in the store's database (SQLite and, when
configured, PostgreSQL), on the bundled model and a tiny workload; the result has one process's shape.

Slow: each worker loads the model and every trial is a real evaluation (1 passkey sample of ~300 tokens)."""

from __future__ import annotations

import json

import optuna
import pytest

from kvpilot.cli import main
from kvpilot.commands.tune_workers import shares
from kvpilot.storage import Store
from kvpilot.tuner.storage import open_storage
from kvpilot.tuner.study import WORKER_ATTR

JSON_KEYS = {"study", "store", "objectives", "baseline", "best", "trials", "feasible", "failed_trials",
             "reused_trials", "sampler_seed", "heldout", "recommended", "warnings", "pushed_version"}


def _args(db_url, tmp_path, *extra):
    return ["tune", "-w", "passkey", "-n", "1", "-t", "300", "--heldout", "1", "--no-fidelity", "--constraint", "none",
            "--sampler", "random", "--study", "par", "--db", db_url, "--out", str(tmp_path / "runs"), "--quiet",
            "--json", *extra]


@pytest.mark.slow
def test_two_workers_share_one_study(db_url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(_args(db_url, tmp_path, "--trials", "4", "--workers", "2", "--sampler-seed", "5")) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == JSON_KEYS  # the shape of one process's result
    assert out["trials"] == 4 and out["failed_trials"] == 0 and out["sampler_seed"] == 5
    assert out["heldout"] is not None and out["heldout"]["validations"]  # validated once, by the parent
    study = optuna.load_study(study_name="par", storage=open_storage(db_url))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.number for t in complete) == [0, 1, 2, 3]
    pids = {t.user_attrs[WORKER_ATTR]["pid"] for t in complete}
    assert len(pids) == 2 and __import__("os").getpid() not in pids  # two worker processes did the trials
    with Store.open(db_url) as store:
        assert sorted(r.trial_number for r in store.runs(kind="tuning_trial")) == [0, 1, 2, 3]


def test_bad_worker_counts_are_one_clear_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    for n in ("0", "-2", "65"):
        assert main(_args(db, tmp_path, "--trials", "2", "--workers", n)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"kvpilot: error: --workers must be a whole number from 1 to 64, got {n}"]
    assert main(["tune", "--target", "vllm", "--workers", "2"]) == 2
    assert "--workers runs local engine processes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_args(db, tmp_path, "--workers", "two"))
    assert "invalid int value: 'two'" in capsys.readouterr().err
    assert not (tmp_path / "k.db").exists()  # refused before anything was opened


def test_trials_are_shared_evenly():
    assert shares(5, 2) == [3, 2] and shares(2, 4) == [1, 1] and shares(0, 3) == [] and shares(8, 4) == [2, 2, 2, 2]
