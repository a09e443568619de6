"""The `surrogate` policy: fitted on reconstruction scores, it predicts them from each pair's key and value."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kvpilot.config import KVConfig
from kvpilot.engine.generation import prefill
from kvpilot.evaluation.surrogate import (
    answer_scores,
    calibration_answers,
    calibration_questions,
    fit_surrogate,
    save_weights,
    scored_layers,
    spearman,
)
from kvpilot.policies.surrogate import SurrogateError, layer_weights, load_weights, predict
from tests.engine import test_budgets as budget_matrix
from tests.engine.exactness import toy_reconstruction


def _contexts(k: int, n: int = 120, seed: int = 5) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for _ in range(k)]


@pytest.fixture(scope="module")
def tiny_weights(tiny_model, tmp_path_factory) -> str:
    data = fit_surrogate(tiny_model, _contexts(4), toy_reconstruction, held_out=1, name="tiny",
                         progress=lambda it: it)
    assert (data["num_layers"], data["num_kv_heads"], data["head_dim"]) == (4, 2, 16)
    assert data["fit"]["pairs"] == 3 * 4 * 2 * (120 - 4)  # 3 fitted contexts, sinks left out
    return str(save_weights(data, tmp_path_factory.mktemp("surrogate") / "tiny.json"))


def test_fitted_surrogate_passes_the_budget_matrix(tiny_model, tiny_weights):
    budget_matrix.test_uniform_budget_exact_with_sinks_window_and_order(tiny_model, "surrogate",
                                                                      {"weights": tiny_weights})


def test_max_pooled_surrogate_passes_the_budget_matrix(tiny_model, tiny_weights):
    budget_matrix.test_uniform_budget_exact_with_sinks_window_and_order(
        tiny_model, "surrogate", {"weights": tiny_weights, "pooling": "max", "pooling_kernel": 3})


def test_max_pooling_lifts_neighbours_and_ignores_padding():
    """A slot takes its best neighbour's score (log scores, so negatives too); padding neither gives nor
    takes a score; "none" and a width of 1 leave the scores alone."""
    from kvpilot.policies.base import pool_over_neighbours

    scores = torch.tensor([[-5.0, -1.0, -4.0, -6.0, 9.0, -3.0]])
    valid = torch.tensor([[True, True, True, True, False, True]])
    pooled = pool_over_neighbours(scores, valid, "max", 3)
    assert pooled.tolist() == [[-1.0, -1.0, -1.0, -4.0, 9.0, -3.0]]
    assert torch.equal(pool_over_neighbours(scores, valid, "none", 3), scores)
    assert torch.equal(pool_over_neighbours(scores, valid, "max", 1), scores)
    mass = torch.tensor([[0.0, 3.0, 0.0, 6.0]])
    avg = pool_over_neighbours(mass, torch.ones(1, 4, dtype=torch.bool), "avg", 3)
    assert avg.tolist() == [[1.5, 1.0, 3.0, 3.0]]


def test_fitted_surrogate_ranks_unseen_contexts_like_reconstruction(tiny_model, tiny_weights):
    """On a context outside the fit, the prediction orders the pairs closer to reconstruction's order than
    chance (the random-weight model's scores still depend on keys and values)."""
    from kvpilot.policies.surrogate import pair_features

    w = load_weights(tiny_weights)["weights"]
    rhos = []
    for li, (feats, target) in enumerate(scored_layers(tiny_model, _contexts(1, seed=99)[0], toy_reconstruction)):
        pred = (feats @ torch.tensor(w[li])[:, :, None]).squeeze(-1)
        rhos += [spearman(pred[h], target[h]) for h in range(target.shape[0])]
    assert sum(rhos) / len(rhos) > 0.2, rhos
    from kvpilot.policies.base import RopeInfo
    from kvpilot.policies.surrogate import FEATURE_SETS, feature_count

    for name in FEATURE_SETS:
        feats = pair_features(torch.ones(2, 3, 16), torch.ones(2, 3, 16), features=name,
                              positions=torch.arange(3).expand(2, 3), seen=3, rope=RopeInfo(torch.ones(8)))
        assert feats.shape == (2, 3, feature_count(16, name))


def test_hidden_layer_learns_what_a_linear_fit_cannot():
    """A target that depends on two features together (|x0 - x1|): the hidden layer's fit, folded back onto
    the raw features, predicts it within a few percent of its variance; least squares cannot."""
    from kvpilot.evaluation.surrogate import _train_hidden
    from kvpilot.policies.surrogate import predict

    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(2):  # layers
        contexts = []
        for _ in range(3):
            x = torch.randn(2, 400, 6, generator=g) * 3 + 2
            x[..., -1] = 1.0  # the constant feature, last as in pair_features
            contexts.append((x, (x[..., 0] - x[..., 1]).abs() + 0.5 * x[..., 2]))
        rows.append(contexts)
    linear, w_in, w_out = _train_hidden([list(layer) for layer in rows], 16, 1500, seed=0)  # it empties its input
    x, y = rows[1][0]
    hidden_mse = ((predict(x, linear[1], w_in[1], w_out[1]) - y) ** 2).mean()
    lstsq = torch.linalg.lstsq(x, y[..., None]).solution
    linear_mse = ((predict(x, lstsq.squeeze(-1)) - y) ** 2).mean()
    assert hidden_mse < 0.05 * y.var() < linear_mse, (hidden_mse, linear_mse, y.var())


@pytest.fixture(scope="module")
def tiny_hidden(tiny_model) -> dict:
    return fit_surrogate(tiny_model, _contexts(4), toy_reconstruction, held_out=1, name="tiny", hidden=8, steps=200,
                         progress=lambda it: it)


def test_fit_with_a_hidden_layer_writes_a_file_the_policy_serves(tiny_model, tiny_hidden, tmp_path):
    data = tiny_hidden
    assert (data["fit"]["hidden"], data["fit"]["steps"], data["fit"]["ridge"]) == (8, 200, None)
    assert len(data["hidden"]["in"][0][0]) == len(data["weights"][0][0]) and len(data["hidden"]["in"][0][0][0]) == 8
    # (how well it ranks is checked on the bundled weights and on a synthetic target above: the tiny random
    # model's 350 pairs are too few for a hidden layer to beat the linear fit)
    path = str(save_weights(data, tmp_path / "hidden.json"))
    assert load_weights(path)["hidden"]["out"][3][1] == data["hidden"]["out"][3][1]
    budget_matrix.test_uniform_budget_exact_with_sinks_window_and_order(tiny_model, "surrogate", {"weights": path})
    broken = dict(data, hidden={"in": data["hidden"]["in"], "out": data["hidden"]["out"][:-1]})
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(SurrogateError, match="do not match"):
        load_weights(str(tmp_path / "broken.json"))
    with pytest.raises(ValueError, match="hidden must be >= 0"):
        fit_surrogate(tiny_model, _contexts(2), toy_reconstruction, hidden=-1)


def test_blend_scores_the_weighted_mean_of_its_files(tiny_weights, tiny_hidden, tmp_path, capsys):
    from kvpilot.cli import main

    hidden = str(save_weights(tiny_hidden, tmp_path / "hidden.json"))
    out = tmp_path / "blend.json"
    assert main(["surrogate", "blend", tiny_weights, hidden, "--shares", "0.25", "0.75", "--out", str(out)]) == 0
    assert [b["share"] for b in load_weights(str(out))["fit"]["blend"]] == [0.25, 0.75]
    feats = torch.randn(2, 50, len(tiny_hidden["weights"][0][0]), generator=torch.Generator().manual_seed(3))
    for layer in range(4):
        expected = (0.25 * predict(feats, *layer_weights(tiny_weights, layer))
                    + 0.75 * predict(feats, *layer_weights(hidden, layer)))
        assert torch.allclose(predict(feats, *layer_weights(str(out), layer)), expected, rtol=1e-4, atol=1e-3)
    capsys.readouterr()
    assert main(["surrogate", "blend", tiny_weights, str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: surrogate weights not found")
    assert main(["surrogate", "blend", tiny_weights, hidden, "--shares", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: need one positive share per file, got [1.0] "
                                                            "for 2 files"]
    assert main(["surrogate", "blend", tiny_weights, "bundled-linear", "--out", str(out)]) == 2
    assert "different shapes" in capsys.readouterr().err


def test_surrogate_refuses_weights_of_another_model(tiny_model):
    cfg = KVConfig(policy="surrogate", budget=40)  # the bundled model's weights on the tiny model
    from kvpilot.cache.managed import ManagedCache

    cache = ManagedCache.for_model(tiny_model, cfg)
    with pytest.raises(SurrogateError, match="fitted for 30 layers"):
        with torch.inference_mode():
            prefill(tiny_model, cache, _contexts(1)[0])


def test_by_budget_picks_the_fit_for_the_share_kept():
    """`weights="by-budget"`: answer weight 10 where 1/12 of the context or more is kept (8x, a budget of 100
    of 1,000 tokens), answer weight 30 below (16x, 60 of 1,000); any other name is itself."""
    from kvpilot.policies.surrogate import weights_for

    picks = {(ratio, budget): weights_for("by-budget", KVConfig(policy="surrogate", compression_ratio=ratio,
                                                              budget=budget), 1000)
             for ratio, budget in ((0.875, None), (0.9375, None), (None, 100), (None, 60))}
    assert picks == {(0.875, None): "bundled", (0.9375, None): "bundled-answers30",
                     (None, 100): "bundled", (None, 60): "bundled-answers30"}
    assert weights_for("bundled-linear", KVConfig(policy="surrogate", compression_ratio=0.9375), 1000) == "bundled-linear"


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.875, 0.9375])
def test_by_budget_keeps_what_its_pick_keeps(bundled_engine, ratio):
    """On the bundled model, "by-budget" keeps exactly the pairs its pick keeps, and the picks differ."""
    from kvpilot.cache.managed import ManagedCache
    from kvpilot.engine.prompts import chat_parts
    from kvpilot.workloads.registry import generate

    tok = bundled_engine.tokenizer
    (sample,) = generate("convqa", 1, 600, seed=7, tokenizer=tok)
    ctx = chat_parts(tok, sample.context, sample.qa[0].question).context_ids
    kept = {}
    for weights in ("by-budget", "bundled", "bundled-answers30"):
        cfg = KVConfig(policy="surrogate", policy_params={"weights": weights}, compression_ratio=ratio,
                       layer_allocation="global", layer_allocation_params={"heads": True})
        cache = ManagedCache.for_model(bundled_engine.model, cfg)
        with torch.inference_mode():
            prefill(bundled_engine.model, cache, ctx)
        kept[weights] = [layer.positions[layer.valid_mask()].tolist() for layer in cache.layers]
    pick = "bundled" if ratio == 0.875 else "bundled-answers30"
    assert kept["by-budget"] == kept[pick] and kept["bundled"] != kept["bundled-answers30"]


def test_surrogate_weights_file_errors_are_one_line(tmp_path):
    with pytest.raises(SurrogateError, match="not found"):
        load_weights(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SurrogateError, match="not a surrogate weights file"):
        load_weights(str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": 1, "features": "rope_pair_norms+value+value_norm+bias",
                                 "num_layers": 2, "num_kv_heads": 1, "head_dim": 4, "weights": [[[0.0]]]}))
    with pytest.raises(SurrogateError, match="do not match"):
        load_weights(str(wrong))


@pytest.mark.slow
@pytest.mark.parametrize(("weights", "target"), [("bundled", "both"), ("bundled-without-answers", "both"),
                                                 ("bundled-answers30", "both"),
                                                 ("bundled-linear", "both"),
                                                 ("bundled-both-w1", "both"),
                                                 ("bundled-reconstruction", "reconstruction")])
def test_bundled_weights_rank_the_scores_they_were_fitted_on(bundled_engine, weights, target):
    """The shipped weights, on a conversation the fit never saw, order the bundled model's pairs like the
    scores they predict (mean Spearman over layers and heads)."""
    from kvpilot.engine.prompts import chat_parts
    from kvpilot.workloads.registry import generate

    tok = bundled_engine.tokenizer
    (sample,) = generate("convqa", 1, 400, seed=7, tokenizer=tok)
    ctx = chat_parts(tok, sample.context, sample.qa[0].question).context_ids
    data = load_weights(weights)
    assert target in data["fit"]["target"]  # "both", or the first fit's "log(max(reconstruction score, ...))"
    rhos = []
    layers = scored_layers(bundled_engine.model, ctx, bundled_engine.reconstruction_queries, target=target,
                           question_ids=calibration_questions(tok, sample),
                           question_weight=data["fit"].get("question_weight") or 1.0,
                           answers=calibration_answers(tok, sample), answer_weight=data["fit"].get("answer_weight") or 0.0)
    for li, (feats, log_scores) in enumerate(layers):
        pred = predict(feats, *layer_weights(weights, li))
        rhos += [spearman(pred[h], log_scores[h]) for h in range(log_scores.shape[0])]
    assert sum(rhos) / len(rhos) > 0.4, sum(rhos) / len(rhos)


def test_both_target_is_the_log_of_the_summed_scores(tiny_model):
    """Target "both" adds reconstruction's and the questions' scores per pair (log of the sum), on the same
    features; a fit on it says so in its file."""
    ctx = _contexts(1, seed=11)[0]
    questions = _contexts(1, n=30, seed=12)[0]
    rec = scored_layers(tiny_model, ctx, toy_reconstruction)
    que = scored_layers(tiny_model, ctx, toy_reconstruction, question_ids=questions, target="questions")
    both = scored_layers(tiny_model, ctx, toy_reconstruction, question_ids=questions, target="both")
    for (fr, r), (fq, q), (fb, b) in zip(rec, que, both, strict=True):
        assert torch.equal(fr, fb) and torch.equal(fq, fb)
        assert not torch.allclose(r, q)
        torch.testing.assert_close(b, torch.logaddexp(r, q))
    weighted = scored_layers(tiny_model, ctx, toy_reconstruction, question_ids=questions, target="both",
                             question_weight=10.0)
    for (_, r), (_, q), (_, w) in zip(rec, que, weighted, strict=True):
        torch.testing.assert_close(w, torch.logaddexp(r, q + math.log(10.0)))
    data = fit_surrogate(tiny_model, _contexts(3), toy_reconstruction, held_out=1, progress=lambda it: it,
                         questions=[questions] * 3, target="both", question_weight=3.0)
    assert data["fit"]["target"] == "both" and "3 x max(question score" in data["fit"]["target_formula"]
    assert data["fit"]["question_weight"] == 3.0
    with pytest.raises(ValueError, match="question_weight must be positive"):
        scored_layers(tiny_model, ctx, toy_reconstruction, question_ids=questions, target="both", question_weight=0)
    with pytest.raises(ValueError, match="needs the calibration questions"):
        scored_layers(tiny_model, ctx, toy_reconstruction, target="questions")


def test_answer_weight_adds_what_each_answer_reads(tiny_model):
    """`answer_weight` adds, inside the log, the largest attention each answer's producing queries give a
    pair; each question is read on its own copy of the context, so two readings score the maximum of each
    alone (the first question's tokens never reach the second's), and a fit records the weight."""
    ctx = _contexts(1, seed=11)[0]
    questions = _contexts(1, n=30, seed=12)[0]
    first, second = (_contexts(1, n=12, seed=13)[0], [7, 9, 11]), (_contexts(1, n=9, seed=14)[0], [5, 6])
    alone = [answer_scores(tiny_model, ctx, [reading]) for reading in (first, second)]
    together = answer_scores(tiny_model, ctx, [first, second])
    for a, b, both in zip(*alone, together, strict=True):
        assert both.shape == (2, 120 - 4) and not torch.allclose(a, b)
        torch.testing.assert_close(both, torch.maximum(a, b))
    base = scored_layers(tiny_model, ctx, toy_reconstruction, question_ids=questions, target="both")
    plus = scored_layers(tiny_model, ctx, toy_reconstruction, question_ids=questions, target="both",
                         answers=[first, second], answer_weight=5.0)
    for (fb, b), (fp, p), read in zip(base, plus, together, strict=True):
        assert torch.equal(fb, fp)
        torch.testing.assert_close(p, torch.logaddexp(b, read.clamp_min(1e-6).log() + math.log(5.0)))
    data = fit_surrogate(tiny_model, _contexts(3), toy_reconstruction, held_out=1, progress=lambda it: it,
                         questions=[questions] * 3, target="both", answers=[[first]] * 3, answer_weight=5.0)
    assert data["fit"]["answer_weight"] == 5.0 and "5 x max(answer score" in data["fit"]["target_formula"]
    with pytest.raises(ValueError, match="answer_weight must be >= 0 and needs the calibration answers"):
        scored_layers(tiny_model, ctx, toy_reconstruction, question_ids=questions, target="both", answer_weight=1.0)


def test_floor_quantile_flattens_the_bottom_of_the_context_only(tiny_model):
    """`floor_quantile` raises every target under the context's quantile (all layers and heads pooled, as
    global selection pools them) to that quantile and leaves the top untouched; a fit records it."""
    ctx = _contexts(1, seed=11)[0]
    plain = [t for _, t in scored_layers(tiny_model, ctx, toy_reconstruction)]
    floored = [t for _, t in scored_layers(tiny_model, ctx, toy_reconstruction, floor_quantile=0.75)]
    flat = torch.cat([t.flatten() for t in plain])
    floor = flat.sort().values[math.ceil(0.75 * flat.numel()) - 1]
    for p, f in zip(plain, floored, strict=True):
        torch.testing.assert_close(f, p.clamp_min(floor))
    flat_floored = torch.cat([t.flatten() for t in floored])
    assert (flat_floored == floor).float().mean() >= 0.75 and (flat_floored > floor).any()
    data = fit_surrogate(tiny_model, _contexts(3), toy_reconstruction, held_out=1, progress=lambda it: it,
                         floor_quantile=0.5)
    assert data["fit"]["floor_quantile"] == 0.5
    with pytest.raises(ValueError, match="floor_quantile must be in"):
        scored_layers(tiny_model, ctx, toy_reconstruction, floor_quantile=1.0)


@pytest.mark.slow
def test_reading_store_names_a_reading_alike_in_every_process(tiny_model, tmp_path):
    """A reading's file name depends on the model's contents and the context, not on the thread count (a float
    sum of the bundled model's embedding did, so a refit with another OMP_NUM_THREADS missed every stored
    reading). Checked in two processes (changing the thread count inside one can hang a later LAPACK call)."""
    import os
    import subprocess
    import sys

    from kvpilot.evaluation.surrogate import ReadingStore

    script = ("from kvpilot.engine import Engine; from kvpilot.evaluation.surrogate import ReadingStore; "
              f"print(ReadingStore({str(tmp_path)!r}).path(Engine.load().model, list(range(3, 60)), 'f'))")
    names = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": threads}).stdout.strip().splitlines()[-1]
             for threads in ("1", "2")}
    assert len(names) == 1
    store = ReadingStore(tmp_path)
    assert store.path(tiny_model, list(range(3, 60)), "f") != store.path(tiny_model, list(range(3, 61)), "f")
    assert store.path(tiny_model, list(range(3, 60)), "f") != store.path(tiny_model, list(range(3, 60)), "g")
    assert str(store.path(tiny_model, list(range(3, 60)), "f")) not in names


def test_reading_store_refits_without_the_model_passes(tiny_model, tmp_path, monkeypatch):
    """A fit through a ReadingStore equals the fit without it; a refit with another target runs only the
    pass the first lacked, and one with another weight runs none (the stored scores are raw, the target is
    built afterwards); a pass stored for other questions is read again."""
    from kvpilot.evaluation import surrogate as fitting

    contexts, questions = _contexts(3), [_contexts(1, n=30, seed=12)[0]] * 3
    answers = [[(_contexts(1, n=12, seed=13)[0], [7, 9, 11])]] * 3
    store = fitting.ReadingStore(tmp_path / "readings")
    kwargs = {"held_out": 1, "progress": lambda it: it, "questions": questions, "target": "both",
              "question_weight": 10.0, "answers": answers, "answer_weight": 5.0}
    plain = fit_surrogate(tiny_model, contexts, toy_reconstruction, **kwargs)
    runs: list[str] = []
    real = fitting.read_context

    def counted(*args, **kw):
        runs.extend(p for p in kw["passes"] if p not in (kw.get("reading") or fitting.Reading([])).scores)
        return real(*args, **kw)

    monkeypatch.setattr(fitting, "read_context", counted)
    rec = fit_surrogate(tiny_model, contexts, toy_reconstruction, held_out=1, progress=lambda it: it, store=store)
    assert runs == ["reconstruction"] * 3 and len(list(store.directory.glob("*.pt"))) == 3
    stored = fit_surrogate(tiny_model, contexts, toy_reconstruction, store=store, **kwargs)
    assert runs == ["reconstruction"] * 3 + ["questions", "answers"] * 3
    assert stored["weights"] == plain["weights"] and stored["fit"] == plain["fit"]
    assert rec["weights"] == fit_surrogate(tiny_model, contexts, toy_reconstruction, held_out=1,
                                           progress=lambda it: it)["weights"]
    runs.clear()
    again = fit_surrogate(tiny_model, contexts, toy_reconstruction, store=store, **{**kwargs, "answer_weight": 30.0})
    assert runs == [] and again["fit"]["answer_weight"] == 30.0 and again["weights"] != plain["weights"]
    fit_surrogate(tiny_model, contexts, toy_reconstruction, store=store,
                  **{**kwargs, "questions": [_contexts(1, n=20, seed=15)[0]] * 3})
    assert runs == ["questions"] * 3
    runs.clear()  # a refit that reads new questions but no answers keeps the stored answers' pass
    other = [_contexts(1, n=25, seed=16)[0]] * 3
    fit_surrogate(tiny_model, contexts, toy_reconstruction, store=store,
                  **{**kwargs, "questions": other, "answers": None, "answer_weight": 0.0})
    fit_surrogate(tiny_model, contexts, toy_reconstruction, store=store, **{**kwargs, "questions": other})
    assert runs == ["questions"] * 3


def _answer_slots(tok, context: str, head_ids: list[int], span: tuple[int, int], sinks: int) -> list[int]:
    """Indices (after the sinks) of the context tokens that overlap the character span `span`."""
    full = tok.decode(head_ids)
    offset = full.index(context)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == head_ids
    a, b = span[0] + offset, span[1] + offset
    return [i - sinks for i, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a and i >= sinks]


def kept_share_of(layers: list, slots: list[list[int]]) -> float:
    """Share of (layer, KV head, answer) where some token of the answer is in the head's top eighth."""
    hits, total = 0, 0
    for _, scores in layers:
        top = scores.topk(max(1, scores.shape[1] // 8), dim=1).indices
        for h in range(scores.shape[0]):
            kept = set(top[h].tolist())
            hits += sum(any(i in kept for i in answer) for answer in slots)
            total += len(slots)
    return hits / total


@pytest.mark.slow
def test_question_target_puts_the_answers_asked_in_the_kept_share(bundled_engine):
    """On a conversation, the questions' attention (with their answers) ranks an answer's tokens within the
    top eighth of the context (what 8x keeps) in more (layer, KV head) slots than reconstruction does:
    it is the signal a question-agnostic score should learn to foresee; what the answers alone read does
    so in more slots still (the question's own tokens also read the names around look-alike distractors)."""
    from kvpilot.engine.prompts import chat_parts
    from kvpilot.workloads.registry import generate

    tok = bundled_engine.tokenizer
    (sample,) = generate("convqa", 1, 400, seed=7, tokenizer=tok, n_facts=4, n_questions=4)
    ctx = chat_parts(tok, sample.context, "").context_ids
    slots = [_answer_slots(tok, sample.context, ctx, qa.spans[0], KVConfig().sink_tokens) for qa in sample.qa]
    assert all(slots)

    def kept_share(target: str) -> float:
        return kept_share_of(scored_layers(bundled_engine.model, ctx, bundled_engine.reconstruction_queries,
                                           target=target, question_ids=calibration_questions(tok, sample)), slots)

    questions, reconstruction = kept_share("questions"), kept_share("reconstruction")
    assert questions > reconstruction + 0.1, (questions, reconstruction)
    read = answer_scores(bundled_engine.model, ctx, calibration_answers(tok, sample))
    answers = kept_share_of([(None, r) for r in read], slots)
    assert answers > questions, (answers, questions)


@pytest.mark.slow
def test_fit_command_mixes_sizes_and_targets(tmp_path, capsys):
    """`kvpilot surrogate fit` with two sizes fits on contexts of each (interleaved, so the held-out ones
    include both) and records the target; a bad size is one error line."""
    from kvpilot.cli import main

    out = tmp_path / "w.json"
    assert main(["surrogate", "fit", "--target", "both", "-n", "1", "--held-out", "1", "--tokens", "400", "500",
                 "--question-weight", "4", "--answer-weight", "2", "--quiet", "--out", str(out)]) == 0
    fit = json.loads(out.read_text())["fit"]
    assert (fit["contexts"], fit["held_out_contexts"], fit["target"], fit["question_weight"]) == (1, 1, "both", 4.0)
    assert fit["answer_weight"] == 2.0
    assert load_weights(str(out))["num_layers"] == 30
    capsys.readouterr()
    assert main(["surrogate", "fit", "--tokens", "1000", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --tokens must be at least 64, got 10"]
    assert main(["surrogate", "fit", "--target", "both", "--question-weight", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --question-weight must be positive, got 0.0"]
    assert main(["surrogate", "fit", "--answer-weight", "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --answer-weight must be >= 0 and needs --target questions or both, got 3.0 with --target reconstruction"]
    assert main(["surrogate", "fit", "--hidden", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --hidden must be >= 0 and --steps >= 1, got -1 and 2000"]
    assert main(["surrogate", "fit", "--floor-quantile", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --floor-quantile must be in [0, 1), got 1.0"]
