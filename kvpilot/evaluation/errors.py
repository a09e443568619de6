"""Errors the evaluator raises for bad user input: the CLI prints each as one line."""

from __future__ import annotations

from kvpilot.errors import KVPilotError


class EvaluationError(KVPilotError):
    """Something about an evaluation request is wrong; the message says what to change."""


class UnknownWorkloadError(EvaluationError):
    """The workload name is not one kvpilot can generate (and is not `jsonl:PATH`)."""


class WorkloadLoadError(EvaluationError):
    """The workload exists but its samples could not be built or read (bad JSONL, length too small)."""
