"""Held-out validation: re-measure the search set's Pareto front on samples the search never saw.

A config chosen on the very samples it was searched on is chosen partly for their noise (the README's
convqa run: 58 % on the tuning set, 25 % held out). So before anything is recommended or pushed, every
feasible trial on the search set's Pareto front (best on the pick objective first, at most `limit`) is
run again on the held-out set, the constraints are checked there against the full cache's held-out
figures, and the recommendation is the validated config best on the held-out figures, or nothing, with
the reason. The report is stored on the study (user attribute `heldout`) for the dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvpilot.config import KVConfig, config_hash
from kvpilot.tuner.objectives import Constraint, Objective, with_intervals

if TYPE_CHECKING:
    from kvpilot.tuner.study import TrialOutcome
    from kvpilot.tuner.target import TuningTarget

HELDOUT_ATTR = "heldout"  # study user attribute: the last held-out report (read by the dashboard)
DEFAULT_LIMIT = 8  # front members re-measured at most: each costs one evaluation of the held-out set


@dataclass(frozen=True)
class Validation:
    """One front member measured on both sets; `violations` are the constraints' on the held-out set."""

    number: int
    config: KVConfig
    search: dict[str, Any]
    heldout: dict[str, Any]
    violations: dict[str, float]

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.violations.values())

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.number, "config": self.config.to_dict(), "search": self.search,
                "heldout": self.heldout, "violations": self.violations, "feasible": self.feasible}


@dataclass
class HeldoutReport:
    """The held-out set's full-cache baseline, the validated front and the recommendation (or why none)."""

    label: str
    digest: str
    baseline: dict[str, Any]
    validations: list[Validation]
    recommended: Validation | None
    reason: str
    front_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "digest": self.digest, "baseline": self.baseline,
                "validations": [v.to_dict() for v in self.validations], "front_size": self.front_size,
                "recommended": None if self.recommended is None else self.recommended.number,
                "reason": self.reason}


def dominates(a: Sequence[float], b: Sequence[float], objectives: Sequence[Objective]) -> bool:
    """True when `a` is at least as good as `b` on every objective and better on one."""
    at_least = all(not o.better(vb, va) for o, va, vb in zip(objectives, a, b, strict=True))
    return at_least and any(o.better(va, vb) for o, va, vb in zip(objectives, a, b, strict=True))


def pareto_front(trials: Sequence[TrialOutcome], objectives: Sequence[Objective]) -> list[TrialOutcome]:
    """The feasible trials no other feasible trial dominates (a trial repeating a config counts once)."""
    feasible = [t for t in trials if t.feasible]
    front: list[TrialOutcome] = []
    seen: set[str] = set()
    for t in feasible:
        if any(dominates(o.values, t.values, objectives) for o in feasible):
            continue
        key = config_hash(t.config)
        if key not in seen:
            seen.add(key)
            front.append(t)
    return front


def lexi_key(values: Sequence[float], order: Sequence[Objective], names: Sequence[str]) -> tuple[float, ...]:
    """A sort key: smaller is better, objectives compared in `order`."""
    index = {n: i for i, n in enumerate(names)}
    return tuple(-values[index[o.name]] if o.direction == "maximize" else values[index[o.name]] for o in order)


def validate(
    front: Sequence[TrialOutcome],
    target: TuningTarget,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint],
    pick: Objective,
    *,
    limit: int = DEFAULT_LIMIT,
    baseline: dict[str, Any] | None = None,
) -> HeldoutReport:
    """Run the front (best on `pick` first, at most `limit`) and the full cache on `target`; recommend the
    config that meets every constraint there and is best on the held-out figures."""
    from kvpilot.tuner.study import scalar_metrics  # study imports this module

    names = [o.name for o in objectives]
    order = [pick, *[o for o in objectives if o is not pick]]
    ranked = sorted(front, key=lambda t: (lexi_key(t.values, order, names), t.number))[:limit]
    if baseline is None:
        baseline = with_intervals(scalar_metrics(target.run(KVConfig()).metrics))
    validations = []
    for t in ranked:
        held = with_intervals(scalar_metrics(target.run(t.config).metrics))
        violations = {c.text: c.violation(held, baseline) for c in constraints}
        validations.append(Validation(t.number, t.config, dict(t.metrics), held, violations))
    feasible = [v for v in validations if v.feasible]
    recommended = None
    if feasible:
        recommended = min(feasible, key=lambda v: (lexi_key([float(v.heldout[n]) for n in names], order, names),
                                                   v.number))
        reason = (f"trial {recommended.number} meets the constraints on the held-out set and is the best there "
                  f"on {pick.name} ({len(feasible)} of {len(validations)} front configs hold up)")
    elif not front:
        reason = "no trial meets the constraints on the search set, so there is nothing to validate"
    else:
        misses = "; ".join(f"trial {v.number} misses " + ", ".join(
            f"{text} by {amount:.3g}" for text, amount in v.violations.items() if amount > 0) for v in validations)
        reason = (f"none of the {len(validations)} Pareto-front configs validated meets the constraints on the "
                  f"held-out set: {misses}")
    return HeldoutReport(target.label, target.digest, baseline, validations, recommended, reason, len(front))
