"""Tuning page: Optuna studies in the store's database, the Pareto front (click a point to inspect a trial),
the trials table, parameter importances, and promoting a trial's config to a deployment."""

from __future__ import annotations

import optuna
import pandas as pd
import streamlit as st

from kvpilot.config import KVConfigError
from kvpilot.dashboard import charts, tuning
from kvpilot.dashboard import context as C
from kvpilot.storage import Store


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
    cols[3].metric("Objectives", ", ".join(f"{n} ({d.name.lower()[:3]})" for n, d in zip(objectives, study.directions,
                                                                                          strict=True)))
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
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="trials_table")
    _heldout(study)
    _importances(study, objectives)


def _front_chart(study: optuna.Study, complete: list[dict], objectives: list[str]) -> int | None:
    df = pd.DataFrame(complete)
    df["front"] = ["Pareto front" if p else "dominated" for p in df["pareto"]]
    if len(objectives) == 1:
        x, y = "trial", objectives[0]
        title = "Objective per trial (best highlighted)"
    else:
        left, right = st.columns(2)
        x = left.selectbox("x axis", objectives, index=0, key="pareto_x") or objectives[0]
        y = right.selectbox("y axis", objectives, index=1, key="pareto_y") or objectives[1]
        title = "Pareto front"
    st.subheader(title)
    event = st.altair_chart(charts.pareto(df, x, y), on_select="rerun", selection_mode="pick", key="pareto_chart")
    points = (getattr(event, "selection", None) or {}).get("pick") or []
    return int(points[0]["trial"]) if points and "trial" in points[0] else None


def _trial(ctx: C.Ctx, study: optuna.Study, number: int) -> None:
    trial = study.trials[number]
    st.subheader(f"Trial {number}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Objectives**")
        st.json(dict(zip(tuning.objective_names(study), trial.values or [], strict=False)))
        st.markdown("**Params**")
        st.json(trial.params, expanded=False)
    with right:
        st.markdown("**KVConfig**")
        try:
            cfg = tuning.trial_config(trial)
        except KVConfigError as exc:
            cfg = None
            st.error(f"This trial has no valid KVConfig (user attr `config`, or KVConfig-named params): {exc}")
        if cfg is not None:
            st.json(cfg.to_dict(), expanded=True)
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
        st.json(summary.run.metrics, expanded=False)


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
        st.caption(f"Importances unavailable: {exc}")
        return
    if not values:
        st.caption("Importances unavailable: no parameter varies across completed trials.")
        return
    df = pd.DataFrame({"parameter": list(values), "importance": list(values.values())})
    st.altair_chart(charts.bars(df, "parameter", "importance", title=f"importance for {objectives[which]}"))


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
        question = (f"Push trial {trial.number}'s config to {target} as a new version, replacing v{active.version}? "
                    f"Changes: {changes or 'none'}.")
    else:
        question = f"Push trial {trial.number}'s config to {target} as its first version?"
    C.confirm(
        f"promote:{study}:{trial.number}", f"Promote trial {trial.number}", question,
        lambda: f"{target}: pushed v{tuning.promote(C.store(), target, study, trial).version} "
        f"from tuner:{study}/{trial.number}.",
        disabled=not target,
    )


if __name__ == "__main__":
    render()
