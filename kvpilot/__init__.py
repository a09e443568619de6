"""kvpilot: observe and tune the KV cache of LLM inference engines.

Public API (everything else is internal):

    from kvpilot import KVConfig, Engine, ManagedCache, load_model
    model, tok = load_model()                      # bundled SmolLM2-135M-Instruct, offline
    cache = ManagedCache.for_model(model, KVConfig(policy="snapkv", compression_ratio=0.75))
    model.generate(ids, past_key_values=cache)     # batch size 1
"""

from kvpilot.config import KVConfig, KVConfigError

__version__ = "0.1.0"

# Eager on purpose: `kvpilot.attach` is also a submodule, and a lazy name would be shadowed by the module
# once anything imports it. kvpilot.attach imports no torch at module level (probes load on first call).
from kvpilot.attach import attach  # noqa: E402

_LAZY = {
    "Engine": "kvpilot.engine",
    "GenerationResult": "kvpilot.engine",
    "load_model": "kvpilot.engine",
    "load_tokenizer": "kvpilot.engine",
    "ModelNotFoundError": "kvpilot.engine",
    "ManagedCache": "kvpilot.cache.managed",
    "POLICY_REGISTRY": "kvpilot.cache.policies",
    "Store": "kvpilot.storage",
    "Evaluator": "kvpilot.evaluation",
    "Tuner": "kvpilot.tuner",
    "SearchSpace": "kvpilot.tuner",
}


def __getattr__(name: str):
    """Heavy parts (torch, transformers, SQLAlchemy) load on first use, so `import kvpilot` stays fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kvpilot' has no attribute {name!r}")


__all__ = ["KVConfig", "KVConfigError", "attach", *_LAZY]
