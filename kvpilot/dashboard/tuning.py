"""Reading Optuna studies for the Tuning page, and promoting a trial's config to a deployment.

Studies live in the store's database, in Optuna's own tables, and are read through Optuna's public API
(summaries, `load_study`, `best_trials`, importances), never its tables. A trial's KVConfig is the
`config` user attribute the tuner sets; a trial without one falls back to its params that are KVConfig
fields. Nothing here imports streamlit.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from kvpilot.config import KVConfig, KVConfigError, config_label
from kvpilot.storage import ConfigVersionInfo, RunSummary, Store
from kvpilot.tuner.heldout import HELDOUT_ATTR
from kvpilot.tuner.objectives import PROPORTIONS
from kvpilot.tuner.storage import has_studies_tables, open_storage  # noqa: F401 (read by the pages as tuning.*)
from kvpilot.tuner.study import BASELINE_ATTR, CONFIG_ATTR, trial_config

SHARES = ("accuracy", "top1_agreement", "hit_ratio", "compression_ratio")  # fractions: shown as percentages


@dataclass(frozen=True)
class StudyRow:
    name: str
    directions: tuple[str, ...]
    trials: int
    started: float | None


def list_studies(storage: optuna.storages.BaseStorage) -> list[StudyRow]:
    """Every study in the storage, newest first."""
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        start = s.datetime_start.timestamp() if s.datetime_start else None
        rows.append(StudyRow(s.study_name, tuple(d.name.lower() for d in s.directions), s.n_trials, start))
    return sorted(rows, key=lambda r: (r.started or 0.0, r.name), reverse=True)


def objective_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    return list(names) if names else [f"objective {i}" for i in range(len(study.directions))]


def pareto_numbers(study: optuna.Study) -> set[int]:
    """Trial numbers on the Pareto front (the best trial for one objective); empty before any completes."""
    try:
        return {t.number for t in study.best_trials}
    except ValueError:
        return set()


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat dict per trial: number, state, objective values, params, duration, front membership, and
    whether it met the study's constraints (the front holds feasible trials only)."""
    names = objective_names(study)
    front = pareto_numbers(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name, "pareto": t.number in front,
                               "feasible": all(v <= 0 for v in (t.constraints or {}).values())}
        for name, v in zip(names, t.values or [None] * len(names), strict=False):
            row[name] = v
        for k, v in t.params.items():
            row[f"param: {k}"] = v
        end = t.datetime_complete
        row["duration_s"] = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
        row["has_config"] = CONFIG_ATTR in t.user_attrs
        rows.append(row)
    return rows


def unit_of(objective: str) -> str:
    """How an objective is shown: "MiB" for bytes, "%" for shares, "ms" for latencies, "" otherwise."""
    if objective.endswith("bytes"):
        return "MiB"
    if objective in SHARES or objective.endswith("accuracy"):
        return "%"
    if objective in ("ttft_s", "tpot_s"):
        return "ms"
    return ""


def shown(objective: str, value: float | None) -> float | None:
    """An objective's value in the unit `unit_of` names (percentages stay fractions: the axis formats them)."""
    if value is None:
        return None
    unit = unit_of(objective)
    return value / 2**20 if unit == "MiB" else value * 1000 if unit == "ms" else value


def column(objective: str) -> str:
    """An objective's column title with its unit."""
    unit = unit_of(objective)
    return f"{objective} (MiB)" if unit == "MiB" else f"{objective} (ms)" if unit == "ms" else objective


def baseline(study: optuna.Study) -> dict[str, Any] | None:
    """The full cache's metrics on the study's samples, as the tuner stored them, or None."""
    stored = study.user_attrs.get(BASELINE_ATTR)
    return stored if isinstance(stored, dict) else None


@dataclass(frozen=True)
class HeldoutView:
    """The study's last held-out validation: one row per re-measured front config, both sets side by side."""

    label: str
    reason: str
    recommended: int | None
    rows: list[dict[str, Any]]


def heldout_view(study: optuna.Study) -> HeldoutView | None:
    """What `kvpilot tune` stored after validating the front on held-out samples (None: never validated)."""
    report = study.user_attrs.get(HELDOUT_ATTR)
    if not report:
        return None
    names = objective_names(study)
    rows = [_heldout_row("full cache", None, report.get("baseline") or {}, report.get("baseline") or {}, names)]
    for v in report.get("validations", []):
        row = _heldout_row(config_label_of(v.get("config")), v["trial"], v.get("search") or {}, v.get("heldout") or {},
                           names)
        row["meets constraints (held-out)"] = bool(v.get("feasible"))
        row["recommended"] = v["trial"] == report.get("recommended")
        rows.append(row)
    return HeldoutView(str(report.get("label", "")), str(report.get("reason", "")), report.get("recommended"), rows)


def _heldout_row(label: str, trial: int | None, search: dict, held: dict, names: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"trial": trial, "config": label}
    for name in names:
        for which, metrics in (("search", search), ("held-out", held)):
            row[f"{name} ({which})"] = metrics.get(name)
            if name in PROPORTIONS and metrics.get(f"{name}_ci_low") is not None:
                row[f"{name} 95 % CI ({which})"] = f"[{metrics[f'{name}_ci_low']:.2f}, {metrics[f'{name}_ci_high']:.2f}]"
    return row


def config_label_of(raw: Any) -> str:
    """A stored config's short label, or `?` when it no longer parses."""
    try:
        return config_label(KVConfig.parse(raw))
    except (KVConfigError, TypeError, ValueError):
        return "?"


def importances(study: optuna.Study, objective: int = 0) -> dict[str, float]:
    """Parameter importances for one objective with Optuna's default evaluator (PED-ANOVA in Optuna 5).

    PED-ANOVA scores what makes the target *low*, so a maximised objective is negated first. Raises
    ValueError with fewer than 2 completed trials."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        raise ValueError("importances need at least 2 completed trials")
    sign = -1.0 if study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings():  # PED-ANOVA warns that it minimises; the sign above handles that
        warnings.simplefilter("ignore", UserWarning)
        values = optuna.importance.get_param_importances(
            study, target=lambda t: sign * t.values[objective], normalize=True
        )
    return {k: float(v) for k, v in values.items() if not math.isnan(v)}


def trial_telemetry(store: Store, study: str, number: int) -> RunSummary | None:
    """What the store recorded while the trial ran (its `tuning_trial` run), if anything."""
    for run in store.runs(study_name=study):
        if run.trial_number == number:
            return store.run_summary(run.id)
    return None


def promote(store: Store, deployment: str, study: str, trial: optuna.trial.FrozenTrial) -> ConfigVersionInfo:
    """Push the trial's config to `deployment` as its next active version, recording where it came from."""
    return store.push(
        deployment, trial_config(trial), pushed_by="dashboard", source=f"tuner:{study}/{trial.number}"
    )
