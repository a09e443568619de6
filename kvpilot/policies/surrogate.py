"""`surrogate`: KVzip's reconstruction score predicted from each pair's own key and value (the KVzap idea).

Reconstruction scoring (`scoring="reconstruct"`) keeps every fact but costs a second pass over the whole
context. This policy replaces that pass by a small per-model linear model, fitted once on reconstruction
scores of calibration text (`kvpilot surrogate fit`, or `kvpilot.evaluation.surrogate.fit_surrogate`), that
predicts the log of a pair's reconstruction score from features the cache already holds:

- the norm of each RoPE rotation pair of the key (``|(k_j, k_j+d/2)|``): what the key can match, whatever
  its position (the rotation leaves these norms unchanged);
- the value vector and its norm: what the pair would write if attended.

One weight vector per (layer, KV head); scoring costs one small matrix product per layer, so the prefill
costs what a plain prefill costs. The weights file records the model shape it was fitted on and is
refused on another. ``weights="bundled"`` is the file fitted for the bundled SmolLM2-135M.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvpilot.errors import KVPilotError
from kvpilot.plugins import param
from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs

if TYPE_CHECKING:
    import torch

FORMAT = 1
FEATURES = "rope_pair_norms+value+value_norm+bias"
BUNDLED = Path(__file__).with_name("surrogates") / "smollm2-135m-instruct.json"


class SurrogateError(KVPilotError, ValueError):
    """A surrogate weights file that is missing, malformed or fitted for another model shape."""


def pair_features(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[H_kv, n, F] features of each cached pair: key RoPE-pair norms, the value, its norm, and 1."""
    import torch

    k, v = keys.float(), values.float()
    half = k.shape[-1] // 2
    pair_norms = torch.sqrt(k[..., :half] ** 2 + k[..., half : 2 * half] ** 2)
    ones = torch.ones(*v.shape[:-1], 1, dtype=v.dtype, device=v.device)
    return torch.cat([pair_norms, v, v.norm(dim=-1, keepdim=True), ones], dim=-1)


def feature_count(head_dim: int) -> int:
    return head_dim // 2 + head_dim + 2


@lru_cache(maxsize=8)
def load_weights(path: str) -> dict[str, Any]:
    """The weights file as written by the fit (checked for format and shape consistency)."""
    file = BUNDLED if path == "bundled" else Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SurrogateError(f"surrogate weights not found: {file} (write one with `kvpilot surrogate fit`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SurrogateError(f"{file}: not a surrogate weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("features") != FEATURES:
        raise SurrogateError(f"{file}: not a format-{FORMAT} surrogate weights file with features {FEATURES}")
    w = data.get("weights")
    layers, heads, dim = data.get("num_layers"), data.get("num_kv_heads"), data.get("head_dim")
    if not (isinstance(w, list) and isinstance(dim, int) and len(w) == layers and all(len(h) == heads for h in w)
            and all(len(f) == feature_count(dim) for h in w for f in h)):
        raise SurrogateError(f"{file}: weights do not match the declared shape ({layers} layers, {heads} KV heads)")
    return data


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class SurrogatePolicy(Policy):
    """Score = the fitted linear model's predicted log reconstruction score of each pair."""

    name = "surrogate"
    description = ("KVzap-style: a per-model linear model predicts KVzip's reconstruction score from each "
                   "pair's key and value; no second pass")
    needs_profile = True

    weights: str = param("bundled", description="weights file written by `kvpilot surrogate fit`, or 'bundled' "
                         "(fitted for the bundled SmolLM2-135M)")

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        import torch

        data = load_weights(self.weights)
        h_kv, _, d = inp.keys.shape
        if (data["num_kv_heads"], data["head_dim"]) != (h_kv, d) or inp.layer_idx >= data["num_layers"]:
            raise SurrogateError(
                f"surrogate weights {self.weights!r} were fitted for {data['num_layers']} layers x "
                f"{data['num_kv_heads']} KV heads x head dim {data['head_dim']}; this model has {h_kv} KV heads "
                f"x head dim {d} (fit one for it with `kvpilot surrogate fit`)"
            )
        w = torch.tensor(data["weights"][inp.layer_idx], dtype=torch.float32, device=inp.keys.device)  # [H, F]
        return (pair_features(inp.keys, inp.values) @ w[:, :, None]).squeeze(-1)
