"""The chunked torch reference against a float64 materialised softmax, SDPA, and the dispatcher."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kvpilot.kernels import attention_stats, attention_stats_reference, kernel_backend


def _load_cases():
    name = "kvpilot_tests_kernels_stats_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("stats_cases.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


sc = _load_cases()
Case = sc.Case

REFERENCE_CASES = [
    Case("smollm_gqa9_3_causal_chunk7", 1, 9, 3, 64, 300, 64, query_chunk=7),
    Case("smollm_gqa9_3_noncausal_pad_chunk5", 2, 9, 3, 33, 200, 64, causal=False, pad=True, query_chunk=5),
    Case("gqa8_2_prefill_pad", 2, 8, 2, 48, 48, 32, pad=True),
    Case("gqa8_2_causal_pad_chunk13", 2, 8, 2, 70, 190, 64, pad=True, query_chunk=13),
    Case("gqa8_2_decode_row", 1, 8, 2, 1, 129, 16, query_chunk=3),
    Case("mha_noncausal_chunk1", 1, 8, 8, 20, 50, 16, causal=False, query_chunk=1),
    Case("sharp_logits", 1, 9, 3, 32, 160, 64, logit_scale=8.0, query_chunk=11),
    Case("noncontiguous", 2, 8, 2, 24, 60, 32, noncontig=True, query_chunk=9),
]
TOL = 1e-4


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c.name)
def test_reference_matches_float64(case):
    inputs = sc.make_inputs(case)
    stats = attention_stats_reference(**inputs, query_chunk=case.query_chunk)
    truth = sc.naive64(**inputs)
    errs = sc.rel_errors(stats, truth)
    assert max(errs.values()) < TOL, errs
    assert stats.head_mass.dtype == stats.key_mass.dtype == stats.row_entropy.dtype == torch.float32
    assert stats.num_queries == case.q
    assert stats.backend == "reference"


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c.name)
def test_reference_mass_sums_and_masks(case):
    inputs = sc.make_inputs(case)
    stats = attention_stats_reference(**inputs, query_chunk=case.query_chunk)
    group = case.h // case.h_kv
    # Each attention row sums to 1: a query head hands out q units of mass, a KV head group * q.
    torch.testing.assert_close(stats.head_mass.sum(-1), torch.full((case.b, case.h), float(case.q)))
    torch.testing.assert_close(stats.key_mass.sum(-1), torch.full((case.b, case.h_kv), float(group * case.q)))
    grouped = stats.head_mass.view(case.b, case.h_kv, group, case.n).sum(2)
    torch.testing.assert_close(stats.key_mass, grouped)
    if inputs["key_valid"] is not None:
        assert (stats.key_mass[~inputs["key_valid"]] == 0).all()
    if case.causal:  # bottom-right aligned: only the last q keys can be invisible to early rows
        visible_to_all = case.n - case.q
        assert (
            stats.head_mass[..., visible_to_all + 1 :]
            .le(torch.arange(case.q - 1, 0, -1, dtype=torch.float32) + 1e-4)
            .all()
        )
    assert (stats.row_entropy >= 0).all() and (stats.row_entropy <= math.log(case.n) + 1e-5).all()


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c.name)
def test_reference_output_equals_sdpa(case):
    inputs = sc.make_inputs(case)
    stats = attention_stats_reference(**inputs, query_chunk=case.query_chunk)
    group = case.h // case.h_kv
    allowed = sc.naive64(**inputs)["allowed"]
    expected = F.scaled_dot_product_attention(
        inputs["query"],
        inputs["key"].repeat_interleave(group, 1),
        inputs["value"].repeat_interleave(group, 1),
        attn_mask=allowed,
        scale=inputs["scaling"],
    )
    torch.testing.assert_close(stats.output, expected, atol=2e-5, rtol=1e-4)


def test_reference_chunking_does_not_change_results():
    case = Case("chunks", 2, 9, 3, 45, 120, 64, pad=True)
    inputs = sc.make_inputs(case)
    base = attention_stats_reference(**inputs, query_chunk=256)
    for chunk in (1, 4, 17, 44, 45):
        other = attention_stats_reference(**inputs, query_chunk=chunk)
        torch.testing.assert_close(other.head_mass, base.head_mass, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other.row_entropy, base.row_entropy, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(other.output, base.output, atol=1e-5, rtol=1e-4)


def test_reference_bf16_inputs_accumulate_in_fp32():
    case = Case("bf16", 1, 8, 2, 64, 512, 64, dtype="bfloat16")
    inputs = sc.make_inputs(case)
    stats = attention_stats_reference(**inputs, query_chunk=16)
    assert stats.head_mass.dtype == torch.float32 and stats.output.dtype == torch.bfloat16
    # Exact bf16 values, fp32 softmax: the mass is as good as fp32 and still sums to q.
    torch.testing.assert_close(stats.head_mass.sum(-1), torch.full((1, 8), 64.0))
    assert max(sc.rel_errors(stats, sc.naive64(**inputs))[k] for k in ("head_mass", "row_entropy")) < TOL


def test_dispatcher_uses_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("KVPILOT_KERNEL", raising=False)
    case = Case("dispatch", 1, 9, 3, 8, 30, 16)
    inputs = sc.make_inputs(case)
    assert kernel_backend(inputs["query"]) == "reference"
    a, b = attention_stats(**inputs), attention_stats_reference(**inputs)
    torch.testing.assert_close(a.head_mass, b.head_mass)
    monkeypatch.setenv("KVPILOT_KERNEL", "reference")
    assert kernel_backend(inputs["query"]) == "reference"
    monkeypatch.setenv("KVPILOT_KERNEL", "cuda-magic")
    with pytest.raises(ValueError, match="KVPILOT_KERNEL"):
        attention_stats(**inputs)


def test_dispatcher_falls_back_once_when_the_kernel_fails(monkeypatch, caplog):
    """Auto mode: a kernel that breaks (e.g. unsupported GPU) is reported once, then bypassed."""
    import kvpilot.kernels as kernels

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.delenv("KVPILOT_KERNEL", raising=False)
    monkeypatch.setattr(kernels, "_triton_fn", broken)
    monkeypatch.setattr(kernels, "_triton_error", None)
    monkeypatch.setattr(kernels, "_triton_fits", lambda *a: True)
    inputs = sc.make_inputs(Case("fallback", 1, 4, 2, 8, 30, 16))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # pretend: route to Triton
    assert kernel_backend(inputs["query"]) == "triton"
    with caplog.at_level("WARNING", logger="kvpilot.kernels"):
        stats = attention_stats(**inputs)
    assert stats.backend == "reference" and "no kernel image" in caplog.text
    assert kernels.triton_unavailable_reason().startswith("RuntimeError")
    assert kernel_backend(inputs["query"]) == "reference"  # later calls skip the broken kernel
    monkeypatch.setenv("KVPILOT_KERNEL", "triton")  # forced: failures surface
    with pytest.raises(RuntimeError):
        attention_stats(**inputs)


def test_dispatcher_sends_unsupported_inputs_to_reference(monkeypatch):
    monkeypatch.delenv("KVPILOT_KERNEL", raising=False)
    q = torch.randn(1, 4, 8, 16, dtype=torch.float64)
    assert kernel_backend(q, torch.randn(1, 2, 30, 16, dtype=torch.float64)) == "reference"


@pytest.mark.parametrize("reduce", ["sum", "max"])
def test_key_mass_over_subset_equals_masking(reduce):
    """Scoring only the allowed keys (gathered, left-padded) gives the masked computation's mass, per head."""
    from kvpilot.kernels import attention_stats, key_mass_over_subset

    g = torch.Generator().manual_seed(7)
    q_len, n = 12, 90
    query = torch.randn(1, 6, q_len, 16, generator=g) * 2
    key = torch.randn(1, 3, n, 16, generator=g)
    allowed = torch.rand(1, 3, n, generator=g) > 0.6
    allowed[..., :2] = True  # sinks
    allowed[..., n - q_len :] = True  # the queries' own keys always compete
    allowed[0, 1, 10:40] = True  # heads keep different numbers of keys
    want = attention_stats(query, key, scaling=0.25, key_valid=allowed, reduce=reduce).key_mass
    got = key_mass_over_subset(query, key, allowed, scaling=0.25, causal=True, reduce=reduce)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert bool((got[~allowed] == 0).all())


@pytest.mark.parametrize("reduce", ["sum", "max"])
def test_weighted_statistics_match_a_materialised_softmax(reduce):
    """KVzip+'s weights: each query row scaled by its weight and each query head's key column by the key's,
    before the reduction over queries and over the GQA group (float64 softmax as the truth)."""
    g = torch.Generator().manual_seed(3)
    b, h, h_kv, q_len, n, d = 1, 6, 2, 10, 40, 16
    query = torch.randn(b, h, q_len, d, generator=g)
    key = torch.randn(b, h_kv, n, d, generator=g)
    qw = torch.rand(b, q_len, generator=g) + 0.5
    kw = torch.rand(b, h, n, generator=g) + 0.5
    got = attention_stats_reference(query, key, scaling=0.3, causal=True, reduce=reduce, query_chunk=3,
                                    query_weight=qw, key_weight=kw)
    logits = torch.einsum("bhqd,bhnd->bhqn", query.double() * 0.3, key.double().repeat_interleave(h // h_kv, dim=1))
    future = torch.ones(q_len, n, dtype=torch.bool).triu_(n - q_len + 1)
    p = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
    w = p * qw.double()[:, None, :, None]
    head = (w.amax(dim=2) if reduce == "max" else w.sum(dim=2)) * kw.double()
    grouped = head.view(b, h_kv, h // h_kv, n)
    want = grouped.amax(dim=2) if reduce == "max" else grouped.sum(dim=2)
    torch.testing.assert_close(got.key_mass.double(), want, atol=1e-6, rtol=1e-5)
    plain = attention_stats_reference(query, key, scaling=0.3, causal=True, reduce=reduce)
    torch.testing.assert_close(got.row_entropy, plain.row_entropy)  # the weights change the scores only


def test_weighted_statistics_over_a_subset_equal_masking():
    from kvpilot.kernels import key_mass_over_subset

    g = torch.Generator().manual_seed(5)
    q_len, n = 8, 60
    query = torch.randn(1, 6, q_len, 16, generator=g)
    key = torch.randn(1, 3, n, 16, generator=g)
    allowed = torch.rand(1, 3, n, generator=g) > 0.5
    allowed[..., n - q_len :] = True
    qw, kw = torch.rand(1, q_len, generator=g) + 0.5, torch.rand(1, 6, n, generator=g) + 0.5
    want = attention_stats(query, key, scaling=0.25, key_valid=allowed, reduce="max", query_weight=qw,
                           key_weight=kw).key_mass
    got = key_mass_over_subset(query, key, allowed, scaling=0.25, causal=True, reduce="max", query_weight=qw,
                               key_weight=kw)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
