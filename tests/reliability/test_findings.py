"""One test per finding of issue 13 (4 and 5, outages and restarts, are in test_outages.py; the fuzz in
test_fuzz.py). Each reproduces what the attacker or the unlucky operator did and checks it now holds."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from kvpilot.attach import attach
from kvpilot.cli import main
from kvpilot.config import KVConfig, KVConfigError
from kvpilot.storage import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# ----- 1. a config that passes every check must not take a deployment down ------------------------------


def test_1_configs_that_cannot_serve_are_rejected_before_applied(tiny_engine, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    handle = attach(tiny_engine, store=url, deployment="d", otel=False, spool_dir=tmp_path, watch=True, poll_s=3600)
    try:
        before = tiny_engine.config
        with Store.open(url) as store:
            nan_budgets = KVConfig(policy="snapkv", budget=8, layer_allocation="sensitivity",
                                   layer_allocation_params={"profile": [1e308, -1e308, 0.0, 1.0]})
            store.push("d", nan_budgets, pushed_by="attacker")
        result = handle.watcher.check_once()
        assert result.status == "rejected" and "dry run" in result.reason and "NaN" in result.reason
        (answer,) = tiny_engine.run(list(range(1, 61)), [], 3)  # still serving, on the old config
        assert tiny_engine.config == before and answer.config == before
    finally:
        handle.detach()
    # refused before they reach any store: a seed the generator cannot take, an unbounded scoring prompt
    with pytest.raises(KVConfigError, match=r"seed: integer 9223372036854775808 does not fit in 64 bits"):
        KVConfig(policy="random", compression_ratio=0.5, policy_params={"seed": 2**63})
    with pytest.raises(KVConfigError, match=r"seed=1099511627776: must be in \[0, 4294967295\]"):
        KVConfig(policy="random", compression_ratio=0.5, policy_params={"seed": 2**40})  # seed * 1_000_003
    with pytest.raises(KVConfigError, match="at most 1024 characters"):
        KVConfig(scoring="prompt", scoring_prompt="x" * 10_000_000)


# ----- 2. non-finite floats, lone surrogates, lax coercion, unbounded integers ------------------------


@pytest.mark.parametrize("doc, says", [
    ({"layer_allocation": "pyramid", "budget": 8, "layer_allocation_params": {"beta": float("nan")}}, "finite"),
    ({"layer_allocation": "pyramid", "budget": 8, "pyramid_beta": float("inf")}, "finite"),
    ({"session_ttl": "cdf", "ttl_memory_price": float("inf")}, "finite"),
    ({"layer_allocation": "sensitivity", "budget": 8, "sensitivity_profile": [1.0, float("nan")]}, "finite"),
    ({"compression_ratio": float("nan")}, "finite"),
    ({"scoring_prompt": "ok \ud800"}, "lone surrogate"),
    ({"budget": True}, "valid integer"),
    ({"budget": "4"}, "valid integer"),
    ({"policy": "snapkv", "policy_params": {"observation_window": True}}, "expected int"),
    ({"budget": 2**80}, "64 bits"),
    ({"policy": "expected_attention", "budget": 8, "policy_params": {"n_future_positions": 10**30}}, "64 bits"),
])
def test_2_non_finite_lax_and_unbounded_values_are_rejected(doc, says):
    with pytest.raises(KVConfigError, match=says):
        KVConfig.parse(doc)
    with pytest.raises(KVConfigError):  # the constructor too: a kvpilot error, never a raw ValidationError
        KVConfig(**doc)


def test_2_constructor_raises_a_kvpilot_error_and_stored_rows_parse_back(tmp_path):
    try:
        KVConfig(budget=0)
    except Exception as exc:
        assert isinstance(exc, KVConfigError) and not isinstance(exc, ValidationError)
    cfg = KVConfig(policy="snapkv", compression_ratio=0.5, layer_allocation="pyramid", scoring="prompt",
                   scoring_prompt="Namen, Städte, 数字 — keep them.", session_ttl="cdf")
    with Store.open(f"sqlite:///{tmp_path / 'k.db'}") as store:
        store.push("d", cfg, pushed_by="t")
        assert store.active_version("d").config() == cfg
    assert KVConfig.parse(cfg.to_json()) == cfg


# ----- 3. every input path: one clear line, exit status 2 ------------------------------------------------


def _hostile_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "deep": b"[" * 100_000,
        "digits": b'{"policy": "random", "policy_params": {"seed": ' + b"9" * 5000 + b"}}",
        "binary": bytes(range(256)) * 4,
        "utf16": json.dumps({"policy": "snapkv", "compression_ratio": 0.5}).encode("utf-16"),
        "surrogate": b'{"scoring_prompt": "\\ud800"}',
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.json"
        out[name].write_bytes(data)
    return out


def test_3_hostile_files_through_every_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KVPILOT_HOME", str(tmp_path / "home"))
    db = f"sqlite:///{tmp_path / 'k.db'}"
    files = _hostile_files(tmp_path)
    runs = []
    for name, path in files.items():
        runs.append((name, "push", ["push", "-d", "d", "-c", str(path), "--db", db]))
        runs.append((name, "eval -c", ["eval", "-w", "passkey", "-c", str(path), "--db", db]))
        runs.append((name, "tune --space", ["tune", "-w", "passkey", "--space", str(path), "--db", db]))
        runs.append((name, "eval -w jsonl:", ["eval", "-w", f"jsonl:{path}", "--db", db]))
        runs.append((name, "replay --trace", ["replay", "--trace", str(path), "--db", db]))
    for name, what, argv in runs:
        code, err = _cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and lines and lines[0].startswith("kvpilot: error: "), (name, what, err[-500:])
        assert "Traceback" not in err and len(err) < 2000, (name, what, err[-500:])
        assert str(tmp_path) in err or "invalid KVConfig" in err, (name, what, err)  # it names the file
    with Store.open(db) as store:
        assert store.deployments() == []  # nothing was stored


def test_3_broken_model_folders_and_a_too_small_profile(tmp_path, capsys, monkeypatch):
    from transformers import LlamaConfig

    monkeypatch.setenv("KVPILOT_HOME", str(tmp_path / "home"))
    corrupt, empty = tmp_path / "corrupt", tmp_path / "noweights"
    corrupt.mkdir()
    (corrupt / "config.json").write_text('{"model_type": "llama", ')
    LlamaConfig(num_hidden_layers=2).save_pretrained(empty)
    for folder, says in ((corrupt, "not valid JSON"), (empty, "no weight files")):
        code, err = _cli(capsys, "eval", "-w", "passkey", "-n", "1", "-t", "200", "--model", str(folder),
                         "--db", f"sqlite:///{tmp_path / 'k.db'}")
        assert code == 2 and says in err and str(folder) in err and "Traceback" not in err, err[-500:]
    code, err = _cli(capsys, "profile", "--tokens", "300", "--no-save")
    assert code == 2 and "more than the target of 300" in err and "Traceback" not in err, err[-500:]


# ----- 6. kill -9 during `kvpilot tune` ------------------------------------------------------------------


def test_6_kill_9_during_tune_leaves_no_running_trial(tmp_path, record_figures):
    import optuna
    from optuna.trial import TrialState

    from kvpilot.tuner.storage import open_storage

    db = f"sqlite:///{tmp_path / 't.db'}"
    argv = [sys.executable, "-m", "kvpilot.cli", "tune", "-w", "passkey", "-n", "1", "-t", "300", "--no-fidelity",
            "--constraint", "none", "--study", "s", "--db", db, "--out", str(tmp_path / "runs"), "--quiet",
            "--sampler", "random"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*argv, "--trials", "3"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 400
    killed = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not Path(tmp_path / "t.db").exists():
                continue
            conn = sqlite3.connect(tmp_path / "t.db")
            try:
                rows = conn.execute("SELECT trial_number FROM runs WHERE kind = 'tuning_trial' "
                                    "AND status = 'running'").fetchall()
            except sqlite3.OperationalError:
                rows = []
            finally:
                conn.close()
            if rows:
                proc.send_signal(signal.SIGKILL)  # mid-trial
                killed = rows[0][0]
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed is not None, proc.stderr.read().decode()[-2000:] if proc.stderr else "no trial started"
    study = optuna.load_study(study_name="s", storage=open_storage(db))
    (stale,) = study.get_trials(states=(TrialState.RUNNING,))  # what kill -9 left behind
    params = stale.params

    resumed = subprocess.run([*argv, "--trials", "1"], env=env, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    study = optuna.load_study(study_name="s", storage=open_storage(db))
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    assert study.trials[stale.number].state == TrialState.FAIL
    # its params are queued again (after the policies `_seed_policies` queued before it), or already evaluated
    assert params  # the trial was killed after its config was drawn (its run had started)
    again = [t for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.WAITING)) if t.number > stale.number
             and all({**t.params, **t.system_attrs.get("fixed_params", {})}.get(k) == v for k, v in params.items())]
    assert again, [(t.number, t.state, t.params) for t in study.trials]
    with Store.open(db, create=False) as store:
        runs = {r.trial_number: r.status for r in store.runs(kind="tuning_trial")}
    assert runs[killed] == "failed" and "running" not in runs.values()
    record_figures("tune_kill_9", {"trials_running_after_kill": 1, "trials_running_after_resume": 0,
                                   "runs_running_after_resume": 0})


# ----- 7. over-long values on PostgreSQL --------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.postgres
def test_7_over_long_names_are_a_clear_store_error(db_url, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(KVConfig(policy="snapkv", compression_ratio=0.5).to_json())
    for extra in (["-d", "x" * 300], ["-d", "d", "--by", "b" * 300], ["-d", "d", "--source", "s" * 600]):
        code, err = _cli(capsys, "push", "-c", str(cfg), "--db", db_url, *extra)
        assert code == 2 and "refused a value" in err and "too long" in err and "Traceback" not in err, err
    with Store.open(db_url) as store, pytest.raises(StoreError, match="refused a value"):
        store.start_run("eval", name="n" * 300)
    code, err = _cli(capsys, "tune", "-w", "passkey", "--study", "s" * 300, "--db", db_url)
    assert code == 2 and "--study" in err and "Traceback" not in err  # before any trial, not mid-trial


# ----- 8. read commands never create or migrate a schema ----------------------------------------------------


def test_8_reads_leave_other_databases_and_empty_files_alone(tmp_path, capsys):
    other = tmp_path / "other_app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    cfg = tmp_path / "c.json"
    cfg.write_text(KVConfig().to_json())
    for argv in (["configs"], ["db", "status"], ["push", "-d", "d", "-c", str(cfg)]):
        code, err = _cli(capsys, *argv, "--db", str(other))
        assert code == 2 and "another application's tables (customers)" in err, err
    assert other.read_bytes() == before  # not a byte changed (no kvpilot tables, no WAL switch)

    empty = tmp_path / "empty.db"
    empty.touch()
    code, err = _cli(capsys, "db", "status", "--db", str(empty))
    assert code == 2 and "empty file" in err and empty.stat().st_size == 0
    code, err = _cli(capsys, "configs", "--db", str(tmp_path / "missing.db"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "missing.db").exists()


# ----- 10. SIGTERM on `kvpilot dashboard` stops Streamlit -----------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def test_10_sigterm_on_the_dashboard_stops_its_streamlit_child(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kvpilot.cli", "dashboard", "--port", str(port), "--db",
                             f"sqlite:///{tmp_path / 'k.db'}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        child = None
        while time.monotonic() < deadline and child is None:
            time.sleep(0.5)
            kids = _children(proc.pid)
            if kids:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        child = kids[0]
        assert child is not None, "the dashboard did not start serving"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        for _ in range(100):
            if not Path(f"/proc/{child}").exists():
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{child}").exists(), "Streamlit outlived the dashboard command"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
