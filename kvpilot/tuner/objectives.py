"""What a trial is scored on: objectives and constraints read from an evaluation run's metrics.

Objectives are metrics of `kvpilot.evaluation` runs (or of agent-session replays) with a direction. Constraints bound a metric, either
absolutely (`mean_kl<=0.3`) or against the full-cache baseline of the same samples
(`accuracy>=full-0.05`: at most five points below the full cache). A trial is feasible when every
constraint holds; Optuna's samplers learn from the violation amounts (`trial.set_constraint`, <= 0 is met).

Accuracy and top-1 agreement are proportions measured on few questions (tokens), so each carries a 95 %
Wilson interval (`metric_interval`, stored beside the value as `<metric>_ci_low`/`_ci_high`), and a
constraint can bound the interval's lower (or upper) end instead of the point value:
`accuracy.lower>=0.8` holds only when the measurement is sure, at 95 %, that accuracy is at least 0.8.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from kvpilot.errors import KVPilotError


class ObjectiveError(KVPilotError):
    """An unknown objective or a constraint that cannot be parsed; the message lists what is allowed."""


@dataclass(frozen=True)
class Objective:
    """A run metric and whether more of it is better; `needs_fidelity` when it only exists with references."""

    name: str
    direction: Literal["maximize", "minimize"]
    description: str
    needs_fidelity: bool = False

    @property
    def worst(self) -> float:
        """The value told to Optuna for a trial whose config cannot run (so samplers move away from it)."""
        return -1e30 if self.direction == "maximize" else 1e30

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("accuracy", "maximize", "task score of the answers (passkey match, string match)"),
        Objective("top1_agreement", "maximize", "share of answer tokens whose argmax matches the full cache", True),
        Objective("mean_kl", "minimize", "mean KL (nats) of the answer tokens against the full cache", True),
        Objective("kv_bytes", "minimize", "KV bytes held after the context is compressed"),
        Objective("peak_kv_bytes", "minimize", "peak KV bytes while compressing and answering"),
        Objective("compression_ratio", "maximize", "measured fraction of the context evicted"),
        Objective("ttft_s", "minimize", "time to first token (s)"),
        Objective("tpot_s", "minimize", "time per output token after the first (s)"),
        # agent-session replays (kvpilot replay): the session pool's time-to-live
        Objective("hit_ratio", "maximize", "replay: share of later turns that found their cache pinned"),
        Objective("mean_jct_s", "minimize", "replay: mean job (agent program) completion time (s)"),
        Objective("p95_jct_s", "minimize", "replay: 95th percentile job completion time (s)"),
        Objective("pinned_gib_s", "minimize", "replay: memory-time of pinned caches (GiB x s)"),
        Objective("compute_s", "minimize", "replay: the engine's total compute time (s)"),
    )
}

DEFAULT_OBJECTIVES = ("accuracy", "kv_bytes")

# Proportions and the metric that counts their trials: questions for accuracy, teacher-forced tokens for
# top-1 agreement. Partial scores (string_match_all) are summed and rounded to a count of successes.
PROPORTIONS: dict[str, str] = {"accuracy": "n_questions", "top1_agreement": "fidelity_tokens"}


def metric_interval(name: str, metrics: dict[str, Any], z: float = 1.96) -> tuple[float, float] | None:
    """The 95 % Wilson interval of a proportion metric, or None when it is not one or was not measured."""
    # imported here, not at the top: kvpilot.evaluation's package loads torch, and this module stays torch-free
    from kvpilot.evaluation.intervals import proportion_interval

    count_key = PROPORTIONS.get(name)
    value = metrics.get(name)
    n = metrics.get(count_key) if count_key else None
    if value is None or not n or (isinstance(value, float) and math.isnan(value)):
        return None
    return proportion_interval(min(max(float(value), 0.0), 1.0), int(n), z)


def with_intervals(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` plus `<metric>_ci_low` and `<metric>_ci_high` for each proportion it reports."""
    out = dict(metrics)
    for name in PROPORTIONS:
        ci = metric_interval(name, metrics)
        if ci is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = ci
    return out


def objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ObjectiveError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}") from None


_CONSTRAINT = re.compile(r"^\s*([a-z0-9_]+)(?:\.(lower|upper))?\s*(<=|>=)\s*(full\s*([+-])\s*)?([0-9.eE+-]+|full)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, the bound absolute or relative to the full-cache baseline (`full`, `full-0.05`).

    `side` "lower"/"upper" compares an end of the metric's 95 % interval instead of its point value
    (`accuracy.lower>=full-0.1`); a relative bound is still the full cache's point value.
    """

    metric: str
    op: str  # "<=" | ">="
    value: float
    relative: bool = False
    text: str = ""
    side: str | None = None  # None | "lower" | "upper"

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _CONSTRAINT.match(text)
        if m is None:
            raise ObjectiveError(
                f"constraint {text!r} not understood; write METRIC<=VALUE or METRIC>=VALUE, where VALUE is a number, "
                "`full` or `full-0.05` (relative to the full cache), e.g. accuracy>=full-0.05 or mean_kl<=0.3; "
                "METRIC.lower / METRIC.upper bound an end of its 95 % interval (accuracy.lower>=0.8)"
            )
        metric, side, op, rel, sign, number = (m.group(i) for i in range(1, 7))
        objective(metric)  # the metric must be one the runs report
        if side and metric not in PROPORTIONS:
            raise ObjectiveError(f"constraint {text!r}: only {', '.join(PROPORTIONS)} have an interval "
                                 f"(.{side}); bound {metric} itself")
        if number == "full":
            if rel:
                raise ObjectiveError(f"constraint {text!r}: write `full` or `full-0.05`, not both")
            return cls(metric, op, 0.0, True, text.strip(), side)
        try:
            value = float(number)
        except ValueError:
            raise ObjectiveError(f"constraint {text!r}: {number!r} is not a number") from None
        if rel:
            return cls(metric, op, value if sign == "+" else -value, True, text.strip(), side)
        return cls(metric, op, value, False, text.strip(), side)

    def bound(self, baseline: dict[str, Any] | None) -> float:
        if not self.relative:
            return self.value
        base = (baseline or {}).get(self.metric)
        if base is None:
            raise ObjectiveError(f"constraint {self.text!r} is relative to the full cache, which has no {self.metric}")
        return float(base) + self.value

    def violation(self, metrics: dict[str, Any], baseline: dict[str, Any] | None) -> float:
        """<= 0 when met; otherwise by how much the metric misses its bound (Optuna's convention)."""
        value = self.measured(metrics)
        if value is None:
            return 1.0
        bound = self.bound(baseline)
        return float(value) - bound if self.op == "<=" else bound - float(value)

    def measured(self, metrics: dict[str, Any]) -> float | None:
        """What the bound is compared with: the metric, or the asked end of its 95 % interval."""
        if self.side is not None:
            ci = metric_interval(self.metric, metrics)
            return None if ci is None else ci[0 if self.side == "lower" else 1]
        value = metrics.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)


def objective_values(objectives: list[Objective], metrics: dict[str, Any]) -> list[float]:
    """The values Optuna is told, in objective order; a missing metric is an error (fidelity was off?)."""
    out = []
    for o in objectives:
        v = metrics.get(o.name)
        if v is None:
            hint = " (it needs the full-cache reference: drop --no-fidelity)" if o.needs_fidelity else ""
            raise ObjectiveError(f"the run reported no {o.name}{hint}")
        out.append(float(v))
    return out
