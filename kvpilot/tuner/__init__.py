"""The tuner: Optuna searches KVConfigs on a real workload and pushes the winner to a deployment.

    from kvpilot.tuner import Tuner
    tuner = Tuner(evaluator, study_name="passkey", store=store, constraints=["accuracy>=full"])
    result = tuner.optimize(30)
    tuner.push("chat")
"""

from kvpilot.tuner.objectives import (
    DEFAULT_OBJECTIVES,
    OBJECTIVES,
    Constraint,
    Objective,
    ObjectiveError,
)
from kvpilot.tuner.space import SearchSpace, SearchSpaceError
from kvpilot.tuner.study import TrialOutcome, Tuner, TuneResult, TuningError, trial_config
from kvpilot.tuner.target import TargetRun, TunerStore, TuningTarget

__all__ = [
    "DEFAULT_OBJECTIVES",
    "OBJECTIVES",
    "Constraint",
    "Objective",
    "ObjectiveError",
    "SearchSpace",
    "SearchSpaceError",
    "TargetRun",
    "TrialOutcome",
    "TuneResult",
    "Tuner",
    "TunerStore",
    "TuningError",
    "TuningTarget",
    "trial_config",
]
