"""`kvpilot tune --target vllm`: each trial is a vLLM server with the trial's arguments under real load.

A trial draws a VLLMConfig from `VLLMSpace`, starts a server with it (from `make vllm-env`), drives the
same generated load through the `openai` client (`kvpilot.vllm.load`), and measures: client-side TTFT and
TPOT quantiles and throughput, and from the server's /metrics (scraped by the collector while the load
runs) the prefix-cache hit ratio, preemptions and peak KV bytes. Every trial is a run (kind
"tuning_trial") with its requests and scrapes in the store; the study is an Optuna study on the store's
database like every other kvpilot study (its trials carry the config under the same user attribute), so
the dashboard's Tuning page lists it. The winner can be pushed to the deployment `kvpilot vllm serve`
supervises.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna

from kvpilot.errors import KVPilotError
from kvpilot.tuner.storage import open_storage
from kvpilot.vllm.collector import Collector
from kvpilot.vllm.load import LoadResult, LoadSpec, run_load
from kvpilot.vllm.server import ServerStartError, VLLMServer, free_port
from kvpilot.vllm_config import VLLMConfig

log = logging.getLogger(__name__)

CONFIG_ATTR = "config"  # the same user attribute kvpilot's own studies keep a trial's config under
METRICS_ATTR = "metrics"

# objective -> direction
OBJECTIVES: dict[str, Literal["minimize", "maximize"]] = {
    "throughput_tok_s": "maximize",  # generated tokens per second of wall time
    "p50_ttft_s": "minimize",
    "p99_ttft_s": "minimize",
    "p50_tpot_s": "minimize",
    "p99_tpot_s": "minimize",
    "prefix_hit_ratio": "maximize",
    "preemptions": "minimize",
    "kv_peak_bytes": "minimize",
    "error_rate": "minimize",
}
DEFAULT_OBJECTIVES = ("throughput_tok_s", "p99_ttft_s")
_CONSTRAINT = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


class VLLMTuningError(KVPilotError):
    """A vLLM study's objectives, constraints or space were not understood."""


@dataclass(frozen=True)
class Bound:
    """`metric <= value` or `metric >= value` (e.g. p99_ttft_s<=2)."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Bound:
        m = _CONSTRAINT.match(text)
        if m is None or m.group(1) not in OBJECTIVES:
            raise VLLMTuningError(f"constraint {text!r} not understood; write METRIC<=NUMBER or METRIC>=NUMBER with "
                                  f"METRIC one of {', '.join(OBJECTIVES)}, e.g. p99_ttft_s<=2")
        try:
            value = float(m.group(3))
        except ValueError:
            raise VLLMTuningError(f"constraint {text!r}: {m.group(3)!r} is not a number") from None
        return cls(m.group(1), m.group(2), value)

    def violation(self, metrics: dict[str, Any]) -> float:
        v = metrics.get(self.metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return 1.0
        return float(v) - self.value if self.op == "<=" else self.value - float(v)


@dataclass(frozen=True)
class VLLMSpace:
    """The values each searched field may take; everything else stays at `base`."""

    base: VLLMConfig = field(default_factory=VLLMConfig)
    choices: dict[str, tuple[Any, ...]] = field(default_factory=lambda: {
        "enable_prefix_caching": (True, False),
        "max_num_seqs": (2, 8, 32),
        "max_num_batched_tokens": (512, 2048),
        "block_size": (32, 128),
    })

    def __post_init__(self) -> None:
        for name, values in self.choices.items():
            if name not in VLLMConfig.model_fields or name == "engine":
                raise VLLMTuningError(f"search space field {name!r} is not a VLLMConfig field")
            for v in values:
                self.base.replace(**{name: v})  # each value must validate on its own

    def suggest(self, trial: optuna.Trial) -> VLLMConfig:
        return self.base.replace(**{name: trial.suggest_categorical(name, list(values))
                                    for name, values in self.choices.items()})

    def grid(self) -> list[VLLMConfig]:
        """Every config of the space (what an exhaustive sweep evaluates)."""
        names = list(self.choices)
        return [self.base.replace(**dict(zip(names, combo, strict=True)))
                for combo in itertools.product(*(self.choices[n] for n in names))]


def measure(load: LoadResult, scrapes: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's metrics from the client's requests and the server's scrapes during the load."""
    ok = load.ok
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [t for t in (r.tpot_s for r in ok) if t is not None]
    queries = sum(s.get("prefix_queries") or 0 for s in scrapes)
    hits = sum(s.get("prefix_hits") or 0 for s in scrapes)
    kv = [s["kv_bytes"] for s in scrapes if s.get("kv_bytes") is not None]

    def q(values: list[float], p: float) -> float | None:
        return float(np.quantile(values, p)) if values else None

    return {
        "requests": len(load.results),
        "error_rate": (len(load.results) - len(ok)) / len(load.results) if load.results else 1.0,
        "output_tokens": sum(r.output_tokens for r in ok),
        "wall_s": load.wall_s,
        "throughput_tok_s": sum(r.output_tokens for r in ok) / load.wall_s if load.wall_s > 0 else 0.0,
        "p50_ttft_s": q(ttft, 0.5), "p99_ttft_s": q(ttft, 0.99),
        "p50_tpot_s": q(tpot, 0.5), "p99_tpot_s": q(tpot, 0.99),
        "prefix_queries": queries, "prefix_hits": hits,
        "prefix_hit_ratio": hits / queries if queries else 0.0,
        "preemptions": sum(s.get("preemptions") or 0 for s in scrapes),
        "kv_peak_bytes": max(kv) if kv else None,
    }


class VLLMTarget:
    """Evaluates VLLMConfigs as servers under `load`, each recorded as a run with its requests and scrapes."""

    def __init__(self, model_dir: Path, load: LoadSpec, *, store: Any, log_dir: Path | None = None,
                 start_timeout_s: float = 600.0, scrape_s: float = 1.0, python: Path | None = None):
        self.model_dir = Path(model_dir)
        self.load = load
        self.store = store
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="kvpilot-vllm-"))
        self.start_timeout_s = start_timeout_s
        self.scrape_s = scrape_s
        self.python = python

    def evaluate(self, config: VLLMConfig, *, run_id: int | None = None, name: str = "trial") -> dict[str, Any]:
        """Start a server on `config`, drive the load, stop it; the metrics (ServerStartError if it never
        became healthy). Without `run_id` the evaluation is recorded as an `eval` run of its own."""
        own_run = run_id is None
        if own_run:
            run_id = self.store.start_run("eval", name=f"vllm {name}", config=config.to_dict())
        port = free_port()
        server = VLLMServer(config, self.model_dir, port, self.log_dir / f"{name}-{port}.log", python=self.python)
        collector = Collector(server.url, self.store, None, None, interval_s=self.scrape_s,
                              model_dir=self.model_dir, run_id=run_id)
        try:
            t0 = time.perf_counter()
            server.start(self.start_timeout_s)
            start_s = time.perf_counter() - t0
            collector.scrape_once()  # the baseline the first interval counts from
            collector.start()
            load = run_load(server.url, self.load, model=server.served_name)
            collector.stop()
            collector.scrape_once()  # everything up to the last answer
            collector.flush()
        except BaseException:
            if own_run:
                self.store.finish_run(run_id, status="failed")
            raise
        finally:
            collector.stop()
            server.stop()
        metrics = measure(load, collector.rows[1:])
        metrics["server_start_s"] = start_s
        self.store.add_requests([r.row() for r in load.results], run_id=run_id)
        if own_run:
            self.store.finish_run(run_id, metrics=metrics)
        return metrics


@dataclass
class StudyResult:
    study_name: str
    trials: list[optuna.trial.FrozenTrial]
    best: optuna.trial.FrozenTrial | None
    objectives: list[str]
    pushed_version: int | None = None

    def config(self, trial: optuna.trial.FrozenTrial) -> VLLMConfig:
        return VLLMConfig.parse(trial.user_attrs[CONFIG_ATTR])


class VLLMTuner:
    """An Optuna study over VLLMConfigs, stored on the store's database."""

    def __init__(self, target: VLLMTarget, *, study_name: str, store: Any, objectives: list[str] | None = None,
                 constraints: list[Bound] | None = None, space: VLLMSpace | None = None, pick: str | None = None,
                 seed: int = 0):
        self.target = target
        self.store = store
        self.study_name = study_name
        self.objectives = list(objectives or DEFAULT_OBJECTIVES)
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise VLLMTuningError(f"objective {name!r} unknown; vLLM objectives: {', '.join(OBJECTIVES)}")
        self.pick = pick or self.objectives[0]
        if self.pick not in self.objectives:
            raise VLLMTuningError(f"--pick {self.pick!r} is not one of the objectives {self.objectives}")
        self.constraints = constraints or []
        self.space = space or VLLMSpace()
        sampler = optuna.samplers.TPESampler(seed=seed)
        self.study = optuna.create_study(
            study_name=study_name, storage=open_storage(store.url, create=True), load_if_exists=True,
            directions=[OBJECTIVES[o] for o in self.objectives], sampler=sampler,
        )

    def optimize(self, n_trials: int) -> StudyResult:
        for _ in range(n_trials):
            self._one_trial()
        return self.result()

    def _one_trial(self) -> None:
        trial = self.study.ask()
        config = self.space.suggest(trial)
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        seen = self._seen(config)
        if seen is not None:  # the sampler proposed a config already measured: reuse, do not restart a server
            metrics = dict(seen.user_attrs[METRICS_ATTR])
            trial.set_user_attr("reused_from", seen.number)
            run_id = None
        else:
            run_id = self.store.start_run("tuning_trial", name=f"vllm trial {trial.number}", study_name=self.study_name,
                                          trial_number=trial.number, config=config.to_dict(),
                                          params=dict(trial.params))
            try:
                metrics = self.target.evaluate(config, run_id=run_id, name=f"{self.study_name}-t{trial.number}")
            except ServerStartError as exc:
                trial.set_user_attr("error", str(exc)[:2000])
                for c in self.constraints:
                    trial.set_constraint(f"{c.metric}{c.op}{c.value:g}", 1.0)
                self.store.finish_run(run_id, status="failed", metrics={"error": str(exc)[:500]})
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return
        trial.set_user_attr(METRICS_ATTR, metrics)
        violations = [c.violation(metrics) for c in self.constraints]
        trial.set_user_attr("constraints", violations)
        for c, v in zip(self.constraints, violations, strict=True):
            trial.set_constraint(f"{c.metric}{c.op}{c.value:g}", v)  # TPE learns from the amounts
        if run_id is not None:
            self.store.finish_run(run_id, metrics=metrics)
        values = [metrics.get(o) for o in self.objectives]
        if any(v is None for v in values):
            trial.set_user_attr("error", "a metric is missing: " + ", ".join(
                o for o, v in zip(self.objectives, values, strict=True) if v is None))
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        self.study.tell(trial, [float(v) for v in values if v is not None])

    def _seen(self, config: VLLMConfig) -> optuna.trial.FrozenTrial | None:
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.user_attrs.get(CONFIG_ATTR) == config.to_dict():
                return t
        return None

    def result(self) -> StudyResult:
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        feasible = [t for t in done if all(v <= 0 for v in t.user_attrs.get("constraints", []))]
        i = self.objectives.index(self.pick)
        sign = 1 if OBJECTIVES[self.pick] == "minimize" else -1
        best = min(feasible, key=lambda t: (sign * t.values[i], t.number)) if feasible else None
        return StudyResult(self.study_name, list(done), best, self.objectives)

    def push(self, deployment: str, result: StudyResult) -> int | None:
        """Push the winner's config to `deployment` (the one `kvpilot vllm serve` supervises)."""
        if result.best is None:
            return None
        v = self.store.push(deployment, result.config(result.best), pushed_by="tuner",
                            source=f"tuner:{self.study_name}/trial-{result.best.number}")
        result.pushed_version = v.version
        return v.version


__all__ = ["DEFAULT_OBJECTIVES", "OBJECTIVES", "Bound", "StudyResult", "VLLMSpace", "VLLMTarget", "VLLMTuner",
           "measure"]
