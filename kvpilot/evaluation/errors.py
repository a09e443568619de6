"""Errors the evaluator raises for bad user input: the CLI prints each as one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kvpilot.errors import KVPilotError
from kvpilot.workloads import JsonlLoadError, TargetTooSmallError
from kvpilot.workloads.spec import UnknownTaskError, WorkloadSpecError


class EvaluationError(KVPilotError):
    """Something about an evaluation request is wrong; the message says what to change."""


class UnknownWorkloadError(EvaluationError):
    """The workload name is not one kvpilot can generate (and is not `jsonl:PATH`)."""


class WorkloadLoadError(EvaluationError):
    """The workload exists but its samples could not be built or read (bad JSONL, length too small)."""


@contextmanager
def workload_errors(workload: str, target_tokens: int | None = None) -> Iterator[None]:
    """Turn what reading or generating a workload raises into the one-line errors above."""
    try:
        yield
    except UnknownTaskError as exc:
        raise UnknownWorkloadError(str(exc)) from None
    except (FileNotFoundError, WorkloadSpecError) as exc:
        raise WorkloadLoadError(str(exc)) from None
    except JsonlLoadError as exc:
        first = exc.errors[0] if exc.errors else "the file is empty"
        usable = f"{len(exc.samples)} good" if exc.samples else "no usable sample"
        raise WorkloadLoadError(f"{exc.path}: {usable} ({len(exc.errors)} bad line(s)); first: {first}") from None
    except TargetTooSmallError as exc:
        raise WorkloadLoadError(f"{workload} at {target_tokens} tokens: {exc}") from None
    except ValueError as exc:
        raise WorkloadLoadError(f"{workload}: {exc}") from None
