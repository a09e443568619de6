"""The one sample type every workload produces and the evaluator consumes.

A sample is a context (what the cache holds and what eviction compresses) plus questions asked after it. The
context never contains the question, so the evaluator can compress the context once, question-agnostic, and
then serve every question of the sample on the same compressed cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class QA:
    """One question about a context.

    `answers` are the reference strings a prediction is scored against. `answer_prefix` starts the model's
    answer (e.g. "Ana's dog is called"); small models answer far better when it is given. `spans` are the
    character offsets `(start, end)` in the context where each answer was placed by the generator, one per
    answer, so `context[start:end] == answers[i]`; None for user data whose placement is unknown.
    """

    question: str
    answers: list[str]
    answer_prefix: str = ""
    spans: list[tuple[int, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question, "answers": list(self.answers)}
        if self.answer_prefix:
            out["answer_prefix"] = self.answer_prefix
        if self.spans is not None:
            out["spans"] = [list(s) for s in self.spans]
        return out


@dataclass
class Sample:
    """A context, the questions asked after it, and generator metadata.

    `meta` is JSON-serialisable (lists, not tuples) so that samples round-trip through JSONL unchanged.
    Generated samples record at least `target_tokens` and `context_tokens` there.
    """

    id: str
    task: str
    context: str
    qa: list[QA]
    max_new_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "context": self.context,
            "qa": [q.to_dict() for q in self.qa],
            "max_new_tokens": self.max_new_tokens,
            "meta": self.meta,
        }
