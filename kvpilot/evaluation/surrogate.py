"""Fitting the `surrogate` policy: a per-model linear model of KVzip's reconstruction scores.

Calibration contexts are prefilled with reconstruction scoring (the expensive pass, once, offline) and
nothing evicted; each cached pair's features (`kvpilot.policies.surrogate.pair_features`) and the log of
its reconstruction score become one regression row of its (layer, KV head). Ridge regression per head
(normal equations accumulated context by context, so memory stays small) gives the weights; contexts held
out of the fit measure how well the prediction ranks the pairs (Spearman per head, averaged), which is
what selection uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.generation import Reconstruction, prefill
from kvpilot.policies.surrogate import FEATURES, FORMAT, feature_count, pair_features

SCORE_FLOOR = 1e-6  # reconstruction scores are probabilities; the log needs a floor for pairs nobody read
CALIBRATION = KVConfig(policy="kvzip", scoring="reconstruct", compression_ratio=0.5)


def scored_layers(model: Any, context_ids: Sequence[int], reconstruction: Reconstruction,
                  config: KVConfig = CALIBRATION, features: str = FEATURES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: features [H_kv, n, F] and log reconstruction scores [H_kv, n] of the context's pairs
    (the attention sinks left out: they are always kept)."""
    cache = ManagedCache.for_model(model, config)
    with torch.inference_mode():
        prefill(model, cache, context_ids, reconstruction=reconstruction, evict=False)
    out = []
    for layer in cache.layers:
        assert layer.keys is not None and layer.values is not None and layer.positions is not None
        scores = layer.stats.scoring_mass
        if scores is None:
            raise RuntimeError(f"layer {layer.layer_idx} recorded no reconstruction scores")
        keep = layer.positions[0] >= config.sink_tokens
        feats = pair_features(layer.keys[0], layer.values[0], features=features, positions=layer.positions,
                              seen=layer.seen, rope=cache.rope)[:, keep]
        target = scores[:, : keep.numel()][:, keep].float().clamp_min(SCORE_FLOOR).log()
        out.append((feats.cpu(), target.cpu()))
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by order; fine for continuous scores)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom else 0.0


def fit_surrogate(
    model: Any,
    contexts: Sequence[Sequence[int]],
    reconstruction: Reconstruction,
    *,
    held_out: int = 1,
    ridge: float = 1e-3,
    name: str = "",
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Weights for the `surrogate` policy, fitted on ``contexts[held_out:]`` and checked on the first ones.

    Returns the JSON-ready weights file (`save_weights` writes it): format, feature set, the model shape it
    fits, the weights [layers][KV heads][features] and the fit's figures.
    """
    if len(contexts) <= held_out:
        raise ValueError(f"need more than {held_out} calibration contexts (held_out={held_out}), got {len(contexts)}")
    wrap = progress or (lambda it: tqdm(it, desc="calibration contexts", unit="ctx"))
    xtx: list[torch.Tensor] = []
    xty: list[torch.Tensor] = []
    tests: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    pairs = 0
    for i, ctx in enumerate(wrap(list(contexts))):
        layers = scored_layers(model, ctx, reconstruction)
        if i < held_out:
            tests.append(layers)
            continue
        for li, (feats, target) in enumerate(layers):
            x, y = feats.double(), target.double()
            a = torch.einsum("hnf,hng->hfg", x, x)
            b = torch.einsum("hnf,hn->hf", x, y)
            if li == len(xtx):
                xtx.append(a)
                xty.append(b)
            else:
                xtx[li] += a
                xty[li] += b
            pairs += target.numel()
    weights = []
    for a, b in zip(xtx, xty, strict=True):
        eye = torch.eye(a.shape[-1], dtype=a.dtype)
        scale = a.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
        weights.append(torch.linalg.solve(a + ridge * scale * eye, b[..., None]).squeeze(-1).float())  # [H, F]
    by_layer = []
    for li, w in enumerate(weights):
        rhos = []
        for layers in tests:
            feats, target = layers[li]
            pred = (feats @ w[:, :, None]).squeeze(-1)
            rhos += [spearman(pred[h], target[h]) for h in range(target.shape[0])]
        by_layer.append(sum(rhos) / len(rhos))
    head_dim = next(d for d in range(2, 4096, 2) if feature_count(d) == weights[0].shape[-1])
    return {
        "format": FORMAT,
        "features": FEATURES,
        "model": name,
        "num_layers": len(weights),
        "num_kv_heads": int(weights[0].shape[0]),
        "head_dim": head_dim,
        "weights": [w.tolist() for w in weights],
        "fit": {
            "contexts": len(contexts) - held_out,
            "held_out_contexts": held_out,
            "pairs": pairs,
            "ridge": ridge,
            "target": f"log(max(reconstruction score, {SCORE_FLOOR}))",
            "held_out_spearman_mean": sum(by_layer) / len(by_layer),
            "held_out_spearman_by_layer": [round(r, 4) for r in by_layer],
        },
    }


def save_weights(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


__all__ = ["fit_surrogate", "save_weights", "scored_layers", "spearman"]
