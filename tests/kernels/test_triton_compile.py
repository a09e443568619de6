"""Compile the Triton kernels for real GPUs (sm_80, sm_90) without a GPU.

Triton ships ptxas, so the whole pipeline down to a cubin runs on a CPU machine. This catches
what the interpreter cannot: code that only fails in the compiler, and tiles whose shared memory
exceeds what the GPU allows. Register spills are reported, not asserted (they cost speed only).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# Max dynamic shared memory per block: A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
SMEM_LIMIT = {80: 166912, 90: 232448}


def _compile(fn, ptr_types: dict[str, str], constexprs: dict, arch: int, num_warps: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    signature = {name: ptr_types.get(name, "i32") for name in names}
    signature.update({name: "constexpr" for name in constexprs})
    try:  # this form of ASTSource is triton >= 3.3's (tested with 3.9)
        src = ASTSource(
            fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}
        )
    except TypeError as exc:
        pytest.skip(f"offline compile API differs in triton {triton.__version__}: {exc}")

    return triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": 2, "enable_fp_fusion": True},
    )


CONFIGS = [(arch, dtype, d) for arch in (80, 90) for dtype in ("bf16", "fp32") for d in (64, 128)]


@pytest.mark.parametrize(("arch", "dtype", "d"), CONFIGS, ids=lambda v: str(v))
def test_kernels_compile_for_gpu(arch, dtype, d):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: kernels are interpreted, not compiled")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:  # the offline-compile API moved in this triton version
        pytest.skip(f"offline compile API unavailable: {exc}")
    from kvpilot.kernels import triton_stats as ts

    elem = 2 if dtype == "bf16" else 4
    precision = "ieee" if dtype == "fp32" else "tf32"
    # (stacked, q_len): decode-sized blocks stack the 4 heads of a group; prefill-sized do not.
    for stacked, q_len, causal, valid, need_out in (
        (True, 16, True, True, True),
        (True, 1, True, False, True),
        (False, 4096, False, False, False),
        (False, 4096, True, False, True),
    ):
        (bm, bn, w), (bm2, bn2, w2) = ts.tiles(elem, d, q_len, 4 * q_len if stacked else None)
        k1 = _compile(
            ts._lse_fwd_kernel,
            {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "OUT": f"*{dtype}", "VALID": "*u8",
             "LSE": "*fp32", "scale_log2": "fp32"},
            {"CAUSAL": causal, "HAS_VALID": valid, "NEED_OUTPUT": need_out, "PRECISION": precision,
             "STACKED": stacked, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": d, "BLOCK_DV": d},
            arch,
            w,
        )  # fmt: skip
        k2 = _compile(
            ts._mass_kernel,
            {"Q": f"*{dtype}", "K": f"*{dtype}", "VALID": "*u8", "LSE": "*fp32", "MASS": "*fp32",
             "ENT": "*fp32", "scale_log2": "fp32"},
            {"CAUSAL": causal, "HAS_VALID": valid, "PRECISION": precision,
             "BLOCK_M": bm2, "BLOCK_N": bn2, "BLOCK_D": d},
            arch,
            w2,
        )  # fmt: skip
        for kernel in (k1, k2):
            assert kernel.asm.get("cubin"), "no cubin produced"
            assert kernel.metadata.shared <= SMEM_LIMIT[arch], kernel.metadata.shared
