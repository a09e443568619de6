"""Attention kernels that return statistics as a by-product (torch reference; Triton on CUDA).

``attention_stats`` picks the backend: the Triton kernel for CUDA tensors when ``triton`` imports,
the chunked torch reference otherwise. ``KVPILOT_KERNEL=reference|triton`` forces one (``triton``
on CPU tensors works only under ``TRITON_INTERPRET=1``, which is how the tests run it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from kvpilot.kernels.reference import AttentionStats, attention_bias, attention_stats_reference

_log = logging.getLogger(__name__)
_BACKENDS = ("auto", "reference", "triton")
_triton_fn: Callable[..., AttentionStats] | None = None
_triton_error: str | None = None  # why Triton is unavailable (import failure or a failed launch)


def _load_triton() -> Callable[..., AttentionStats] | None:
    """Import the Triton kernel once; remember why it failed so the fallback is not silent."""
    global _triton_fn, _triton_error
    if _triton_fn is None and _triton_error is None:
        try:
            from kvpilot.kernels.triton_stats import attention_stats_triton
        except Exception as exc:  # ImportError, or a triton build that cannot initialise
            _triton_error = f"{type(exc).__name__}: {exc}"
        else:
            _triton_fn = attention_stats_triton
    return _triton_fn


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _triton_fits(query: torch.Tensor | None, key: torch.Tensor | None, value: torch.Tensor | None) -> bool:
    """Inputs the kernel is built for: one 16/32-bit float dtype, head dim <= 256."""
    if query is None:
        return True
    tensors = [t for t in (query, key, value) if t is not None]
    return (
        query.dtype in _TRITON_DTYPES
        and all(t.dtype == query.dtype for t in tensors)
        and all(t.shape[-1] <= 256 for t in tensors)
    )


def kernel_backend(
    query: torch.Tensor | None = None, key: torch.Tensor | None = None, value: torch.Tensor | None = None
) -> str:
    """Name of the backend ``attention_stats`` will use for these inputs ("reference" or "triton").

    Auto mode picks Triton for CUDA tensors it supports (one float dtype, head dim <= 256) when
    triton imports; everything else goes to the reference.
    """
    forced = os.environ.get("KVPILOT_KERNEL", "auto").strip().lower() or "auto"
    if forced not in _BACKENDS:
        raise ValueError(f"KVPILOT_KERNEL must be one of {_BACKENDS}, got {forced!r}")
    if forced != "auto":
        return forced
    on_cuda = query is None or query.is_cuda
    if not (on_cuda and _triton_fits(query, key, value)):
        return "reference"
    return "triton" if _triton_error is None and _load_triton() is not None else "reference"


def triton_unavailable_reason() -> str | None:
    """Why the Triton backend is not used in auto mode (None when it is available)."""
    _load_triton()
    return _triton_error


def attention_stats(query, key, value=None, **kwargs) -> AttentionStats:
    """Attention statistics on the best available backend (see `attention_stats_reference` for args).

    In auto mode a Triton failure (e.g. an unsupported GPU) is logged once and the call and all
    later ones fall back to the reference; a forced ``KVPILOT_KERNEL=triton`` raises instead.
    """
    global _triton_error
    backend = kernel_backend(query, key, value if kwargs.get("need_output") else None)
    if kwargs.get("query_weight") is not None or kwargs.get("key_weight") is not None:
        backend = "reference"  # weighted statistics (KVzip+) exist only in the reference: a scoring pass, not decode
    if backend == "reference":
        return attention_stats_reference(query, key, value, **kwargs)
    fn = _load_triton()
    if fn is None:
        raise RuntimeError(f"KVPILOT_KERNEL=triton but triton is unavailable: {_triton_error}")
    forced = os.environ.get("KVPILOT_KERNEL", "auto").strip().lower() == "triton"
    try:
        return fn(query, key, value, **kwargs)
    except Exception as exc:
        if forced or isinstance(exc, (ValueError, TypeError)):  # caller errors are not backend failures
            raise
        _triton_error = f"{type(exc).__name__}: {exc}"
        _log.warning("Triton attention-stats kernel failed, using the torch reference from now on: %s", exc)
        return attention_stats_reference(query, key, value, **kwargs)


def key_mass_over_subset(query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, *,
                         key_weight: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """``attention_stats(query, key, key_valid=allowed, **kwargs).key_mass`` [b, H_kv, n], computed on the
    allowed keys alone.

    A reconstruction pass lets only a few keys compete (the sinks, one chunk, the queries' own keys); masking
    the rest would still cost a pass over every key of the cache per query. The allowed keys of each KV
    head are gathered in order, left-padded to the widest head (so the queries' own keys stay last and the
    bottom-right causal alignment holds), scored, and the mass is scattered back to the original slots.
    """
    counts = allowed.sum(dim=-1)  # [b, H_kv]
    width = int(counts.max())
    n = key.shape[-2]
    # stable sort puts every head's disallowed slots first and its allowed ones last, in their order
    order = torch.argsort(allowed.to(torch.int8), dim=-1, stable=True)[..., n - width :]  # [b, H_kv, width]
    gathered = key.gather(2, order[..., None].expand(-1, -1, -1, key.shape[-1]))
    valid = torch.arange(width, device=key.device) >= (width - counts)[..., None]
    if key_weight is not None:  # [b, H, n] per query head: gathered by its KV head's order
        group = query.shape[1] // key.shape[1]
        kwargs["key_weight"] = key_weight.gather(2, order.repeat_interleave(group, dim=1))
    st = attention_stats(query, gathered, key_valid=None if bool(valid.all()) else valid, **kwargs)
    mass = st.key_mass.new_zeros(*allowed.shape)
    return mass.scatter_(-1, order, st.key_mass)


__all__ = [
    "AttentionStats",
    "key_mass_over_subset",
    "attention_bias",
    "attention_stats",
    "attention_stats_reference",
    "kernel_backend",
    "triton_unavailable_reason",
]
