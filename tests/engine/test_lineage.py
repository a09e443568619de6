"""Eviction lineage on the bundled model: `Engine.serve(Request(lineage=True))` says which units of the
context the compressed cache forgot, as character offsets into the context, for turns, sentences, chunks
and token spans; the figures agree with what the cache holds."""

from __future__ import annotations

import pytest

from kvpilot.config import KVConfig
from kvpilot.engine.engine import Request
from kvpilot.engine.lineage import EVICTED_BELOW
from kvpilot.engine.prompts import chat_parts

TURNS = [f"Turn {i}: the crate number {i * 17} was shipped to the port of Lisbon on a rainy day." for i in range(12)]
KEY_TURN = "The pass key is 58213. Remember it."


def _request(engine, config, **kw):
    context = "\n".join([*TURNS, KEY_TURN])
    part = chat_parts(engine.tokenizer, context, "What is the pass key?", "The pass key is")
    return Request(part.context_ids, [part.question_ids], 6, config=config, lineage=True, **kw)


def _check_partition(lineage, n_tokens):
    """Units tile the context: contiguous token and character ranges, excerpts that join into the text."""
    assert lineage.context_tokens == n_tokens
    assert lineage.units[0].token_start == 0 and lineage.units[-1].token_end == n_tokens
    assert lineage.units[0].char_start == 0 and lineage.units[-1].char_end == len(lineage.text)
    for a, b in zip(lineage.units, lineage.units[1:], strict=False):
        assert a.token_end == b.token_start and a.char_end == b.char_start
    assert "".join(lineage.excerpt(u) for u in lineage.units) == lineage.text
    assert all(0.0 <= u.kept <= 1.0 for u in lineage.units)


def test_full_cache_forgets_nothing(bundled_engine):
    request = _request(bundled_engine, KVConfig())
    response = bundled_engine.serve(request)
    lin = response.lineage
    _check_partition(lin, len(request.context_ids))
    assert lin.kind == "span" and lin.kept_fraction == 1.0 and lin.evicted == []
    assert KEY_TURN in lin.text and TURNS[0] in lin.text


def test_streaming_turns_forget_the_middle(bundled_engine):
    """Streaming keeps the sinks and the recent window: with turn units the early turns are gone in every
    layer and head, the last turn (the key) is kept, and the offsets point at the turns' own text."""
    request = _request(bundled_engine, KVConfig(policy="streaming", compression_ratio=0.6, granularity="turn"))
    response = bundled_engine.serve(request)
    lin = response.lineage
    _check_partition(lin, len(request.context_ids))
    assert lin.kind == "turn"
    by_text = {lin.excerpt(u).strip(): u for u in lin.units}
    assert by_text[TURNS[1]].kept == 0.0 and by_text[TURNS[1]].evicted
    assert by_text[TURNS[2]].kept == 0.0
    last = next(u for u in lin.units if KEY_TURN in lin.excerpt(u))
    assert last.kept == 1.0 and not last.evicted
    # the kept fraction is what the cache holds: kept context slots over all (layer, KV head) slots
    cache = response.cache
    assert lin.kept_fraction == pytest.approx(1 - 0.6, abs=0.08)
    assert 0 < len(lin.evicted) < len(lin.units)
    assert response.compression.compression_ratio == pytest.approx(0.6, abs=0.08)
    assert cache.config.granularity == "turn"


@pytest.mark.parametrize("granularity", ["sentence", "token", "chunk"])
def test_units_follow_the_granularity(bundled_engine, granularity):
    config = KVConfig(policy="snapkv", compression_ratio=0.7, granularity=granularity)
    request = _request(bundled_engine, config)
    response = bundled_engine.serve(request)
    lin = response.lineage
    _check_partition(lin, len(request.context_ids))
    assert lin.kind == {"token": "span"}.get(granularity, granularity)
    assert lin.evicted, "a cache holding 30 % of the context forgot some unit"
    assert lin.kept_fraction == pytest.approx(0.3, abs=0.1)
    # kept fractions weight back to the whole: the token-weighted mean of the units is the total
    weighted = sum(u.kept * (u.token_end - u.token_start) for u in lin.units) / lin.context_tokens
    assert weighted == pytest.approx(lin.kept_fraction, abs=1e-6)
    if granularity == "sentence":
        assert any(lin.excerpt(u).strip() == "Remember it." for u in lin.units)
    if granularity == "token":  # spans alternate between kept and evicted
        states = [u.kept < EVICTED_BELOW for u in lin.units]
        assert all(a != b for a, b in zip(states, states[1:], strict=False))
    if granularity == "chunk":
        size = config.chunk_size
        assert all(u.token_end - u.token_start <= size for u in lin.units)


def test_no_lineage_unless_asked(bundled_engine):
    request = _request(bundled_engine, KVConfig(policy="knorm", compression_ratio=0.5))
    plain = bundled_engine.serve(Request(request.context_ids, request.questions, 2, config=request.config))
    assert plain.lineage is None


def test_a_continued_cache_covers_its_own_context(bundled_engine):
    """A session's next turn: offsets start at this request's context, past what the cache already holds."""
    config = KVConfig(policy="streaming", compression_ratio=0.5, granularity="sentence")
    first = bundled_engine.serve(_request(bundled_engine, config))
    more = bundled_engine.encode("\nTurn 99: nothing else happened. The end.")
    second = bundled_engine.serve(Request(more, [], 2, cache=first.cache, config=config, lineage=True))
    lin = second.lineage
    _check_partition(lin, len(more))
    assert lin.text == bundled_engine.tokenizer.decode(more)
    assert lin.units[-1].kept == 1.0  # the newest sentence sits in the recent window
