"""Choosing between compression configs on a development seed: accuracy and the gold answer's log-prob.

With 120 questions, accuracy moves by 0.04 when five answers flip, so two configs a few points apart cannot
be told apart. The teacher-forced log-probability of each question's gold answer (mean per answer token,
on its own copy of the compressed cache, question-agnostic like `conversation_compression.py`) changes
with every token the compression loses or keeps, and tracked accuracy in every comparison issue 11's
development made. Run it on a seed that neither the evaluation (1) nor the surrogate's calibration (101)
uses; 7 by default.

    OMP_NUM_THREADS=1 python benchmarks/answer_logprob.py --sizes 1000 --ratios 0.875 0.9375 \\
        --families "surrogate + global heads" "surrogate (linear, question weight 10) + global heads"
    OMP_NUM_THREADS=1 python benchmarks/answer_logprob.py --question-aware answer --no-full --config \
        '{"policy": "kvzip", "scoring": "prompt", "compression_ratio": 0.875}'
    OMP_NUM_THREADS=1 python benchmarks/answer_logprob.py --config '{"policy": "keydiff", "compression_ratio": 0.875}'

Writes benchmarks/results/answer_logprob.json (or --out NAME), rewritten after every config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from conversation_compression import FAMILIES, wilson  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.engine.engine import Request  # noqa: E402
from kvpilot.engine.prompts import chat_parts  # noqa: E402
from kvpilot.errors import KVPilotError  # noqa: E402
from kvpilot.workloads import metric_for  # noqa: E402
from kvpilot.workloads.registry import generate  # noqa: E402


def scoring_prompt(qa, question_aware: str) -> str:
    """The question (and with "answer" its gold answer) as the scoring prompt of a question-aware bound."""
    return "\n\n" + qa.question + (" " + qa.answer_prefix + " " + qa.answers[0] if question_aware == "answer" else "")


def measure(engine: Engine, samples: list, config: KVConfig, question_aware: str = "") -> dict:
    """Accuracy and the mean log-prob per gold-answer token over every question of `samples`.

    question_aware: "question" compresses once per question with the question itself as the scoring prompt
        (configs with scoring="prompt"), "answer" with the question and its gold answer: no question-agnostic
        score knows more about which pairs the answer needs.
    """
    import torch

    tok = engine.tokenizer
    hits, questions, logprob, tokens = 0.0, 0, 0.0, 0
    for sample in samples:
        parts = [chat_parts(tok, sample.context, qa.question, qa.answer_prefix) for qa in sample.qa]
        gold = [list(tok(" " + qa.answers[0], add_special_tokens=False)["input_ids"]) for qa in sample.qa]
        if question_aware:
            answers = [engine.serve(Request(p.context_ids, [p.question_ids], sample.max_new_tokens,
                                            config=KVConfig.parse({**config.to_dict(),
                                                                   "scoring_prompt": scoring_prompt(qa, question_aware)}),
                                            teacher_tokens=[ids])).answers[0]
                       for qa, p, ids in zip(sample.qa, parts, gold, strict=True)]
        else:
            answers = engine.serve(Request(parts[0].context_ids, [p.question_ids for p in parts],
                                           sample.max_new_tokens, config=config, teacher_tokens=gold)).answers
        for qa, answer, ids in zip(sample.qa, answers, gold, strict=True):
            hits += float(metric_for(sample.task)(answer.text, list(qa.answers)))
            questions += 1
            assert answer.teacher_logits is not None
            logits = torch.stack(answer.teacher_logits).float().log_softmax(-1)
            logprob += logits[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
            tokens += len(ids)
    return {"accuracy": hits / questions, "accuracy_95": wilson(hits, questions), "n_questions": questions,
            "answer_logprob_per_token": logprob / tokens, "answer_tokens": tokens}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000], help="context tokens (default 1000)")
    ap.add_argument("--samples", type=int, default=20, help="conversations per size (default 20)")
    ap.add_argument("--questions", type=int, default=6, help="questions per conversation (default 6)")
    ap.add_argument("--facts", type=int, default=10, help="facts said per conversation (default 10)")
    ap.add_argument("--seed", type=int, default=7, help="development seed (default 7; the evaluation uses 1)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.875, 0.9375], help="ratios for --families")
    ap.add_argument("--families", nargs="*", default=[], choices=list(FAMILIES), metavar="FAMILY",
                    help="config families of conversation_compression.py, at every --ratios")
    ap.add_argument("--question-aware", choices=["question", "answer"], default="",
                    help='configs with scoring="prompt" compress once per question, scored by the question itself '
                         '("question") or by the question and its gold answer ("answer"): bounds for question-agnostic '
                         "scores, not usable configs")
    ap.add_argument("--config", nargs="*", default=[], help="configs as JSON objects, measured as given")
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True, help="measure the full cache too")
    ap.add_argument("--out", default="answer_logprob")
    args = ap.parse_args()
    if not 1 <= args.questions <= args.facts:
        print("error: need 1 <= --questions <= --facts", file=sys.stderr)
        return 2
    try:
        configs = [("full cache", KVConfig())] if args.full else []
        configs += [(f, KVConfig.parse({**FAMILIES[f], "compression_ratio": r})) for f in args.families for r in args.ratios]
        configs += [("config", KVConfig.parse(json.loads(text))) for text in args.config]
    except (json.JSONDecodeError, KVPilotError, ValueError) as exc:
        print("error: bad --config: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    if not configs:
        print("error: nothing to measure (give --families or --config, or keep --full)", file=sys.stderr)
        return 2
    load_before, started = os.getloadavg(), time.perf_counter()
    engine = Engine.load()
    rows: list[dict] = []
    for tokens in args.sizes:
        samples = generate("convqa", args.samples, tokens, seed=args.seed, tokenizer=engine.tokenizer,
                           n_facts=args.facts, n_questions=args.questions)
        for name, config in configs:
            question_aware = args.question_aware if config.scoring == "prompt" else ""
            row = {"tokens": tokens, "family": name + (f" (scored by the {question_aware})" if question_aware else ""),
                   "config": config.to_dict(), **measure(engine, samples, config, question_aware)}
            rows.append(row)
            print(f"{tokens:>5} {name[:55]:<55} ratio {config.compression_ratio or 0:<6} accuracy {row['accuracy']:.3f}  "
                  f"answer log-prob/token {row['answer_logprob_per_token']:+.3f}", flush=True)
            save(args.out, {"workload": "convqa", "seed": args.seed, "samples": args.samples,
                            "questions_per_sample": args.questions, "facts_per_sample": args.facts,
                            "question_agnostic": True, "load_average_before": load_before,
                            "load_average_after": os.getloadavg(), "wall_s": time.perf_counter() - started,
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows})
    print(f"wrote benchmarks/results/{args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
