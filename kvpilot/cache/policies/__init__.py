"""Eviction policies, one per file, each registered by name in POLICY_REGISTRY."""

from kvpilot.cache.policies import (  # noqa: F401  (import registers the policy)
    expected_attention,
    full,
    h2o,
    knorm,
    random,
    snapkv,
    streaming,
    tova,
)
from kvpilot.cache.policies.base import (
    POLICY_REGISTRY,
    LayerStats,
    Policy,
    RopeInfo,
    ScoringInputs,
    make_policy,
)

__all__ = ["POLICY_REGISTRY", "LayerStats", "Policy", "RopeInfo", "ScoringInputs", "make_policy"]
