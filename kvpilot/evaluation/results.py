"""Run folders and metrics: naming, hashing, atomic writes, aggregation and the summary table.

A run is one workload (a fixed list of samples) under one KVConfig. Its folder is named after the
workload, length, sample count, seed and policy, plus a hash of everything that changes the result
(config, sample contents, model, mode, options), so two different runs never share a folder and the
same run always finds its own. `metrics.json` is written last and atomically: its presence means the
run finished, and the evaluator loads it instead of recomputing. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvpilot.config import KVConfig, config_label
from kvpilot.workloads.sample import Sample

# Bump when the measurement itself changes, so old run folders are not mistaken for new results.
EVAL_FORMAT = 1

CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data, equal text, equal hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def short_hash(data: Any, n: int = 10) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:n]


def samples_digest(samples: Sequence[Sample]) -> str:
    """Hash of what the model sees and is scored on (ids, contexts, questions, answers, budgets)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(canonical_json([s.id, s.task, s.context, [q.to_dict() for q in s.qa], s.max_new_tokens]).encode())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-")[:60] or "run"


def run_dir_name(label: str, config: KVConfig, query_aware: bool, key: str) -> str:
    mode = "-qa" if query_aware else ""
    return f"{_slug(label)}-{config_label(config)}{mode}-{key}"


# ----- aggregation ---------------------------------------------------------------------------------


def _mean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def aggregate(rows: Sequence[dict[str, Any]], prefills: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Run-level metrics from per-question rows and per-compression records.

    Accuracy is the mean score over questions. Fidelity pools every teacher-forced answer token of the
    run (token-weighted). KV bytes and achieved ratio are means over compressions (one per sample, or one
    per question in query-aware mode); peak is the maximum. TTFT is the mean over questions; TPOT and
    tokens/s are token-weighted (total time over total tokens).
    """
    scores = [r["score"] for r in rows]
    by_task: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r["score"])
    fid_tokens = sum(r.get("fidelity_tokens") or 0 for r in rows)
    agree = sum(r.get("top1_agree") or 0 for r in rows)
    kl_sum = sum(r.get("kl_sum") or 0.0 for r in rows)
    has_fidelity = any(r.get("fidelity_tokens") is not None for r in rows)
    later_tokens = sum(max(r["generated_tokens"] - 1, 0) for r in rows)
    later_s = sum(r["decode_after_first_s"] for r in rows)
    prefill_tokens = sum(p["prefill_tokens"] for p in prefills)
    prefill_s = sum(p["prefill_s"] for p in prefills)
    return {
        "n_samples": len({r["sample_id"] for r in rows}),
        "n_questions": len(rows),
        "accuracy": _mean(scores),
        "accuracy_by_task": {t: sum(v) / len(v) for t, v in sorted(by_task.items())},
        "top1_agreement": _ratio(agree, fid_tokens) if has_fidelity else None,
        "mean_kl": _ratio(kl_sum, fid_tokens) if has_fidelity else None,
        "fidelity_tokens": fid_tokens if has_fidelity else None,
        "context_tokens": _mean(p["context_tokens"] for p in prefills),
        "kv_bytes": _mean(p["kv_bytes"] for p in prefills),
        "logical_kv_bytes": _mean(p["logical_kv_bytes"] for p in prefills),
        "peak_kv_bytes": max((p["peak_kv_bytes"] for p in prefills), default=None),
        "mean_peak_kv_bytes": _mean(p["peak_kv_bytes"] for p in prefills),
        "compression_ratio": _mean(p["compression_ratio"] for p in prefills),
        "ttft_s": _mean(r["ttft_s"] for r in rows),
        "tpot_s": _ratio(later_s, later_tokens),
        "prefill_tokens_per_s": _ratio(prefill_tokens, prefill_s),
        "decode_tokens_per_s": _ratio(later_tokens, later_s),
        "generated_tokens": sum(r["generated_tokens"] for r in rows),
    }


# ----- run folders -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    """A finished run: its config, metrics and per-question predictions, and where they are stored.

    `cached` is True when the run was loaded from its folder instead of computed.
    """

    config: KVConfig
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    cached: bool = False

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    def as_json(self) -> dict[str, Any]:
        """The metrics plus where they are and whether they were recomputed (what `--json` prints)."""
        return {**self.metrics, "run_dir": str(self.path) if self.path else None, "cached": self.cached}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save_run(path: Path, config_doc: dict[str, Any], result: RunResult) -> None:
    """Write config.json, predictions.jsonl, then metrics.json (last: it marks the run finished)."""
    path.mkdir(parents=True, exist_ok=True)
    _write_atomic(path / CONFIG_FILE, json.dumps(config_doc, indent=2, sort_keys=True) + "\n")
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
    _write_atomic(path / PREDICTIONS_FILE, lines)
    _write_atomic(path / METRICS_FILE, json.dumps(result.metrics, indent=2, sort_keys=True, allow_nan=False) + "\n")


def load_run(path: Path, key: str) -> RunResult | None:
    """The finished run stored at `path`, or None if it is missing, unfinished, corrupt or another run's."""
    try:
        metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
        doc = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if doc.get("key") != key or metrics.get("key") != key:
            return None
        config = KVConfig.parse(doc["config"])
        predictions = [
            json.loads(line)
            for line in (path / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return RunResult(config=config, metrics=metrics, predictions=predictions, path=path, cached=True)


# ----- presentation ----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.2f} MiB"


def _num(x: float | None, fmt: str, unit: str = "") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{fmt}}{unit}"


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    """(name, value) pairs for the CLI's summary table."""
    m = result.metrics
    n_right = sum(1 for p in result.predictions if p.get("score") == 1.0)
    fid = (
        "not measured (--no-fidelity)"
        if m.get("top1_agreement") is None
        else f"top-1 agreement {_pct(m['top1_agreement'])}, mean KL {m['mean_kl']:.4f} nats "
        f"({m['fidelity_tokens']} answer tokens)"
    )
    return [
        ("run", f"{result.path or '(not stored)'}" + ("  [loaded, not recomputed]" if result.cached else "")),
        ("workload", f"{m['workload']}: {m['n_samples']} samples, {m['n_questions']} questions, "
         f"{_num(m['context_tokens'], '.0f')} context tokens on average"),
        ("config", f"{config_label(result.config)} (hash {m['config_hash']})"
         + ("  query-aware" if m.get("query_aware") else "  question-agnostic")),
        ("accuracy", f"{_pct(m['accuracy'])} ({n_right}/{m['n_questions']} fully right)"),
        ("fidelity", fid),
        ("KV cache", f"{_mib(m['kv_bytes'])} kept of {_mib(m['logical_kv_bytes'])} "
         f"({_pct(m['compression_ratio'])} evicted), peak {_mib(m['peak_kv_bytes'])}"),
        ("latency", f"TTFT {_num(m['ttft_s'], '.3f', ' s')}, TPOT {_num(_ms(m['tpot_s']), '.1f', ' ms')}"),
        ("throughput", f"prefill {_num(m['prefill_tokens_per_s'], '.0f', ' tok/s')}, "
         f"decode {_num(m['decode_tokens_per_s'], '.1f', ' tok/s')}"),
    ]


def _ms(x: float | None) -> float | None:
    return None if x is None else 1000 * x


def format_summary(result: RunResult) -> str:
    rows = summary_rows(result)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
