"""EpiCache episodes on the bundled model: routing, memory accounting, and episodes=1 changing nothing.

The conversation is built from three topics told in turn (cooking, football, travel), each with one fact
that a question asks about, so the episode that holds an answer is known without the model.
"""

from __future__ import annotations

import pytest
import torch

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.engine import Request
from kvpilot.engine.episodes import (
    EpisodeError,
    _prefill_each,
    _shared_prefill,
    build,
    question_text_ids,
    segments,
    utterances,
)
from kvpilot.engine.prompts import chat_parts

TOPICS = {
    "cooking": ["Anna: I baked sourdough bread with rye flour this morning.",
                "Ben: Did the crust come out crispy from the oven?",
                "Anna: Yes, I used a cast iron pot and steam.",
                "Ben: My lasagna recipe needs more garlic and basil.",
                "Anna: Try roasting the tomatoes first for the sauce.",
                "Ben: I will simmer the sauce for two hours.",
                "Anna: Add a pinch of sugar to the tomato sauce.",
                "Ben: The kitchen smells of onions and butter now."],
    "football": ["Ben: Did you watch the match last night at the stadium?",
                 "Anna: The striker scored twice in the second half.",
                 "Ben: Our goalkeeper saved a penalty in extra time.",
                 "Anna: The referee gave three yellow cards to the defenders.",
                 "Ben: The coach changed the formation at half time.",
                 "Anna: Season tickets for the league cost a fortune.",
                 "Ben: The midfielder passed the ball beautifully.",
                 "Anna: We won the cup final on penalties."],
    "travel": ["Anna: My flight to Lisbon leaves from gate 42.",
               "Ben: Did you pack your passport and boarding pass?",
               "Anna: The hotel is near the harbour and the old tram line.",
               "Ben: Take the train from the airport to the city.",
               "Anna: I booked a window seat on the plane.",
               "Ben: The luggage limit on that airline is twenty kilos.",
               "Anna: My suitcase has wheels that squeak at the airport.",
               "Ben: Send me a postcard from the beach resort."],
}
CONTEXT = "\n".join(line for lines in TOPICS.values() for line in lines)
# question -> the words of the line that answers it
QUESTIONS = {
    "What kind of flour did Anna use for her bread?": "rye flour",
    "How many goals did the striker score?": "scored twice",
    "Which gate does Anna's flight leave from?": "gate 42",
}
WINDOW = 2
EPISODES = {"policy": "kvzip", "scoring": "prompt", "compression_ratio": 0.75, "episodes": 3,
            "episode_params": {"window": WINDOW, "medoids": 3}}


def _prompts(tokenizer):
    parts = [chat_parts(tokenizer, CONTEXT, q) for q in QUESTIONS]
    return parts[0].context_ids, [p.question_ids for p in parts]


def test_utterances_are_the_conversation_lines_without_the_chat_template(bundled_engine):
    tok = bundled_engine.tokenizer
    context_ids, _ = _prompts(tok)
    lines = [tok.decode(u).strip() for u in utterances(tok, context_ids)]
    assert lines == CONTEXT.split("\n")  # the system prompt and role headers are not utterances
    long_line = tok("Anna: " + " ".join(f"Sentence number {i} is here." for i in range(30)), add_special_tokens=False)
    pieces = utterances(tok, long_line["input_ids"])
    assert len(pieces) > 1 and sum(pieces, []) == list(long_line["input_ids"])  # split into sentences, nothing lost


def test_each_question_is_routed_to_the_episode_holding_its_answer(bundled_engine):
    tok = bundled_engine.tokenizer
    config = KVConfig.parse(EPISODES)
    context_ids, question_ids = _prompts(tok)
    episodes, _ = build(bundled_engine, config, context_ids)
    segs = segments(utterances(tok, context_ids), WINDOW)
    labels = episodes.clustering.labels
    assert len(episodes.episodes) == 3 and len(labels) == len(segs)
    holding = {q: labels[next(i for i, s in enumerate(segs) if answer in tok.decode(s))]
               for q, answer in QUESTIONS.items()}
    assert len(set(holding.values())) == 3  # the three facts sit in three different episodes
    for (question, episode), ids in zip(holding.items(), question_ids, strict=True):
        assert episodes.route(ids) == episode, question
        assert tok.decode(question_text_ids(tok, ids)).strip() == question  # the template is not embedded

    response = bundled_engine.serve(Request(context_ids, question_ids, max_new_tokens=4, config=config))
    assert [a.extra["episode"] for a in response.answers] == list(holding.values())


def _same_keys(x: dict, y: dict) -> bool:
    """Two layer snapshots hold the same keys (padded while in use, or packed at rest)."""
    if (x["_k"] is None) != (y["_k"] is None) or (x["_packed"] is None) != (y["_packed"] is None):
        return False
    same_padded = x["_k"] is None or torch.equal(x["_k"], y["_k"])
    return same_padded and (x["_packed"] is None or torch.equal(x["_packed"][0].rows(), y["_packed"][0].rows()))


@pytest.mark.parametrize("extra", [{}, {"granularity": "turn", "layer_allocation": "global"}])
def test_one_shared_prefill_compresses_each_episode_as_its_own_prefill_would(bundled_engine, extra):
    """One-shot prefill runs the context once for all episodes; the caches equal E separate prefills'."""
    tok = bundled_engine.tokenizer
    context_ids, _ = _prompts(tok)
    config = KVConfig.parse({**EPISODES, **extra})
    segs = segments(utterances(tok, context_ids), WINDOW)
    prompts = [bundled_engine.encode("Recall the travel plans.") + segs[i] for i in (0, 5, 10)]
    shared, _, shared_peak = _shared_prefill(bundled_engine, config, context_ids, prompts)
    each, _, each_peak = _prefill_each(bundled_engine, config, context_ids, prompts)
    for a, b in zip(shared, each, strict=True):
        assert a.kv_bytes == b.kv_bytes and torch.equal(a.logits, b.logits)
        for x, y in zip(a.state, b.state, strict=True):
            assert torch.equal(x["positions"], y["positions"]) and _same_keys(x, y)
    kept = [{tuple(p.flatten().tolist()) for p in (layer["positions"] for layer in e.state)} for e in shared]
    assert kept[0] != kept[1] != kept[2]  # different prompts keep different tokens
    assert shared_peak >= each_peak  # the shared context is held while every episode is compressed


def test_every_episode_cache_counts_in_the_memory_figures(bundled_engine):
    tok = bundled_engine.tokenizer
    context_ids, question_ids = _prompts(tok)
    single = KVConfig.parse({**EPISODES, "episodes": 1})
    plain = bundled_engine.serve(Request(context_ids, question_ids, max_new_tokens=4, config=single))
    response = bundled_engine.serve(Request(context_ids, question_ids, max_new_tokens=4,
                                            config=KVConfig.parse(EPISODES)))
    one = plain.compression.kv_bytes  # uniform budgets: every episode's cache holds as many bytes as this one
    comp = response.compression
    assert comp.kv_bytes == 3 * one
    assert comp.logical_kv_bytes == plain.compression.logical_kv_bytes
    assert comp.compression_ratio == pytest.approx(1 - 3 * one / comp.logical_kv_bytes)
    # the third episode is prefilled while the first two are stored, and the answers decode beside all three
    assert comp.peak_kv_bytes >= 2 * one + plain.compression.peak_kv_bytes
    for answer, alone in zip(response.answers, plain.answers, strict=True):
        assert answer.extra["episode_kv_bytes"] == 3 * one
        assert answer.kv_bytes > 3 * one and answer.peak_kv_bytes >= answer.kv_bytes
        assert answer.kv_bytes - 3 * one <= alone.kv_bytes + one  # the working copy: one episode plus its answer
    assert comp.peak_kv_bytes >= max(a.peak_kv_bytes for a in response.answers)


def test_episodes_one_is_the_plain_request_path(bundled_engine):
    """episodes=1 ignores episode_params: same tokens, logits and memory figures as a config without them."""
    tok = bundled_engine.tokenizer
    context_ids, question_ids = _prompts(tok)
    base = {k: v for k, v in EPISODES.items() if not k.startswith("episode")}
    off = KVConfig.parse({**base, "episodes": 1, "episode_params": {"window": 7, "medoids": 2, "layer": 3}})
    runs = [bundled_engine.serve(Request(context_ids, question_ids, max_new_tokens=6, config=c, keep_logits=True))
            for c in (KVConfig.parse(base), off)]
    a, b = runs
    assert vars(a.compression) | {"prefill_s": 0} == vars(b.compression) | {"prefill_s": 0}
    for x, y in zip(a.answers, b.answers, strict=True):
        assert x.token_ids == y.token_ids and "episode" not in y.extra
        assert (x.kv_bytes, x.peak_kv_bytes, x.compression_ratio) == (y.kv_bytes, y.peak_kv_bytes, y.compression_ratio)
        assert all(torch.equal(p, q) for p, q in zip(x.step_logits, y.step_logits, strict=True))


def test_episodes_need_prompt_scoring_and_a_new_cache(bundled_engine):
    with pytest.raises(KVConfigError, match="episodes=3"):
        KVConfig.parse({**EPISODES, "scoring": "window"})
    with pytest.raises(KVConfigError, match="episodes=3"):
        KVConfig.parse({**EPISODES, "policy": "knorm"})
    with pytest.raises(KVConfigError, match="episode_params.medoids"):
        KVConfig.parse({**EPISODES, "episode_params": {"medoids": 0}})
    context_ids, _ = _prompts(bundled_engine.tokenizer)
    config = KVConfig.parse(EPISODES)
    cache = bundled_engine.new_cache(config)
    with pytest.raises(EpisodeError, match="continues a cache"):
        bundled_engine.serve(Request(context_ids, (), 1, config=config, cache=cache))
    bad = KVConfig.parse({**EPISODES, "episode_params": {"encoder": "no-such-sentence-encoder"}})
    with pytest.raises(EpisodeError, match="no-such-sentence-encoder"):
        bundled_engine.serve(Request(context_ids, (), 1, config=bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_episode_caches_are_kept_on_the_cpu(bundled_engine):
    from kvpilot.engine import Engine

    gpu = Engine.load(device="cuda")
    context_ids, question_ids = _prompts(gpu.tokenizer)
    config = KVConfig.parse(EPISODES)
    episodes, cache = build(gpu, config, context_ids)
    tensors = [v for e in episodes.episodes for layer in e.state for v in layer.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    response = gpu.serve(Request(context_ids, question_ids, max_new_tokens=4, config=config))
    assert response.cache.layers[0].keys.device.type == "cuda"
    cpu = bundled_engine.serve(Request(context_ids, question_ids, max_new_tokens=4, config=config))
    assert [a.extra["episode"] for a in response.answers] == [a.extra["episode"] for a in cpu.answers]
    assert response.compression.kv_bytes == cpu.compression.kv_bytes
