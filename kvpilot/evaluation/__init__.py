"""Evaluation: run a workload under a KVConfig and score accuracy, fidelity, memory and speed.

    from kvpilot.engine import Engine
    from kvpilot.evaluation import Evaluator
    ev = Evaluator.for_workload(Engine.load(), "passkey", n_samples=10, target_tokens=1000, seed=0)
    full = ev.run(KVConfig())                                    # stored under runs/, loaded next time
    snap = ev.run(KVConfig(policy="snapkv", compression_ratio=0.75))   # reuses the full-cache reference
    snap.metrics["accuracy"], snap.metrics["top1_agreement"], snap.metrics["mean_kl"]
"""

from kvpilot.config import config_hash, config_label
from kvpilot.evaluation.errors import EvaluationError, UnknownWorkloadError, WorkloadLoadError
from kvpilot.evaluation.evaluator import (
    DEFAULT_RESULTS_ROOT,
    REFERENCE_CONFIG,
    Evaluator,
    evaluate,
    load_samples,
    workload_label,
)
from kvpilot.evaluation.fidelity import Fidelity, Reference, compare, log_probs
from kvpilot.evaluation.results import (
    RunResult,
    aggregate,
    format_summary,
    load_run,
    samples_digest,
)

__all__ = [
    "DEFAULT_RESULTS_ROOT",
    "REFERENCE_CONFIG",
    "EvaluationError",
    "Evaluator",
    "Fidelity",
    "Reference",
    "RunResult",
    "UnknownWorkloadError",
    "WorkloadLoadError",
    "aggregate",
    "compare",
    "config_hash",
    "config_label",
    "evaluate",
    "format_summary",
    "load_run",
    "load_samples",
    "log_probs",
    "samples_digest",
    "workload_label",
]
