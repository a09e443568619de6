"""Question-agnostic compression of long conversations (issue 11), kvpilot and kvpress side by side.

convqa on the bundled model (20 conversations x 6 questions = 120 questions per measurement by default,
at 1k, 2k and 4k tokens): each conversation is compressed once, before any question, then every question
is asked on its own copy of the compressed cache. For every config family in FAMILIES and every ratio
(2x/4x/8x/16x = 0.5/0.75/0.875/0.9375) the script reports accuracy with a Wilson 95 % interval, the KV
bytes held after compression, the peak KV bytes, and the prefill time (scoring included) as a ratio of
a plain prefill of the same context, measured in alternating pairs in this run (median over
--timing-samples conversations). Every row keeps its per-question scores, and each compressed row its
difference from the full cache on the same questions with a paired 95 % interval (Newcombe's method 10):
two configs answering the same questions mostly agree, so the difference is far better known than the
two accuracies' own intervals suggest. --full-from takes the full cache's rows from an earlier run of the
same samples instead of answering again.

A ratio is memory saved against a cache of the same pairs in 16-bit floats: the evicted fraction for the
families that hold the model's floats, and for the `int8`/`int4` storage families (`kv_storage`) a smaller
eviction whose kept pairs, held as integers with their scales, take the same bytes (`family_config`; each
row's `config` says the eviction it ran). This CPU build computes in 32-bit floats, so the bytes it holds
are twice a 16-bit cache's at the same ratio.

kvpress 0.5.5 (KVzipPress, SnapKVPress, KeyDiffPress) runs on the same samples and the same model in its
own virtual environment, benchmarks/.venv-kvpress, which this script creates on first use (torch from the
local CPU build first, then kvpress, which pins transformers < 5.3); `kvpress_side.py` runs there and
writes answers as JSONL, scored here with kvpilot's own scorer.

    OMP_NUM_THREADS=1 python benchmarks/conversation_compression.py                      # the full size
    OMP_NUM_THREADS=1 python benchmarks/conversation_compression.py --sizes 1000 --samples 10 --ratios 0.75 0.875

Writes benchmarks/results/conversation_compression.json (or --out NAME), with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from paired_rows import full_cache_rows, paired_difference, samples_of  # noqa: E402

from kvpilot.cache.precision import eviction_for_memory  # noqa: E402
from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine, Request  # noqa: E402
from kvpilot.engine.model import resolve_model_dir  # noqa: E402
from kvpilot.engine.prompts import chat_parts  # noqa: E402
from kvpilot.evaluation import Evaluator  # noqa: E402
from kvpilot.workloads.scoring import metric_for  # noqa: E402

HERE = Path(__file__).resolve().parent
KVPRESS_VENV = HERE / ".venv-kvpress"
KVPRESS_SIDE = HERE / "kvpress_side.py"
KVPRESS_PIN = "kvpress==0.5.5"
TORCH_PIN = "torch==2.13.0"  # the local CPU build; without it pip would fetch a multi-GB CUDA build

# config families: name -> the fields every ratio shares (the one place that lists them)
FAMILIES: dict[str, dict] = {
    "previous best (snapkv, scoring prompt, turns)": {"policy": "snapkv", "scoring": "prompt", "granularity": "turn"},
    "kvzip (reconstruction, max)": {"policy": "kvzip", "scoring": "reconstruct"},
    "kvzip + global layers": {"policy": "kvzip", "scoring": "reconstruct", "layer_allocation": "global"},
    "kvzip + global heads": {"policy": "kvzip", "scoring": "reconstruct", "layer_allocation": "global",
                             "layer_allocation_params": {"heads": True}},
    "kvzip + global heads, window 0": {"policy": "kvzip", "scoring": "reconstruct", "layer_allocation": "global",
                                       "layer_allocation_params": {"heads": True}, "window": 0},
    "kvzip+ + global heads (KVzip+ weights)": {"policy": "kvzip", "policy_params": {"plus": True},
                                               "scoring": "reconstruct", "layer_allocation": "global",
                                               "layer_allocation_params": {"heads": True}},
    "kvzip + adaptive heads": {"policy": "kvzip", "scoring": "reconstruct", "head_allocation": "adaptive"},
    "surrogate (fitted reconstruction score)": {"policy": "surrogate"},
    "surrogate + global layers": {"policy": "surrogate", "layer_allocation": "global"},
    "surrogate + global heads": {"policy": "surrogate", "layer_allocation": "global",
                                 "layer_allocation_params": {"heads": True}},
    "surrogate (without the answers' term) + global heads": {"policy": "surrogate",
                                                             "policy_params": {"weights": "bundled-without-answers"},
                                                             "layer_allocation": "global",
                                                             "layer_allocation_params": {"heads": True}},
    "surrogate (answer weight 10) + global heads": {"policy": "surrogate", "policy_params": {"weights": "bundled"},
                                                    "layer_allocation": "global",
                                                    "layer_allocation_params": {"heads": True}},
    "surrogate (answer weight 30) + global heads": {"policy": "surrogate",
                                                    "policy_params": {"weights": "bundled-answers30"},
                                                    "layer_allocation": "global",
                                                    "layer_allocation_params": {"heads": True}},
    "surrogate (reconstruction fit) + global heads": {"policy": "surrogate",
                                                      "policy_params": {"weights": "bundled-reconstruction"},
                                                      "layer_allocation": "global",
                                                      "layer_allocation_params": {"heads": True}},
    "surrogate (linear, question weight 10) + global heads": {"policy": "surrogate",
                                                              "policy_params": {"weights": "bundled-linear"},
                                                              "layer_allocation": "global",
                                                              "layer_allocation_params": {"heads": True}},
    "surrogate (blend of hidden and linear) + global heads": {"policy": "surrogate",
                                                              "policy_params": {"weights": "bundled-blend"},
                                                              "layer_allocation": "global",
                                                              "layer_allocation_params": {"heads": True}},
    "surrogate (both fit, question weight 1) + global heads": {"policy": "surrogate",
                                                               "policy_params": {"weights": "bundled-both-w1"},
                                                               "layer_allocation": "global",
                                                               "layer_allocation_params": {"heads": True}},
    "surrogate + global heads, int8 storage": {"policy": "surrogate", "layer_allocation": "global",
                                               "layer_allocation_params": {"heads": True}, "kv_storage": "int8"},
    "surrogate + global heads, int4 storage": {"policy": "surrogate", "layer_allocation": "global",
                                               "layer_allocation_params": {"heads": True}, "kv_storage": "int4"},
    "keydiff": {"policy": "keydiff"},
    "snapkv (window)": {"policy": "snapkv"},
    "episodes (EpiCache)": {"policy": "kvzip", "scoring": "prompt", "episodes": 4},
}
KVPRESS_PRESSES = ["kvzip", "snapkv", "keydiff"]


def family_config(family: str, ratio: float, head_dim: int) -> KVConfig | None:
    """The family's config at memory ratio ``ratio``: the fraction of a 16-bit cache's bytes it saves.

    A family that holds the model's floats saves what it evicts. One with integer ``kv_storage`` evicts less,
    so that the pairs it keeps, held as integers, take the same bytes: (1 - eviction) x the stored pair's
    share of a 16-bit pair = 1 - ratio. None when the storage alone already saves more than ``ratio``."""
    fields = FAMILIES[family]
    try:
        eviction = eviction_for_memory(ratio, fields.get("kv_storage", "model"), head_dim)
    except ValueError:
        return None
    return KVConfig.parse({**fields, "compression_ratio": eviction})


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (scores in [0, 1] summed as successes)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_time_ratio(engine: Engine, context_ids: list[list[int]], config: KVConfig) -> list[float]:
    """Prefill under `config` (its scoring included; with episodes, building every episode's cache, as
    `Engine.serve` does) / plain prefill, per context, in alternating order."""
    plain_config = KVConfig()
    ratios = []
    for k, ids in enumerate(context_ids):
        def timed(cfg: KVConfig, ids: list[int] = ids) -> float:  # the serving path's own prefill time
            return engine.serve(Request(ids, max_new_tokens=0, config=cfg)).compression.prefill_s

        if k % 2 == 0:
            plain = timed(plain_config)
            pressed = timed(config)
        else:
            pressed = timed(config)
            plain = timed(plain_config)
        ratios.append(pressed / plain)
    return ratios


def ensure_kvpress_venv() -> Path:
    """benchmarks/.venv-kvpress with the local torch first, then kvpress (created once, then reused)."""
    python = KVPRESS_VENV / "bin" / "python"
    probe = [str(python), "-c", "import kvpress, importlib.metadata as m; print(m.version('kvpress'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "0.5.5":
        return python
    print(f"creating {KVPRESS_VENV} ({TORCH_PIN}, then {KVPRESS_PIN}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(KVPRESS_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_PIN], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", KVPRESS_PIN], check=True)
    return python


class KvpressRun:
    """kvpress_side.py on `samples` in its own environment, started now and collected by `lines()`.

    It runs while kvpilot's configs are evaluated (one process each on a 2-core machine); each side's
    time ratios are paired within its own process, so the overlap slows both halves of a pair alike.
    """

    def __init__(self, samples, ratios: list[float], presses: list[str], timing_samples: int, full: bool) -> None:
        python = ensure_kvpress_venv()
        self.tmp = tempfile.TemporaryDirectory()
        src, self.dst = Path(self.tmp.name) / "samples.jsonl", Path(self.tmp.name) / "answers.jsonl"
        with src.open("w") as f:
            for s in samples:
                f.write(json.dumps({"id": s.id, "context": s.context, "max_new_tokens": s.max_new_tokens,
                                    "questions": [{"question": q.question, "answer_prefix": q.answer_prefix}
                                                  for q in s.qa]}) + "\n")
        cmd = [str(python), str(KVPRESS_SIDE), "--model", str(resolve_model_dir(None)), "--samples", str(src),
               "--out", str(self.dst), "--presses", *presses, "--ratios", *map(str, ratios),
               "--timing-samples", str(timing_samples)] + (["--full"] if full else [])
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": ""})

    def lines(self, deadline: float | None = None) -> list[dict]:
        """Its output; past `deadline` (a perf_counter time) it is stopped and what it finished is kept."""
        try:
            self.proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()
            print("kvpress side stopped at the deadline; keeping the answers it wrote", file=sys.stderr)
        else:
            if self.proc.returncode != 0:
                raise RuntimeError(f"kvpress_side.py failed (exit {self.proc.returncode})")
        try:
            return [json.loads(line) for line in self.dst.open() if line.strip()]
        finally:
            self.tmp.cleanup()


def kvpress_rows(samples, lines: list[dict], tokens: int) -> list[dict]:
    """Score kvpress's answers with kvpilot's scorer and summarise them as rows like kvpilot's."""
    by_id = {s.id: s for s in samples}
    groups: dict[tuple[str, float], list[dict]] = {}
    timings = {(d["press"], d["ratio"]): d for d in lines if d["kind"] == "timing"}
    for d in lines:
        if d["kind"] == "answer":
            groups.setdefault((d["press"], d["ratio"]), []).append(d)
    rows = []
    order = {s.id: i for i, s in enumerate(samples)}
    for (press, ratio), answers in groups.items():
        answers = sorted(answers, key=lambda a: (order[a["sample_id"]], a["question_index"]))
        scores = []
        for a in answers:
            sample = by_id[a["sample_id"]]
            scores.append(metric_for(sample.task)(a["prediction"], sample.qa[a["question_index"]].answers))
        per_sample = {a["sample_id"]: a for a in answers}.values()
        n = len(scores)
        t = timings.get((press, ratio))
        rows.append({
            "side": "kvpress", "tokens": tokens, "family": "full cache (kvpress pipeline)" if press == "full"
            else f"kvpress {press}", "ratio": ratio, "accuracy": sum(scores) / n, "accuracy_95": wilson(sum(scores), n),
            "n_questions": n, "scores": scores,
            "kv_bytes": statistics.mean(a["kv_bytes"] for a in per_sample),
            "logical_kv_bytes": statistics.mean(a["logical_kv_bytes"] for a in per_sample),
            "peak_kv_bytes": max(a["peak_kv_bytes"] for a in per_sample),
            "time_ratio": t["time_ratio"] if t else (1.0 if press == "full" else None),
            "time_pairs": t["pairs"] if t else [],
        })
    return rows


def compare_with_full(row: dict, full: dict | None) -> None:
    """Add the row's paired difference from the full cache's accuracy on the same questions (in place)."""
    if full is None or row is full or len(full.get("scores", [])) != len(row["scores"]):
        return
    row["vs_full"] = {**paired_difference(row["scores"], full["scores"]),
                      "share_of_full": row["accuracy"] / full["accuracy"] if full["accuracy"] else None}


def full_rows_from(name: str, seed: int, samples: int, questions: int) -> dict[int, dict]:
    """The kvpilot full-cache rows (with per-question scores) of an earlier run of the same samples, by size."""
    path = HERE / "results" / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if samples_of(data) != (seed, samples, questions):
        raise ValueError(f"{path.name} was run with seed {data.get('seed')}, {data.get('samples')} samples, "
                         f"{data.get('questions_per_sample')} questions; this run uses {seed}, {samples}, {questions}")
    return full_cache_rows(data)


def show(row: dict) -> None:
    low, high = row["accuracy_95"]
    time_ratio = f"x{row['time_ratio']:.2f}" if row.get("time_ratio") is not None else "  -  "
    paired = ""
    if "vs_full" in row:
        d, (dl, dh) = row["vs_full"]["difference"], row["vs_full"]["difference_95"]
        paired = f"  vs full {d:+.3f} [{dl:+.3f}, {dh:+.3f}]"
    print(f"{row['tokens']:5d} {row['family']:46s} {row['ratio']:>6.4g}  acc {row['accuracy']:.3f} "
          f"[{low:.3f}, {high:.3f}] of {row['n_questions']}  KV {row['kv_bytes'] / 2**20:6.1f} MiB  "
          f"peak {row['peak_kv_bytes'] / 2**20:6.1f} MiB  prefill {time_ratio}{paired}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000], help="context tokens")
    ap.add_argument("--samples", type=int, default=20, help="conversations per size")
    ap.add_argument("--questions", type=int, default=6, help="questions per conversation")
    ap.add_argument("--facts", type=int, default=10, help="facts said per conversation (asked or not)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.875, 0.9375])
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES),
                    help="config families to run (none: only the full cache)")
    ap.add_argument("--kvpress", nargs="*", default=KVPRESS_PRESSES, choices=KVPRESS_PRESSES,
                    help="kvpress presses to run side by side (none: skip kvpress)")
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                    help="evaluate kvpilot's full cache (--no-full when another run of the same samples has it)")
    ap.add_argument("--kvpress-full", action=argparse.BooleanOptionalAction, default=True,
                    help="also answer through kvpress's pipeline with no press (checks that the prompts match)")
    ap.add_argument("--full-from", default=None, metavar="NAME",
                    help="take the full cache's rows (per-question scores) from benchmarks/results/NAME.json, an "
                    "earlier run of the same seed and samples, for the paired differences; implies --no-full")
    ap.add_argument("--timing-samples", type=int, default=2, help="conversations timed in alternating pairs")
    ap.add_argument("--deadline-min", type=float, default=None,
                    help="stop starting configs after this many minutes (nor start one that would not finish by then, "
                    "judged by the family's previous ratio, or the slowest config so far) and stop kvpress there "
                    "(partial rows say n)")
    ap.add_argument("--out", default="conversation_compression")
    args = ap.parse_args()
    if not 1 <= args.questions <= args.facts:
        print("error: need 1 <= --questions <= --facts", file=sys.stderr)
        return 2

    earlier_full: dict[int, dict] = {}
    if args.full_from:
        try:
            earlier_full = full_rows_from(args.full_from, args.seed, args.samples, args.questions)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: --full-from {args.full_from}: {exc}", file=sys.stderr)
            return 2
        args.full = False
    load_before = os.getloadavg()
    started = time.perf_counter()
    engine = Engine.load()
    rows: list[dict] = []
    errors: list[str] = []
    deadline = started + 60 * args.deadline_min if args.deadline_min is not None else None
    longest = 0.0  # seconds of the slowest config so far

    def checkpoint() -> None:  # rewritten after every config, so a stopped run keeps what it measured
        save(args.out, {"workload": "convqa", "samples": args.samples, "questions_per_sample": args.questions,
                        "facts_per_sample": args.facts, "sizes": args.sizes, "seed": args.seed,
                        "question_agnostic": True, "load_average_before": load_before,
                        "load_average_after": os.getloadavg(), "wall_s": time.perf_counter() - started,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "errors": errors, "rows": rows})

    for tokens in args.sizes:
        ev = Evaluator.for_workload(engine, "convqa", args.samples, tokens, args.seed,
                                    task_opts={"n_facts": args.facts, "n_questions": args.questions},
                                    results_root=None, progress=False, fidelity=False)
        timed_ids = [chat_parts(engine.tokenizer, s.context, s.qa[0].question).context_ids
                     for s in ev.samples[: args.timing_samples]]

        full_row = earlier_full.get(tokens)

        def record(family: str, ratio: float, config: KVConfig, full: dict | None, tokens: int = tokens,
                   ev: Evaluator = ev, timed_ids: list[list[int]] = timed_ids) -> dict:
            run = ev.run(config)
            m = run.metrics
            n = m["n_questions"]
            pairs = paired_time_ratio(engine, timed_ids, config) if ratio > 0 else []
            row = {"side": "kvpilot", "tokens": tokens, "family": family, "ratio": ratio,
                   "config": config.to_dict(), "accuracy": m["accuracy"], "accuracy_95": wilson(m["accuracy"] * n, n),
                   "n_questions": n, "scores": [p["score"] for p in run.predictions],
                   "kv_bytes": m["kv_bytes"], "logical_kv_bytes": m["kv_bytes"],
                   "peak_kv_bytes": m["peak_kv_bytes"],
                   "time_ratio": statistics.median(pairs) if pairs else 1.0, "time_pairs": pairs}
            compare_with_full(row, full)
            rows.append(row)
            show(row)
            return row

        side = (KvpressRun(ev.samples, args.ratios, args.kvpress, args.timing_samples, args.kvpress_full)
                if args.kvpress else None)
        if args.full:
            full_row = record("full cache", 0.0, KVConfig(), None)
        for family in args.families:
            # a config that cannot finish in time is not started: the family's previous ratio's seconds say how
            # long it takes, or for its first ratio the longest config this run has timed
            took = longest
            for ratio in args.ratios:
                if deadline is not None and time.perf_counter() + took > deadline:
                    errors.append(f"{tokens} tokens: deadline reached before {family} at {ratio}")
                    continue
                config = family_config(family, ratio, engine.shape.head_dim)
                if config is None:
                    errors.append(f"{tokens} tokens: {family} saves more than {ratio} by its storage alone")
                    continue
                began = time.perf_counter()
                record(family, ratio, config, full_row)
                took = time.perf_counter() - began
                longest = max(longest, took)
                checkpoint()
        if side is not None:
            try:
                lines = side.lines(deadline)
            except (RuntimeError, OSError, ValueError) as exc:  # keep kvpilot's rows; say what failed
                errors.append(f"{tokens} tokens: kvpress side: {exc}")
                print(errors[-1], file=sys.stderr, flush=True)
                lines = []
            for row in kvpress_rows(ev.samples, lines, tokens):
                compare_with_full(row, full_row)
                rows.append(row)
                show(row)
        checkpoint()
    print(f"wrote benchmarks/results/{args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
