"""Attention skew (concentration) metrics of sampled attention rows, per query head, in fp32.

Input is the attention mass each key received from a few sampled query rows (``AttentionStats.head_mass``),
normalised per head into one distribution over the keys. The metrics (algorithms.md section 13) say how
many keys a head really needs, which is what an eviction budget has to cover:

- ``entropy``: Shannon entropy divided by ``log(n)`` (0 = one key, 1 = uniform over the n valid keys);
- ``retained_mass``: mass of the top-B keys, B = the layer's configured budget (1 - it bounds what
  eviction at that budget can lose; also the online sensitivity proxy);
- ``tokens_90``: fewest keys that hold 90 % of the mass;
- ``sink_mass`` / ``recent_mass``: mass on the first ``sink_tokens`` logical positions / on the last
  ``recent_window`` positions seen (logical positions, so they stay right after eviction);
- ``gini``: 0 = uniform, (n-1)/n = one-hot.

All of it runs as a handful of batched tensor ops on the attention's device, with no host sync, so a
probe can stack the results of every layer and copy them to the host once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvpilot.kernels import attention_stats
from kvpilot.probes.base import Probe, ProbeContext

# Column order of the [H, len(METRICS)] tensor returned by `skew_metrics`.
METRICS = ("entropy", "retained_mass", "tokens_90", "sink_mass", "recent_mass", "gini", "kept_tokens")
_TINY = 1e-30


@dataclass(frozen=True)
class SkewParams:
    """What the metrics measure against: the budget and the protected spans, in tokens."""

    budget: int
    sink_tokens: int = 4
    recent_window: int = 16
    tau: float = 0.9


def skew_metrics(
    mass: torch.Tensor,
    params: SkewParams,
    *,
    valid: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    seen: int | None = None,
) -> torch.Tensor:
    """Metrics [H, 7] (columns in `METRICS`) of per-head attention mass ``mass`` [H, n].

    ``valid`` [H, n] marks real keys (padding excluded from n and from every metric); ``positions``
    [H, n] are the keys' logical positions and ``seen`` the tokens seen so far (both default to
    physical order, i.e. an uncompressed cache). ``mass`` need not be normalised.
    """
    mass = mass.float()
    h, n = mass.shape
    if valid is not None:
        mass = mass * valid
        n_valid = valid.sum(-1).float()
    else:
        n_valid = torch.full((h,), float(n), device=mass.device)
    p = mass / mass.sum(-1, keepdim=True).clamp_min(_TINY)

    ent = (-(p * torch.where(p > 0, p, torch.ones_like(p)).log()).sum(-1)).clamp_min(0) + 0.0
    log_n = n_valid.clamp_min(1).log()
    entropy = torch.where(n_valid > 1, ent / log_n.clamp_min(_TINY), torch.zeros_like(ent))

    desc = p.sort(dim=-1, descending=True).values
    csum = desc.cumsum(-1)
    b = max(1, min(int(params.budget), n))
    retained = csum[:, b - 1].clamp(max=1.0)
    tokens_tau = ((csum < params.tau - 1e-6).sum(-1) + 1).float()
    tokens_tau = torch.minimum(tokens_tau, n_valid.clamp_min(1))

    asc = desc.flip(-1)  # padding (zero mass) first
    rank = torch.arange(1, n + 1, device=mass.device, dtype=torch.float32)[None, :] - (n - n_valid)[:, None]
    nv = n_valid.clamp_min(1)[:, None]
    gini = ((2 * rank - nv - 1) * asc).sum(-1) / nv[:, 0]

    if positions is None:
        positions = torch.arange(n, device=mass.device).expand(h, n)
    seen = n if seen is None else seen
    sink = (p * (positions < params.sink_tokens)).sum(-1)
    recent = (p * (positions >= seen - params.recent_window)).sum(-1)
    return torch.stack([entropy, retained, tokens_tau, sink, recent, gini, n_valid], dim=-1)


def skew_dict(values: torch.Tensor) -> list[dict[str, float]]:
    """Rows of named metrics from a [H, 7] tensor (host side; for tests and reports)."""
    return [dict(zip(METRICS, row, strict=True)) for row in values.tolist()]



class SkewProbe(Probe):
    """Skew of sampled attention rows per layer and query head, from the stats kernel's ``head_mass``.

    The budget B of ``retained_mass`` is the layer's budget under the cache's config; for a cache that
    never evicts it is ``proxy_budget`` (when given) or the whole cache (then retained mass is 1). Rows
    are taken before the forward's own eviction, so at prefill they say what eviction to B keeps.

    The inference thread pays only for the stats kernel. The metrics (a sort per head) run in the
    recorder thread on CPU; on CUDA they run on the device after the last layer and one small
    [L, H, 7] tensor is copied to pinned host memory without a sync.
    """

    name = "skew"

    def __init__(self, *, proxy_budget: int | None = None, sink_tokens: int | None = None,
                 recent_window: int | None = None, per_head: bool = True, prefill_rows: int = 4):
        super().__init__()
        self.proxy_budget = proxy_budget
        self.sink_tokens = sink_tokens
        self.recent_window = recent_window
        self.per_head = per_head
        self.prefill_rows = prefill_rows

    @classmethod
    def from_context(cls, context: ProbeContext) -> SkewProbe:
        policy = context.policy
        return cls(proxy_budget=context.proxy_budget, per_head=policy.per_head, prefill_rows=policy.prefill_rows)

    def on_attention(self, fwd, cache, layer_idx, query, key, valid, scaling) -> None:
        q, n = query.shape[2], key.shape[2]
        rows = 1 if q == 1 else min(self.prefill_rows, q)
        st = attention_stats(
            query[:, :, q - rows :], key, scaling=scaling, causal=True,
            key_valid=None if valid is None else valid[None],
        )
        layer = cache.layers[layer_idx]
        pos = layer.positions if layer.positions is not None and layer.positions.shape[-1] == n else None
        cfg = cache.config
        params = SkewParams(
            budget=fwd.budgets[layer_idx] if cfg.compresses else (self.proxy_budget or n),
            sink_tokens=self.sink_tokens if self.sink_tokens is not None else (cfg.sink_tokens or 4),
            recent_window=self.recent_window if self.recent_window is not None else (cfg.window or 16),
        )
        # Tensors are referenced, not copied: the cache replaces its tensors on eviction, never mutates them.
        group = query.shape[1] // key.shape[1]
        item = (layer_idx, layer.seen if pos is not None else n, st.head_mass[0], params, valid, pos, group)
        fwd.per_layer.setdefault(self.name, []).append(item)

    @staticmethod
    def _metrics(items: list) -> torch.Tensor:
        """[L', H, 7] metrics of the stashed layers (runs wherever the caller is)."""
        out = []
        for _, seen, mass, params, valid, pos, group in items:
            val = valid.repeat_interleave(group, 0) if valid is not None else None
            p = pos.repeat_interleave(group, 0) if pos is not None else None
            out.append(skew_metrics(mass, params, valid=val, positions=p, seen=seen))
        return torch.stack(out)

    def on_forward_end(self, fwd, out) -> None:
        items = fwd.per_layer.pop(self.name, None)
        if not items:
            return
        layers = [it[0] for it in items]
        seen = [it[1] for it in items]
        ts, step, per_head = fwd.ts, fwd.step, self.per_head
        event = host = None
        if items[0][2].is_cuda:
            stacked = self._metrics(items)
            host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            host.copy_(stacked, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            items = None  # release the device tensors now

        def build() -> list[tuple[str, list[dict]]]:
            if event is not None and host is not None:
                event.synchronize()
                values = host
            else:
                with torch.inference_mode():
                    values = self._metrics(items)
            return [("layer_stats", layer_rows(values.tolist(), layers, seen, ts=ts, step=step, per_head=per_head))]

        out.submit_deferred(build, rows_hint=len(layers))


def layer_rows(
    values: list[list[list[float]]], layers: list[int], seen: list[int], *, ts: float, step: int, per_head: bool
) -> list[dict]:
    """Store rows (LayerStatRow) from metrics [L', H, 7]: one layer row (head means) and per-head rows."""
    rows = []
    names = METRICS[:-1]
    for layer, s, heads in zip(layers, seen, values, strict=True):
        n_heads = len(heads)
        mean = [sum(h[i] for h in heads) / n_heads for i in range(len(METRICS))]
        base = {"ts": ts, "step": step, "layer": layer, "seen_tokens": s}
        rows.append({**base, "head": -1, **dict(zip(names, mean, strict=False)), "kept_tokens": round(mean[-1])})
        if per_head:
            for h, vals in enumerate(heads):
                rows.append({**base, "head": h, **dict(zip(names, vals, strict=False)), "kept_tokens": round(vals[-1])})
    return rows
