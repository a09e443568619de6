"""Run the Triton stats kernel in Triton's interpreter (CPU) on every case; print one JSON line each.

Started by ``test_triton_stats.py`` in a subprocess with ``TRITON_INTERPRET=1`` so that the
interpreter setting (read when ``@triton.jit`` runs) cannot leak into other tests. Not a test
module itself (no ``test_`` prefix). Usage: ``TRITON_INTERPRET=1 python triton_interp_cases.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path


def _load_cases():
    spec = importlib.util.spec_from_file_location("stats_cases", Path(__file__).with_name("stats_cases.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["stats_cases"] = module
    spec.loader.exec_module(module)
    return module


def _check(sc, case, attention_stats_triton, attention_stats_reference) -> dict:
    inputs = sc.make_inputs(case)
    stats = attention_stats_triton(**inputs, **dict(case.extra))
    ref = attention_stats_reference(**inputs)
    errs = sc.rel_errors(stats, sc.naive64(**inputs))
    group = case.h // case.h_kv
    mass_sum = stats.head_mass.double().sum(-1)
    kv_sum = stats.key_mass.double().sum(-1)
    masked_zero = True
    if inputs["key_valid"] is not None:
        masked_zero = bool((stats.key_mass[~inputs["key_valid"]] == 0).all())
    return {
        "errors_vs_float64": errs,
        "max_abs_vs_reference_mass": (stats.head_mass - ref.head_mass).abs().max().item(),
        "head_mass_sum_err": (mass_sum - case.q).abs().max().item() / case.q,
        "key_mass_sum_err": (kv_sum - group * case.q).abs().max().item() / (group * case.q),
        "padded_keys_zero": masked_zero,
        "output_is_none": stats.output is None,
        "num_queries": stats.num_queries,
    }


def _check_empty_rows(attention_stats_triton) -> dict:
    """A row with no visible key: zeros (the reference would give NaN)."""
    import torch

    q = torch.randn(1, 2, 4, 16)
    k = torch.randn(1, 1, 10, 16)
    valid = torch.ones(1, 1, 10, dtype=torch.bool)
    valid[..., :7] = False  # causal row 0 sees keys <= 6: all padded
    s = attention_stats_triton(q, k, k, scaling=0.25, causal=True, key_valid=valid, need_output=True)
    finite = all(bool(torch.isfinite(t).all()) for t in (s.head_mass, s.row_entropy, s.output))
    return {
        "finite": finite,
        "row0_output_zero": bool((s.output[:, :, 0] == 0).all()),
        "mass_sum": s.head_mass.sum(-1).flatten().tolist(),  # 3 of 4 rows saw keys
    }


def _check_dispatcher() -> dict:
    """``KVPILOT_KERNEL=triton`` routes CPU tensors to the kernel (possible only when interpreted)."""
    import torch

    from kvpilot.kernels import attention_stats, kernel_backend

    os.environ["KVPILOT_KERNEL"] = "triton"
    q, k = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 20, 16)
    backend = kernel_backend(q)
    s = attention_stats(q, k, k, scaling=0.25, need_output=True, query_chunk=3)
    os.environ.pop("KVPILOT_KERNEL")
    return {
        "backend": backend,
        "stats_backend": s.backend,
        "mass_sum": s.head_mass.sum(-1).flatten().tolist(),
    }


def _check_reduce(sc, attention_stats_triton, attention_stats_reference) -> dict:
    """reduce="max" and "mean" agree with the reference on GQA, padded and key-split shapes."""
    errors = {}
    for case in sc.REDUCE_CASES:
        inputs = sc.make_inputs(case)
        for reduce in ("max", "mean"):
            got = attention_stats_triton(**inputs, **dict(case.extra), reduce=reduce)
            want = attention_stats_reference(**inputs, reduce=reduce)
            errors[f"{case.name}/{reduce}"] = max(
                (got.head_mass - want.head_mass).abs().max().item(),
                (got.key_mass - want.key_mass).abs().max().item(),
            )
    return {"max_abs_err": errors}


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 before running this script", file=sys.stderr)
        return 2
    sc = _load_cases()
    from kvpilot.kernels.reference import attention_stats_reference
    from kvpilot.kernels.triton_stats import attention_stats_triton

    checks = [
        (c.name, lambda c=c: _check(sc, c, attention_stats_triton, attention_stats_reference))
        for c in sc.TRITON_CASES
    ]
    checks += [
        ("empty_rows", lambda: _check_empty_rows(attention_stats_triton)),
        ("dispatcher", _check_dispatcher),
        ("reduce", lambda: _check_reduce(sc, attention_stats_triton, attention_stats_reference)),
    ]
    for name, fn in checks:
        try:
            result = {"case": name, "ok": True, **fn()}
        except Exception:
            result = {"case": name, "ok": False, "error": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
