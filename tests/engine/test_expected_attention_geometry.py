"""Expected Attention's RoPE geometry against the model's own rotary embedding.

The policy reasons about pre-RoPE queries (recovered from the post-RoPE queries the attention function
sees) and rotates their moments forward with an averaged rotation matrix. Both must agree with what
transformers actually computes, or its scores are meaningless without any test failing.
"""

from __future__ import annotations

import torch

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.attention import unrotate
from kvpilot.engine.generation import prefill
from kvpilot.policies.expected_attention import mean_rotation


class _Capture:
    """Observer that keeps the post-RoPE queries of one layer."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.query: torch.Tensor | None = None

    def on_attention(self, cache, layer_idx, query, key, valid, scaling) -> None:
        if layer_idx == self.layer:
            self.query = query.detach().clone()

    def on_evict(self, *args) -> None:
        pass


def test_unrotate_recovers_q_proj_and_mean_rotation_reapplies_rope(tiny_model):
    layer = 2
    attn = tiny_model.model.layers[layer].self_attn
    pre_rope: dict[str, torch.Tensor] = {}
    hook = attn.q_proj.register_forward_hook(lambda m, i, o: pre_rope.__setitem__("q", o.detach().clone()))
    try:
        cache = ManagedCache.for_model(tiny_model, KVConfig(policy="full"))
        capture = _Capture(layer)
        cache.observer = capture
        n = 300
        ids = torch.randint(0, tiny_model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            prefill(tiny_model, cache, ids.tolist())
    finally:
        hook.remove()

    post = capture.query  # [1, H, n, d]
    heads, d = post.shape[1], post.shape[3]
    expected_pre = pre_rope["q"][0].view(n, heads, d).transpose(0, 1).float()  # [H, n, d]
    recovered = unrotate(post, torch.arange(n)[None], cache.rope)
    assert torch.allclose(recovered, expected_pre, atol=1e-4, rtol=1e-4)

    for p in (0, 1, 117, n - 1):
        rotation = mean_rotation(cache.rope, p, 1, d)
        assert torch.allclose(expected_pre[:, p] @ rotation.T, post[0, :, p].float(), atol=1e-4, rtol=1e-4)

    # Averaging over T positions is the mean of the single-position rotations (the paper's approximation).
    averaged = torch.stack([mean_rotation(cache.rope, 200 + t, 1, d) for t in range(8)]).mean(0)
    assert torch.allclose(mean_rotation(cache.rope, 200, 8, d), averaged, atol=1e-6)
