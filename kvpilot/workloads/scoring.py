"""Per-prediction scores, as RULER computes them, for the evaluator to average.

All scores are in [0, 1] for one prediction (RULER reports the mean over samples times 100). Control
characters in predictions are replaced by spaces first, as kvpress does, so a stray `\\x00` or newline
cannot hide an answer or glue two words into a false match.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

Metric = Callable[[str, list[str]], float]


def clean(pred: str) -> str:
    """Replace control characters (Unicode category Cc) with spaces."""
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in pred)


def string_match_all(pred: str, refs: list[str]) -> float:
    """Fraction of references found in the prediction (case-insensitive substring): niah, vt, cwe."""
    if not refs:
        raise ValueError("no reference answers to score against")
    low = clean(pred).lower()
    return sum(r.lower() in low for r in refs) / len(refs)


def string_match_part(pred: str, refs: list[str]) -> float:
    """1 if any reference is found in the prediction (case-insensitive substring), else 0: QA tasks."""
    if not refs:
        raise ValueError("no reference answers to score against")
    low = clean(pred).lower()
    return float(any(r.lower() in low for r in refs))


_INTEGER = re.compile(r"\d+")


def first_integer(pred: str) -> str | None:
    """The first run of digits in the prediction, or None."""
    m = _INTEGER.search(clean(pred))
    return m.group(0) if m else None


def passkey_match(pred: str, refs: list[str]) -> float:
    """1 if the first integer in the prediction equals the key exactly (Landmark Attention's metric)."""
    got = first_integer(pred)
    return float(got is not None and any(got == r.strip() for r in refs))


def metric_for(task: str) -> Metric:
    """The scoring function for a task name (`niah_multikey_1` uses the niah rule; unknown names: QA rule)."""
    if task == "passkey":
        return passkey_match
    if task.startswith(("niah", "vt", "cwe")):
        return string_match_all
    return string_match_part
