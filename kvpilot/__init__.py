"""kvpilot: observe and tune the KV cache of LLM inference engines."""
__version__ = "0.1.0"
