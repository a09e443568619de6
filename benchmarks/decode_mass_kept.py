"""Which heads does a policy starve? Share of the full cache's answer-time attention each policy keeps.

For one passkey prompt (context + question, compressed together: query-aware), the full cache answers
and the attention mass of every answer token's query over the prompt is summed per layer and KV head.
Each policy then compresses the same prompt; the figure per head is the share of that mass falling on
the tokens it kept. Sink tokens and the protected recent window are left out of both sides (every
policy keeps them), so the figure measures the choice among the tokens a policy actually chooses.

    OMP_NUM_THREADS=2 python benchmarks/decode_mass_kept.py --ratio 0.5

Writes benchmarks/results/decode_mass_kept.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import save  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.engine.prompts import chat_parts  # noqa: E402
from kvpilot.policies import POLICY_REGISTRY  # noqa: E402
from kvpilot.workloads import generate  # noqa: E402


class AnswerAttention:
    """Observer summing each decode step's attention over the first `n` keys, per layer and KV head."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.mass: dict[int, torch.Tensor] = {}

    def on_attention(self, cache, layer_idx, query, key, valid, scaling) -> None:
        if query.shape[2] != 1:  # prefill: not an answer token
            return
        group = query.shape[1] // key.shape[1]
        keys = key[0].float().repeat_interleave(group, dim=0)  # [H, n_all, d]
        probs = torch.softmax(torch.einsum("hd,hnd->hn", query[0, :, 0].float(), keys) * scaling, dim=-1)
        per_kv = probs[:, : self.n].reshape(key.shape[1], group, self.n).sum(dim=1)
        self.mass[layer_idx] = self.mass.get(layer_idx, 0) + per_kv

    def on_evict(self, *args) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--answer-tokens", type=int, default=8)
    args = ap.parse_args()

    engine = Engine.load()
    sample = generate("passkey", 1, args.tokens, seed=args.seed, tokenizer=engine.tokenizer)[0]
    qa = sample.qa[0]
    parts = chat_parts(engine.tokenizer, sample.context, qa.question, qa.answer_prefix)
    ids = parts.context_ids + parts.question_ids
    n = len(ids)

    probe = AnswerAttention(n)
    engine.observer = probe
    engine.apply_config(KVConfig())
    answer = engine.run(ids, [], args.answer_tokens)[0].text
    engine.observer = None
    defaults = KVConfig()
    chosen = torch.ones(n, dtype=torch.bool)
    chosen[: defaults.sink_tokens] = False
    chosen[n - defaults.window :] = False
    full = {layer: m[:, chosen] / m[:, chosen].sum(dim=-1, keepdim=True) for layer, m in probe.mass.items()}

    rows = []
    for policy in sorted(p for p in POLICY_REGISTRY if p != "full"):
        config = KVConfig(policy=policy, compression_ratio=args.ratio)
        cache = engine.new_cache(config)
        engine.compress(cache, ids)
        shares = []
        for layer_idx, layer in enumerate(cache.layers):
            for head in range(layer.positions.shape[0]):
                keep = torch.zeros(n, dtype=torch.bool)
                pos = layer.positions[head][layer.valid_mask()[head]]
                keep[pos[pos < n]] = True
                shares.append((float(full[layer_idx][head][keep[chosen]].sum()), layer_idx, head))
        values = sorted(s for s, _, _ in shares)
        worst = min(shares)
        rows.append({
            "policy": policy,
            "mean_share": sum(values) / len(values),
            "median_share": values[len(values) // 2],
            "min_share": worst[0],
            "worst_layer": worst[1],
            "worst_kv_head": worst[2],
            "heads_below_half": sum(v < 0.5 for v in values),
            "heads": len(values),
            "per_head": [{"layer": ly, "kv_head": h, "share": s} for s, ly, h in shares],
        })
    print(f"passkey, {n} prompt tokens, query-aware, ratio {args.ratio}; full-cache answer: {answer!r}")
    lines = ["| policy | mean share kept | median | worst head (layer, KV head) | heads < 50 % |",
             "| --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: -r["mean_share"]):
        lines.append(f"| {r['policy']} | {r['mean_share']:.2f} | {r['median_share']:.2f} | "
                     f"{r['min_share']:.2f} ({r['worst_layer']}, {r['worst_kv_head']}) | "
                     f"{r['heads_below_half']} / {r['heads']} |")
    markdown = "\n".join(lines)
    print(markdown)
    path = save("decode_mass_kept", {"setup": vars(args), "prompt_tokens": n, "full_answer": answer,
                                     "rows": rows, "markdown": markdown})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
