"""Kept tokens match budgets exactly; protected tokens survive; order is kept; units stay whole."""

import pytest
import torch

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.generation import prefill
from kvpilot.policies import POLICY_REGISTRY

N = 120


def run(model, **cfg) -> ManagedCache:
    cache = ManagedCache.for_model(model, KVConfig(**cfg))
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.inference_mode():
        prefill(model, cache, ids, scoring_ids=[4, 5, 6] if cfg.get("scoring") == "prompt" else None)
    return cache


def kept_positions(layer, head):
    return layer.positions[head][layer.valid_mask()[head]].tolist()


GENERIC = sorted(p for p in POLICY_REGISTRY if p != "full" and not POLICY_REGISTRY.get(p).needs_profile)


@pytest.mark.parametrize("policy", GENERIC)
def test_uniform_budget_exact_with_sinks_window_and_order(tiny_model, policy, policy_params=None):
    cache = run(tiny_model, policy=policy, policy_params=policy_params or {}, budget=40, sink_tokens=4, window=8)
    for layer in cache.layers:
        for h in range(layer.keys.shape[1]):
            pos = kept_positions(layer, h)
            assert len(pos) == 40
            assert pos == sorted(pos)
            assert set(range(4)) <= set(pos) and set(range(N - 8, N)) <= set(pos)
    assert cache.kept_tokens() == [[40, 40]] * 4
    assert cache.seen_tokens == N


def test_full_policy_keeps_everything(tiny_model):
    cache = run(tiny_model, policy="full", budget=10)
    assert cache.kept_tokens() == [[N, N]] * 4


def test_ratio_budget(tiny_model):
    cache = run(tiny_model, policy="snapkv", compression_ratio=0.75)
    assert cache.kept_tokens() == [[30, 30]] * 4
    assert abs(cache.compression_ratio() - 0.75) < 1e-9


def test_adaptive_heads_sum_to_layer_budget_and_save_memory_honestly(tiny_model):
    cache = run(tiny_model, policy="snapkv", budget=40, head_allocation="adaptive", adaptive_alpha=0.2)
    per_head_floor = 4 + 8 + int(0.2 * (40 - 12))
    for layer, kept in zip(cache.layers, cache.kept_tokens(), strict=True):
        assert sum(kept) == 80
        assert min(kept) >= per_head_floor - 1
        # in a forward the heads are padded to the longest; at rest only the kept slots are held
        assert layer.physical_length == max(kept)
        assert layer.packed == (min(kept) < max(kept))
        assert layer.nbytes == sum(kept) * 2 * 16 * 4


@pytest.mark.parametrize("allocation", ["pyramid", "sensitivity", "explicit"])
def test_layer_allocations_are_enforced(tiny_model, allocation):
    extra = {
        "pyramid": {"pyramid_beta": 4.0},
        "sensitivity": {"sensitivity_profile": [0.1, 0.5, 0.2, 0.9]},
        "explicit": {"layer_budgets": [50, 30, 20, 10]},
    }[allocation]
    budget = {} if allocation == "explicit" else {"budget": 30}
    cache = run(tiny_model, policy="snapkv", layer_allocation=allocation, **budget, **extra)
    expected = cache.budgets()
    assert [k[0] for k in cache.kept_tokens()] == expected
    assert len(set(expected)) > 1
    if allocation == "pyramid":
        assert expected == sorted(expected, reverse=True) and sum(expected) == 120
    if allocation == "explicit":
        assert expected == [50, 30, 20, 10]


def test_unit_selection_keeps_whole_units_within_budget(tiny_model):
    cache = run(tiny_model, policy="snapkv", budget=40, granularity="chunk", chunk_size=7, sink_tokens=2, window=4)
    for layer in cache.layers:
        for h in range(2):
            pos = set(kept_positions(layer, h))
            assert len(pos) <= 40
            protected = set(range(2)) | set(range(N - 4, N))
            for unit in range(0, N, 7):
                members = set(range(unit, min(unit + 7, N))) - protected
                assert members <= pos or not (members & pos), f"unit {unit} split"


def test_scoring_prompt_leaves_no_trace(tiny_model):
    cache = run(tiny_model, policy="snapkv", budget=40, scoring="prompt", scoring_prompt="x")
    assert cache.seen_tokens == N
    for layer in cache.layers:
        assert int(layer.positions.max()) < N
        assert layer.physical_length == 40


def test_block_prefill_peak_within_budget_plus_block(tiny_model):
    budget, block = 32, 24
    cache = run(tiny_model, policy="h2o", budget=budget, prefill_block_size=block)
    per_token = 2 * 2 * 16 * 4  # K and V, 2 KV heads, head_dim 16, fp32
    for peak in cache.layer_peak_bytes:
        assert peak <= (budget + block) * per_token
    one_shot = run(tiny_model, policy="h2o", budget=budget)
    assert max(one_shot.layer_peak_bytes) == N * per_token


def test_spiky_sensitivity_budget_is_not_lost():
    from kvpilot.policies.layers import layer_budgets

    cfg = KVConfig(policy="snapkv", budget=50, layer_allocation="sensitivity",
                   sensitivity_profile=[0.0, 0.0, 1.0, 0.0], sensitivity_alpha=1.0)
    budgets = layer_budgets(cfg, 4, seen=100)
    assert max(budgets) == 100  # the sensitive layer is capped at what it has seen
    assert sum(budgets) == 200  # and the rest of the total goes to the other layers


@pytest.mark.parametrize("allocation", ["uniform", "adaptive"])
def test_head_budgets_split_as_the_cache_did_inline(allocation):
    """head_budgets reproduces the split ManagedCache._evict_layer computed inline before the registries."""
    from kvpilot.policies.heads import adaptive_head_budgets, head_budgets, within_budget

    gen = torch.Generator().manual_seed(7)
    own = {"alpha": 0.3} if allocation == "adaptive" else {}
    cfg = KVConfig(policy="snapkv", budget=20, head_allocation=allocation, head_allocation_params=own)
    for trial in range(20):
        h, n, budget = 3, 50, 10 + trial
        scores = torch.rand(h, n, generator=gen)
        valid = torch.rand(h, n, generator=gen) > 0.2
        protected = valid & (torch.rand(h, n, generator=gen) > 0.9)
        available = valid.sum(-1).tolist()
        n_protected = protected.sum(-1).tolist()
        if allocation == "adaptive":
            extra = adaptive_head_budgets(scores, valid & ~protected, budget - max(n_protected), 0.3)
            old = [min(p + e, a) for p, e, a in zip(n_protected, extra, available, strict=True)]
            fits = sum(available) <= budget * h
        else:
            old = [min(budget, a) for a in available]
            fits = max(available) <= budget
        assert head_budgets(cfg, scores, valid, protected, budget) == old
        assert within_budget(cfg, available, budget) == fits


def test_layer_budgets_are_torch_free():
    import subprocess
    import sys

    code = ("import sys\nfrom kvpilot.config import KVConfig\nfrom kvpilot.policies import layer_budgets\n"
            "print(layer_budgets(KVConfig(policy='snapkv', budget=30, layer_allocation='pyramid'), 4, 120))\n"
            "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert sum(eval(out)) == 120


def test_reconstruction_scores_each_block_and_keeps_the_peak_within_budget_plus_block(tiny_model):
    """KVzip's reconstruction composed with block-wise prefill: every block is reproduced as it arrives,
    scored (max over queries), evicted; the reconstruction queries are never stored."""
    from tests.engine.exactness import toy_reconstruction

    budget, block = 32, 24
    cfg = KVConfig(policy="kvzip", budget=budget, prefill_block_size=block, scoring="reconstruct",
                   reconstruction_chunk=16)
    cache = ManagedCache.for_model(tiny_model, cfg)
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(3)).tolist()
    calls = []

    def reconstruction(piece, before):
        calls.append((len(piece), len(before)))
        return toy_reconstruction(piece, before)

    with torch.inference_mode():
        prefill(tiny_model, cache, ids, reconstruction=reconstruction)
    per_token = 2 * 2 * 16 * 4
    assert cache.seen_tokens == N  # the reconstruction queries left no slot behind
    for peak in cache.layer_peak_bytes:
        assert peak <= (budget + block) * per_token
    assert all(k <= budget for kept in cache.kept_tokens() for k in kept)
    # blocks of 24 in chunks of at most 16: the first chunk quotes nothing, every later one the 8 tokens before it
    assert calls[0] == (16, 0) and all(before == 8 for _, before in calls[1:])
    assert sum(n for n, _ in calls) == N


@pytest.mark.parametrize("scoring", ["window", "reconstruct"])
def test_global_selection_holds_exactly_the_requested_total_without_padding(tiny_model, scoring):
    """KVzip's global budgets: layers keep different numbers of tokens, the total is exactly L x budget, and
    the heads of a layer stay equal, so nothing is padded and the bytes held are what was asked for."""
    from tests.engine.exactness import toy_reconstruction

    budget = 30
    cfg = KVConfig(policy="kvzip", budget=budget, layer_allocation="global", scoring=scoring)
    cache = ManagedCache.for_model(tiny_model, cfg)
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.inference_mode():
        prefill(tiny_model, cache, ids, reconstruction=toy_reconstruction)
    kept = cache.kept_tokens()
    per_layer = [k[0] for k in kept]
    assert sum(per_layer) == budget * len(kept)
    assert len(set(per_layer)) > 1  # the scores, not a schedule, decided
    assert all(len(set(k)) == 1 for k in kept) and all(layer.valid is None for layer in cache.layers)
    per_token = 2 * 16 * 4  # one KV head's K and V slot: head_dim 16, fp32
    assert cache.physical_bytes == sum(per_layer) * 2 * per_token  # 2 KV heads, no padding


def test_global_layers_floor_and_cap():
    import torch as t

    from kvpilot.policies.layers import GlobalLayers

    strong, weak = t.tensor([[5.0, 4.0, 3.0, 2.0]]), t.tensor([[0.1, 0.1, 0.1, 0.1]])
    assert GlobalLayers().from_scores(3, [strong, weak], [[1], [1]], [[5], [5]]) == [[5], [1]]
    assert GlobalLayers(floor=0.9).from_scores(3, [strong, weak], [[1], [1]], [[5], [5]]) == [[3], [3]]


@pytest.mark.parametrize("scoring", ["window", "reconstruct"])
def test_global_heads_hold_exactly_the_requested_total(tiny_model, scoring):
    """KVzip's pair-level top-k: every (layer, head) competes; the total over layers and heads is exact, the
    heads of a layer keep different numbers of tokens, and at rest no padding is held or counted."""
    from tests.engine.exactness import toy_reconstruction

    budget = 30
    cfg = KVConfig(policy="kvzip", budget=budget, layer_allocation="global",
                   layer_allocation_params={"heads": True}, scoring=scoring)
    cache = ManagedCache.for_model(tiny_model, cfg)
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.inference_mode():
        prefill(tiny_model, cache, ids, reconstruction=toy_reconstruction)
    kept = cache.kept_tokens()
    assert sum(map(sum, kept)) == budget * sum(len(k) for k in kept)
    assert any(len(set(k)) > 1 for k in kept)  # heads of a layer differ: the scores decided
    per_token = 2 * 16 * 4
    assert cache.physical_bytes == sum(map(sum, kept)) * per_token == budget * 4 * 2 * per_token
    assert any(layer.packed for layer in cache.layers)
    assert sum(layer.nbytes for layer in cache.layers) == cache.physical_bytes


def test_global_heads_refuse_a_head_allocation():
    from kvpilot.config import KVConfigError

    with pytest.raises(KVConfigError, match="head_allocation"):
        KVConfig.parse({"policy": "kvzip", "compression_ratio": 0.5, "layer_allocation": "global",
                        "layer_allocation_params": {"heads": True}, "head_allocation": "adaptive"})


def test_packing_ragged_heads_changes_no_logit(tiny_model, monkeypatch):
    """Holding only the valid slots between forwards (and rebuilding the padded layout for each forward) is
    lossless: block-wise prefill, a question and a greedy decode give the same logits as a cache that keeps
    its padding, while holding fewer bytes."""
    from kvpilot.cache.layer import ManagedLayer
    from kvpilot.engine.generation import greedy_decode

    cfg = KVConfig(policy="snapkv", budget=40, head_allocation="adaptive", prefill_block_size=32,
                   decode_interval=4)
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(11)).tolist()

    def serve() -> tuple[torch.Tensor, ManagedCache]:
        cache = ManagedCache.for_model(tiny_model, cfg)
        with torch.inference_mode():
            first = prefill(tiny_model, cache, ids)
            dec = greedy_decode(tiny_model, cache, first, 12, keep_logits=True)
        return torch.stack(dec.step_logits), cache

    packed_logits, packed = serve()
    assert any(layer.packed for layer in packed.layers)
    monkeypatch.setattr(ManagedLayer, "settle", lambda self, storage="model": None)
    padded_logits, padded = serve()
    assert not any(layer.packed for layer in padded.layers)
    assert torch.equal(packed_logits, padded_logits)
    assert packed.kept_tokens() == padded.kept_tokens()
    assert packed.physical_bytes < padded.physical_bytes
    assert packed.physical_bytes == sum(map(sum, packed.kept_tokens())) * 2 * 16 * 4


@pytest.mark.parametrize("n", [65, 100, 128, 129])
@pytest.mark.parametrize("policy", ["snapkv", "tova", "kvzip"])
def test_global_layers_with_block_prefill_at_any_length(tiny_model, policy, n):
    """A last prefill block of one token is still a prefill block: it is scored and evicted like the others
    (it used to be taken for a decode step and left the cross-layer eviction without scores)."""
    cfg = KVConfig(policy=policy, compression_ratio=0.5, layer_allocation="global", prefill_block_size=64)
    cache = ManagedCache.for_model(tiny_model, cfg)
    with torch.inference_mode():
        prefill(tiny_model, cache, [3 + i % 120 for i in range(n)])
    assert cache.seen_tokens == n
    assert sum(map(sum, cache.kept_tokens())) <= -(-n // 2) * 4 * 2 + 4 * 2
