"""Binding to Hugging Face transformers: model loading, kvpilot's attention, generation, the Engine."""

from kvpilot.engine.engine import Engine, GenerationResult
from kvpilot.engine.generation import extend, forward, greedy_decode, prefill
from kvpilot.engine.model import ModelNotFoundError, load_model, load_tokenizer

__all__ = [
    "Engine",
    "GenerationResult",
    "ModelNotFoundError",
    "extend",
    "forward",
    "greedy_decode",
    "load_model",
    "load_tokenizer",
    "prefill",
]
