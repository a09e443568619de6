"""Attention kernels that return statistics as a by-product (torch reference; Triton on CUDA)."""

from kvpilot.kernels.reference import AttentionStats, attention_bias, attention_stats_reference


def attention_stats(query, key, value=None, **kwargs) -> AttentionStats:
    """Attention statistics on the best available backend (see `attention_stats_reference` for args)."""
    return attention_stats_reference(query, key, value, **kwargs)


__all__ = ["AttentionStats", "attention_bias", "attention_stats", "attention_stats_reference"]
