"""The tuner: an Optuna study whose trials are KVConfigs evaluated on a real workload by the engine.

Each trial draws a config from the SearchSpace, runs it through a `TuningTarget` (kvpilot.tuner.target):
`kvpilot.evaluation.Evaluator` for question answering (a config already measured on the same samples is
loaded from its run folder, not recomputed) or `ReplayTarget` for agent sessions (the session pool's TTL),
tells Optuna the objective values and constraint violations, and records a `tuning_trial` run in the store.
The study lives in the store's database, which is where the dashboard's Tuning page finds it; several
`kvpilot tune` processes given the same study name and a PostgreSQL store share the work (Optuna's
distributed mode).

The full cache is measured first, on the same samples: it is the baseline that relative constraints
(`accuracy>=full-0.05`) are measured against, and it is stored on the study as the `baseline` attribute.
The winner is the feasible trial that is best on one objective (`pick`, by default the last one, e.g. the
fewest KV bytes), ties broken by the other objectives in order.

Given a `heldout` target (other samples of the same workload, see `kvpilot.tuner.split`), `optimize` then
re-measures the feasible Pareto front there (`kvpilot.tuner.heldout`) and `recommended` is the front
config that still meets the constraints on the held-out set, or None with the reason; `push()` pushes
only that. The sampler's seed is random unless given (a second study does not replay the first one's
trials), and a trial whose config equals an earlier complete trial's takes that trial's result.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.errors import KVPilotError
from kvpilot.tuner.heldout import DEFAULT_LIMIT, HELDOUT_ATTR, HeldoutReport, pareto_front, validate
from kvpilot.tuner.objectives import (
    DEFAULT_OBJECTIVES,
    PROPORTIONS,
    Constraint,
    Objective,
    ObjectiveError,
    metric_interval,
    objective,
    objective_values,
    with_intervals,
)
from kvpilot.tuner.space import SearchSpace
from kvpilot.tuner.storage import open_storage
from kvpilot.tuner.target import TunerStore, TuningTarget

log = logging.getLogger(__name__)

CONFIG_ATTR = "config"  # trial user attribute: the KVConfig the trial evaluated (read by the dashboard)
METRICS_ATTR = "metrics"  # trial user attribute: the run's headline metrics
BASELINE_ATTR = "baseline"  # study user attribute: the full cache's metrics on the same samples
INVALID_CONSTRAINT = "valid_config"  # constraint set to 1 when a config cannot run on the model
REUSED_ATTR = "reused_from"  # trial user attribute: the earlier trial whose result an identical config took
FEW_QUESTIONS = 50  # below this, a measurement's interval is too wide to tune on: the tuner says so
MAX_CONSECUTIVE_FAILURES = 3
WORKER_ATTR = "worker"  # trial user attribute: host, pid and run id of the process evaluating it
STALE_AFTER_S = 6 * 3600.0  # a RUNNING trial of another host (or of no known process) this old is dead


class TuningError(KVPilotError):
    """A study that cannot run as asked (clashing directions, every trial failing, nothing feasible to push)."""


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a run (nested breakdowns left out), as stored on trials and runs."""
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str))}


def trial_config(trial: FrozenTrial) -> KVConfig:
    """The KVConfig a trial evaluated (user attr `config`, else its KVConfig-named params); KVConfigError if
    neither makes a valid config."""
    raw = trial.user_attrs.get(CONFIG_ATTR)
    if raw is not None:
        return KVConfig.parse(raw)
    return KVConfig.parse({k: v for k, v in trial.params.items() if k in KVConfig.model_fields})


@dataclass(frozen=True)
class TrialOutcome:
    """One finished trial as the tuner sees it."""

    number: int
    config: KVConfig
    values: tuple[float, ...]
    metrics: dict[str, Any]
    feasible: bool

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialOutcome:
        feasible = all(v <= 0 for v in trial.constraints.values())
        return cls(trial.number, trial_config(trial), tuple(trial.values or ()),
                   dict(trial.user_attrs.get(METRICS_ATTR, {})), feasible)


@dataclass
class TuneResult:
    """What `Tuner.optimize` returns: the baseline, every complete trial, the winner and the new trials run."""

    study_name: str
    objectives: list[str]
    pick: str
    pick_direction: str
    baseline: dict[str, Any]
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    new_trials: int
    failed_trials: int = 0
    computed_runs: int = 0
    notes: list[str] = field(default_factory=list)
    seed: int | None = None  # the sampler seed this call used
    reused_trials: int = 0  # new trials that took an identical earlier trial's result
    heldout: HeldoutReport | None = None  # the front re-measured on the held-out set (None: no held-out set)

    @property
    def recommended(self) -> TrialOutcome | None:
        """What to deploy: the held-out report's choice when there is a held-out set, else the winner."""
        if self.heldout is None:
            return self.best
        chosen = self.heldout.recommended
        return None if chosen is None else next(t for t in self.trials if t.number == chosen.number)


class Tuner:
    """Search KVConfigs for one workload (a `TuningTarget`: an Evaluator's samples, or a replayed trace)
    under objectives and constraints.

    store: a kvpilot Store; the study goes into its database and each trial is a `tuning_trial` run. Without
    one the study stays in memory (library use, quick experiments).
    heldout: a second target on other samples of the same workload; the front is validated there.
    seed: the sampler's seed; None draws a random one (`self.seed` then says which).
    """

    def __init__(
        self,
        evaluator: TuningTarget,
        *,
        study_name: str,
        store: TunerStore | None = None,
        objectives: Sequence[str] = DEFAULT_OBJECTIVES,
        constraints: Sequence[str | Constraint] = (),
        space: SearchSpace | None = None,
        pick: str | None = None,
        sampler: str = "tpe",
        seed: int | None = None,
        deployment: str | None = None,
        progress: bool = True,
        heldout: TuningTarget | None = None,
        validate_limit: int = DEFAULT_LIMIT,
    ) -> None:
        if not objectives:
            raise ObjectiveError("name at least one objective")
        self.evaluator = evaluator
        self.study_name = study_name
        self.store = store
        self.objectives: list[Objective] = [objective(n) for n in objectives]
        if len({o.name for o in self.objectives}) != len(self.objectives):
            raise ObjectiveError(f"objectives repeat a name: {list(objectives)}")
        self.constraints = [c if isinstance(c, Constraint) else Constraint.parse(c) for c in constraints]
        if not evaluator.fidelity:
            missing = [o.name for o in self.objectives if o.needs_fidelity]
            missing += [c.metric for c in self.constraints if objective(c.metric).needs_fidelity]
            if missing:
                raise ObjectiveError(f"{', '.join(missing)} need the full-cache reference; drop --no-fidelity")
        self.pick = objective(pick) if pick else self.objectives[-1]
        if self.pick.name not in {o.name for o in self.objectives}:
            raise ObjectiveError(f"pick={self.pick.name!r} must be one of the objectives {[o.name for o in self.objectives]}")
        self.space = space or SearchSpace()
        self.sampler_name = sampler
        self.seed = secrets.randbelow(2**31) if seed is None else seed
        if heldout is not None and heldout.digest == evaluator.digest:
            raise TuningError("the held-out set holds the same samples as the search set; split the workload")
        self.heldout = heldout
        self.validate_limit = validate_limit
        self.report: HeldoutReport | None = None  # the last held-out validation
        self.deployment = deployment
        self.progress = progress
        self._study: optuna.Study | None = None
        self._reused = 0

    # ----- the study -------------------------------------------------------------------------------

    def _sampler(self) -> optuna.samplers.BaseSampler:
        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(10, max(4, len(self.space.policy))))
        if self.sampler_name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        raise TuningError(f"unknown sampler {self.sampler_name!r}; choose tpe or random")

    @property
    def study(self) -> optuna.Study:
        """The study, created on first use or loaded when it exists (resume, or another worker's)."""
        if self._study is None:
            storage = open_storage(self.store.engine.url, create=True) if self.store is not None else None
            directions = [o.direction for o in self.objectives]
            study = optuna.create_study(study_name=self.study_name, storage=storage, directions=directions,
                                        sampler=self._sampler(), load_if_exists=True)
            existing = [d.name.lower() for d in study.directions]
            if existing != directions:
                raise TuningError(f"study {self.study_name!r} exists with directions {existing}, but these objectives "
                                  f"need {directions}; choose another --study name")
            names = study.metric_names
            if names is not None and list(names) != [o.name for o in self.objectives]:
                raise TuningError(f"study {self.study_name!r} exists with objectives {list(names)}, not "
                                  f"{[o.name for o in self.objectives]}; choose another --study name")
            with warnings.catch_warnings():  # experimental in Optuna 5, and the only way to name objectives
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([o.name for o in self.objectives])
            self._study = study
        return self._study

    def baseline(self) -> dict[str, Any]:
        """The full cache's metrics on the tuner's samples (computed once, then read from the study)."""
        stored = self.study.user_attrs.get(BASELINE_ATTR)
        if stored is not None and stored.get("digest") == self.evaluator.digest:
            return stored
        result = self.evaluator.run(KVConfig())
        metrics = with_intervals(scalar_metrics(result.metrics)) | {"digest": self.evaluator.digest}
        self.study.set_user_attr(BASELINE_ATTR, metrics)
        return metrics

    # ----- running trials --------------------------------------------------------------------------

    def optimize(self, n_trials: int) -> TuneResult:
        """Run `n_trials` more trials (after the baseline) and return the study's state and winner."""
        if n_trials < 0:
            raise TuningError(f"n_trials must be >= 0, got {n_trials}")
        study = self.study
        self._requeue_stale_trials(study)
        baseline = self.baseline()
        self._seed_policies(study, n_trials)
        computed_before, reused_before = self.evaluator.computed_runs, self._reused
        failed = consecutive = 0
        bar = tqdm(range(n_trials), desc=f"tuning {self.study_name}", disable=not self.progress, unit="trial")
        for _ in bar:
            ok = self._one_trial(study, baseline)
            failed += not ok
            consecutive = 0 if ok else consecutive + 1
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                raise TuningError(f"{consecutive} trials in a row failed; see the log and the trials' `error` attribute")
            best = self.best()
            if best is not None:
                bar.set_postfix_str(self._describe(best))
        trials = [TrialOutcome.of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if INVALID_CONSTRAINT not in t.constraints or t.constraints[INVALID_CONSTRAINT] <= 0]
        result = TuneResult(self.study_name, [o.name for o in self.objectives], self.pick.name,
                            self.pick.direction, baseline, trials, self.best(), n_trials, failed,
                            self.evaluator.computed_runs - computed_before, seed=self.seed,
                            reused_trials=self._reused - reused_before)
        result.notes += self._few_questions("search", baseline)
        if self.heldout is not None:
            result.heldout = self.validate(trials)
            result.notes += self._few_questions("held-out", result.heldout.baseline)
        return result

    def validate(self, trials: Sequence[TrialOutcome] | None = None) -> HeldoutReport:
        """Re-measure the feasible Pareto front on the held-out set and store the report on the study."""
        if self.heldout is None:
            raise TuningError("validation needs a held-out set (Tuner(..., heldout=...))")
        if trials is None:
            trials = [TrialOutcome.of(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        front = pareto_front(trials, self.objectives)
        self.report = validate(front, self.heldout, self.objectives, self.constraints, self.pick,
                               limit=self.validate_limit)
        self.study.set_user_attr(HELDOUT_ATTR, self.report.to_dict())
        return self.report

    def _few_questions(self, which: str, metrics: dict[str, Any]) -> list[str]:
        """A warning when the set's figures rest on fewer than FEW_QUESTIONS questions (with an interval)."""
        n = metrics.get("n_questions")
        if not n or n >= FEW_QUESTIONS:
            return []
        shown = []
        for name in PROPORTIONS:
            ci = metric_interval(name, metrics)
            if ci is not None:
                shown.append(f"{name} {metrics[name]:.0%} is [{ci[0]:.0%}, {ci[1]:.0%}]")
        return [f"the {which} set has {n} question{'s' if n != 1 else ''} (< {FEW_QUESTIONS}): its figures are uncertain (full cache, "
                f"95 % interval: {'; '.join(shown) or 'n/a'}); use more samples, or bound an interval "
                f"(e.g. accuracy.lower>=...)"]

    def _seed_policies(self, study: optuna.Study, n_trials: int) -> None:
        """A new study first tries each policy once (as far as `n_trials` goes), so no policy is left
        unexplored by a short study; no queued trial is left waiting after this call's trials."""
        if study.trials or len(self.space.policy) < 2:
            return
        for policy in self.space.policy[:n_trials]:
            study.enqueue_trial({"policy": policy}, skip_if_exists=True)

    def _one_trial(self, study: optuna.Study, baseline: dict[str, Any]) -> bool:
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid(), "run_id": None})
        try:
            config = self.space.suggest(trial)
            self.evaluator.engine.validate(config)
        except KVConfigError as exc:
            self._tell_invalid(study, trial, "; ".join(exc.problems))
            return True
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        run_id = self._start_run(trial, config)
        trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id})
        earlier = self._earlier(study, config, trial.number)
        try:
            if earlier is not None:  # the same config was measured: take its result, compute nothing
                metrics = dict(earlier.user_attrs[METRICS_ATTR])
                trial.set_user_attr(REUSED_ATTR, earlier.number)
                self._reused += 1
            else:
                result = self.evaluator.run(config)
                metrics = with_intervals(scalar_metrics(result.metrics))
                if result.path is not None:
                    trial.set_user_attr("run_dir", str(result.path))
            values = objective_values(self.objectives, metrics)
        except Exception as exc:  # a trial that crashes must not lose the study; the sampler never sees FAIL
            log.exception("trial %d failed", trial.number)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            self._finish_run(run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"})
            return False
        trial.set_user_attr(METRICS_ATTR, metrics)
        for c in self.constraints:
            trial.set_constraint(c.text, c.violation(metrics, baseline))
        study.tell(trial, values)
        self._finish_run(run_id, "completed", metrics)
        return True

    def _requeue_stale_trials(self, study: optuna.Study) -> int:
        """Fail the trials a killed `kvpilot tune` left RUNNING, mark their runs failed, and queue their
        params again, so a resumed study evaluates them (a policy queued by `_seed_policies` included).

        A trial is stale when the process that ran it (user attr `worker`) is gone from this host, or, for
        another host's worker or a trial killed before it recorded one, when it started more than
        STALE_AFTER_S ago. Returns how many were requeued."""
        now = time.time()
        requeued = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get(WORKER_ATTR) or {}
            age = now - t.datetime_start.timestamp() if t.datetime_start is not None else float("inf")
            if worker.get("host") == socket.gethostname() and isinstance(worker.get("pid"), int):
                try:
                    os.kill(worker["pid"], 0)
                    continue  # that process is alive: another worker of this study
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue
            elif age < STALE_AFTER_S:
                continue
            study._storage.set_trial_user_attr(t._trial_id, "error", "stale: its tune process died")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            if worker.get("run_id") is not None and self.store is not None:
                self.store.finish_run(worker["run_id"], status="failed", metrics={"error": "tune process died"})
            study.enqueue_trial({**t.params, **t.system_attrs.get("fixed_params", {})})
            requeued += 1
            log.warning("trial %d was left RUNNING by a process that died: failed and queued again", t.number)
        return requeued
    def _earlier(self, study: optuna.Study, config: KVConfig, number: int) -> FrozenTrial | None:
        """An earlier complete trial that measured exactly `config` (its result stands for this one)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number == number or METRICS_ATTR not in t.user_attrs:
                continue
            try:
                if trial_config(t) == config:
                    return t
            except KVConfigError:
                continue
        return None

    def _tell_invalid(self, study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
        """A config the model cannot run: complete, infeasible and worst on every objective, so the sampler
        learns to avoid it (a FAIL trial would be invisible to it and proposed again)."""
        trial.set_user_attr("error", reason)
        trial.set_constraint(INVALID_CONSTRAINT, 1.0)
        for c in self.constraints:
            trial.set_constraint(c.text, 1.0)
        study.tell(trial, [o.worst for o in self.objectives])

    def _start_run(self, trial: optuna.Trial, config: KVConfig) -> int | None:
        if self.store is None:
            return None
        return self.store.start_run("tuning_trial", deployment=self.deployment, study_name=self.study_name,
                                    trial_number=trial.number, name=f"{self.study_name} #{trial.number}",
                                    config=config, params={"trial_params": trial.params,
                                                           "workload": self.evaluator.label})

    def _finish_run(self, run_id: int | None, status: str, metrics: dict[str, Any]) -> None:
        if run_id is not None and self.store is not None:
            self.store.finish_run(run_id, status=status, metrics=metrics)

    # ----- the winner ------------------------------------------------------------------------------

    def best(self) -> TrialOutcome | None:
        """The feasible complete trial best on `pick`, ties broken by the other objectives in order."""
        order = [self.pick] + [o for o in self.objectives if o is not self.pick]
        index = {o.name: i for i, o in enumerate(self.objectives)}
        best: TrialOutcome | None = None
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            out = TrialOutcome.of(t)
            if not out.feasible:
                continue
            if best is None or _lexi_better(out, best, order, index):
                best = out
        return best

    def push(self, deployment: str, outcome: TrialOutcome | None = None) -> Any:
        """Push `outcome`, else the recommendation (validated on the held-out set when there is one, else
        the winner), to a deployment's config registry as its new active version."""
        if self.store is None:
            raise TuningError("pushing needs a store")
        if outcome is None and self.heldout is not None:
            report = self.report or self.validate()
            if report.recommended is None:
                raise TuningError(f"nothing to push: {report.reason}")
            outcome = next(TrialOutcome.of(t) for t in self.study.get_trials(deepcopy=False)
                           if t.number == report.recommended.number)
        outcome = outcome or self.best()
        if outcome is None:
            raise TuningError("no feasible trial to push: loosen the constraints or run more trials")
        return self.store.push(deployment, outcome.config, pushed_by="kvpilot tune",
                               source=f"tuner:{self.study_name}/{outcome.number}")

    def _describe(self, t: TrialOutcome) -> str:
        return f"best #{t.number} " + " ".join(f"{o.name}={v:.4g}" for o, v in zip(self.objectives, t.values, strict=True))


def _lexi_better(a: TrialOutcome, b: TrialOutcome, order: list[Objective], index: dict[str, int]) -> bool:
    for o in order:
        va, vb = a.values[index[o.name]], b.values[index[o.name]]
        if va != vb:
            return o.better(va, vb)
    return a.number < b.number
