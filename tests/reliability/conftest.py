"""Reliability fixtures: the probes' tiny engine (a random 4-layer Llama with a stub tokenizer)."""

from __future__ import annotations

from tests.probes.conftest import StubTokenizer, tiny_engine

__all__ = ["StubTokenizer", "tiny_engine"]
