"""Child process for the restart tests: an engine on a tiny random model, attached to a store under its
default instance name (``<host>-<pid>``), serves some requests while the database is unreachable, waits
until every sample is spooled, prints its counters as JSON, then kills itself with SIGKILL (kill -9).

    python spooling_engine.py DB_URL SPOOL_DIR DEPLOYMENT REQUESTS
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    url, spool_dir, deployment, requests = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from kvpilot.attach import attach
    from kvpilot.config import KVConfig
    from kvpilot.engine import Engine
    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, register_attention

    register_attention()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      attn_implementation=ATTN_IMPLEMENTATION)
    engine = Engine(LlamaForCausalLM(cfg).eval(), None, KVConfig(policy="snapkv", compression_ratio=0.5))
    handle = attach(engine, store=url, deployment=deployment, otel=False, spool_dir=spool_dir, watch=False)
    for i in range(requests):
        engine.run([(7 * i + j) % 120 + 1 for j in range(40)], [], 3)
    handle.flush(30)
    print(json.dumps(handle.stats()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
