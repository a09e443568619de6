"""Seeded fuzz of hostile config documents (issue 13): no traceback anywhere, no config applied that then
fails a request, every rejection with its reason.

1,200 documents (tests/reliability/hostile.py) go through the Python API (`KVConfig.parse`), then through
`kvpilot push` (in-process CLI, SQLite file), and every version push stored is followed by an engine
attached to the deployment (a random 4-layer Llama with the bundled tokenizer, so scoring prompts,
sentence units and reconstruction run for real): the watcher applies or rejects it, and after each
"applied" a request with a question is served. A smaller seeded sample, shaped for the bundled model's
30 layers, is dry-run and served on the bundled model itself.

Slow (minutes): every accepted document is dry-run and served. KVPILOT_RELIABILITY_REPORT=PATH records the
figures (see conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from kvpilot.attach import attach
from kvpilot.cli import main
from kvpilot.config import KVConfig, KVConfigError
from kvpilot.engine import Engine
from kvpilot.engine.dryrun import dry_run
from kvpilot.engine.engine import Request
from tests.reliability.hostile import documents

SEED = 13
N_DOCS = 1200
N_BUNDLED = 30

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text_engine():
    """A random 4-layer Llama (2 KV heads) with the bundled model's tokenizer and vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, register_attention
    from kvpilot.engine.model import load_tokenizer

    register_attention()
    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                      attn_implementation=ATTN_IMPLEMENTATION)
    return Engine(LlamaForCausalLM(cfg).eval(), tok)


CONTEXT = ("Anna lives in Oslo. She has a cat named Pixel. Her passkey is 48213.\n"
           "Ben works as a baker in Lyon. He plans a trip to Kyoto in May.\n") * 2
QUESTION = "What is Anna's passkey?"


def _serve(engine: Engine, config: KVConfig | None = None) -> None:
    """One request with a question (the engine's config in force unless ``config``); raises if it fails."""
    request = Request(engine.encode(CONTEXT), [engine.encode(QUESTION)], max_new_tokens=3, config=config)
    response = engine.serve(request)
    assert len(response.answers) == 1


def _push(path: Path, db: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["push", "-d", "fuzz", "-c", str(path), "--db", db])  # a bug would raise out of main
    return code, err.getvalue()


def test_hostile_configs_break_nothing(text_engine, bundled_engine, tmp_path, record_figures):
    docs = documents(N_DOCS, SEED, num_layers=4)
    figures: Counter[str] = Counter(documents=len(docs))
    reasons: Counter[str] = Counter()
    t0 = time.perf_counter()

    # 1. the Python API: a KVConfig or a KVConfigError with its problems; an accepted config round-trips
    for doc in docs:
        try:
            cfg = KVConfig.parse(doc)
        except KVConfigError as exc:
            assert exc.problems and all(p.strip() for p in exc.problems)
            figures["api_rejected"] += 1
            reasons[re.sub(r"\d+", "N", ":".join(exc.problems[0].split(":")[:2]))[:70]] += 1
            continue
        figures["api_accepted"] += 1
        assert KVConfig.parse(cfg.to_json()) == cfg  # what is stored always parses back

    figures["api_seconds"] = round(time.perf_counter() - t0)

    # 2. `kvpilot push`, 3. an engine following the deployment
    db = f"sqlite:///{tmp_path / 'fuzz.db'}"
    handle = attach(text_engine, store=db, deployment="fuzz", otel=False, spool_dir=tmp_path / "spool",
                    watch=True, poll_s=3600)
    try:
        for i, doc in enumerate(docs):
            path = tmp_path / f"doc{i}.json"
            path.write_bytes(doc)
            code, err = _push(path, db)
            assert code in (0, 2), err
            assert "Traceback" not in err
            if code == 2:
                assert err.startswith("kvpilot: error: ") and len(err) < 4000, err[:500]
                figures["push_rejected"] += 1
                continue
            figures["pushed"] += 1
            result = handle.watcher.check_once()
            assert result is not None
            if result.status == "rejected":
                assert result.reason, f"version {result.version} rejected without a reason"
                figures["engine_rejected"] += 1
                figures["engine_rejected_by_dry_run"] += "dry run" in result.reason
                continue
            figures["engine_applied"] += 1
            try:
                _serve(text_engine)
            except Exception as exc:  # the finding this test exists for
                figures["applied_then_failed"] += 1
                pytest.fail(f"document {i} was applied, then a request failed: {type(exc).__name__}: {exc}\n"
                            f"{doc[:400]!r}")
    finally:
        handle.detach()
    assert figures["api_accepted"] == figures["pushed"]  # the CLI and the API agree
    # the fuzz reaches the engine: about a quarter of the documents are valid (296 of 1,200 with the episode
    # fields and the global-heads rule of issue 11; 357 before)
    assert figures["api_accepted"] > 250 and figures["engine_applied"] > 200

    figures["push_and_engine_seconds"] = round(time.perf_counter() - t0) - figures["api_seconds"]

    # 4. the bundled model: documents shaped for its 30 layers, dry run then a request under the config
    bundled = documents(N_BUNDLED, SEED + 1, num_layers=bundled_engine.shape.num_layers)
    for doc in bundled:
        try:
            cfg = KVConfig.parse(doc)
            dry_run(cfg, bundled_engine)
            bundled_engine.validate(cfg)
        except KVConfigError:
            figures["bundled_rejected"] += 1
            continue
        figures["bundled_applied"] += 1
        _serve(bundled_engine, cfg)
    figures["seconds"] = round(time.perf_counter() - t0)
    record_figures("fuzz", {"seed": SEED, **figures, "top_rejections": reasons.most_common(8)})
