"""Named workloads and the one entry point the evaluator and the CLI use.

Adding a task is one module with a `Task` plus one line here. "niah" is RULER's niah_single_1 unless a
variant is asked for: `niah_multikey_1`, `niah:multikey_1`, or `variant="multikey_1"`. Specs such as
`jsonl:PATH` are parsed by `kvpilot.workloads.spec.WorkloadSpec`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kvpilot.errors import KVPilotError
from kvpilot.workloads import convqa, cwe, niah, passkey, vt
from kvpilot.workloads.base import Task, generate_task
from kvpilot.workloads.jsonl import LineError, load_jsonl
from kvpilot.workloads.sample import Sample
from kvpilot.workloads.sizing import TokenizerLike
from kvpilot.workloads.spec import UnknownTaskError, WorkloadSpec

WORKLOADS: dict[str, Task] = {
    "passkey": passkey.TASK,
    "niah": niah.task_for(niah.DEFAULT_VARIANT),
    "vt": vt.TASK,
    "cwe": cwe.TASK,
    "convqa": convqa.TASK,
}
log = logging.getLogger(__name__)
NIAH_TASKS: dict[str, Task] = {f"niah_{v}": niah.task_for(v) for v in niah.VARIANTS}


class JsonlLoadError(KVPilotError, ValueError):
    """A user's JSONL file had bad lines; `samples` holds the good ones, `errors` the reasons."""

    def __init__(self, path: str, samples: list[Sample], errors: list[LineError]) -> None:
        self.path, self.samples, self.errors = path, samples, errors
        if not errors and not samples:
            super().__init__(f"{path}: no samples (the file is empty)")
            return
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{path}: {len(errors)} bad line(s), {len(samples)} good:\n  {shown}{more}")


def resolve(task: str | WorkloadSpec, variant: str | None = None) -> Task:
    """The Task for a name such as 'passkey', 'niah', 'niah_multivalue' or 'niah:multivalue'."""
    spec = task if isinstance(task, WorkloadSpec) else WorkloadSpec.parse(task)
    name = spec.task_name
    if name == "niah" and variant:
        name = f"niah_{variant}"
    if name in WORKLOADS:
        return WORKLOADS[name]
    if name in NIAH_TASKS:
        return NIAH_TASKS[name]
    known = sorted(WORKLOADS) + sorted(NIAH_TASKS)
    raise UnknownTaskError(f"unknown workload {spec.text!r}; choose from {', '.join(known)} or jsonl:PATH")


def check_workload(spec: str | WorkloadSpec) -> WorkloadSpec:
    """Fail fast (before a model loads) on a spec that names no task, or a JSONL file with no good line.

    Raises UnknownTaskError, WorkloadSpecError, FileNotFoundError or JsonlLoadError; returns the parsed spec.
    """
    spec = spec if isinstance(spec, WorkloadSpec) else WorkloadSpec.parse(spec)
    if spec.path is None:
        resolve(spec)
        return spec
    if not os.path.isfile(spec.path):
        raise FileNotFoundError(f"no such JSONL file: {spec.path}")
    samples, errors = load_jsonl(spec.path)
    if not samples:
        raise JsonlLoadError(spec.path, samples, errors)
    return spec


def generate(
    task: str | WorkloadSpec, n_samples: int, target_tokens: int, seed: int, tokenizer: TokenizerLike, **task_opts: Any
) -> list[Sample]:
    """Generate `n_samples` samples whose contexts are `target_tokens` long (within 5 %) in `tokenizer`.

    Deterministic for a seed. `max_new_tokens` overrides the task's answer budget; other options go to
    the task (e.g. `depths` for passkey, `n_sessions`/`n_facts`/`n_questions` for convqa).
    """
    variant = task_opts.pop("variant", None)
    return generate_task(resolve(task, variant), n_samples, target_tokens, seed, tokenizer, **task_opts)


def load_workload(
    spec: str | WorkloadSpec,
    n_samples: int,
    target_tokens: int,
    seed: int,
    tokenizer: TokenizerLike,
    strict: bool = False,
    **task_opts: Any,
) -> list[Sample]:
    """Samples for a CLI-style spec: a workload name, or `jsonl:PATH` for a user's file.

    For JSONL, `n_samples` caps how many are used (0 or less: all) and `target_tokens`, `seed` and
    `tokenizer` are ignored: user contexts are taken as they are. Bad lines raise JsonlLoadError when
    `strict` or when no line is good; otherwise each is logged as a warning and skipped (call `load_jsonl`
    to get them as data).
    """
    parsed = spec if isinstance(spec, WorkloadSpec) else WorkloadSpec.parse(spec)
    if parsed.path is not None:
        path = parsed.path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such JSONL file: {path}")
        samples, errors = load_jsonl(path)
        if errors and (strict or not samples):
            raise JsonlLoadError(path, samples, errors)
        for e in errors:
            log.warning("%s: skipped %s", path, e)
        return samples[:n_samples] if n_samples > 0 else samples
    return generate(parsed, n_samples, target_tokens, seed, tokenizer, **task_opts)
