"""Do lost answers lose their facts? What a compressed conversation still holds of each asked fact (issue 11).

convqa on the bundled model, question-agnostic (the context compressed before any question). For every
question, right after compression: the share of (layer, KV head) slots still holding the answer's tokens
(mean and the least-held token), the speaker's name at the start of the fact's line (who said it: what binds
the fact to the person the question names), the whole fact line, and the context as a whole. Each question is
answered by the full cache and by the config, and grouped by the outcome: right in both, lost by
compression, gained by it, wrong in both. If lost answers hold their facts as well as kept ones, the loss is
the compressed context's reading of the fact, not the selection. The share of slots holding the filler's
distractor values (names, places, numbers said about others, `meta["distractors"]`) is recorded beside them.

Oracles (`--oracle`), answered once more beside the config: `answer` / `line` keep every asked fact's answer
tokens / whole line in every slot; `drop-distractors` evicts every distractor value's tokens from every slot
(knowing which values are chit-chat is what no question-agnostic score knows: a bound, not a config). The rest
of the budget is chosen by the config either way.

    OMP_NUM_THREADS=1 python benchmarks/fact_retention.py --sizes 1000 2000 --seed 4 --ratio 0.875
    OMP_NUM_THREADS=1 python benchmarks/fact_retention.py --sizes 2000 --seed 4 --oracle line
    OMP_NUM_THREADS=1 python benchmarks/fact_retention.py --sizes 1000 2000 --seed 4 --oracle drop-distractors

Writes benchmarks/results/fact_retention.json (or --out NAME), per question and per group, with the load.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import save  # noqa: E402
from conversation_compression import FAMILIES  # noqa: E402
from paired_rows import paired_difference  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine, Request  # noqa: E402
from kvpilot.engine.lineage import kept_per_token  # noqa: E402
from kvpilot.engine.prompts import chat_parts  # noqa: E402
from kvpilot.evaluation.evaluator import load_samples  # noqa: E402
from kvpilot.workloads.scoring import metric_for  # noqa: E402

MEASURES = ("answer_mean", "answer_min", "speaker", "line", "distractors", "context")
ORACLES = ("answer", "line", "drop-distractors")
GROUPS = ("kept", "lost", "gained", "neither")


def token_span(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens overlapping characters [start, end)."""
    return [i for i, (a, b) in enumerate(offsets) if a < end and b > start]


def context_offsets(tokenizer, context: str, context_ids: list[int]) -> tuple[list[tuple[int, int]], int]:
    """Character offsets of the context's tokens within the chat-formatted head, and where the context starts."""
    head = tokenizer.apply_chat_template([{"role": "user", "content": context}], add_generation_prompt=False,
                                         tokenize=False) if getattr(tokenizer, "chat_template", None) else context
    head = head[: head.index(context) + len(context)]
    enc = tokenizer(head, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != context_ids:  # chat_parts cuts the same template after the context
        raise RuntimeError("the context's tokens differ from the prompt's: cannot locate the facts")
    return [tuple(o) for o in enc["offset_mapping"]], head.index(context)


def fact_ranges(sample, qa) -> dict[str, tuple[int, int]]:
    """Character ranges in the context of the question's answer, its line's speaker name and the whole line."""
    text = sample.context
    start, end = qa.spans[0]
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    return {"answer": (start, end), "speaker": (line_start, text.index(":", line_start)),
            "line": (line_start, len(text) if line_end < 0 else line_end)}


def positions_of(ranges, n: int, offsets: list[tuple[int, int]], base: int) -> torch.Tensor:
    """[n] bool: the context tokens overlapping any of the character ranges (of the context, starting at `base`)."""
    marked = torch.zeros(n, dtype=torch.bool)
    for a, b in ranges:
        marked[token_span(offsets, base + a, base + b)] = True
    return marked


def distractor_positions(sample, n: int, offsets: list[tuple[int, int]], base: int) -> torch.Tensor:
    """Context token positions of every word-bounded occurrence of the filler's distractor values."""
    return positions_of((m.span() for value in sample.meta.get("distractors", [])
                         for m in re.finditer(r"(?<!\w)" + re.escape(str(value)) + r"(?!\w)", sample.context)),
                        n, offsets, base)


def fact_measures(sample, qa, kept, offsets: list[tuple[int, int]], base: int,
                  distractors: torch.Tensor | None = None) -> dict[str, float | None]:
    """Shares of slots holding the answer, its line's speaker name, the whole line (one question), and the
    conversation's distractor values (`distractors`: their token positions; None: not measured)."""
    share = {name: kept[token_span(offsets, base + a, base + b)] for name, (a, b) in fact_ranges(sample, qa).items()}
    held = kept[distractors] if distractors is not None and bool(distractors.any()) else None
    return {"answer_mean": float(share["answer"].mean()), "answer_min": float(share["answer"].min()),
            "speaker": float(share["speaker"].mean()), "line": float(share["line"].mean()),
            "distractors": float(held.mean()) if held is not None else None, "context": float(kept.mean())}


class Oracle:
    """The config's policy, except that `keep` context positions outscore every other slot and `drop` ones
    score below every other: kept in (or evicted from) every layer and KV head, the rest of the budget chosen
    as the config would."""

    def __init__(self, policy, keep: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> None:
        self.policy, self.keep, self.drop = policy, keep, drop

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def score(self, inputs) -> torch.Tensor:
        scores = self.policy.score(inputs).float()
        finite = scores.nan_to_num(neginf=0.0, posinf=0.0)
        for marked, value in ((self.keep, finite.max() + 1.0), (self.drop, finite.min() - 1.0)):
            if marked is not None:
                n = marked.numel()
                hit = marked[inputs.positions.clamp(max=n - 1)] & (inputs.positions < n) & inputs.valid
                scores = torch.where(hit, value, scores)
        return scores


def answer(engine: Engine, sample, config: KVConfig, keep: torch.Tensor | None = None,
           drop: torch.Tensor | None = None) -> tuple[list[float], torch.Tensor]:
    """Scores of the sample's questions, each on its own copy of the context compressed under `config`, and
    the share of slots holding each context token once compressed (before any question). `keep` / `drop`:
    context positions the oracle keeps in / evicts from every slot."""
    parts = [chat_parts(engine.tokenizer, sample.context, q.question, q.answer_prefix) for q in sample.qa]
    n = len(parts[0].context_ids)
    held: list[torch.Tensor] = []

    def hold(cache, _prefill_s: float) -> None:
        held.append(kept_per_token(cache, 0, n))

    cache = engine.new_cache(config)
    if keep is not None or drop is not None:
        cache.policy = Oracle(cache.policy, keep, drop)
    response = engine.serve(Request(parts[0].context_ids, [p.question_ids for p in parts], sample.max_new_tokens,
                                    config=config, cache=cache, on_prefilled=hold))
    metric = metric_for(sample.task)
    return [float(metric(a.text, list(q.answers))) for a, q in zip(response.answers, sample.qa, strict=True)], held[0]


def group_of(full: float, compressed: float) -> str:
    return {(1, 1): "kept", (1, 0): "lost", (0, 1): "gained", (0, 0): "neither"}[(round(full), round(compressed))]


def marked_positions(sample, n: int, offsets: list[tuple[int, int]], base: int, what: str) -> torch.Tensor:
    """Context token positions of every asked fact's answer (`what="answer"`) or whole line (`"line"`)."""
    return positions_of((fact_ranges(sample, qa)[what] for qa in sample.qa), n, offsets, base)


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def right(rows: list[dict]) -> dict:
    """Questions answered right by the full cache, the config and (where run) the oracle, and the latter two's
    paired differences from the full cache."""
    keys = ["full", "compressed"] + (["oracle"] if rows and "oracle" in rows[0] else [])
    full = [r["full"] for r in rows]
    return ({k: sum(r[k] for r in rows) for k in keys} | {"questions": len(rows)}
            | {f"{k}_vs_full": paired_difference([r[k] for r in rows], full) for k in keys[1:] if rows})


def summarise(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for g in GROUPS:
        members = [r for r in rows if r["group"] == g]
        out[g] = {"n": len(members), **{m: _mean([r[m] for r in members if r[m] is not None]) for m in MEASURES}}
        if members and "oracle" in members[0]:
            out[g]["oracle_right"] = sum(r["oracle"] for r in members)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000], help="context tokens")
    ap.add_argument("--samples", type=int, default=20, help="conversations per size")
    ap.add_argument("--questions", type=int, default=6, help="questions per conversation")
    ap.add_argument("--facts", type=int, default=10, help="facts said per conversation (asked or not)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ratio", type=float, default=0.875, help="compression ratio (0.875: 8x)")
    ap.add_argument("--family", default="surrogate + global heads", choices=list(FAMILIES),
                    help="the config family compressed (conversation_compression.py's names)")
    ap.add_argument("--oracle", choices=ORACLES, default=None,
                    help="also answer with every asked fact's answer tokens (answer) or whole line (line) kept in "
                    "every slot, or every distractor value evicted from every slot (drop-distractors)")
    ap.add_argument("--out", default="fact_retention")
    args = ap.parse_args()
    if not 1 <= args.questions <= args.facts or not 0 < args.ratio < 1:
        print("error: need 1 <= --questions <= --facts and 0 < --ratio < 1", file=sys.stderr)
        return 2
    load_before, started = os.getloadavg(), time.perf_counter()
    engine = Engine.load()
    config = KVConfig.parse({**FAMILIES[args.family], "compression_ratio": args.ratio})
    rows: list[dict] = []
    by_size, right_by_size = {}, {}
    for tokens in args.sizes:
        samples = load_samples(engine.tokenizer, "convqa", args.samples, tokens, args.seed,
                               n_facts=args.facts, n_questions=args.questions)
        size_rows = []
        for sample in tqdm(samples, desc=f"{tokens} tokens", unit="conversation", file=sys.stderr):
            full, _ = answer(engine, sample, KVConfig())
            compressed, kept = answer(engine, sample, config)
            ids = chat_parts(engine.tokenizer, sample.context, "").context_ids
            offsets, base = context_offsets(engine.tokenizer, sample.context, ids)
            distractors = distractor_positions(sample, len(ids), offsets, base)
            oracle = None
            if args.oracle == "drop-distractors":
                oracle = answer(engine, sample, config, drop=distractors)[0]
            elif args.oracle:
                oracle = answer(engine, sample, config, keep=marked_positions(sample, len(ids), offsets, base,
                                                                             args.oracle))[0]
            for qi, qa in enumerate(sample.qa):
                size_rows.append({"tokens": tokens, "sample_id": sample.id, "question_index": qi,
                                  "answer": qa.answers[0], "full": full[qi], "compressed": compressed[qi],
                                  "group": group_of(full[qi], compressed[qi]),
                                  **({"oracle": oracle[qi]} if oracle is not None else {}),
                                  **fact_measures(sample, qa, kept, offsets, base, distractors)})
        by_size[tokens] = summarise(size_rows)
        tally = right_by_size[tokens] = right(size_rows)
        rows += size_rows
        print(f"{tokens:5d} right of {len(size_rows)}: "
              + ", ".join(f"{k} {tally[k]:.0f}" for k in ("full", "compressed", "oracle") if k in tally))
        for g, s in by_size[tokens].items():
            if s["n"]:
                print(f"{tokens:5d} {g:8s} n {s['n']:3d}  " + "  ".join(
                    f"{m} {s[m]:.3f}" if s[m] is not None else f"{m} -" for m in MEASURES)
                      + (f"  oracle right {s['oracle_right']:.0f}" if "oracle_right" in s else ""))
    save(args.out, {"workload": "convqa", "seed": args.seed, "samples": args.samples, "questions_per_sample":
                    args.questions, "facts_per_sample": args.facts, "ratio": args.ratio, "family": args.family,
                    "oracle": args.oracle,
                    "config": config.to_dict(), "question_agnostic": True, "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "wall_s": time.perf_counter() - started,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "by_size": by_size,
                    "right_by_size": right_by_size, "pooled": summarise(rows), "right": right(rows), "rows": rows})
    print(f"wrote benchmarks/results/{args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
