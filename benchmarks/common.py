"""What every benchmark records next to its figures: machine, versions, the exact command."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    import torch
    import transformers

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2))
    return path


class IdsTokenizer:
    """For random-weight models driven by token ids alone: no EOS (fixed-length decode), empty text."""

    eos_token_id = None
    unk_token_id = 0

    def convert_tokens_to_ids(self, token: str) -> int:
        return 0

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return ""


# Model shapes for random-weight runs (no download): the shape sets the cost, the weights do not matter.
SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, rope_theta=500000.0),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, rope_theta=10000.0),
}


def random_llama_engine(shape: str, device: str, tokenizer=None, vocab_size: int = 128256, dtype: str = "bfloat16"):
    """A Llama of a named shape with random weights and kvpilot's attention, served by kvpilot's Engine."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvpilot.engine import Engine
    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, register_attention

    register_attention()
    cfg = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=131072,
                      attn_implementation=ATTN_IMPLEMENTATION, **SHAPES[shape])
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    return Engine(model.eval(), tokenizer if tokenizer is not None else IdsTokenizer())
