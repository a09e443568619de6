"""Compressed configs against the full cache on the same questions, per size and pooled over sizes.

`conversation_compression.py` keeps each row's per-question scores; this reads its result files (one run or
several, one size and ratio each) and the full cache's rows, pairs every compressed row with the full cache
at its size, and reports the difference in accuracy with Newcombe's paired 95 % interval, per size and pooled
over the sizes a config was run at (all its questions together, each still paired with its own full-cache
answer); and each config against every config before it at the same ratio, the same way. Pooling 360
questions narrows the interval enough to say whether a ratio keeps what the full cache answers, which 120
questions at one size cannot.

    python benchmarks/paired_summary.py --full convqa_full_cache_120q_scores \\
        --runs cc120_a10_1000_8x cc120_a10_2000_8x cc120_a10_4000_8x --out paired_summary

Writes benchmarks/results/NAME.json (default paired_summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, save  # noqa: E402
from paired_rows import full_cache_rows, paired_difference, samples_of  # noqa: E402


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def config_key(row: dict) -> str:
    """What identifies a compressed config across sizes: its side, family and weights, and its ratio."""
    weights = (row.get("config") or {}).get("policy_params", {}).get("weights")
    return f"{row['side']} | {row['family']}" + (f" | weights {weights}" if weights else "") + f" | ratio {row['ratio']}"


def group_by_config(full_rows: dict[int, dict], rows: list[dict]) -> dict[str, list[dict]]:
    """Compressed rows by config (in the order first seen), each config's rows by size, where the full cache ran."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["tokens"] in full_rows and row["ratio"] > 0:
            groups.setdefault(config_key(row), []).append(row)
    for members in groups.values():
        members.sort(key=lambda r: r["tokens"])
    return groups


def between_configs(groups: dict[str, list[dict]]) -> list[dict]:
    """Each config against every config listed before it at the same ratio, on the sizes both ran: the
    difference (later minus earlier) per size and pooled, paired on the same questions."""
    out = []
    keys = list(groups)
    for i, later in enumerate(keys):
        for earlier in keys[:i]:
            if groups[later][0]["ratio"] != groups[earlier][0]["ratio"]:
                continue
            theirs_by_size = {r["tokens"]: r["scores"] for r in groups[earlier]}
            pairs = [(r["tokens"], r["scores"], theirs_by_size[r["tokens"]]) for r in groups[later]
                     if len(theirs_by_size.get(r["tokens"], [])) == len(r["scores"])]
            if not pairs:
                continue
            out.append({"config": later, "against": earlier,
                        "sizes": [{"tokens": t, **paired_difference(mine, theirs)} for t, mine, theirs in pairs],
                        "pooled": paired_difference([x for _, m, _ in pairs for x in m],
                                                   [x for _, _, t in pairs for x in t])})
    return out


def summarise(groups: dict[str, list[dict]], full_rows: dict[int, dict]) -> list[dict]:
    """Each config against the full cache, per size and pooled."""
    out = []
    for key, members in groups.items():
        mine: list[float] = []
        theirs: list[float] = []
        sizes = []
        for row in members:
            full = full_rows[row["tokens"]]
            if len(full["scores"]) != len(row["scores"]):
                raise ValueError(f"{key} at {row['tokens']} tokens: {len(row['scores'])} questions, the full "
                                 f"cache {len(full['scores'])}: not the same samples")
            sizes.append({"tokens": row["tokens"], "accuracy": row["accuracy"], "full_accuracy": full["accuracy"],
                          **paired_difference(row["scores"], full["scores"]), "n_questions": len(row["scores"])})
            mine += row["scores"]
            theirs += full["scores"]
        full_acc = sum(theirs) / len(theirs)
        out.append({"config": key, "sizes": sizes, "pooled": {
            "tokens": [s["tokens"] for s in sizes], "n_questions": len(mine), "accuracy": sum(mine) / len(mine),
            "full_accuracy": full_acc, "share_of_full": (sum(mine) / len(mine)) / full_acc if full_acc else None,
            **paired_difference(mine, theirs)}})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", required=True, metavar="NAME", help="result file with the full cache's rows")
    ap.add_argument("--runs", nargs="+", required=True, metavar="NAME", help="result files with compressed rows")
    ap.add_argument("--out", default="paired_summary")
    args = ap.parse_args()
    try:
        full_data = load(args.full)
        full_rows = full_cache_rows(full_data)
        rows = []
        for name in args.runs:
            data = load(name)
            if samples_of(data) != samples_of(full_data):
                raise ValueError(f"{name} ran other samples than {args.full} (seed, samples, questions)")
            rows += [r for r in data["rows"] if "scores" in r]
        groups = group_by_config(full_rows, rows)
        summary, between = summarise(groups, full_rows), between_configs(groups)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for item in summary:
        p = item["pooled"]
        low, high = p["difference_95"]
        print(f"{item['config']}: {p['accuracy']:.3f} vs full {p['full_accuracy']:.3f} over {p['n_questions']} "
              f"questions ({p['share_of_full']:.0%}), difference {p['difference']:+.3f} [{low:+.3f}, {high:+.3f}]")
    for item in between:
        p = item["pooled"]
        low, high = p["difference_95"]
        print(f"{item['config']} minus {item['against']}: {p['difference']:+.3f} [{low:+.3f}, {high:+.3f}]")
    save(args.out, {"full": args.full, "runs": args.runs, "seed": full_data["seed"], "summary": summary,
                    "between_configs": between})
    print(f"wrote benchmarks/results/{args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
