"""Integer storage of the kept keys and values (`kv_storage`): bounded error, no drift, exact byte figures."""

import pytest
import torch

from kvpilot.cache import precision
from kvpilot.cache.managed import ManagedCache
from kvpilot.cache.precision import eviction_for_memory, store_rows, stored_slot_bytes, write_rows
from kvpilot.config import KVConfig, KVConfigError
from kvpilot.engine.generation import greedy_decode, prefill

N = 120


@pytest.mark.parametrize(("storage", "qmax"), [("int8", 127), ("int4", 7)])
def test_rows_come_back_within_half_a_step_and_restoring_them_does_not_drift(storage, qmax):
    rows = torch.randn(50, 64, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 8, 64)
    rows[3] = 0.0  # an all-zero row stays zero
    stored = store_rows(rows, storage)
    back = stored.rows()
    assert back.dtype == rows.dtype and back.shape == rows.shape
    step = rows.reshape(50, 2, 32).abs().amax(-1, keepdim=True) / qmax  # one scale per 32 values
    assert ((back - rows).reshape(50, 2, 32).abs() <= step * 0.51 + 1e-6).all()
    assert torch.equal(back[3], torch.zeros(64))
    strided = torch.full((64, 50), float("nan")).T  # unpacking writes rows into a transposed layout
    write_rows(stored, strided)
    assert torch.equal(strided, back)
    again = store_rows(back, storage)  # a layer re-stored after every decode step keeps the same integers
    assert torch.equal(again.data, stored.data) and torch.equal(again.rows(), back)
    assert stored.nbytes == 50 * stored_slot_bytes(storage, 64, 4) // 2


def test_model_storage_holds_the_rows_themselves():
    rows = torch.randn(7, 16)
    stored = store_rows(rows, "model")
    assert stored.rows() is rows and stored.nbytes == rows.nbytes


@pytest.mark.parametrize("storage", ["model", "int8", "int4"])
@pytest.mark.parametrize("memory_ratio", [0.875, 0.9375])
def test_eviction_for_memory_keeps_the_bytes_of_a_16_bit_cache_times_one_minus_the_ratio(storage, memory_ratio):
    eviction = eviction_for_memory(memory_ratio, storage, 64)
    kept_pairs = 1000 * (1 - eviction)
    held = kept_pairs * stored_slot_bytes(storage, 64, 2)
    assert held == pytest.approx(1000 * stored_slot_bytes("model", 64, 2) * (1 - memory_ratio), rel=1e-5)
    if storage == "model":
        assert eviction == pytest.approx(memory_ratio)
    else:  # integer pairs cost less, so fewer are evicted
        assert eviction < memory_ratio


def test_eviction_for_memory_refuses_a_ratio_the_storage_alone_exceeds():
    assert eviction_for_memory(0.875, "int8", 64) == pytest.approx(0.7647, abs=1e-4)  # the README's 8x figure
    with pytest.raises(ValueError, match="int4 storage alone saves"):
        eviction_for_memory(0.5, "int4", 64)
    with pytest.raises(ValueError, match="memory_ratio"):
        eviction_for_memory(1.0, "int8", 64)


def run(model, decode_steps: int = 0, **cfg):
    cache = ManagedCache.for_model(model, KVConfig(**cfg))
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.inference_mode():
        first = prefill(model, cache, ids)
        dec = greedy_decode(model, cache, first, decode_steps, keep_logits=True) if decode_steps else None
    logits = torch.stack(dec.step_logits) if dec is not None else first
    return cache, logits


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_integer_storage_counts_exactly_what_it_holds(tiny_model, storage):
    """Every layer is held packed as integers between forwards; the cache's total is the layers' sum, equal
    to kept slots x the stored slot size, through eviction with ragged heads and a decode."""
    slot = stored_slot_bytes(storage, 16, 4)
    full, _ = run(tiny_model, decode_steps=3, kv_storage=storage)
    assert all(layer.packed for layer in full.layers)
    assert full.physical_bytes == (N + 2) * 2 * 4 * slot  # the last decoded token is never appended
    cfg = {"policy": "snapkv", "budget": 40, "head_allocation": "adaptive", "decode_interval": 4}
    evicted, _ = run(tiny_model, decode_steps=6, kv_storage=storage, **cfg)
    kept = sum(map(sum, evicted.kept_tokens()))
    assert evicted.physical_bytes == sum(layer.nbytes for layer in evicted.layers) == kept * slot


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_a_decode_step_quantises_only_its_new_slots_and_changes_nothing(tiny_model, storage, monkeypatch):
    """After the prefill's eviction (ragged heads), each decode step quantises one new slot per KV head and
    layer; the codes and logits are exactly those of quantising every slot again after each step."""
    import kvpilot.cache.layer as layer_module

    cfg = {"policy": "snapkv", "budget": 40, "layer_allocation": "global", "layer_allocation_params": {"heads": True},
           "kv_storage": storage}
    quantised: list[int] = []
    real_store = precision.store_rows

    def counting_store(rows, kind):
        quantised.append(rows.shape[0])
        return real_store(rows, kind)

    monkeypatch.setattr(precision, "store_rows", counting_store)
    monkeypatch.setattr(layer_module, "store_rows", counting_store)
    cache = ManagedCache.for_model(tiny_model, KVConfig(**cfg))
    ids = torch.randint(3, 128, (N,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.inference_mode():
        first = prefill(tiny_model, cache, ids)
        assert any(layer.valid is not None for layer in cache.layers)  # ragged heads: the masked path
        quantised.clear()
        dec = greedy_decode(tiny_model, cache, first, 6, keep_logits=True)
    h_kv = cache.shape.num_kv_heads
    assert quantised and set(quantised) == {h_kv}  # keys and values of one new slot per head, every layer
    incremental = (torch.stack(dec.step_logits), [layer._packed for layer in cache.layers])

    unpack = layer_module.ManagedLayer._unpack

    def unpack_and_forget(self):  # the old way: every slot quantised again when the layer settles
        unpack(self)
        self._unpacked_from = None

    monkeypatch.setattr(layer_module.ManagedLayer, "_unpack", unpack_and_forget)
    again = ManagedCache.for_model(tiny_model, KVConfig(**cfg))
    with torch.inference_mode():
        dec_again = greedy_decode(tiny_model, again, prefill(tiny_model, again, ids), 6, keep_logits=True)
    assert torch.equal(torch.stack(dec_again.step_logits), incremental[0])
    for mine, theirs in zip(incremental[1], (layer._packed for layer in again.layers), strict=True):
        assert torch.equal(mine[0].data, theirs[0].data) and torch.equal(mine[1].scale, theirs[1].scale)
    assert cache.physical_bytes == again.physical_bytes == sum(layer.nbytes for layer in cache.layers)


def test_int8_storage_barely_moves_the_logits(tiny_model):
    cfg = {"policy": "snapkv", "budget": 40, "layer_allocation": "global", "layer_allocation_params": {"heads": True}}
    exact_cache, exact = run(tiny_model, decode_steps=8, **cfg)
    int8_cache, int8 = run(tiny_model, decode_steps=8, kv_storage="int8", **cfg)
    assert int8_cache.kept_tokens() == exact_cache.kept_tokens()
    assert (int8 - exact).abs().max() < 0.05 * exact.abs().max()
    assert int8_cache.physical_bytes * 3 < exact_cache.physical_bytes  # 4-byte floats became 1 byte + scales


def test_bundled_model_answers_alike_with_int8_storage(bundled_engine):
    """On the real model int8 storage leaves the teacher-forced next-token distributions nearly as they were."""
    from kvpilot.engine.engine import Request

    engine = bundled_engine
    context = engine.encode("Ana: My locker code is 4417, and my cat is called Pixel.\nBen: Noted!\n" * 6)
    question = engine.encode("\nQuestion: What is Ana's locker code? Answer: Ana's locker code is 4417")
    out = {}
    for storage in ("model", "int8"):
        response = engine.serve(Request(context, [question], max_new_tokens=1, teacher_tokens=[question],
                                        config=KVConfig(kv_storage=storage)))
        out[storage] = (torch.log_softmax(torch.stack(response.answers[0].teacher_logits).float(), -1), response.compression)
    (ref, full), (q8, small) = out["model"], out["int8"]
    kl = (ref.exp() * (ref - q8)).sum(-1)  # per teacher-forced position
    assert kl.mean() < 0.01 and kl.max() < 0.05, kl
    assert (q8.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    assert small.kv_bytes * 3.5 < full.kv_bytes


def test_storage_must_fit_the_heads():
    KVConfig(kv_storage="int8").validate_for_model(2, 1, 1, head_dim=64)
    KVConfig(kv_storage="int4").validate_for_model(2, 1, 1, head_dim=16)  # a narrow head is one group
    with pytest.raises(KVConfigError, match="head_dim 48"):
        KVConfig(kv_storage="int8").validate_for_model(2, 1, 1, head_dim=48)
    with pytest.raises(KVConfigError, match="kv_storage"):
        KVConfig.parse({"kv_storage": "fp8"})
