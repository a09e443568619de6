"""Compressed configs against the full cache on the same questions, per size and pooled over sizes and seeds.

`conversation_compression.py` keeps each row's per-question scores; this reads its result files (one run or
several, one size and ratio each) and the full cache's rows, pairs every compressed row with the full cache
at its seed and size, and reports the difference in accuracy with Newcombe's paired 95 % interval, per size
and pooled over every size and seed a config was run at (all its questions together, each still paired with
its own full-cache answer); and each config against every config before it at the same ratio, the same way.
Pooling 360 questions narrows the interval enough to say whether a ratio keeps what the full cache answers,
which 120 questions at one size cannot; a second evaluation seed (another `--full` file, one per seed) gives
720 and a check that the first seed was not a lucky or unlucky draw.

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

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.policies.surrogate import BY_BUDGET, weights_for  # noqa: E402


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def resolved_config(row: dict) -> dict | None:
    """The row's config with `weights="by-budget"` replaced by the weights it chose at that budget, so that a
    by-budget row and a row naming those weights count as the one config they computed."""
    config = row.get("config")
    if not config:
        return None
    params = config.get("policy_params") or {}
    weights = params.get("weights")
    if config.get("policy") == "surrogate" and weights == BY_BUDGET:
        params = {**params, "weights": weights_for(weights, KVConfig.parse(config), row["tokens"])}
    return {**config, "policy_params": params}


def config_key(row: dict) -> str:
    """What identifies a compressed config across sizes and seeds: its side, what it computes (the resolved
    config; the family name for kvpress's rows) and its ratio."""
    config = resolved_config(row)
    what = row["family"] if config is None else json.dumps({k: v for k, v in config.items()
                                                            if k != "compression_ratio"}, sort_keys=True)
    return f"{row['side']} | {what} | ratio {row['ratio']}"


def label(members: list[dict]) -> str:
    """How a config reads in the summary: side, family names (all that ran it), weights and ratio."""
    first = members[0]
    families = " / ".join(dict.fromkeys(r["family"] for r in members))
    weights = ((resolved_config(first) or {}).get("policy_params") or {}).get("weights")
    return f"{first['side']} | {families}" + (f" | weights {weights}" if weights else "") + f" | ratio {first['ratio']}"


Cell = tuple[int, int]  # (seed, context tokens): the questions a row answered


def cell(row: dict) -> Cell:
    return row["seed"], row["tokens"]


def group_by_config(full_rows: dict[Cell, dict], rows: list[dict]) -> dict[str, list[dict]]:
    """Compressed rows by config (in the order first seen, named by `label`), each config's rows by seed and
    size, where the full cache ran."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if cell(row) in full_rows and row["ratio"] > 0:
            groups.setdefault(config_key(row), []).append(row)
    named: dict[str, list[dict]] = {}
    for members in groups.values():
        members.sort(key=cell)
        name, n = label(members), 2
        while name in named:  # same family and weights, other settings (another version's defaults, say)
            name, n = f"{label(members)} | variant {n}", n + 1
        named[name] = members
    return named


def between_configs(groups: dict[str, list[dict]]) -> list[dict]:
    """Each config against every config listed before it at the same ratio, on the seeds and sizes both ran:
    the difference (later minus earlier) per size and pooled, paired on the same questions."""
    out = []
    keys = list(groups)
    for i, later in enumerate(keys):
        for earlier in keys[:i]:
            if groups[later][0]["ratio"] != groups[earlier][0]["ratio"]:
                continue
            theirs_by_cell = {cell(r): r["scores"] for r in groups[earlier]}
            pairs = [(cell(r), r["scores"], theirs_by_cell[cell(r)]) for r in groups[later]
                     if len(theirs_by_cell.get(cell(r), [])) == len(r["scores"])]
            if not pairs:
                continue
            out.append({"config": later, "against": earlier,
                        "sizes": [{"seed": c[0], "tokens": c[1], **paired_difference(mine, theirs)}
                                  for c, mine, theirs in pairs],
                        "pooled": paired_difference([x for _, m, _ in pairs for x in m],
                                                   [x for _, _, t in pairs for x in t])})
    return out


def summarise(groups: dict[str, list[dict]], full_rows: dict[Cell, dict]) -> list[dict]:
    """Each config against the full cache, per seed and size, and pooled."""
    out = []
    for key, members in groups.items():
        mine: list[float] = []
        theirs: list[float] = []
        sizes = []
        for row in members:
            full = full_rows[cell(row)]
            if len(full["scores"]) != len(row["scores"]):
                raise ValueError(f"{key} at {row['tokens']} tokens: {len(row['scores'])} questions, the full "
                                 f"cache {len(full['scores'])}: not the same samples")
            sizes.append({"seed": row["seed"], "tokens": row["tokens"], "accuracy": row["accuracy"],
                          "full_accuracy": full["accuracy"], **paired_difference(row["scores"], full["scores"]),
                          "n_questions": len(row["scores"])})
            mine += row["scores"]
            theirs += full["scores"]
        full_acc = sum(theirs) / len(theirs)
        out.append({"config": key, "sizes": sizes, "pooled": {
            "seeds": sorted({s["seed"] for s in sizes}), "tokens": sorted({s["tokens"] for s in sizes}),
            "n_questions": len(mine), "accuracy": sum(mine) / len(mine),
            "full_accuracy": full_acc, "share_of_full": (sum(mine) / len(mine)) / full_acc if full_acc else None,
            **paired_difference(mine, theirs)}})
    return out


def read_runs(full_names: list[str], run_names: list[str]) -> tuple[dict[Cell, dict], list[dict]]:
    """The full cache's rows by (seed, size), from one file per seed, and every run's scored rows tagged with
    their seed; a run whose samples no full file answered is an error."""
    full_by_samples: dict[tuple, str] = {}
    full_rows: dict[Cell, dict] = {}
    for name in full_names:
        data = load(name)
        if samples_of(data) in full_by_samples:
            raise ValueError(f"{name} and {full_by_samples[samples_of(data)]} ran the same samples: give one")
        full_by_samples[samples_of(data)] = name
        full_rows.update({(data["seed"], t): r for t, r in full_cache_rows(data).items()})
    rows = []
    for name in run_names:
        data = load(name)
        if samples_of(data) not in full_by_samples:
            raise ValueError(f"{name} ran other samples than {' or '.join(full_names)} (seed, samples, questions)")
        rows += [{**r, "seed": data["seed"]} for r in data["rows"] if "scores" in r]
    return full_rows, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", nargs="+", required=True, metavar="NAME",
                    help="result files with the full cache's rows, one per evaluation seed")
    ap.add_argument("--runs", nargs="+", required=True, metavar="NAME", help="result files with compressed rows")
    ap.add_argument("--out", default="paired_summary")
    args = ap.parse_args()
    try:
        full_rows, rows = read_runs(args.full, args.runs)
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
    save(args.out, {"full": args.full, "runs": args.runs, "seeds": sorted({seed for seed, _ in full_rows}),
                    "summary": summary, "between_configs": between})
    print(f"wrote benchmarks/results/{args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
