"""Binding to Hugging Face transformers: model loading, kvpilot's attention, generation, the Engine.

Names load on first use so that torch-free parts (the config watcher) can be imported without torch.
"""

import importlib

_LAZY = {
    "Compression": "kvpilot.engine.engine",
    "Engine": "kvpilot.engine.engine",
    "Request": "kvpilot.engine.engine",
    "Response": "kvpilot.engine.engine",
    "GenerationResult": "kvpilot.engine.engine",
    "extend": "kvpilot.engine.generation",
    "forward": "kvpilot.engine.generation",
    "greedy_decode": "kvpilot.engine.generation",
    "prefill": "kvpilot.engine.generation",
    "ModelNotFoundError": "kvpilot.engine.model",
    "load_model": "kvpilot.engine.model",
    "load_tokenizer": "kvpilot.engine.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kvpilot.engine' has no attribute {name!r}")


__all__ = sorted(_LAZY)
