"""Skew metrics against hand-computed values, and the skew probe against a float64 attention reference."""

from __future__ import annotations

import math

import pytest
import torch

from kvpilot.probes.skew import METRICS, SkewParams, layer_rows, skew_dict, skew_metrics


def one(mass, budget=2, **kw):
    return skew_dict(skew_metrics(torch.tensor([mass], dtype=torch.float32), SkewParams(budget=budget, **kw)))[0]


def test_hand_computed_distribution():
    # a = [1/2, 1/4, 1/8, 1/8]: H = 1.75 ln 2, H/ln 4 = 0.875; top-2 = 0.75; 90 % needs all 4 keys;
    # Gini on (1/8, 1/8, 1/4, 1/2) with coefficients (-3, -1, 1, 3) / 4 = 0.3125.
    m = one([0.5, 0.25, 0.125, 0.125], budget=2, sink_tokens=1, recent_window=1)
    assert m["entropy"] == pytest.approx(0.875, abs=1e-6)
    assert m["retained_mass"] == pytest.approx(0.75, abs=1e-6)
    assert m["tokens_90"] == 4
    assert m["sink_mass"] == pytest.approx(0.5, abs=1e-6)
    assert m["recent_mass"] == pytest.approx(0.125, abs=1e-6)
    assert m["gini"] == pytest.approx(0.3125, abs=1e-6)
    assert m["kept_tokens"] == 4


def test_uniform_and_one_hot_extremes():
    u = one([1.0] * 8, budget=2)  # unnormalised input is normalised per head
    assert u["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert u["gini"] == pytest.approx(0.0, abs=1e-6)
    assert u["retained_mass"] == pytest.approx(0.25, abs=1e-6)
    assert u["tokens_90"] == 8  # ceil(0.9 * 8) = 8 (7 keys hold 0.875)
    h = one([0, 0, 0, 3.0, 0], budget=1)
    assert h["entropy"] == pytest.approx(0.0, abs=1e-7)
    assert h["gini"] == pytest.approx(4 / 5, abs=1e-6)
    assert h["retained_mass"] == pytest.approx(1.0)
    assert h["tokens_90"] == 1


def test_tokens_90_counts_exactly():
    # cumulative 0.6, 0.85, 0.95: three keys reach 90 %
    assert one([0.6, 0.25, 0.1, 0.05])["tokens_90"] == 3


def test_padding_is_excluded_and_positions_are_logical():
    mass = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    # after eviction the kept slots hold logical positions 0, 90, 98, 99 of 100 seen tokens
    pos = torch.tensor([[0, 99, 0, 0], [0, 90, 98, 99]])
    m = skew_dict(skew_metrics(mass, SkewParams(budget=3, sink_tokens=4, recent_window=2), valid=valid,
                               positions=pos, seen=100))
    assert m[0]["kept_tokens"] == 2 and m[0]["entropy"] == pytest.approx(1.0, abs=1e-6)  # uniform over 2
    assert m[0]["gini"] == pytest.approx(0.0, abs=1e-6)
    assert m[0]["sink_mass"] == pytest.approx(0.5) and m[0]["recent_mass"] == pytest.approx(0.5)
    assert m[1]["sink_mass"] == pytest.approx(0.25) and m[1]["recent_mass"] == pytest.approx(0.5)
    assert m[1]["retained_mass"] == pytest.approx(0.75)


def test_budget_is_clamped_to_the_keys():
    assert one([1.0, 1.0], budget=100)["retained_mass"] == pytest.approx(1.0)
    assert one([1.0, 1.0], budget=0)["retained_mass"] == pytest.approx(0.5)  # at least one key


def test_metrics_match_a_float64_reference():
    """The probe's numbers (from the stats kernel's head_mass) equal metrics of softmax(q k^T) in float64."""
    from kvpilot.kernels import attention_stats

    torch.manual_seed(3)
    h, h_kv, n, d = 4, 2, 50, 16
    q = torch.randn(1, h, 3, d)
    k = torch.randn(1, h_kv, n, d) * 2
    st = attention_stats(q, k, scaling=d**-0.5, causal=True)
    params = SkewParams(budget=10, sink_tokens=4, recent_window=8)
    got = skew_metrics(st.head_mass[0], params)

    kk = k.double().repeat_interleave(h // h_kv, dim=1)[0]
    scores = torch.einsum("hqd,hnd->hqn", q.double()[0], kk) * d**-0.5
    causal = torch.arange(n)[None, :] <= (torch.arange(3)[:, None] + n - 3)
    p = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1).sum(1)
    p = p / p.sum(-1, keepdim=True)
    ent = -(p * p.clamp_min(1e-300).log()).sum(-1) / math.log(n)
    top = p.sort(-1, descending=True).values
    asc = top.flip(-1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    gini = ((2 * i - n - 1) * asc).sum(-1) / n
    t90 = (top.cumsum(-1) < 0.9).sum(-1) + 1
    ref = torch.stack([ent, top[:, :10].sum(-1), t90.double(), p[:, :4].sum(-1), p[:, -8:].sum(-1), gini], -1)
    assert torch.allclose(got[:, :6].double(), ref, rtol=1e-4, atol=1e-5)


def test_layer_rows_shape_and_means():
    values = [[[0.5, 0.9, 3.0, 0.1, 0.2, 0.6, 8.0], [0.7, 0.7, 5.0, 0.3, 0.4, 0.4, 8.0]]]
    rows = layer_rows(values, [7], [100], ts=1.0, step=3, per_head=True)
    assert [r["head"] for r in rows] == [-1, 0, 1]
    assert rows[0]["layer"] == 7 and rows[0]["step"] == 3 and rows[0]["seen_tokens"] == 100
    assert rows[0]["entropy"] == pytest.approx(0.6) and rows[0]["tokens_90"] == pytest.approx(4.0)
    assert rows[0]["kept_tokens"] == 8
    assert set(METRICS[:-1]) <= set(rows[1])


def test_skew_metrics_are_the_stored_skew_columns_and_rows_fit_the_table():
    """The probe computes its metrics in its own column order; the table declares them once (storage)."""
    from kvpilot.storage.schema import LAYER_STATS

    assert set(METRICS[:-1]) == set(LAYER_STATS.names(group="skew"))
    values = [[[0.5, 0.9, 3.0, 0.1, 0.2, 0.6, 8.0]]]
    rows = layer_rows(values, [0], [10], ts=1.0, step=0, per_head=True)
    assert len(LAYER_STATS.tuples(rows, 1, None)) == 2  # the writer refuses unknown or missing columns
