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
