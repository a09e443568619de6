"""Objectives and constraints: parsing, violation amounts (Optuna's <= 0 convention), clear errors."""

from __future__ import annotations

import pytest

from kvpilot.tuner import Constraint, ObjectiveError
from kvpilot.tuner.objectives import OBJECTIVES, objective, objective_values

BASE = {"accuracy": 0.9, "mean_kl": 0.0, "kv_bytes": 1000.0}


@pytest.mark.parametrize(
    ("text", "metrics", "violation"),
    [
        ("accuracy>=full", {"accuracy": 0.9}, 0.0),
        ("accuracy>=full", {"accuracy": 0.7}, pytest.approx(0.2)),
        ("accuracy>=full-0.1", {"accuracy": 0.85}, pytest.approx(-0.05)),
        ("accuracy >= 0.5", {"accuracy": 0.4}, pytest.approx(0.1)),
        ("mean_kl<=0.3", {"mean_kl": 0.1}, pytest.approx(-0.2)),
        ("kv_bytes<=full-200", {"kv_bytes": 900.0}, pytest.approx(100.0)),
        ("mean_kl<=0.3", {"mean_kl": None}, 1.0),
    ],
)
def test_constraint_violation(text, metrics, violation):
    assert Constraint.parse(text).violation(metrics, BASE) == violation


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accuracy > 0.5", "not understood"),
        ("acc>=0.5", "unknown objective 'acc'"),
        ("accuracy>=0.5.1", "is not a number"),
    ],
)
def test_bad_constraints(text, message):
    with pytest.raises(ObjectiveError, match=message):
        Constraint.parse(text)


def test_objectives_read_run_metrics_and_name_what_is_missing():
    objs = [objective("accuracy"), objective("kv_bytes")]
    assert objective_values(objs, {"accuracy": 1.0, "kv_bytes": 5}) == [1.0, 5.0]
    with pytest.raises(ObjectiveError, match="drop --no-fidelity"):
        objective_values([objective("mean_kl")], {"mean_kl": None})
    with pytest.raises(ObjectiveError, match="choose from"):
        objective("speed")
    assert all(o.direction in ("maximize", "minimize") for o in OBJECTIVES.values())
    assert objective("accuracy").better(1.0, 0.5) and objective("kv_bytes").better(1.0, 2.0)


def test_constraints_on_an_interval_end():
    """`accuracy.lower>=X` holds only when the 95 % Wilson interval's lower end clears X."""
    c = Constraint.parse("accuracy.lower>=0.5")
    assert c.side == "lower" and c.metric == "accuracy"
    twelve = {"accuracy": 0.75, "n_questions": 12}  # 9/12: interval about [0.47, 0.91]
    many = {"accuracy": 0.75, "n_questions": 200}  # 150/200: about [0.69, 0.80]
    assert Constraint.parse("accuracy>=0.5").violation(twelve, BASE) < 0  # the point value passes ...
    assert c.violation(twelve, BASE) == pytest.approx(0.5 - 0.4677, abs=1e-3)  # ... its lower end does not
    assert c.violation(many, BASE) < 0
    upper = Constraint.parse("top1_agreement.upper<=0.9")
    assert upper.violation({"top1_agreement": 0.85, "fidelity_tokens": 40}, BASE) > 0  # upper end 0.93
    rel = Constraint.parse("accuracy.lower>=full-0.2")  # relative to the full cache's point value (0.9)
    assert rel.violation(many, BASE) == pytest.approx(0.7 - 0.6857, abs=1e-3)
    assert c.violation({"accuracy": 0.75}, BASE) == 1.0  # no count, no interval: unmet


def test_interval_constraints_only_on_proportions():
    with pytest.raises(ObjectiveError, match="only accuracy, top1_agreement have an interval"):
        Constraint.parse("kv_bytes.lower<=1000")


def test_with_intervals_adds_both_ends():
    from kvpilot.tuner.objectives import with_intervals

    out = with_intervals({"accuracy": 0.5, "n_questions": 10, "top1_agreement": None, "kv_bytes": 3.0})
    assert out["accuracy_ci_low"] == pytest.approx(0.2366, abs=5e-4) and out["accuracy_ci_high"] > 0.76
    assert "top1_agreement_ci_low" not in out and out["kv_bytes"] == 3.0
