"""The Triton stats kernel, run in Triton's CPU interpreter, against the float64 reference.

The kernel runs in one subprocess (``TRITON_INTERPRET=1`` must be set before triton is imported,
and must not leak into the rest of the test session); each case is reported as its own test.
On a CUDA machine the same cases also run natively on the GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOL = 1e-4


def _load_cases():
    name = "kvpilot_tests_kernels_stats_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "stats_cases.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


sc = _load_cases()


@pytest.fixture(scope="module")
def interp_results() -> dict[str, dict]:
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("KVPILOT_KERNEL", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "triton_interp_cases.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["case"]] = row
    if not results:
        pytest.fail(f"interpreter run produced nothing (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return results


def _assert_case(row: dict, case) -> None:
    assert row["ok"], row.get("error")
    errs = dict(row["errors_vs_float64"])
    assert errs.pop("output", 0.0) < sc.OUTPUT_TOL[case.dtype], row["errors_vs_float64"]
    assert max(errs.values()) < TOL, errs  # statistics are fp32 whatever the input dtype
    assert row["head_mass_sum_err"] < 1e-5 and row["key_mass_sum_err"] < 1e-5, row
    assert row["padded_keys_zero"], row
    assert row["output_is_none"] == (not case.need_output)
    assert row["num_queries"] == case.q


@pytest.mark.parametrize("case", sc.TRITON_CASES, ids=lambda c: c.name)
def test_triton_interpreter_matches_float64(interp_results, case):
    _assert_case(interp_results[case.name], case)


def test_triton_interpreter_rows_without_keys_are_zero(interp_results):
    row = interp_results["empty_rows"]
    assert row["ok"], row.get("error")
    assert row["finite"] and row["row0_output_zero"]
    assert row["mass_sum"] == pytest.approx([3.0, 3.0], abs=1e-5)


def test_dispatcher_forced_triton(interp_results):
    row = interp_results["dispatcher"]
    assert row["ok"], row.get("error")
    assert row["backend"] == row["stats_backend"] == "triton"
    assert row["mass_sum"] == pytest.approx([8.0] * 4, abs=1e-5)


def test_triton_interpreter_reduce_max_and_mean(interp_results):
    row = interp_results["reduce"]
    assert row["ok"], row.get("error")
    assert set(row["max_abs_err"]) == {f"{c.name}/{r}" for c in sc.REDUCE_CASES for r in ("max", "mean")}
    assert max(row["max_abs_err"].values()) < 1e-5, row["max_abs_err"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", sc.REDUCE_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_triton_on_gpu_reduce_matches_reference(case, reduce):
    from kvpilot.kernels.reference import attention_stats_reference
    from kvpilot.kernels.triton_stats import attention_stats_triton

    inputs = sc.make_inputs(case)
    cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    got = attention_stats_triton(**cuda, **dict(case.extra), reduce=reduce)
    want = attention_stats_reference(**cuda, reduce=reduce)
    torch.testing.assert_close(got.head_mass, want.head_mass, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.key_mass, want.key_mass, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", sc.TRITON_CASES, ids=lambda c: c.name)
def test_triton_on_gpu_matches_float64(case):
    from kvpilot.kernels.reference import attention_stats_reference
    from kvpilot.kernels.triton_stats import attention_stats_triton

    inputs = sc.make_inputs(case)
    cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    stats = attention_stats_triton(**cuda, **dict(case.extra))
    stats_cpu = type(stats)(
        stats.head_mass.cpu(),
        stats.key_mass.cpu(),
        stats.row_entropy.cpu(),
        None if stats.output is None else stats.output.cpu(),
        stats.num_queries,
    )
    errs = sc.rel_errors(stats_cpu, sc.naive64(**inputs))
    assert errs.pop("output", 0.0) < sc.OUTPUT_TOL[case.dtype], errs
    assert max(errs.values()) < TOL, errs
    ref = attention_stats_reference(**cuda)
    torch.testing.assert_close(stats.head_mass, ref.head_mass, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_on_gpu_bf16_llama_shape():
    """bf16 inputs at a Llama-3-8B head shape with automatic key splits.

    QK^T of bf16 values is exact products with fp32 accumulation and the softmax is fp32, so the
    statistics stay close to the float64 truth computed from the same bf16 values.
    """
    from kvpilot.kernels.triton_stats import attention_stats_triton

    for q_len in (64, 1024):
        case = sc.Case("bf16", 1, 32, 8, q_len, 1024, 128, dtype="bfloat16", need_output=False)
        inputs = sc.make_inputs(case)
        cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        stats = attention_stats_triton(**cuda)
        stats.head_mass, stats.key_mass, stats.row_entropy = (
            stats.head_mass.cpu(),
            stats.key_mass.cpu(),
            stats.row_entropy.cpu(),
        )
        errs = sc.rel_errors(stats, sc.naive64(**inputs))
        assert max(errs.values()) < 1e-3, errs
