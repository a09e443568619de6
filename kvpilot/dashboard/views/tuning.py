"""Tuning page: Optuna studies in the store's database, the Pareto front (click a point to inspect a trial),
the trials table, parameter importances, and promoting a trial's config to a deployment."""

from __future__ import annotations

import optuna
import pandas as pd
import streamlit as st

from kvpilot.config import KVConfigError
from kvpilot.dashboard import charts, fmt, tuning
from kvpilot.dashboard import context as C
from kvpilot.storage import Store

INFEASIBLE = "fails a constraint"


def render() -> None:
    st.title("Tuning")
    C.flash()
    ctx = C.current()
    with C.guard():
        if not tuning.has_studies_tables(C.store()):
            st.info("No Optuna studies in this store yet. Studies appear here when the tuner runs with this "
                    f"database as its Optuna storage (`optuna.storages.RDBStorage(\"{ctx.url}\")`, which the "
                    "tuner uses by default).")
            return
        storage = C.optuna_storage(C.settings().url)
        studies = tuning.list_studies(storage)
        if not studies:
            st.info("The store has Optuna's tables but no study yet.")
            return
        names = [s.name for s in studies]
        name = st.selectbox("Study", names, key="study", bind="query-params")
        study = optuna.load_study(study_name=name, storage=storage)
        _study(ctx, study)


def _study(ctx: C.Ctx, study: optuna.Study) -> None:
    rows = tuning.trial_rows(study)
    objectives = tuning.objective_names(study)
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    cols = st.columns(4)
    cols[0].metric("Trials", len(rows))
    cols[1].metric("Complete", len(complete))
    cols[2].metric("Pareto front" if len(objectives) > 1 else "Best", sum(r["pareto"] for r in rows))
    cols[3].metric("Objectives", len(objectives))
    st.caption("Objectives: " + ", ".join(f"{n} ({'maximised' if d.name == 'MAXIMIZE' else 'minimised'})"
                                          for n, d in zip(objectives, study.directions, strict=True)))
    if not complete:
        st.info("No trial has completed yet.")
        return
    picked = _front_chart(study, complete, objectives)
    numbers = [r["trial"] for r in complete]
    front = [r["trial"] for r in complete if r["pareto"]]
    if picked is not None and picked != st.session_state.get("_last_pick"):
        st.session_state["_last_pick"] = picked
        st.session_state["trial"] = picked
    if st.session_state.get("trial") not in numbers:
        st.session_state["trial"] = front[0] if front else numbers[0]
    number = st.selectbox("Trial", numbers, key="trial", help="or click a point in the chart")
    _trial(ctx, study, number)
    st.subheader("Trials")
    _trials_table(rows, objectives)
    _heldout(study)
    _importances(study, objectives)


def _trials_table(rows: list[dict], objectives: list[str]) -> None:
    """Every trial with its objectives in their units (MiB, %, ms)."""
    df = pd.DataFrame(rows)
    config: dict = {"duration_s": st.column_config.NumberColumn("duration", format="%.1f s")}
    for name in objectives:
        if name in df.columns:
            df[name] = [tuning.shown(name, v) for v in df[name]]
            df = df.rename(columns={name: tuning.column(name)})
            if tuning.unit_of(name) == "%":
                config[name] = st.column_config.NumberColumn(name, format="percent")
            else:
                config[tuning.column(name)] = st.column_config.NumberColumn(tuning.column(name), format="%.4g")
    if "param: compression_ratio" in df.columns:  # 70 % as on the trial's own tables, not 0.7
        config["param: compression_ratio"] = st.column_config.NumberColumn("param: compression_ratio", format="percent")
    st.dataframe(df, hide_index=True, key="trials_table", column_config=config, placeholder="-")


def _front_chart(study: optuna.Study, complete: list[dict], objectives: list[str]) -> int | None:
    df = pd.DataFrame(complete)
    # a trial that fails a constraint is off the front however small it is: say so, not "dominated"
    df["front"] = ["Pareto front" if p else "dominated" if f else INFEASIBLE
                   for p, f in zip(df["pareto"], df["feasible"], strict=True)]
    for name in objectives:
        df[tuning.column(name)] = [tuning.shown(name, v) for v in df[name]]
    if len(objectives) == 1:
        x, y = "trial", objectives[0]
        title = "Objective per trial (best highlighted)"
    else:
        left, right = st.columns(2)
        x = left.selectbox("x axis", objectives, index=0, key="pareto_x") or objectives[0]
        y = right.selectbox("y axis", objectives, index=1, key="pareto_y") or objectives[1]
        title = "Pareto front"
    st.subheader(title)
    base = tuning.baseline(study)
    reference = None
    if base is not None and x in base and y in base and x != "trial":
        reference = pd.DataFrame([{tuning.column(x): tuning.shown(x, base[x]),
                                   tuning.column(y): tuning.shown(y, base[y]), "label": "full cache"}])
    x_col = x if x == "trial" else tuning.column(x)
    chart = charts.pareto(df, x_col, tuning.column(y), x_fmt=_axis(x), y_fmt=_axis(y), reference=reference)
    event = st.altair_chart(chart, on_select="rerun", selection_mode="pick", key="pareto_chart")
    if reference is None and len(objectives) > 1:
        st.caption("No full-cache reference point: the study holds no baseline for these objectives.")
    points = (getattr(event, "selection", None) or {}).get("pick") or []
    return int(points[0]["trial"]) if points and "trial" in points[0] else None


def _axis(objective: str) -> str:
    return ".0%" if tuning.unit_of(objective) == "%" else ",.4~f"


def _trial(ctx: C.Ctx, study: optuna.Study, number: int) -> None:
    trial = study.trials[number]
    st.subheader(f"Trial {number}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Objectives**")
        C.table(dict(zip(tuning.objective_names(study), trial.values or [], strict=False)), key="trial_objectives")
        st.markdown("**Params**")
        C.table(trial.params, key="trial_params")
    with right:
        st.markdown("**KVConfig**")
        try:
            cfg = tuning.trial_config(trial)
        except KVConfigError as exc:
            cfg = None
            st.error(f"This trial has no valid KVConfig (user attr `config`, or KVConfig-named params): {fmt.md(exc)}")
        if cfg is not None:
            C.table(cfg.to_dict(), key="trial_config")
    _telemetry(study.study_name, number)
    if cfg is not None and not ctx.read_only:
        _promote(ctx, study.study_name, trial, cfg)


def _telemetry(study: str, number: int) -> None:
    summary = tuning.trial_telemetry(C.store(), study, number)
    if summary is None:
        st.caption("No run recorded in the store for this trial (the tuner records one per trial when probes run).")
        return
    C.run_metrics(summary)
    if summary.run.metrics:
        with st.expander("All metrics of the trial's run"):
            C.table(summary.run.metrics, key="trial_run_metrics")


def _heldout(study: optuna.Study) -> None:
    """The front re-measured on held-out samples: search-set and held-out figures side by side."""
    st.subheader("Held-out validation")
    view = tuning.heldout_view(study)
    if view is None:
        st.caption("Not validated on held-out samples (`kvpilot tune` does it unless --heldout 0).")
        return
    chosen = "nothing" if view.recommended is None else f"trial {view.recommended}"
    st.markdown(f"Held-out set `{view.label}`. Recommended: **{chosen}**. {view.reason}")
    st.dataframe(pd.DataFrame(view.rows), hide_index=True, key="heldout_table")


def _importances(study: optuna.Study, objectives: list[str]) -> None:
    st.subheader("Parameter importances")
    st.caption("Optuna's default evaluator (PED-ANOVA in Optuna 5): how much each parameter decides whether a "
               "trial lands among the best for the chosen objective.")
    which = 0
    if len(objectives) > 1:
        which = objectives.index(st.selectbox("Objective", objectives, key="importance_objective") or objectives[0])
    try:
        values = _cached_importances(C.settings().url, study.study_name, len(study.trials), which)
    except (ValueError, RuntimeError) as exc:
        st.caption(f"Importances unavailable: {fmt.md(exc)}")
        return
    if not values:
        st.caption("Importances unavailable: no parameter varies across completed trials.")
        return
    df = pd.DataFrame({"parameter": list(values), "importance": list(values.values())})
    chart = charts.hbars(df, "parameter", "importance", title=f"importance for {objectives[which]}")
    st.altair_chart(chart, height=charts.hbars_height(len(df)))


@st.cache_data(ttl=60, show_spinner="Computing importances...")
def _cached_importances(url: str | None, study: str, trials: int, objective: int) -> dict[str, float]:
    return tuning.importances(optuna.load_study(study_name=study, storage=C.optuna_storage(url)), objective)


def _promote(ctx: C.Ctx, study: str, trial: optuna.trial.FrozenTrial, cfg) -> None:
    st.subheader("Promote to a deployment")
    deployments = [d.name for d in C.query(Store.deployments)]
    options = [*deployments, "(new deployment)"]
    index = options.index(ctx.deployment) if ctx.deployment in options else 0
    choice = st.selectbox("Deployment", options, index=index, key="promote_deployment")
    target = (st.text_input("New deployment name", key="promote_new") if choice == "(new deployment)" else choice) or ""
    active = C.query(Store.active_version, target) if target in deployments else None
    if active is not None:
        old, new = active.config().to_dict(), cfg.to_dict()
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v)
        question = (f"Push trial {trial.number}'s config to {fmt.md(target)} as a new version, replacing v{active.version}? "
                    f"Changes: {changes or 'none'}.")
    else:
        question = f"Push trial {trial.number}'s config to {fmt.md(target)} as its first version?"
    C.confirm(
        f"promote:{study}:{trial.number}", f"Promote trial {trial.number}", question,
        lambda: f"{fmt.md(target)}: pushed v{tuning.promote(C.store(), target, study, trial).version} "
        f"from tuner:{study}/{trial.number}.",
        disabled=not target,
    )


if __name__ == "__main__":
    render()
