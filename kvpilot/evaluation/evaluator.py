"""Run a workload through the engine under a KVConfig and measure accuracy, fidelity, memory and speed.

Question-agnostic by default, as in the EpiCache setting: each sample's context is compressed once,
without the questions, and every question is then asked on that same compressed cache (snapshot and
restore). With `query_aware=True` the context and the question are compressed together, once per
question, which is what most eviction papers report and is an upper bound for question-agnostic use.

Fidelity compares against the full cache fed the full cache's own greedy answer (see `fidelity.py`).
The full-cache reference of each sample is computed once per Evaluator and reused by every config it
runs, so a sweep over many configs pays for it once (and a run of `KVConfig()` itself is that pass). References are held in memory as fp32 log-probs:
vocabulary x answer tokens x 4 bytes per question (about 1.5 MB for an 8-token answer on the bundled
model); `clear_references()` frees them.

Everything is deterministic for a seed: samples come from seeded generators, decoding is greedy, and the
only random policy takes its seed from the config.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from kvpilot.config import KVConfig, KVConfigError, config_hash, config_label
from kvpilot.engine.engine import Request
from kvpilot.engine.model import model_fingerprint
from kvpilot.engine.prompts import chat_parts
from kvpilot.evaluation.errors import EvaluationError, WorkloadLoadError, workload_errors
from kvpilot.evaluation.fidelity import Fidelity, Reference, compare, log_probs
from kvpilot.evaluation.results import (
    EVAL_FORMAT,
    RunResult,
    aggregate,
    load_run,
    run_dir_name,
    samples_digest,
    save_run,
    short_hash,
)
from kvpilot.version import __version__
from kvpilot.workloads import load_workload, metric_for
from kvpilot.workloads.sample import Sample
from kvpilot.workloads.spec import WorkloadSpec

if TYPE_CHECKING:
    from kvpilot.storage.protocols import RunRecorder

DEFAULT_RESULTS_ROOT = "runs"
REFERENCE_CONFIG = KVConfig()


def load_samples(
    tokenizer: Any, workload: str, n_samples: int, target_tokens: int, seed: int, **task_opts: Any
) -> list[Sample]:
    """Samples for a CLI-style workload spec, with errors turned into one-line EvaluationErrors.

    `tokenizer` sizes generated contexts; a `jsonl:PATH` file needs none (pass None).
    """
    with workload_errors(workload, target_tokens):
        spec = WorkloadSpec.parse(workload)
    if not spec.is_jsonl:
        if n_samples < 1:
            raise EvaluationError(f"--samples must be at least 1, got {n_samples}")
        if target_tokens < 1:
            raise EvaluationError(f"--tokens must be at least 1, got {target_tokens}")
    with workload_errors(workload, target_tokens):
        samples = load_workload(spec, n_samples, target_tokens, seed, tokenizer, **task_opts)
    if not samples:
        raise WorkloadLoadError(f"{workload}: no samples to evaluate")
    return samples


def workload_label(workload: str, n_samples: int, target_tokens: int, seed: int) -> str:
    """Folder-name prefix: `passkey-1000t-10s-seed0`, or `jsonl-<file stem>-<n>s` for a user's file."""
    return WorkloadSpec.parse(workload).label(n_samples, target_tokens, seed)


@dataclass
class _Prompt:
    context_ids: list[int]
    question_ids: list[list[int]]


@dataclass
class _Answer:
    """One question answered under one config, with the raw decode kept for fidelity."""

    raw_tokens: list[int]
    text: str
    ttft_s: float
    decode_after_first_s: float
    fidelity: Fidelity | None = None
    step_logits: list[torch.Tensor] = field(default_factory=list)


class Evaluator:
    """Evaluate one list of samples under any number of KVConfigs, one result folder per config.

    `results_root=None` keeps results in memory only. `fidelity=False` skips the full-cache reference
    (about half the work for a compressed config). `max_new_tokens` overrides the samples' answer budget.
    """

    def __init__(
        self,
        engine: Any,
        samples: Sequence[Sample],
        *,
        label: str = "custom",
        query_aware: bool = False,
        fidelity: bool = True,
        results_root: str | Path | None = DEFAULT_RESULTS_ROOT,
        progress: bool = True,
        model_id: str | None = None,
        max_new_tokens: int | None = None,
        workload_info: dict[str, Any] | None = None,
        recorder: RunRecorder | None = None,
        deployment: str | None = None,
    ) -> None:
        if not samples:
            raise EvaluationError("no samples to evaluate")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise EvaluationError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.engine = engine
        self.samples = list(samples)
        self.label = label
        self.query_aware = query_aware
        self.fidelity = fidelity
        self.results_root = Path(results_root) if results_root is not None else None
        self.progress = progress
        self.model_id = model_id or _model_id(engine)
        self.model_fingerprint = model_fingerprint(engine.model)
        self.max_new_tokens = max_new_tokens
        self.workload_info = dict(workload_info or {"workload": label})
        self.digest = samples_digest(self.samples)
        self.recorder = recorder  # a store: every run is recorded there as an "eval" run
        self._memo: dict[str, RunResult] = {}  # runs of this evaluator by key: an identical config is not rerun
        self.deployment = deployment
        self.computed_runs = 0  # runs actually computed (not loaded): lets callers and tests see caching
        self.reference_passes = 0  # full-cache reference passes, at most one per sample and mode
        self._prompts: dict[int, _Prompt] = {}
        self._references: dict[tuple[int, bool], list[Reference]] = {}
        # what the reference pass itself measured, so a run of the reference config reuses it
        self._reference_runs: dict[tuple[int, bool], tuple[list[_Answer], list[dict[str, Any]]]] = {}

    @classmethod
    def for_workload(
        cls,
        engine: Any,
        workload: str,
        n_samples: int = 10,
        target_tokens: int = 1000,
        seed: int = 0,
        task_opts: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Evaluator:
        """Generate (or read) a workload's samples and wrap them: `workload` as in `kvpilot eval`."""
        samples = load_samples(engine.tokenizer, workload, n_samples, target_tokens, seed, **(task_opts or {}))
        is_jsonl = WorkloadSpec.parse(workload).is_jsonl
        info = {
            "workload": workload,
            "target_tokens": None if is_jsonl else target_tokens,
            "seed": None if is_jsonl else seed,
            "requested_samples": n_samples,
            "task_opts": task_opts or {},
        }
        label = workload_label(workload, len(samples), target_tokens, seed)
        return cls(engine, samples, label=label, workload_info=info, **kwargs)

    # ----- public API -----------------------------------------------------------------------------

    def run(self, config: KVConfig, *, recompute: bool = False) -> RunResult:
        """Evaluate every sample under `config`; a finished run in the results root is loaded instead."""
        self._validate(config)
        key = self.run_key(config)
        path = self.run_path(config, key)
        run_id = self._start_recorded_run(config, key)
        try:
            result = None
            if not recompute:
                memo = self._memo.get(key)
                result = dataclasses.replace(memo, cached=True) if memo is not None else None
            if result is None and path is not None and not recompute:
                result = load_run(path, key)
            if result is None:
                result = self._compute(config, key)
                result.path = path
                if path is not None:
                    save_run(path, self._config_doc(config, key), result)
                self.computed_runs += 1
        except BaseException:
            if run_id is not None:
                self.recorder.finish_run(run_id, status="failed")  # type: ignore[union-attr]
            raise
        self._memo[key] = result
        if run_id is not None:
            self.recorder.finish_run(run_id, metrics=_recorded_metrics(result))  # type: ignore[union-attr]
        return result

    def _start_recorded_run(self, config: KVConfig, key: str) -> int | None:
        if self.recorder is None:
            return None
        params = {**self.workload_info, "key": key, "query_aware": self.query_aware, "model": self.model_id}
        return self.recorder.start_run("eval", deployment=self.deployment, config=config, params=params,
                                       name=f"{self.label} {config_label(config)}")

    def sweep(self, configs: Iterable[KVConfig], *, recompute: bool = False) -> list[RunResult]:
        """Run several configs on the same samples, computing each sample's reference once."""
        return [self.run(c, recompute=recompute) for c in configs]

    def run_key(self, config: KVConfig) -> str:
        """Hash of everything that determines a run's result."""
        return short_hash(
            {
                "format": EVAL_FORMAT,
                "kvpilot": __version__,
                "model_fingerprint": self.model_fingerprint,
                "config": config.to_dict(),
                "samples": self.digest,
                "model": self.model_id,
                "query_aware": self.query_aware,
                "fidelity": self.fidelity,
                "max_new_tokens": self.max_new_tokens,
            },
            10,
        )

    def run_path(self, config: KVConfig, key: str | None = None) -> Path | None:
        if self.results_root is None:
            return None
        return self.results_root / run_dir_name(self.label, config, self.query_aware, key or self.run_key(config))

    def clear_references(self) -> None:
        self._references.clear()
        self._reference_runs.clear()

    def _config_doc(self, config: KVConfig, key: str) -> dict[str, Any]:
        """config.json: what was run, enough to rerun it."""
        return {
            "key": key,
            "config": config.to_dict(),
            "config_hash": config_hash(config),
            "label": self.label,
            **self.workload_info,
            "query_aware": self.query_aware,
            "fidelity": self.fidelity,
            "max_new_tokens": self.max_new_tokens,
            "model": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "kvpilot": __version__,
            "samples_digest": self.digest,
            "sample_ids": [s.id for s in self.samples],
            "format": EVAL_FORMAT,
        }

    # ----- one run ----------------------------------------------------------------------------------

    def _validate(self, config: KVConfig) -> None:
        if not isinstance(config, KVConfig):
            raise EvaluationError(f"expected a KVConfig, got {type(config).__name__}")
        try:
            self.engine.validate(config)
        except KVConfigError as exc:
            raise EvaluationError("config does not fit the model: " + "; ".join(exc.problems)) from None

    def _compute(self, config: KVConfig, key: str) -> RunResult:
        rows: list[dict[str, Any]] = []
        prefills: list[dict[str, Any]] = []
        started = time.perf_counter()
        reference_s = 0.0
        bar = tqdm(
            self.samples,
            desc=f"eval {config_label(config)}",
            unit="sample",
            disable=not self.progress,
            file=sys.stderr,
            leave=False,
        )
        for index, sample in enumerate(bar):
            refs = None
            if self.fidelity:
                t0 = time.perf_counter()
                refs = self.reference(index)
                reference_s += time.perf_counter() - t0
            if refs is not None and config == REFERENCE_CONFIG:
                answers, compressions = self._reference_runs[(index, self.query_aware)]
            else:
                answers, compressions = self._serve(config, index, refs)
            for qi, (qa, ans) in enumerate(zip(sample.qa, answers, strict=True)):
                rows.append(self._row(sample, qi, qa, ans, refs[qi] if refs else None, compressions))
            prefills.extend(compressions)
        bar.close()
        metrics = {
            **self.workload_info,
            "label": self.label,
            "key": key,
            "config": config.to_dict(),
            "config_hash": config_hash(config),
            "query_aware": self.query_aware,
            "model": self.model_id,
            "samples_digest": self.digest,
            **aggregate(rows, prefills),
            "wall_s": time.perf_counter() - started,
            "reference_s": reference_s,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        return RunResult(config=config, metrics=metrics, predictions=rows)

    def _row(
        self, sample: Sample, qi: int, qa: Any, ans: _Answer, ref: Reference | None, compressions: list[dict]
    ) -> dict[str, Any]:
        comp = compressions[qi] if self.query_aware else compressions[0]
        fid = ans.fidelity
        return {
            "sample_id": sample.id,
            "task": sample.task,
            "question_index": qi,
            "question": qa.question,
            "answer_prefix": qa.answer_prefix,
            "answers": list(qa.answers),
            "prediction": ans.text,
            "score": float(metric_for(sample.task)(ans.text, list(qa.answers))),
            "reference": ref.text if ref else None,
            "fidelity_tokens": fid.tokens if fid else None,
            "top1_agree": fid.top1_agree if fid else None,
            "kl_sum": fid.kl_sum if fid else None,
            "top1_agreement": fid.agreement if fid else None,
            "mean_kl": fid.mean_kl if fid else None,
            "generated_tokens": len(ans.raw_tokens),
            "ttft_s": ans.ttft_s,
            "decode_after_first_s": ans.decode_after_first_s,
            "context_tokens": comp["context_tokens"],
            "kv_bytes": comp["kv_bytes"],
            "compression_ratio": comp["compression_ratio"],
            "peak_kv_bytes": comp["peak_kv_bytes"],
        }

    # ----- serving one sample ----------------------------------------------------------------------

    def reference(self, index: int) -> list[Reference]:
        """The full cache's greedy answers and log-probs for sample `index` (computed once, then kept)."""
        key = (index, self.query_aware)
        if key not in self._references:
            answers, compressions = self._serve(REFERENCE_CONFIG, index, None, keep_logits=True)
            self._references[key] = [
                Reference(tokens=a.raw_tokens, logprobs=log_probs(a.step_logits), text=a.text) for a in answers
            ]
            # The reference pass is a full-cache run: keep its answers (fidelity exact by construction,
            # logits dropped) so that running the reference config itself costs nothing more.
            for a in answers:
                a.step_logits = []
                a.fidelity = Fidelity(tokens=len(a.raw_tokens), top1_agree=len(a.raw_tokens), kl_sum=0.0)
            self._reference_runs[key] = (answers, compressions)
            self.reference_passes += 1
        return self._references[key]

    def _prompt(self, index: int) -> _Prompt:
        if index not in self._prompts:
            sample = self.samples[index]
            tok = self.engine.tokenizer
            parts = [chat_parts(tok, sample.context, qa.question, qa.answer_prefix) for qa in sample.qa]
            self._prompts[index] = _Prompt(parts[0].context_ids, [p.question_ids for p in parts])
        return self._prompts[index]

    def _serve(
        self, config: KVConfig, index: int, refs: list[Reference] | None, keep_logits: bool = False
    ) -> tuple[list[_Answer], list[dict[str, Any]]]:
        """Answer every question of a sample under `config` through the engine's one request path.

        Question-agnostic: one request, the context compressed once and each question answered on its own
        copy. Query-aware: one request per question, context and question compressed together. With
        `refs`, each answer's fidelity is measured against the reference tokens (teacher-forced by the
        engine where the free decode left them; that replay is not timed and does not count in the peak).
        """
        prompt = self._prompt(index)
        max_new = self.max_new_tokens or self.samples[index].max_new_tokens
        if self.query_aware:
            requests = [
                (Request(prompt.context_ids + q_ids, (), max_new, config=config, keep_logits=keep_logits,
                         teacher_tokens=[refs[qi].tokens] if refs is not None else None), [qi])
                for qi, q_ids in enumerate(prompt.question_ids)
            ]
        else:
            requests = [(Request(prompt.context_ids, prompt.question_ids, max_new, config=config,
                                 keep_logits=keep_logits,
                                 teacher_tokens=[r.tokens for r in refs] if refs is not None else None),
                         list(range(len(prompt.question_ids))))]
        answers: list[_Answer] = []
        compressions: list[dict[str, Any]] = []
        for request, question_indices in requests:
            response = self.engine.serve(request)
            for qi, res in zip(question_indices, response.answers, strict=True):
                ans = _Answer(
                    raw_tokens=res.raw_token_ids,
                    text=res.text,
                    ttft_s=res.ttft_s,
                    decode_after_first_s=res.decode_after_first_s,
                    step_logits=res.step_logits,
                )
                if refs is not None and res.teacher_logits is not None:
                    ans.fidelity = compare(refs[qi], res.teacher_logits)
                answers.append(ans)
            comp = response.compression
            compressions.append({
                "context_tokens": len(prompt.context_ids),
                "prefill_tokens": len(request.context_ids),
                "prefill_s": comp.prefill_s,
                "kv_bytes": comp.kv_bytes,
                "logical_kv_bytes": comp.logical_kv_bytes,
                "compression_ratio": comp.compression_ratio,
                "peak_kv_bytes": comp.peak_kv_bytes,
            })
        return answers, compressions


def _recorded_metrics(result: RunResult) -> dict[str, Any]:
    """The run-level numbers a store keeps for an evaluation (not the per-question rows)."""
    wanted = ("accuracy", "top1_agreement", "mean_kl", "kv_bytes", "logical_kv_bytes", "peak_kv_bytes",
              "compression_ratio", "ttft_s", "tpot_s", "n_samples", "n_questions", "wall_s")
    return {k: result.metrics.get(k) for k in wanted} | {"cached": result.cached}


def _model_id(engine: Any) -> str:
    """A readable name for the engine's model (the directory's base name); its identity is the fingerprint."""
    name = str(getattr(getattr(engine.model, "config", None), "_name_or_path", "") or "model")
    return Path(name).name or name


def _versions() -> dict[str, str]:
    import transformers

    return {
        "kvpilot": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def evaluate(
    engine: Any,
    workload: str,
    config: KVConfig,
    n_samples: int = 10,
    target_tokens: int = 1000,
    seed: int = 0,
    **kwargs: Any,
) -> RunResult:
    """One-call form: generate the workload, run it under `config`, store or load the run folder."""
    return Evaluator.for_workload(engine, workload, n_samples, target_tokens, seed, **kwargs).run(config)
