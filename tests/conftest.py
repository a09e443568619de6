"""Shared fixtures: a random-init tiny Llama with GQA, and the bundled model loaded once per session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model():
    """A 4-layer Llama with 4 query heads and 2 KV heads, random weights, kvpilot's attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, register_attention

    register_attention()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    model = LlamaForCausalLM(cfg).eval()
    return model


@pytest.fixture(scope="session")
def bundled_engine():
    from kvpilot.engine import Engine

    return Engine.load()


@pytest.fixture(scope="session")
def bundled_model(bundled_engine):
    return bundled_engine.model
