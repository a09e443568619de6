"""What the tuner evaluates and where it records: the two seams of `kvpilot.tuner.study.Tuner`.

A `TuningTarget` is anything that measures a KVConfig on a fixed workload: `kvpilot.evaluation.Evaluator`
(question answering) and `kvpilot.tuner.replay_target.ReplayTarget` (agent sessions) are the two today.
A `TunerStore` is the part of `kvpilot.storage.Store` the tuner uses: its database (Optuna's study lives
there), run records for trials, and the config registry the winner is pushed to.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kvpilot.config import KVConfig
from kvpilot.storage.protocols import RunRecorder

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine as SqlEngine


class TargetRun(Protocol):
    """One measured config: the metrics objectives and constraints read, and its folder if it has one."""

    @property
    def metrics(self) -> dict[str, Any]: ...

    @property
    def path(self) -> Path | None: ...


class ConfigValidator(Protocol):
    """Rejects (KVConfigError) a config the model cannot run, before a trial spends time on it."""

    def validate(self, config: KVConfig) -> Any: ...


@runtime_checkable
class TuningTarget(Protocol):
    """What a trial runs: `run(config)` on the same samples every time, identified by `digest`."""

    label: str  # names the workload in study names and run records
    digest: str  # changes when the samples change (the stored baseline is then recomputed)
    computed_runs: int  # runs computed rather than reused, so callers can report caching
    fidelity: bool  # False: no full-cache reference, so fidelity objectives cannot be used
    engine: ConfigValidator

    def run(self, config: KVConfig) -> TargetRun: ...


class TunerStore(RunRecorder, Protocol):
    """The store a study lives in: its SQLAlchemy engine (Optuna's storage), runs, and config pushes."""

    @property
    def engine(self) -> SqlEngine: ...

    def push(self, deployment: str, config: KVConfig, *, pushed_by: str | None = ...,
             source: str | None = ...) -> Any: ...
