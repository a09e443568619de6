"""`kvpilot surrogate fit`: fit the `surrogate` policy's per-model weights on reconstruction scores.

The expensive reconstruction pass (KVzip) runs once here, on calibration conversations, instead of on
every request: the fitted linear model then predicts each cached pair's reconstruction score from its key
and value during a plain prefill. The held-out Spearman printed at the end says how well the prediction
ranks the pairs (1 = the same order as reconstruction scoring). Use the weights with

    {"policy": "surrogate", "policy_params": {"weights": "PATH"}, "compression_ratio": 0.875}
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("surrogate", help="fit the surrogate policy's weights for a model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    fit = verbs.add_parser("fit", help="fit weights on calibration conversations and save them",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("--model", default=None, help="local HF model directory (default: the bundled model)")
    fit.add_argument("--workload", default="convqa", help="calibration workload (default convqa)")
    fit.add_argument("-n", "--samples", type=int, default=8, help="calibration contexts per size, held-out ones "
                     "included (default 8)")
    fit.add_argument("--held-out", type=int, default=2, help="contexts kept out of the fit to check it (default 2)")
    fit.add_argument("--tokens", type=int, nargs="+", default=[1000], help="tokens per calibration context; "
                     "several sizes give -n contexts of each, interleaved (default 1000)")
    fit.add_argument("--seed", type=int, default=101, help="calibration seed; keep it apart from evaluation seeds")
    fit.add_argument("--target", choices=["reconstruction", "questions", "both"], default="reconstruction",
                     help="what the weights predict: KVzip's reconstruction scores (default), the attention the "
                     "calibration questions and their answers give each pair, or both (log of their sum); "
                     "the last two need a workload with questions (convqa asks about every fact it states)")
    fit.add_argument("--question-weight", type=float, default=1.0, help="with --target both: weight of the "
                     "questions' scores in the sum (reconstruction reads every token about once, so at 1 it "
                     "dominates most pairs; default 1)")
    fit.add_argument("--answer-weight", type=float, default=0.0, help="with --target questions or both: add, "
                     "inside the log, this weight times the attention the queries producing each calibration "
                     "answer give each pair (what the answer reads, not the names its question mentions; "
                     "default 0: off)")
    fit.add_argument("--hidden", type=int, default=0, help="width of a ReLU hidden layer per (layer, KV head) "
                     "beside the linear part, trained by Adam (0: linear ridge regression, the default; the "
                     "bundled weights use 32)")
    fit.add_argument("--steps", type=int, default=2000, help="Adam steps of 2,048 pairs for --hidden (default 2000)")
    fit.add_argument("--floor-quantile", type=float, default=0.0, metavar="Q",
                     help="raise every target below each context's Q-quantile (all layers and heads) to it, so "
                     "the fit ranks the top pairs selection keeps rather than the ones it drops (e.g. 0.75; "
                     "default 0: off)")
    fit.add_argument("--ridge", type=float, default=1e-3, help="ridge strength, relative, for the linear fit "
                     "(default 1e-3)")
    fit.add_argument("--data-dir", default=None, help="keep each calibration context's features and scores in this "
                     "directory and reuse them: a refit with another target, weight, width or step count skips the "
                     "model passes, the slow part (the bundled model: about 60 MB per 1,000 tokens)")
    fit.add_argument("--out", default=None, help="weights file (default: $KVPILOT_HOME/surrogates/<model>.json)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(func=run_fit)
    blend = verbs.add_parser("blend", help="one weights file scoring the mean of several (an ensemble)",
                             description="Write one weights file whose score is the weighted mean of the given "
                             "files' scores: exact, not refitted (a linear and a hidden-layer fit err on "
                             "different pairs, and their mean ranks better than either on issue 11's development "
                             "set). Files are paths or the bundled names (bundled, bundled-linear, ...).")
    blend.add_argument("files", nargs="+", metavar="WEIGHTS", help="two or more weights files or bundled names")
    blend.add_argument("--shares", type=float, nargs="+", default=None, help="one positive share per file "
                       "(default: equal)")
    blend.add_argument("--out", required=True, help="weights file to write")
    blend.set_defaults(func=run_blend)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_fit(args: argparse.Namespace) -> int:
    total = args.samples * len(args.tokens)
    if total <= args.held_out or args.held_out < 1:
        print(f"error: the calibration contexts ({args.samples} x {len(args.tokens)} size(s)) must outnumber "
              f"--held-out ({args.held_out}), which must be >= 1", file=sys.stderr)
        return 2
    if args.question_weight <= 0:
        print(f"error: --question-weight must be positive, got {args.question_weight}", file=sys.stderr)
        return 2
    if args.answer_weight < 0 or (args.answer_weight and args.target == "reconstruction"):
        print(f"error: --answer-weight must be >= 0 and needs --target questions or both, got {args.answer_weight} "
              f"with --target {args.target}", file=sys.stderr)
        return 2
    if args.hidden < 0 or args.steps < 1:
        print(f"error: --hidden must be >= 0 and --steps >= 1, got {args.hidden} and {args.steps}", file=sys.stderr)
        return 2
    if not 0.0 <= args.floor_quantile < 1.0:
        print(f"error: --floor-quantile must be in [0, 1), got {args.floor_quantile}", file=sys.stderr)
        return 2
    if min(args.tokens) < 64:
        print(f"error: --tokens must be at least 64, got {min(args.tokens)}", file=sys.stderr)
        return 2
    from kvpilot.engine import Engine
    from kvpilot.engine.model import resolve_model_dir
    from kvpilot.engine.prompts import chat_parts
    from kvpilot.evaluation.surrogate import (
        ReadingStore,
        calibration_answers,
        calibration_questions,
        fit_surrogate,
        save_weights,
    )
    from kvpilot.paths import kvpilot_home
    from kvpilot.workloads.registry import generate

    model_dir = resolve_model_dir(args.model)
    engine = Engine.load(args.model)
    opts = {"n_facts": 10, "n_questions": 10} if args.target != "reconstruction" and args.workload == "convqa" else {}
    by_size = [generate(args.workload, args.samples, tokens, seed=args.seed, tokenizer=engine.tokenizer, **opts)
               for tokens in args.tokens]
    samples = [s for group in zip(*by_size, strict=True) for s in group]  # interleaved: held-out ones of each size
    contexts = [chat_parts(engine.tokenizer, s.context, s.qa[0].question if s.qa else "").context_ids
                for s in samples]
    questions = answers = None
    if args.target != "reconstruction":
        if not all(s.qa for s in samples):
            print(f"error: --target {args.target} needs a workload with questions; {args.workload} has none",
                  file=sys.stderr)
            return 2
        questions = [calibration_questions(engine.tokenizer, s) for s in samples]
        answers = [calibration_answers(engine.tokenizer, s) for s in samples] if args.answer_weight else None
    progress = (lambda it: it) if args.quiet else None
    data = fit_surrogate(engine.model, contexts, engine.reconstruction_queries, held_out=args.held_out,
                         ridge=args.ridge, name=model_dir.name, progress=progress, questions=questions,
                         target=args.target, question_weight=args.question_weight, hidden=args.hidden,
                         steps=args.steps, seed=args.seed, answers=answers, answer_weight=args.answer_weight,
                         store=ReadingStore(args.data_dir) if args.data_dir else None,
                         floor_quantile=args.floor_quantile)
    out = save_weights(data, args.out or kvpilot_home() / "surrogates" / f"{model_dir.name}.json")
    fit = data["fit"]
    print(f"fitted on {fit['contexts']} contexts ({fit['pairs']} pairs); held-out Spearman "
          f"{fit['held_out_spearman_mean']:.3f} over {fit['held_out_contexts']} contexts")
    print(f"wrote {out}")
    print(json.dumps({"policy": "surrogate", "policy_params": {"weights": str(out)}}))
    return 0


def run_blend(args: argparse.Namespace) -> int:
    from kvpilot.evaluation.surrogate import blend_weights, save_weights
    from kvpilot.policies.surrogate import SurrogateError, load_weights

    try:
        data = blend_weights([load_weights(f) for f in args.files], args.shares)
    except (SurrogateError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = save_weights(data, args.out)
    print(f"wrote {out} (the mean of {len(args.files)} files' scores)")
    print(json.dumps({"policy": "surrogate", "policy_params": {"weights": str(out)}}))
    return 0
