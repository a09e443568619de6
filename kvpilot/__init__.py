"""kvpilot: observe and tune the KV cache of LLM inference engines.

Public API (everything else is internal):

    from kvpilot import KVConfig, Engine, ManagedCache, load_model
    model, tok = load_model()                      # bundled SmolLM2-135M-Instruct, offline
    cache = ManagedCache.for_model(model, KVConfig(policy="snapkv", compression_ratio=0.75))
    model.generate(ids, cache=cache)     # batch size 1

Nothing inside the package imports this module: its names load lazily (PEP 562), so `import kvpilot`
costs no torch, pydantic or SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Eager on purpose, the one exception: `kvpilot.attach` is also a submodule, and a lazy name would be
# shadowed by the module once anything imports it. kvpilot.attach imports only kvpilot.errors,
# kvpilot.paths and the torch-free probes.base at module level (the rest loads when attach() runs).
from kvpilot.attach import attach
from kvpilot.version import __version__

# public name -> the module that defines it
_LAZY = {
    "KVConfig": "kvpilot.config",
    "KVConfigError": "kvpilot.config",
    "KVPilotError": "kvpilot.errors",
    "Engine": "kvpilot.engine",
    "GenerationResult": "kvpilot.engine",
    "Request": "kvpilot.engine",
    "Response": "kvpilot.engine",
    "load_model": "kvpilot.engine",
    "load_tokenizer": "kvpilot.engine",
    "ModelNotFoundError": "kvpilot.engine",
    "ManagedCache": "kvpilot.cache.managed",
    "POLICY_REGISTRY": "kvpilot.policies",
    "Store": "kvpilot.storage",
    "Evaluator": "kvpilot.evaluation",
    "Tuner": "kvpilot.tuner",
    "SearchSpace": "kvpilot.tuner",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from kvpilot.cache.managed import ManagedCache
    from kvpilot.config import KVConfig, KVConfigError
    from kvpilot.engine import (
        Engine,
        GenerationResult,
        ModelNotFoundError,
        Request,
        Response,
        load_model,
        load_tokenizer,
    )
    from kvpilot.errors import KVPilotError
    from kvpilot.evaluation import Evaluator
    from kvpilot.policies import POLICY_REGISTRY
    from kvpilot.storage import Store
    from kvpilot.tuner import SearchSpace, Tuner


def __getattr__(name: str) -> Any:
    """Heavy parts (torch, transformers, SQLAlchemy, pydantic) load on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'kvpilot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "POLICY_REGISTRY",
    "Engine",
    "Evaluator",
    "GenerationResult",
    "KVConfig",
    "KVConfigError",
    "KVPilotError",
    "ManagedCache",
    "ModelNotFoundError",
    "Request",
    "Response",
    "SearchSpace",
    "Store",
    "Tuner",
    "__version__",
    "attach",
    "load_model",
    "load_tokenizer",
]
