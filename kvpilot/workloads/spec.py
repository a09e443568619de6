"""The CLI-style workload spec, parsed in one place: a generated task or a user's JSONL file.

    passkey            a generated task
    niah:multikey_1    a task and its variant (same as niah_multikey_1)
    jsonl:PATH         a user's file (the path may itself contain ':')

Everything that takes `--workload` (eval, tune, probe, the evaluator's run folders) reads it through
`WorkloadSpec.parse`, so the spelling rules and the run label cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvpilot.errors import KVPilotError

JSONL_PREFIX = "jsonl:"


class WorkloadSpecError(KVPilotError, ValueError):
    """A workload spec that cannot name anything (e.g. `jsonl:` without a path)."""


class UnknownTaskError(WorkloadSpecError):
    """The spec names no generated task (the message lists the known ones)."""


@dataclass(frozen=True)
class WorkloadSpec:
    """A parsed workload spec; `text` is what the user wrote (kept for messages and run records)."""

    text: str
    name: str  # the task name before any ':', or "jsonl"
    variant: str | None = None  # "multikey_1" in "niah:multikey_1"
    path: str | None = None  # the file of "jsonl:PATH"

    @classmethod
    def parse(cls, text: str) -> WorkloadSpec:
        if text.startswith(JSONL_PREFIX):
            path = text[len(JSONL_PREFIX) :]
            if not path:
                raise WorkloadSpecError("jsonl: needs a path, e.g. --workload jsonl:data.jsonl")
            return cls(text, "jsonl", path=path)
        name, sep, variant = text.partition(":")
        return cls(text, name, variant if sep else None)

    @property
    def is_jsonl(self) -> bool:
        return self.path is not None

    @property
    def task_name(self) -> str:
        """The generated task's registry name (`niah:multikey_1` -> `niah_multikey_1`)."""
        if self.is_jsonl:
            return self.text
        return f"{self.name}_{self.variant}" if self.variant else self.name

    def label(self, n_samples: int, target_tokens: int, seed: int) -> str:
        """Run-folder prefix: `passkey-1000t-10s-seed0`, or `jsonl-<file stem>-<n>s` for a user's file
        (whose contexts are taken as they are, so length and seed do not apply)."""
        if self.path is not None:
            return f"jsonl-{Path(self.path).stem}-{n_samples}s"
        return f"{self.task_name}-{target_tokens}t-{n_samples}s-seed{seed}"

    def __str__(self) -> str:
        return self.text
