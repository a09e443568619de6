"""Attention with statistics: time and peak memory of the kvpilot kernels against SDPA and eager.

Why: the probes and the attention-based eviction policies need per-key attention mass. The claim
to check is that the statistics cost little next to SDPA (which returns none) and far less than
eager attention that materialises the weights (``output_attentions``).

Methods (all compute the attention of ``q`` queries over ``n`` keys, GQA, causal bottom-right):
  triton_stats            Triton kernel: output + per-key mass + row entropy (one call)
  triton_stats_only       Triton kernel, statistics only (what runs next to SDPA)
  triton_stats_only_max   the same with reduce="max" (KVzip's max over queries, reconstruction scoring)
  sdpa                    torch SDPA, output only, no statistics (the speed bar)
  sdpa+triton_stats_only  SDPA for the output, then the Triton statistics: the registered
                          attention function's path
  reference               chunked torch reference (query_chunk=256): output + statistics
  reference_stats_only    chunked torch reference, statistics only
  eager_weights           Hugging Face eager attention: repeat_kv, QK^T + additive mask,
                          fp32 softmax cast back, weights @ V, weights returned, and their
                          column sums as the mass (the output_attentions route)

Cases: "prefill" (q = n: the whole prompt, e.g. H2O's column sums at prefill) and "window"
(q = 64 queries over n keys: SnapKV-style observation window, or a decode block).

GPU suite (default when CUDA is available): Llama-3-8B head shape, H=32, H_kv=8, d=128, bf16,
n in 4k/16k/32k. CPU suite (smoke): the bundled model's head shape, H=9, H_kv=3, d=64, fp32,
n in 1k/2k, without Triton (on a CPU it would run interpreted).
Peak memory is measured beyond the inputs: torch.cuda.max_memory_allocated on CUDA; on the CPU
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before the call.

    python benchmarks/stats_kernel.py                 # suite for the available device
    python benchmarks/stats_kernel.py --device cpu    # CPU smoke suite
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from kvpilot.kernels.reference import attention_stats_reference  # noqa: E402

SUITES = {
    "gpu": {"h": 32, "h_kv": 8, "d": 128, "dtype": "bfloat16", "lengths": [4096, 16384, 32768], "window": 64},
    "cpu": {"h": 9, "h_kv": 3, "d": 64, "dtype": "float32", "lengths": [1024, 2048], "window": 64},
}


# ---------------------------------------------------------------- methods
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA with bottom-right causal alignment and native GQA; falls back to repeated KV heads."""
    n_q, n = q.shape[2], k.shape[2]
    if n_q == n:
        mask_kw: dict = {"is_causal": True}
    else:
        from torch.nn.attention.bias import causal_lower_right

        mask_kw = {"attn_mask": causal_lower_right(n_q, n)}
    if _SDPA_MODE["gqa"]:
        try:
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True, **mask_kw)
        except (RuntimeError, TypeError) as exc:
            _SDPA_MODE.update(
                gqa=False, why=f"enable_gqa failed ({type(exc).__name__}: {exc}); KV heads repeated"
            )
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(q, k, v, scale=scale, **mask_kw)


_SDPA_MODE: dict = {"gqa": True, "why": "enable_gqa=True"}


def _eager_weights(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """What transformers' eager attention does when asked for attention weights."""
    group = q.shape[1] // k.shape[1]
    n_q, n = q.shape[2], k.shape[2]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    rows = torch.arange(n_q, device=q.device)[:, None] + (n - n_q)
    mask = torch.zeros(n_q, n, dtype=q.dtype, device=q.device)
    mask.masked_fill_(torch.arange(n, device=q.device)[None, :] > rows, torch.finfo(q.dtype).min)
    weights = torch.matmul(q, k.transpose(2, 3)) * scale + mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, v)
    mass = weights.sum(dim=2, dtype=torch.float32)
    return out, weights, mass


def build_methods(use_triton: bool) -> dict[str, Callable]:
    methods: dict[str, Callable] = {}
    if use_triton:
        from kvpilot.kernels.triton_stats import attention_stats_triton

        methods["triton_stats"] = lambda q, k, v, s: attention_stats_triton(
            q, k, v, scaling=s, need_output=True
        )
        methods["triton_stats_only"] = lambda q, k, v, s: attention_stats_triton(q, k, scaling=s)
        # KVzip's score: the largest weight any query gave a key (reconstruction scoring's kernel call)
        methods["triton_stats_only_max"] = lambda q, k, v, s: attention_stats_triton(q, k, scaling=s, reduce="max")
        methods["sdpa+triton_stats_only"] = lambda q, k, v, s: (
            _sdpa(q, k, v, s),
            attention_stats_triton(q, k, scaling=s),
        )
    methods["sdpa"] = _sdpa
    methods["reference"] = lambda q, k, v, s: attention_stats_reference(q, k, v, scaling=s, need_output=True)
    methods["reference_stats_only"] = lambda q, k, v, s: attention_stats_reference(q, k, scaling=s)
    methods["eager_weights"] = _eager_weights
    return methods


# ---------------------------------------------------------------- measuring
def _rss_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _pin_malloc_mmap_threshold() -> str:
    """Make glibc return freed big blocks to the OS, so that peak RSS reflects each call.

    glibc raises its mmap threshold after big frees and then keeps later big blocks on the heap,
    where a second call's allocations reuse memory already counted in RSS. A fixed threshold
    (which disables that adjustment) keeps every block above 64 KiB in its own mapping.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError as exc:
        return f"not glibc ({exc}): CPU peaks may be under-reported"
    return (
        "glibc M_MMAP_THRESHOLD pinned to 64 KiB"
        if ok == 1
        else "mallopt failed: CPU peaks may be under-reported"
    )


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def measure(fn: Callable[[], object], device: torch.device, min_time: float, max_reps: int) -> dict:
    """First call: peak memory above the inputs (and warm-up). Then median wall time of several calls."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        can_peak = _reset_cpu_peak()
        base = _rss_kib("VmRSS") * 1024
    result = fn()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM") * 1024 - base if can_peak else None
    del result
    times: list[float] = []
    total = 0.0
    while len(times) < max_reps and (len(times) < 3 or total < min_time):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            ms = start.elapsed_time(stop)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        total += ms / 1e3
    return {
        "ms_median": round(statistics.median(times), 4),
        "ms_min": round(min(times), 4),
        "reps": len(times),
        "peak_extra_mib": None if peak is None else round(peak / 2**20, 2),
    }


def _eager_bytes(b: int, h: int, n_q: int, n: int, elem: int) -> int:
    """Eager's big tensors at once: logits (+mask), fp32 softmax, weights cast back."""
    return b * h * n_q * n * (elem + 4 + elem) + n_q * n * elem


def _too_big(device: torch.device, need: int) -> str | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    if need > 0.9 * free:
        return f"skipped: needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def _checks(methods: dict, q, k, v, scale: float) -> dict:
    """Sanity of the comparison: every method computes the same attention."""
    out: dict = {}
    ref_out = _sdpa(q, k, v, scale).float()
    if "reference" in methods and q.shape[2] * k.shape[2] <= 2**24:
        st = methods["reference"](q, k, v, scale)
        out["reference_vs_sdpa_output_max_abs"] = (st.output.float() - ref_out).abs().max().item()
        out["reference_mass_sum_rel_err"] = (
            (st.head_mass.sum(-1) - q.shape[2]).abs().max() / q.shape[2]
        ).item()
    if "triton_stats" in methods:
        st = methods["triton_stats"](q, k, v, scale)
        out["triton_vs_sdpa_output_max_abs"] = (st.output.float() - ref_out).abs().max().item()
        out["triton_mass_sum_rel_err"] = ((st.head_mass.sum(-1) - q.shape[2]).abs().max() / q.shape[2]).item()
        if q.shape[2] <= 256:  # the reference is cheap here: compare the mass itself
            ref = attention_stats_reference(q, k, scaling=scale)
            err = (st.head_mass - ref.head_mass).abs().max() / ref.head_mass.abs().max()
            out["triton_vs_reference_mass_rel_err"] = err.item()
    return out


def run_case(
    case: str,
    shape: tuple[int, int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    methods: dict[str, Callable],
    min_time: float,
    max_reps: int,
) -> dict:
    """Measure every method on one (heads, kv heads, queries, keys, head dim) shape."""
    h, h_kv, n_q, n, d = shape
    scale = 1.0 / math.sqrt(d)
    gen = torch.Generator(device="cpu").manual_seed(n)
    q = (torch.randn(1, h, n_q, d, generator=gen) * 2).to(device, dtype)
    k = torch.randn(1, h_kv, n, d, generator=gen).to(device, dtype)
    v = torch.randn(1, h_kv, n, d, generator=gen).to(device, dtype)
    row: dict = {"case": case, "n_keys": n, "n_queries": n_q, "checks": _checks(methods, q, k, v, scale)}
    m: dict = {}
    for name, fn in methods.items():
        skip = (
            _too_big(device, _eager_bytes(1, h, n_q, n, q.element_size()))
            if name == "eager_weights"
            else None
        )
        if skip:
            m[name] = {"error": skip}
        else:
            try:
                m[name] = measure(lambda fn=fn: fn(q, k, v, scale), device, min_time, max_reps)
            except torch.cuda.OutOfMemoryError as exc:
                m[name] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
                torch.cuda.empty_cache()
        print(f"{case:8s} n={n:6d} q={n_q:6d} {name:24s} {m[name]}", flush=True)

    def ratio(a: str, b: str) -> float | None:
        if "ms_median" in m.get(a, {}) and "ms_median" in m.get(b, {}):
            return round(m[a]["ms_median"] / m[b]["ms_median"], 3)
        return None

    row["methods"] = m
    row["ratios"] = {
        "triton_stats / sdpa": ratio("triton_stats", "sdpa"),
        "(sdpa + triton_stats_only) / sdpa": ratio("sdpa+triton_stats_only", "sdpa"),
        "eager_weights / triton_stats": ratio("eager_weights", "triton_stats"),
        "reference / sdpa": ratio("reference", "sdpa"),
        "eager_weights / reference": ratio("eager_weights", "reference"),
    }
    return row


# ---------------------------------------------------------------- main
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument(
        "--suite", choices=["auto", "gpu", "cpu"], default="auto", help="shape set (default: by device)"
    )
    ap.add_argument("--lengths", type=int, nargs="+", help="override the key lengths")
    ap.add_argument("--window", type=int, help="override the window case's query count")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="override the suite's dtype")
    ap.add_argument("--methods", nargs="+", help="run only these methods")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per measurement")
    ap.add_argument("--max-reps", type=int, default=50)
    ap.add_argument("--triton", choices=["auto", "on", "off"], default="auto", help="auto: on CUDA only")
    ap.add_argument(
        "--out", type=Path, help="JSON path (default benchmarks/results/stats_kernel_<device>.json)"
    )
    args = ap.parse_args(argv)

    cuda_ok = torch.cuda.is_available()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and cuda_ok) else "cpu")
    suite_name = args.suite if args.suite != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    suite = dict(SUITES[suite_name])
    if args.lengths:
        suite["lengths"] = args.lengths
    if args.window:
        suite["window"] = args.window
    if args.dtype:
        suite["dtype"] = args.dtype
    malloc_note = _pin_malloc_mmap_threshold() if device.type == "cpu" else None
    use_triton = args.triton == "on" or (args.triton == "auto" and device.type == "cuda")
    methods = build_methods(use_triton)
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods}
    dtype = getattr(torch, suite["dtype"])
    h, h_kv, d = suite["h"], suite["h_kv"], suite["d"]

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = []
    for n in suite["lengths"]:
        for case, n_q in (("prefill", n), ("window", min(suite["window"], n))):
            shape = (h, h_kv, n_q, n, d)
            results.append(run_case(case, shape, dtype, device, methods, args.min_time, args.max_reps))

    device_name = _device_name(device)
    slug = "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    out_path = args.out or ROOT / "benchmarks" / "results" / f"stats_kernel_{slug}.json"
    report = {
        "benchmark": "stats_kernel",
        "command": shlex.join(
            ["python", *sys.argv] if argv is None else ["python", "benchmarks/stats_kernel.py", *argv]
        ),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # Other processes on the machine inflate CPU timings; ms_min is the least disturbed figure.
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg() if load_before else None},
        "versions": _versions(),
        "env": {k: os.environ[k] for k in ("KVPILOT_KERNEL", "TRITON_INTERPRET") if k in os.environ},
        "suite": suite_name,
        "shape": {
            "batch": 1,
            "heads": h,
            "kv_heads": h_kv,
            "head_dim": d,
            "dtype": suite["dtype"],
            "causal": True,
        },
        "sdpa_gqa": _SDPA_MODE["why"],
        "memory_note": "peak_extra_mib: peak allocation above the inputs during one call "
        + (
            "(torch.cuda.max_memory_allocated)"
            if device.type == "cuda"
            else "(peak RSS, VmHWM, above RSS before)"
        ),
        "cpu_malloc": malloc_note,
        "results": results,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
