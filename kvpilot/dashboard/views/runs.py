"""Runs page: every recorded run (evaluations, tuning trials, demos, replays, serving, profiles), newest first,
with its config and metrics, and what the store recorded under the run picked.

Runs are listed for the whole store, not only the sidebar's deployment: an evaluation belongs to no
deployment."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from kvpilot.dashboard import context as C
from kvpilot.dashboard import fmt
from kvpilot.dashboard.tuning import column, shown, unit_of
from kvpilot.storage import RUN_KINDS, RunInfo, Store

LIMIT = 500
_SCALARS = (int, float, str, bool)
_IDENTITY = ("id", "kind", "name", "status", "deployment", "config", "started", "duration_s", "study / trial")
_HEADLINE = ("accuracy", "kv_bytes (MiB)", "hit_ratio")  # the metrics shown beside the config


def render() -> None:
    st.title("Runs")
    with C.guard():
        runs: list[RunInfo] = C.query(Store.runs, limit=LIMIT)
        if not runs:
            st.info("No runs recorded yet. `kvpilot eval` records an evaluation, `kvpilot tune` one run per trial, "
                    f"`kvpilot replay` and `kvpilot profile` one each; or run {C.fill_hint()}.")
            return
        present = [k for k in RUN_KINDS if any(r.kind == k for r in runs)]
        kinds = st.multiselect("Kinds", present, default=present, key="run_kinds")
        shown_runs = [r for r in runs if r.kind in kinds]
        st.caption(f"{len(shown_runs)} of the newest {len(runs)} runs.")
        if not shown_runs:
            return
        _table(shown_runs)
        labels = {r.id: f"#{r.id} {r.kind} {r.name or ''} ({C.when(r.started_at)})" for r in shown_runs}
        pick = st.selectbox("Run", list(labels), format_func=lambda i: labels[i], key="run")
        _details(next(r for r in shown_runs if r.id == pick))


def _table(runs: list[RunInfo]) -> None:
    """The runs with their metrics in units: accuracy as a percentage, bytes in MiB, durations in seconds."""
    df = pd.DataFrame(_row(r) for r in runs)
    config: dict[str, Any] = {"duration_s": st.column_config.NumberColumn("duration", format="%.1f s")}
    for name in [c for c in df.columns if c not in _IDENTITY]:
        if not pd.api.types.is_numeric_dtype(df[name]) or pd.api.types.is_bool_dtype(df[name]):
            continue
        unit = unit_of(name)
        if unit == "%":
            config[name] = st.column_config.NumberColumn(name, format="percent")
        elif unit:
            df[name] = [shown(name, v) for v in df[name]]
            df = df.rename(columns={name: column(name)})
            config[column(name)] = st.column_config.NumberColumn(column(name), format="%.4g")
    # what a run found (accuracy, bytes) next to its config, inside the first screen; then when and where
    lead = [c for c in ("id", "kind", "name", "status", "config", *_HEADLINE) if c in df.columns]
    df = df[lead + [c for c in df.columns if c not in lead]]
    st.dataframe(df, hide_index=True, key="runs_table", column_config=config, placeholder="-")  # a metric the run lacks


def _row(r: RunInfo) -> dict[str, Any]:
    """One table row: identity, status, timing, config label, then the run's scalar metrics."""
    row: dict[str, Any] = {
        "id": r.id, "kind": r.kind, "name": r.name or "", "status": r.status, "deployment": r.deployment or "",
        "config": fmt.config_name(r.config), "started": C.when(r.started_at),
        "duration_s": None if r.finished_at is None else round(r.finished_at - r.started_at, 3),
        "study / trial": f"{r.study_name} / {r.trial_number}" if r.study_name else "",
    }
    for k, v in (r.metrics or {}).items():
        if isinstance(v, _SCALARS) and k not in row:
            row[k] = v
    return row


def _details(run: RunInfo) -> None:
    summary = C.query(Store.run_summary, run.id)
    st.subheader(f"Run #{run.id}: {run.kind}" + (f" {fmt.md(run.name)}" if run.name else ""))
    C.run_metrics(summary)
    left, right = st.columns(2)
    with left:
        st.markdown("**Metrics**")
        if run.metrics:
            C.table(run.metrics, key="run_metrics")
        else:  # e.g. a canary run: its figures are its decision (Quality page), not metrics
            st.caption("This run recorded no metrics.")
    with right:
        st.markdown("**KVConfig**")
        C.table(run.config, key="run_config")
        if run.params:
            st.markdown("**Params**")
            C.table(run.params, key="run_params")


if __name__ == "__main__":
    render()
