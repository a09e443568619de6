"""Users' own data as JSONL: one sample per line, validated line by line.

A bad line never stops a run: it is reported with its line number and the reason, and the good lines
still load. The same format carries generated samples (with `task`, `meta` and answer `spans`), so
`write_jsonl` then `load_jsonl` round-trips them exactly. The format is documented in docs/workloads.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from kvpilot.inputs import InputError, loads, read_text
from kvpilot.workloads.sample import QA, Sample

DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_TASK = "jsonl"


@dataclass(frozen=True)
class LineError:
    """A rejected line: 1-based line number and a reason a person can act on."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class _Bad(ValueError):
    pass


def _str(
    obj: dict, key: str, where: str = "", required: bool = True, allow_empty: bool = False
) -> str | None:
    if key not in obj:
        if required:
            raise _Bad(f"missing field {where}{key!r}")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(f"field {where}{key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _Bad(f"field {where}{key!r} is empty")
    return value


def _required_str(obj: dict, key: str, where: str = "") -> str:
    value = _str(obj, key, where)
    if value is None:  # cannot happen: a required field is present or _str raised
        raise _Bad(f"missing field {where}{key!r}")
    return value


def _spans(raw: Any, n_answers: int, context: str, where: str) -> list[tuple[int, int]] | None:
    if raw is None:
        return None
    ok = isinstance(raw, list) and len(raw) == n_answers
    ok = ok and all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in s)
        for s in raw
    )
    if not ok:
        raise _Bad(f"field {where}'spans' must be a list of [start, end] pairs, one per answer")
    spans = [(s[0], s[1]) for s in raw]
    if any(not 0 <= s <= e <= len(context) for s, e in spans):
        raise _Bad(f"field {where}'spans' points outside the context")
    return spans


def _qa(item: Any, i: int, context: str) -> QA:
    where = f"qa[{i}]."
    if not isinstance(item, dict):
        raise _Bad(f"qa[{i}] must be an object with 'question' and 'answers'")
    question = _required_str(item, "question", where)
    if "answers" not in item:
        raise _Bad(f"missing field {where}'answers'")
    answers = item["answers"]
    if isinstance(answers, str):
        raise _Bad(f"field {where}'answers' must be a list of strings (wrap a single answer in [...])")
    if not isinstance(answers, list):
        raise _Bad(f"field {where}'answers' must be a list of strings, got {type(answers).__name__}")
    if not answers:
        raise _Bad(f"field {where}'answers' is empty; give at least one reference answer")
    if not all(isinstance(a, str) and a.strip() for a in answers):
        raise _Bad(f"field {where}'answers' must contain only non-empty strings")
    prefix = _str(item, "answer_prefix", where, required=False, allow_empty=True) or ""
    return QA(question, list(answers), prefix, _spans(item.get("spans"), len(answers), context, where))


def parse_sample(obj: Any) -> Sample:
    """Validate one decoded JSON object; raises ValueError with the reason."""
    if not isinstance(obj, dict):
        raise _Bad(f"each line must be a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise _Bad("missing field 'id'")
    sid = obj["id"]
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or (isinstance(sid, str) and not sid.strip()):
        raise _Bad("field 'id' must be a non-empty string (or an integer)")
    context = _required_str(obj, "context")
    if "qa" not in obj:
        raise _Bad("missing field 'qa'")
    if not isinstance(obj["qa"], list):
        raise _Bad(f"field 'qa' must be a list of objects, got {type(obj['qa']).__name__}")
    if not obj["qa"]:
        raise _Bad("field 'qa' is empty; give at least one question")
    qa = [_qa(item, i, context) for i, item in enumerate(obj["qa"])]
    mnt = obj.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(mnt, bool) or not isinstance(mnt, int) or mnt <= 0:
        raise _Bad("field 'max_new_tokens' must be a positive integer")
    task = _str(obj, "task", required=False) or DEFAULT_TASK
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise _Bad("field 'meta' must be an object")
    return Sample(str(sid), task, context, qa, mnt, meta)


def load_jsonl(path: str | os.PathLike) -> tuple[list[Sample], list[LineError]]:
    """Load every valid line; return the samples and one error per rejected line (blank lines are skipped).

    A file that is not UTF-8 text at all (binary, UTF-16) raises InputError naming it.
    """
    samples: list[Sample] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    text = read_text(path, "JSONL file")
    for n, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(LineError(n, f"bad JSON: {exc.msg} (column {exc.colno})"))
            continue
        except (RecursionError, ValueError):
            pass  # nested too deeply or a huge integer: `loads` below says which
        try:
            obj = loads(raw)
            sample = parse_sample(obj)
        except (_Bad, InputError) as exc:
            errors.append(LineError(n, str(exc)))
            continue
        if sample.id in seen:
            errors.append(LineError(n, f"duplicate id {sample.id!r} (first on line {seen[sample.id]})"))
            continue
        seen[sample.id] = n
        samples.append(sample)
    return samples, errors


def write_jsonl(samples: list[Sample], path: str | os.PathLike) -> None:
    """Write samples one per line (UTF-8, non-ASCII kept readable)."""
    with open(path, "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_dict(), ensure_ascii=False) + "\n")
