"""Shared fixtures: a random-init tiny Llama with GQA, the bundled model loaded once per session, and an
empty database of each backend.

Database tests run on a SQLite file and, when KVPILOT_TEST_DATABASE_URL is set, on PostgreSQL. Each
PostgreSQL test gets its own schema (selected through libpq's search_path option in the URL), so tests are
isolated and child processes reach the same tables with the same URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import torch

PG_ENV = "KVPILOT_TEST_DATABASE_URL"


@pytest.fixture(scope="session", autouse=True)
def _default_store_is_temporary(tmp_path_factory) -> Iterator[None]:
    """Commands that record to the default store (`kvpilot eval`) write to a session file, not ~/.cache."""
    if os.environ.get("KVPILOT_DB"):
        yield
        return
    os.environ["KVPILOT_DB"] = f"sqlite:///{tmp_path_factory.mktemp('default-store') / 'kvpilot.db'}"
    try:
        yield
    finally:
        os.environ.pop("KVPILOT_DB", None)


@pytest.fixture(scope="session")
def tiny_model():
    """A 4-layer Llama with 4 query heads and 2 KV heads, random weights, kvpilot's attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, hook_residual_norms, register_attention

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
    hook_residual_norms(model)
    return model


@pytest.fixture(scope="session")
def bundled_engine():
    from kvpilot.engine import Engine

    return Engine.load()


@pytest.fixture(scope="session")
def bundled_model(bundled_engine):
    return bundled_engine.model


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A URL for an empty database of each backend (PostgreSQL skipped when PG_ENV is not set)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kvpilot.db'}"
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set")
    schema = f"kvt_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(base).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).set(drivername="postgresql+psycopg").update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def store(db_url):
    """An open Store on ``db_url``, closed after the test."""
    from kvpilot.storage import Store

    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()
