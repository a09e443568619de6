"""The plug-ins a KVConfig names: eviction policies, layer and head allocators, session TTL rules.

Each plug-in is a dataclass whose `param(...)` fields are its own parameters (see `kvpilot.plugins`),
registered by name. Adding a policy is one file in this package (a `Policy` subclass decorated with
`@POLICY_REGISTRY.register`) plus its import line below; KVConfig validation, the tuner's search space,
the JSON schema and the docs then know it, and the shared test matrix covers it. Importing this package
does not import torch: scoring code imports it when the managed cache calls it.
"""

from kvpilot.policies import (  # noqa: F401  (importing a policy's module registers it)
    expected_attention,
    full,
    h2o,
    keydiff,
    knorm,
    kvzip,
    random,
    snapkv,
    streaming,
    surrogate,
    tova,
)
from kvpilot.policies.base import (
    DEFAULT_OBSERVATION_WINDOW,
    POLICY_REGISTRY,
    LayerStats,
    Policy,
    RopeInfo,
    ScoringInputs,
    make_policy,
)
from kvpilot.policies.heads import (
    HEAD_ALLOCATORS,
    HeadAllocator,
    head_budgets,
    make_head_allocator,
    within_budget,
)
from kvpilot.policies.layers import LAYER_ALLOCATORS, LayerAllocator, layer_budgets, make_layer_allocator
from kvpilot.policies.ttl import TTL_RULES, TTLContext, TTLPolicy, make_ttl_policy

__all__ = [
    "DEFAULT_OBSERVATION_WINDOW",
    "HEAD_ALLOCATORS",
    "LAYER_ALLOCATORS",
    "POLICY_REGISTRY",
    "TTL_RULES",
    "HeadAllocator",
    "LayerAllocator",
    "LayerStats",
    "Policy",
    "RopeInfo",
    "ScoringInputs",
    "TTLContext",
    "TTLPolicy",
    "head_budgets",
    "layer_budgets",
    "make_head_allocator",
    "make_layer_allocator",
    "make_policy",
    "make_ttl_policy",
    "within_budget",
]
