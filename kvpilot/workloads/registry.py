"""Named workloads and the one entry point the evaluator and the CLI use.

Adding a task is one module with a `Task` plus one line here. "niah" is RULER's niah_single_1 unless a
variant is asked for: `niah_multikey_1`, `niah:multikey_1`, or `variant="multikey_1"`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kvpilot.workloads import convqa, cwe, niah, passkey, vt
from kvpilot.workloads.base import Task, generate_task
from kvpilot.workloads.jsonl import LineError, load_jsonl
from kvpilot.workloads.sample import Sample
from kvpilot.workloads.sizing import TokenizerLike

WORKLOADS: dict[str, Task] = {
    "passkey": passkey.TASK,
    "niah": niah.task_for(niah.DEFAULT_VARIANT),
    "vt": vt.TASK,
    "cwe": cwe.TASK,
    "convqa": convqa.TASK,
}
log = logging.getLogger(__name__)
NIAH_TASKS: dict[str, Task] = {f"niah_{v}": niah.task_for(v) for v in niah.VARIANTS}


class JsonlLoadError(ValueError):
    """A user's JSONL file had bad lines; `samples` holds the good ones, `errors` the reasons."""

    def __init__(self, path: str, samples: list[Sample], errors: list[LineError]) -> None:
        self.samples, self.errors = samples, errors
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{path}: {len(errors)} bad line(s), {len(samples)} good:\n  {shown}{more}")


def resolve(task: str, variant: str | None = None) -> Task:
    """The Task for a name such as 'passkey', 'niah', 'niah_multivalue' or 'niah:multivalue'."""
    name = task.replace(":", "_", 1) if task.startswith("niah:") else task
    if name == "niah" and variant:
        name = f"niah_{variant}"
    if name in WORKLOADS:
        return WORKLOADS[name]
    if name in NIAH_TASKS:
        return NIAH_TASKS[name]
    known = sorted(WORKLOADS) + sorted(NIAH_TASKS)
    raise ValueError(f"unknown workload {task!r}; choose from {', '.join(known)} or jsonl:PATH")


def generate(
    task: str, n_samples: int, target_tokens: int, seed: int, tokenizer: TokenizerLike, **task_opts: Any
) -> list[Sample]:
    """Generate `n_samples` samples whose contexts are `target_tokens` long (within 5 %) in `tokenizer`.

    Deterministic for a seed. `max_new_tokens` overrides the task's answer budget; other options go to
    the task (e.g. `depths` for passkey, `n_sessions`/`n_facts`/`n_questions` for convqa).
    """
    variant = task_opts.pop("variant", None)
    return generate_task(resolve(task, variant), n_samples, target_tokens, seed, tokenizer, **task_opts)


def load_workload(
    spec: str,
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
    if spec.startswith("jsonl:"):
        path = spec[len("jsonl:") :]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such JSONL file: {path}")
        samples, errors = load_jsonl(path)
        if errors and (strict or not samples):
            raise JsonlLoadError(path, samples, errors)
        for e in errors:
            log.warning("%s: skipped %s", path, e)
        return samples[:n_samples] if n_samples > 0 else samples
    return generate(spec, n_samples, target_tokens, seed, tokenizer, **task_opts)
