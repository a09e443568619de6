"""The search space: every suggestion is a valid KVConfig, conditional fields appear only when they apply,
and bad space files fail with messages that name the problem."""

from __future__ import annotations

import json

import optuna
import pytest

from kvpilot.config import KVConfig
from kvpilot.tuner import SearchSpace, SearchSpaceError
from kvpilot.tuner.space import prompt_scorable


def _suggestions(space: SearchSpace, n: int) -> list[tuple[dict, KVConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        out.append((dict(trial.params), config))
        study.tell(trial, 0.0)
    return out


def test_default_space_suggests_valid_compressing_configs_with_conditional_fields():
    space = SearchSpace()
    seen_policies = set()
    for params, config in _suggestions(space, 200):
        assert isinstance(config, KVConfig) and config.compresses
        seen_policies.add(config.policy)
        low, high, _ = space.compression_ratio
        assert low - 1e-9 <= config.compression_ratio <= high + 1e-9
        assert ("pyramid_beta" in params) == (config.layer_allocation == "pyramid")
        assert ("adaptive_alpha" in params) == (config.head_allocation == "adaptive")
        assert ("scoring" in params) == prompt_scorable(config.policy)
        if not prompt_scorable(config.policy):
            assert config.scoring == "window"
        # params are KVConfig field names, so a trial's params read as (part of) its config
        assert all(config.to_dict()[k] == pytest.approx(v) if isinstance(v, float) else config.to_dict()[k] == v
                   for k, v in params.items())
    assert seen_policies == set(space.policy)


def test_pinned_and_fixed_fields_are_not_searched():
    profile = [float(i) for i in range(30)]
    space = SearchSpace.from_dict({"policy": "snapkv", "compression_ratio": [0.75, 0.75, 0.05],
                                   "layer_allocation": ["sensitivity"], "head_allocation": "uniform",
                                   "window": [16], "scoring": ["window"], "granularity": ["token"],
                                   "fixed": {"sensitivity_profile": profile, "prefill_block_size": 256}})
    for params, config in _suggestions(space, 5):
        assert params == {}
        assert (config.policy, config.compression_ratio, config.layer_allocation) == ("snapkv", 0.75, "sensitivity")
        assert config.sensitivity_profile == profile and config.prefill_block_size == 256


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policies": ["snapkv"]}, "unknown search-space keys ['policies']"),
        ({"policy": ["snapkv", "lru"]}, "['lru'] not allowed"),
        ({"policy": ["full", "snapkv"]}, "'full' never evicts"),
        ({"layer_allocation": ["sensitivity"]}, "needs fixed.sensitivity_profile"),
        ({"compression_ratio": [0.5, 1.0, 0.1]}, "need 0 < low <= high < 1"),
        ({"window": [16, -1]}, "non-negative integers"),
        ({"fixed": {"policy": "h2o"}}, "are searched"),
        ({"fixed": {"windoww": 3}}, "unknown KVConfig fields ['windoww']"),
        ({"fixed": {"pooling_kernel": 4}}, "pooling_kernel=4: must be odd"),
    ],
)
def test_bad_spaces_say_what_is_wrong(data, message):
    with pytest.raises(SearchSpaceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SearchSpace.from_dict(data)


def test_space_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SearchSpace().to_dict()))
    assert SearchSpace.from_file(str(path)) == SearchSpace()
    path.write_text("{not json")
    with pytest.raises(SearchSpaceError, match="not valid JSON"):
        SearchSpace.from_file(str(path))
    with pytest.raises(SearchSpaceError, match="cannot read"):
        SearchSpace.from_file(str(tmp_path / "missing.json"))
