"""The Runs page lists every recorded run, evaluations included (what `kvpilot eval` records through
`Store.start_run` / `finish_run`), on SQLite and PostgreSQL."""

from __future__ import annotations

from kvpilot.config import KVConfig
from kvpilot.storage import RunRecorder
from tests.dashboard import seed as S
from tests.dashboard.helpers import frame, metrics, open_page, texts

EVAL_CONFIG = {"policy": "snapkv", "compression_ratio": 0.75}
EVAL_METRICS = {"accuracy": 0.875, "kv_bytes": 3_145_728, "compression_ratio": 0.74}


def _record_eval(recorder: RunRecorder) -> int:
    """What an evaluation records: a run of kind "eval" with its config, opened and closed with metrics."""
    run = recorder.start_run("eval", name="passkey snapkv-0.75", config=KVConfig.parse(EVAL_CONFIG),
                             params={"workload": "passkey", "samples": 8})
    recorder.finish_run(run, metrics=EVAL_METRICS)
    return run


def test_an_eval_run_is_listed(app, store, db_url):
    run = _record_eval(store)  # the store holds nothing else: no deployment, no sample
    at = open_page(app(db_url), "runs")
    assert not at.error, [e.value for e in at.error]
    table = frame(at, "id", "kind", "status", "config")
    [row] = table.to_dict("records")
    assert (row["id"], row["kind"], row["status"], row["name"]) == (run, "eval", "completed", "passkey snapkv-0.75")
    assert row["config"] == "snapkv-0.75"
    # shares stay fractions (the column shows them as percentages), bytes become MiB
    assert row["accuracy"] == EVAL_METRICS["accuracy"] and row["kv_bytes (MiB)"] == EVAL_METRICS["kv_bytes"] / 2**20
    assert row["compression_ratio"] == EVAL_METRICS["compression_ratio"]
    assert "passkey" in texts(at) and "Requests" not in metrics(at)  # no row of zeros and dashes
    assert "No requests were recorded under this run" in texts(at)
    shown = dict(zip(frame(at, "field", "value")["field"], frame(at, "field", "value")["value"], strict=True))
    assert shown["accuracy"] == "87.5 %" and shown["kv_bytes"] == "3.0 MiB"  # the run's metrics as a table


def test_runs_of_every_kind_filtered_by_kind(app, store, seeded, db_url):
    eval_run = _record_eval(store)
    at = open_page(app(db_url), "runs")
    kinds = dict(zip(frame(at, "id", "kind")["id"], frame(at, "id", "kind")["kind"], strict=True))
    canaries = {c.run_id: "canary" for c in store.canaries(S.QUALITY_DEPLOYMENT)}  # seed_quality's rollouts
    assert len(canaries) == 3
    assert kinds == {eval_run: "eval", seeded.trial_run: "tuning_trial", **canaries}
    assert list(frame(at, "id", "kind")["id"]) == [r.id for r in store.runs()]  # newest first, as the store
    at.multiselect(key="run_kinds").set_value(["tuning_trial"]).run()
    assert list(frame(at, "id", "kind")["kind"]) == ["tuning_trial"]
    assert frame(at, "id", "study / trial")["study / trial"].tolist() == [f"{S.STUDY} / 1"]
    assert metrics(at)["Requests"] == "5"  # what the store recorded under the trial's run
