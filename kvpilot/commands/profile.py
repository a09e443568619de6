"""`kvpilot profile`: measure how sensitive each layer is to eviction and save the profile in the store.

By default the quick methods on one 512-token calibration sample (seconds); add --method ablation_kl and
more --samples / --tokens for the most faithful profile (minutes).

Methods (higher = more sensitive; see kvpilot.evaluation.sensitivity):
  ablation_kl    compress only layer l with --policy at the budget, logit KL vs the full cache
  key_cosine     EpiCache: 1 - cosine of each layer's keys under a block-prefill mask vs the full mask
  retained_mass  1 - attention mass of the top-B keys (the online probe's proxy), from one prefill

Use a saved profile with KVConfig(layer_allocation="sensitivity", sensitivity_profile=[...]); the printed
JSON line is ready to paste into a config file.
"""

from __future__ import annotations

import argparse
import json

from kvpilot.commands.db import add_db_option

QUICK_METHODS = ("key_cosine", "retained_mass")  # one prefill or two per sample; ablation_kl is 30 per sample


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure per-layer sensitivity to eviction and save it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_db_option(p)
    p.add_argument("--model", default=None, help="local HF model directory (default: the bundled model)")
    p.add_argument("--method", action="append", choices=("ablation_kl", "key_cosine", "retained_mass"),
                   help="method (repeatable; default: the quick ones, key_cosine and retained_mass; ablation_kl "
                        "runs one ablation per layer and sample, minutes on a CPU)")
    p.add_argument("--workload", default="convqa", help="calibration workload (default convqa)")
    p.add_argument("-n", "--samples", type=int, default=1, help="calibration samples (default 1)")
    p.add_argument("--tokens", type=int, default=512, help="calibration context tokens (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default="snapkv", help="policy for ablation_kl (default snapkv)")
    p.add_argument("--compression-ratio", type=float, default=0.75, help="budget as a ratio (default 0.75)")
    p.add_argument("--continuation", type=int, default=16, help="teacher-forced tokens for the KL (default 16)")
    p.add_argument("--block", type=int, default=256, help="key_cosine block size (default 256)")
    p.add_argument("--sink", type=int, default=16, help="key_cosine sink tokens (default 16)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write to the store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def format_table(profiles: dict) -> str:
    """Layer-by-layer table of several profiles (values and their rank, 0 = most sensitive)."""
    names = list(profiles)
    n = len(next(iter(profiles.values())).values)
    ranks = {}
    for name, prof in profiles.items():
        order = sorted(range(n), key=lambda i: -prof.values[i])
        ranks[name] = {layer: r for r, layer in enumerate(order)}
    head = "layer  " + "  ".join(f"{name:>20}" for name in names)
    lines = [head, "-" * len(head)]
    for layer in range(n):
        cells = [f"{profiles[m].values[layer]:>14.5f} (#{ranks[m][layer]:>2})" for m in names]
        lines.append(f"{layer:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kvpilot.engine import Engine
    from kvpilot.errors import KVPilotError
    from kvpilot.evaluation.sensitivity import calibration_samples, profile_layers, save_profile
    from kvpilot.storage import Store

    methods = args.method or list(QUICK_METHODS)
    if args.samples < 1 or args.tokens < 16:
        raise KVPilotError(f"need --samples >= 1 and --tokens >= 16, got {args.samples} and {args.tokens}")
    engine = Engine.load(args.model)
    samples = calibration_samples(engine.tokenizer, args.workload, args.samples, args.tokens, args.seed)
    model_name = args.model or "bundled"
    store = None if args.no_save else Store.open(args.db)
    profiles = {}
    try:
        for method in methods:
            bar = tqdm(desc=method, unit="run", disable=args.quiet)

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            profiles.update(profile_layers(
                engine.model, samples, [method], policy=args.policy, compression_ratio=args.compression_ratio,
                continuation=args.continuation, block=args.block, sink=args.sink, progress=progress,
            ))
            bar.close()
        print(format_table(profiles))
        for method, prof in profiles.items():
            saved = ""
            if store is not None:
                run_id = store.start_run("probe", name=f"profile {method} {model_name}",
                                         params={"method": method, **prof.meta})
                pid = save_profile(store, model_name, prof, run_id=run_id)
                store.finish_run(run_id, metrics={"profile_id": pid})
                saved = f" (saved as profile {pid} for model {model_name!r})"
            print(f"{method}{saved}: " + json.dumps({"layer_allocation": "sensitivity",
                                                     "sensitivity_profile": [round(v, 6) for v in prof.values]}))
    finally:
        if store is not None:
            store.close()
    return 0
