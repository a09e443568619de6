"""Rows of `conversation_compression.py` paired with the full cache's on the same questions.

Shared by that script (each row as it is measured, or against `--full-from`) and `paired_summary.py` (sizes
pooled), so both read the full cache's rows, check the samples and state a difference the same way.
"""

from __future__ import annotations

from kvpilot.evaluation.intervals import paired_difference_interval


def samples_of(data: dict) -> tuple:
    """What makes two result files answer the same questions: seed, conversations and questions per one."""
    return data.get("seed"), data.get("samples"), data.get("questions_per_sample")


def full_cache_rows(data: dict) -> dict[int, dict]:
    """A result file's kvpilot full-cache rows that kept per-question scores, by context size."""
    return {r["tokens"]: r for r in data["rows"] if r["side"] == "kvpilot" and r["ratio"] == 0.0 and "scores" in r}


def paired_difference(scores: list[float], other_scores: list[float]) -> dict:
    """The difference in accuracy from another config (the full cache, say) on the same questions, with its
    paired 95 % interval."""
    diff, low, high = paired_difference_interval(scores, other_scores)
    return {"difference": diff, "difference_95": [low, high]}
