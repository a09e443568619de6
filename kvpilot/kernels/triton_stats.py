"""Attention with statistics as a fused Triton kernel (CUDA; CPU only under ``TRITON_INTERPRET=1``).

Same contract as :func:`kvpilot.kernels.reference.attention_stats_reference`, never holding a
[q, n] matrix for more than one [BLOCK_M, BLOCK_N] tile. Two passes, because the mass a key gets
from a query row needs that row's final log-sum-exp:

1. ``_lse_fwd_kernel``, one program per (query block, batch*head, key split): flash-attention style
   online softmax over key blocks; writes the row log-sum-exp and, when asked, the output. With more
   than one key split (decode/window shapes, where query blocks alone cannot fill the GPU) the
   per-split partial results are merged in torch, as in flash-decoding.
2. ``_mass_kernel``, one program per (key block, batch*head): walks the query blocks that can see
   its keys, recomputes the logits, and sums ``p = exp(s - lse)`` over the queries into the key's
   mass (or keeps the largest ``p`` with ``reduce="max"``, KVzip's score), plus each row's entropy
   term ``-p log p``. Every program owns its keys, so mass is written
   once, without atomics, and the result is deterministic.

GQA maps query head ``h`` to KV head ``h // group``; keys are never repeated in memory. Logits
and accumulators are fp32 (``exp2`` with a log2(e)-scaled softmax scale); fp32 inputs use IEEE
dots (not TF32) so that fp32 results match the reference to ~1e-6.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kvpilot.kernels.reference import AttentionStats, Reduce, group_key_mass

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@triton.jit
def _lse_fwd_kernel(
    Q, K, V, VALID, OUT, LSE,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_mb, s_mh, s_mn,
    s_ob, s_oh, s_os, s_om, s_od,
    s_lb, s_lh, s_ls, s_lm,
    H_KV, GROUP, Q_LEN, N_KEYS, D, DV, SPLIT_LEN, scale_log2,
    CAUSAL: tl.constexpr, HAS_VALID: tl.constexpr, NEED_OUTPUT: tl.constexpr,
    PRECISION: tl.constexpr, STACKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    # STACKED (short query blocks: decode, small windows): the rows are the GROUP * Q_LEN queries
    # of all query heads sharing a KV head (row r = head g * Q_LEN + query i), so a K/V tile is
    # loaded once for the group and the rows fill BLOCK_M. Otherwise one program per query head,
    # where row offsets stay affine in the row index (cheaper for the compiler: no spills).
    pid_m = tl.program_id(0)
    if CAUSAL:  # the last query blocks see the most keys: launch them first (shorter tail)
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if STACKED:
        b = (pid_b // H_KV).to(tl.int64)
        hk = (pid_b % H_KV).to(tl.int64)
        h0 = hk * GROUP
        n_rows = GROUP * Q_LEN
        g = offs_r // Q_LEN
        i = offs_r % Q_LEN
        q_rows = g * s_qh + i * s_qm
        l_rows = g * s_lh + i * s_lm
        o_rows = g * s_oh + i * s_om
    else:
        b = (pid_b // (H_KV * GROUP)).to(tl.int64)
        h0 = (pid_b % (H_KV * GROUP)).to(tl.int64)
        hk = h0 // GROUP
        n_rows = Q_LEN
        i = offs_r
        q_rows = i * s_qm
        l_rows = i * s_lm
        o_rows = i * s_om
    row_ok = offs_r < n_rows
    offset = N_KEYS - Q_LEN  # bottom-right causal alignment: query i sees keys <= i + offset
    # 64-bit scalar bases, 32-bit offsets inside the tile (keeps the tile's index math cheap).
    q_base = Q + b * s_qb + h0 * s_qh
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh
    valid_base = VALID + b * s_mb + hk * s_mh
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        q_base + (q_rows[:, None] + offs_d[None, :] * s_qd),
        mask=row_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )

    lo = pid_s * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, N_KEYS)
    if CAUSAL:
        first = pid_m * BLOCK_M
        last = tl.minimum(first + BLOCK_M, n_rows) - 1
        if STACKED:  # largest query index in the block (Q_LEN - 1 when it spans two heads)
            max_i = tl.where(first // Q_LEN == last // Q_LEN, last % Q_LEN, Q_LEN - 1)
        else:
            max_i = last
        hi = tl.minimum(hi, max_i + offset + 1)

    # m starts finite so a block whose keys are all masked gives exp2(-inf - m) = 0, not NaN.
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        kt = tl.load(
            k_base + (offs_n[None, :] * s_kn + offs_d[:, None] * s_kd),
            mask=col_ok[None, :] & (offs_d[:, None] < D),
            other=0.0,
        )
        s = tl.dot(q, kt, input_precision=PRECISION) * scale_log2
        allowed = col_ok[None, :] & row_ok[:, None]
        if HAS_VALID:
            valid = tl.load(valid_base + offs_n * s_mn, mask=col_ok, other=0)
            allowed = allowed & (valid != 0)[None, :]
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= i[:, None] + offset)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if NEED_OUTPUT:
            v = tl.load(
                v_base + (offs_n[:, None] * s_vn + offs_dv[None, :] * s_vd),
                mask=col_ok[:, None] & (offs_dv[None, :] < DV),
                other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    tl.store(LSE + b * s_lb + h0 * s_lh + pid_s * s_ls + l_rows, lse, mask=row_ok)
    if NEED_OUTPUT:
        out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
        tl.store(
            OUT + b * s_ob + h0 * s_oh + pid_s * s_os + (o_rows[:, None] + offs_dv[None, :] * s_od),
            out.to(OUT.dtype.element_ty),
            mask=row_ok[:, None] & (offs_dv[None, :] < DV),
        )


@triton.jit
def _mass_kernel(
    Q, K, VALID, LSE, MASS, ENT,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_mb, s_mh, s_mn,
    s_lb, s_lh, s_lm,
    s_ab, s_ah, s_an,
    s_eb, s_eh, s_en,
    H_KV, GROUP, Q_LEN, N_KEYS, D, scale_log2,
    CAUSAL: tl.constexpr, HAS_VALID: tl.constexpr, PRECISION: tl.constexpr, REDUCE_MAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # REDUCE_MAX: a key keeps the largest weight any one query gave it instead of the sum.
    # One program owns BLOCK_N keys of one KV head and walks every query head of its group, so
    # the K tile is loaded once and each key's mass is written once (no atomics).
    pid_n = tl.program_id(0)
    pid_bk = tl.program_id(1)
    b = (pid_bk // H_KV).to(tl.int64)
    hk = (pid_bk % H_KV).to(tl.int64)
    offset = N_KEYS - Q_LEN
    k_base = K + b * s_kb + hk * s_kh
    valid_base = VALID + b * s_mb + hk * s_mh

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < N_KEYS
    kt = tl.load(
        k_base + (offs_n[None, :] * s_kn + offs_d[:, None] * s_kd),
        mask=col_ok[None, :] & (offs_d[:, None] < D),
        other=0.0,
    )
    if HAS_VALID:
        valid = tl.load(valid_base + offs_n * s_mn, mask=col_ok, other=0)
        col_ok = col_ok & (valid != 0)

    start_m = 0
    if CAUSAL:
        # First query that can see key pid_n * BLOCK_N, rounded down to a block.
        start_m = (tl.maximum(pid_n * BLOCK_N - offset, 0) // BLOCK_M) * BLOCK_M
    for g in range(GROUP):
        h = hk * GROUP + g
        q_base = Q + b * s_qb + h * s_qh
        lse_base = LSE + b * s_lb + h * s_lh
        mass = tl.zeros([BLOCK_N], dtype=tl.float32)
        ent = tl.zeros([BLOCK_M], dtype=tl.float32)
        for m0 in range(start_m, Q_LEN, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            row_ok = offs_m < Q_LEN
            q = tl.load(
                q_base + (offs_m[:, None] * s_qm + offs_d[None, :] * s_qd),
                mask=row_ok[:, None] & (offs_d[None, :] < D),
                other=0.0,
            )
            lse = tl.load(lse_base + offs_m * s_lm, mask=row_ok, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # rows that saw no key: p = 0
            s = tl.dot(q, kt, input_precision=PRECISION) * scale_log2
            allowed = col_ok[None, :] & row_ok[:, None]
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + offset)
            p = tl.exp2(tl.where(allowed, s - lse[:, None], float("-inf")))  # masked: exactly 0, no overflow
            if REDUCE_MAX:
                mass = tl.maximum(mass, tl.max(p, 0))
            else:
                mass += tl.sum(p, 0)
            ent += tl.sum(p * tl.where(allowed, lse[:, None] - s, 0.0), 1)  # -p*log(p), in log2 units
        tl.store(MASS + b * s_ab + h * s_ah + (offs_n * s_an), mass, mask=offs_n < N_KEYS)
        tl.store(ENT + b * s_eb + h * s_eh + pid_n * s_en, tl.sum(ent, 0) * 0.6931471805599453)


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def tiles(
    elem_size: int, block_d: int, q_len: int, stacked_rows: int | None = None
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps) for pass 1 and pass 2.

    ``stacked_rows``: rows per pass-1 program when the heads of a group are stacked (None: one
    head per program). Chosen by compiling for sm_80/sm_90 offline and keeping register use
    within 255 without spills (tests/kernels/test_triton_compile.py); not yet timed on a GPU.
    fp32 uses IEEE (FMA) dots, so its tiles are small: fp32 is for accuracy, 16-bit for speed.
    """
    pq = _pow2(q_len)
    if elem_size <= 2:
        if block_d <= 64:
            second = (min(64, pq), 64, 4)
        elif block_d <= 128:
            second = (min(64, pq), 128, 8)
        else:
            second = (min(32, pq), 64, 8)
    else:
        second = (min(32, pq), 32, 4) if block_d <= 64 else (min(32, pq), 64, 8)
    if stacked_rows is not None:
        pr = _pow2(stacked_rows)
        if elem_size > 2:
            return (min(32, pr) if block_d <= 128 else 16, 32, 4 if block_d <= 64 else 8), second
        if pr <= 16:
            return (16, 64 if block_d <= 128 else 32, 4), second
        if block_d <= 64:
            return (min(64, pr), 64, 8), second
        return (min(64, pr), 32, 8), second
    if elem_size <= 2:
        if block_d <= 64:
            return (min(64, pq), 64, 4), second
        if block_d <= 128:
            return (min(128, pq), 64, 8), second
        return (min(64, pq), 32, 8), second
    if block_d <= 64:
        return (min(32, pq), 32, 4), second
    if block_d <= 128:
        return (min(32, pq), 32, 8), second
    return (16, 32, 8), second


def _default_num_splits(device: torch.device, programs: int, n_keys: int, block_n: int) -> int:
    """Key splits for pass 1 so that short query blocks (decode, windows) still fill the GPU."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if programs >= sms:
        return 1
    max_splits = max(1, triton.cdiv(n_keys, 4 * block_n))  # keep >= 4 key blocks per split
    return max(1, min(max_splits, triton.cdiv(2 * sms, programs)))


def attention_stats_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None = None,
    *,
    scaling: float,
    causal: bool = True,
    key_valid: torch.Tensor | None = None,
    need_output: bool = False,
    query_chunk: int | None = None,
    num_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    reduce: Reduce = "sum",
) -> AttentionStats:
    """Triton version of ``attention_stats_reference`` (same arguments and result).

    ``query_chunk`` is accepted for signature compatibility and ignored (the kernel tiles by
    ``block_m``). ``num_splits`` overrides the number of key splits of pass 1 (None: chosen from
    the GPU's SM count). Rows that see no key get zero mass, zero entropy and a zero output.
    """
    del query_chunk
    if reduce not in ("sum", "mean", "max"):
        raise ValueError(f"reduce must be 'sum', 'mean' or 'max', got {reduce!r}")
    if need_output and value is None:
        raise ValueError("need_output=True requires value")
    value_t = value if value is not None else query  # never read without need_output
    b, h, q_len, d = query.shape
    kb, h_kv, n, kd = key.shape
    if kb != b or kd != d or h % h_kv:
        raise ValueError(f"incompatible shapes: query {tuple(query.shape)}, key {tuple(key.shape)}")
    if key.dtype != query.dtype or (need_output and value_t.dtype != query.dtype):
        raise ValueError("query, key and value must share a dtype")
    group = h // h_kv
    dev = query.device
    if q_len == 0 or n == 0:  # nothing to launch; the same zeros the reference gives
        zeros = torch.zeros(b, h, n, dtype=torch.float32, device=dev)
        out = query.new_zeros(b, h, q_len, value_t.shape[-1]) if need_output else None
        return AttentionStats(
            zeros, zeros.view(b, h_kv, group, n).sum(2), zeros.new_zeros(b, h), out, q_len, backend="triton"
        )
    dv = value_t.shape[-1] if need_output else d
    precision = "ieee" if query.dtype == torch.float32 else "tf32"
    scale_log2 = float(scaling) * _LOG2E
    block_d, block_dv = _pow2(d), _pow2(dv)
    # Stack the query heads of a KV group as rows when one head's queries cannot fill a block.
    stacked = q_len < 64
    rows_per_program = group * q_len if stacked else q_len
    (bm, bn, warps), (bm2, bn2, warps2) = tiles(
        query.element_size(), max(block_d, block_dv), q_len, rows_per_program if stacked else None
    )
    bm, bm2 = block_m or bm, block_m or bm2
    bn, bn2 = block_n or bn, block_n or bn2

    if key_valid is not None:
        if key_valid.shape != (b, h_kv, n):
            raise ValueError(f"key_valid must be [b, H_kv, n] = {(b, h_kv, n)}, got {tuple(key_valid.shape)}")
        valid = (
            key_valid.view(torch.uint8)
            if key_valid.dtype == torch.bool
            else key_valid.ne(0).view(torch.uint8)
        )
        vs = valid.stride()
    else:
        valid, vs = query, (0, 0, 0)  # dummy pointer, never read

    # Pass 1: row log-sum-exp (log2 units) and the output.
    m_blocks = triton.cdiv(rows_per_program, bm)
    heads_axis = b * h_kv if stacked else b * h
    splits = num_splits or _default_num_splits(dev, m_blocks * heads_axis, n, bn)
    splits = max(1, min(splits, triton.cdiv(n, bn)))
    split_len = triton.cdiv(triton.cdiv(n, splits), bn) * bn
    splits = triton.cdiv(n, split_len)
    lse = torch.empty(b, h, splits, q_len, dtype=torch.float32, device=dev)
    out = None
    if need_output:
        if splits == 1:
            out = torch.empty(b, h, q_len, dv, dtype=query.dtype, device=dev)
            o_buf, os_ = out, (out.stride(0), out.stride(1), 0, out.stride(2), out.stride(3))
        else:
            o_buf = torch.empty(b, h, splits, q_len, dv, dtype=torch.float32, device=dev)
            os_ = tuple(o_buf.stride())  # type: ignore[assignment]
        v_arg, v_s = value_t, value_t.stride()
    else:
        o_buf, os_ = lse, (0, 0, 0, 0, 0)
        v_arg, v_s = key, (0, 0, 0, 0)
    _lse_fwd_kernel[(m_blocks, heads_axis, splits)](
        query, key, v_arg, valid, o_buf, lse,
        *query.stride(), *key.stride(), *v_s, *vs, *os_, *lse.stride(),
        h_kv, group, q_len, n, d, dv, split_len, scale_log2,
        CAUSAL=causal, HAS_VALID=key_valid is not None, NEED_OUTPUT=need_output, PRECISION=precision,
        STACKED=stacked,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, BLOCK_DV=block_dv,
        num_warps=warps, num_stages=2, enable_fp_fusion=True,
    )  # fmt: skip
    if splits > 1:
        lse_nat = lse * _LN2
        total = torch.logsumexp(lse_nat, dim=2, keepdim=True)
        weight = torch.exp(lse_nat - total).nan_to_num_(0.0)  # NaN only where a row saw no key at all
        if need_output:
            out = (weight[..., None] * o_buf).sum(dim=2).to(query.dtype)
        lse = (total * _LOG2E).squeeze(2)
    else:
        lse = lse.squeeze(2)

    # Pass 2: per-key mass and entropy terms, key-block major.
    n_blocks = triton.cdiv(n, bn2)
    head_mass = torch.empty(b, h, n, dtype=torch.float32, device=dev)
    ent_part = torch.empty(b, h, n_blocks, dtype=torch.float32, device=dev)
    _mass_kernel[(n_blocks, b * h_kv)](
        query, key, valid, lse, head_mass, ent_part,
        *query.stride(), *key.stride(), *vs, *lse.stride(), *head_mass.stride(), *ent_part.stride(),
        h_kv, group, q_len, n, d, scale_log2,
        CAUSAL=causal, HAS_VALID=key_valid is not None, PRECISION=precision, REDUCE_MAX=reduce == "max",
        BLOCK_M=bm2, BLOCK_N=bn2, BLOCK_D=block_d,
        num_warps=warps2, num_stages=2, enable_fp_fusion=True,
    )  # fmt: skip
    key_mass = group_key_mass(head_mass, h_kv, q_len, reduce)
    row_entropy = ent_part.sum(dim=2) / max(q_len, 1)
    return AttentionStats(head_mass, key_mass, row_entropy, out, q_len, backend="triton")


__all__ = ["attention_stats_triton"]
