"""The `surrogate` policy: fitted on reconstruction scores, it predicts them from each pair's key and value."""

from __future__ import annotations

import json

import pytest
import torch

from kvpilot.config import KVConfig
from kvpilot.engine.generation import prefill
from kvpilot.evaluation.surrogate import fit_surrogate, save_weights, scored_layers, spearman
from kvpilot.policies.surrogate import SurrogateError, load_weights
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


def test_surrogate_refuses_weights_of_another_model(tiny_model):
    cfg = KVConfig(policy="surrogate", budget=40)  # the bundled model's weights on the tiny model
    from kvpilot.cache.managed import ManagedCache

    cache = ManagedCache.for_model(tiny_model, cfg)
    with pytest.raises(SurrogateError, match="fitted for 30 layers"):
        with torch.inference_mode():
            prefill(tiny_model, cache, _contexts(1)[0])


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
def test_bundled_weights_rank_reconstruction_scores(bundled_engine):
    """The shipped weights, on a conversation the fit never saw, order the bundled model's pairs like
    reconstruction scoring does (mean Spearman over layers and heads)."""
    from kvpilot.engine.prompts import chat_parts
    from kvpilot.workloads.registry import generate

    tok = bundled_engine.tokenizer
    (sample,) = generate("convqa", 1, 400, seed=7, tokenizer=tok)
    ctx = chat_parts(tok, sample.context, sample.qa[0].question).context_ids
    w = load_weights("bundled")["weights"]
    rhos = []
    for li, (feats, target) in enumerate(scored_layers(bundled_engine.model, ctx, bundled_engine.reconstruction_queries)):
        pred = (feats @ torch.tensor(w[li])[:, :, None]).squeeze(-1)
        rhos += [spearman(pred[h], target[h]) for h in range(target.shape[0])]
    assert sum(rhos) / len(rhos) > 0.4, sum(rhos) / len(rhos)
