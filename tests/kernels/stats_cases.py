"""Shared helpers for the attention-statistics tests: a float64 materialised reference, inputs, errors.

Imported by path (not as a package) by the pytest modules and by the Triton interpreter subprocess,
so it must not import triton.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    """One attention shape. ``pad`` makes a key_valid mask with holes and left padding."""

    name: str
    b: int
    h: int
    h_kv: int
    q: int
    n: int
    d: int
    causal: bool = True
    pad: bool = False
    need_output: bool = True
    logit_scale: float = 3.0  # >1 makes attention skewed, as in trained models
    query_chunk: int = 256
    extra: tuple[tuple[str, int], ...] = ()  # backend-specific kwargs (num_splits, block_m, ...)
    noncontig: bool = False
    dtype: str = "float32"


def make_inputs(case: Case, seed: int = 0) -> dict:
    """Random query/key/value (+ key_valid) for ``case``; every query row sees at least one key."""
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    if case.noncontig:  # [b, seq, heads, d] storage viewed as [b, heads, seq, d], as a model produces
        query = rnd(case.b, case.q, case.h, case.d).transpose(1, 2)
        key = rnd(case.b, case.n, case.h_kv, case.d).transpose(1, 2)
        value = rnd(case.b, case.n, case.h_kv, case.d).transpose(1, 2)
    else:
        query = rnd(case.b, case.h, case.q, case.d)
        key = rnd(case.b, case.h_kv, case.n, case.d)
        value = rnd(case.b, case.h_kv, case.n, case.d)
    query = query * case.logit_scale
    key_valid = None
    if case.pad:
        key_valid = torch.rand(case.b, case.h_kv, case.n, generator=g) > 0.3
        key_valid[0, :, : max(1, case.n // 5)] = False  # left padding of the first sequence
        key_valid[..., case.n - case.q :] = True  # every row sees at least its own position
    return {
        "query": query.to(dtype),
        "key": key.to(dtype),
        "value": value.to(dtype),
        "scaling": 1.0 / math.sqrt(case.d),
        "causal": case.causal,
        "key_valid": key_valid,
        "need_output": case.need_output,
    }


def naive64(query, key, value, *, scaling, causal, key_valid, **_) -> dict:
    """Full softmax over the materialised [q, n] matrix in float64: the ground truth."""
    q64, k64, v64 = query.double(), key.double(), value.double()
    group = q64.shape[1] // k64.shape[1]
    k64, v64 = k64.repeat_interleave(group, 1), v64.repeat_interleave(group, 1)
    n_q, n = q64.shape[2], k64.shape[2]
    allowed = torch.ones(n_q, n, dtype=torch.bool)
    if causal:
        allowed = torch.arange(n)[None, :] <= torch.arange(n_q)[:, None] + (n - n_q)
    allowed = allowed[None, None]
    if key_valid is not None:
        allowed = allowed & key_valid.repeat_interleave(group, 1)[:, :, None, :]
    logits = (q64 @ k64.transpose(-1, -2) * scaling).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(logits, dim=-1)
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    head_mass = p.sum(dim=2)
    b, h = head_mass.shape[:2]
    return {
        "head_mass": head_mass,
        "key_mass": head_mass.view(b, h // group, group, -1).sum(dim=2),
        "row_entropy": -plogp.sum(-1).mean(-1),
        "output": p @ v64,
        "allowed": allowed,
    }


def rel_errors(stats, truth: dict) -> dict[str, float]:
    """Relative errors against the float64 truth.

    Masses and entropies element-wise (|a - b| / |b|, with a floor of 1e-30 for keys that got no
    mass, where both must be exactly 0); the output as max |a - b| / max |b| since single output
    coordinates can be close to 0.
    """

    def elementwise(a: torch.Tensor, b: torch.Tensor) -> float:
        a = a.double()
        return ((a - b).abs() / b.abs().clamp_min(1e-30)).max().item()

    errs = {
        "head_mass": elementwise(stats.head_mass, truth["head_mass"]),
        "key_mass": elementwise(stats.key_mass, truth["key_mass"]),
        "row_entropy": elementwise(stats.row_entropy, truth["row_entropy"]),
    }
    if stats.output is not None:
        diff = (stats.output.double() - truth["output"]).abs().max()
        errs["output"] = (diff / truth["output"].abs().max()).item()
    return errs


# Shapes for the Triton interpreter (small: the interpreter runs each program in numpy).
TRITON_CASES = [
    Case("smollm_gqa_causal", 1, 9, 3, 16, 40, 64),
    Case("gqa4_pad_d16", 2, 8, 2, 33, 90, 16, pad=True),
    Case("noncausal_pad_splits3", 1, 8, 2, 64, 200, 64, causal=False, pad=True, extra=(("num_splits", 3),)),
    Case("d48_splits2", 1, 4, 1, 20, 150, 48, extra=(("num_splits", 2),)),
    Case("prefill_q_eq_n", 2, 9, 3, 64, 64, 64, pad=True),
    Case("decode_one_query", 1, 8, 2, 1, 77, 32, extra=(("num_splits", 4),)),
    Case("stats_only", 1, 9, 3, 40, 100, 64, need_output=False),
    Case("odd_tiles", 1, 4, 2, 50, 75, 16, pad=True, extra=(("block_m", 16), ("block_n", 16))),
    Case("noncontiguous", 2, 8, 2, 24, 60, 32, noncontig=True),
    Case("sharp_logits", 1, 8, 2, 32, 120, 64, logit_scale=8.0),
    Case("mha_noncausal", 1, 4, 4, 17, 45, 64, causal=False),
    Case("per_head_rows_q70", 1, 8, 2, 70, 110, 32, pad=True),  # q >= 64: one program per head
    # The 16-bit path (p cast to the value dtype for P@V). fp16, not bf16: the interpreter's bf16
    # tl.dot multiplies raw bit patterns (triton-lang/triton#11584, unsupported upstream).
    Case("fp16_inputs", 1, 9, 3, 40, 150, 64, pad=True, dtype="float16"),
    Case("fp16_d128_splits", 1, 8, 2, 24, 200, 128, dtype="float16", extra=(("num_splits", 2),)),
]

# Shapes on which reduce="max"/"mean" are compared with the reference (GQA, padding, key splits).
REDUCE_CASES = [
    Case("reduce_gqa_pad", 1, 9, 3, 40, 100, 64, pad=True, need_output=False),
    Case("reduce_noncausal_splits", 1, 8, 2, 24, 150, 32, causal=False, extra=(("num_splits", 3),)),
    Case("reduce_q70", 1, 8, 2, 70, 110, 32, need_output=False),
]

# Output tolerance (max-norm relative) by input dtype: 16-bit runs cast p to 16 bits for P@V.
OUTPUT_TOL = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2}
