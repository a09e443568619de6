"""The search space: every suggestion is a valid KVConfig, conditional fields appear only when they apply,
and bad space files fail with messages that name the problem."""

from __future__ import annotations

import json

import optuna
import pytest

from kvpilot.config import KVConfig
from kvpilot.tuner import SearchSpace, SearchSpaceError
from kvpilot.tuner.space import config_from_params, prompt_scorable


def _config_value(config: KVConfig, key: str):
    """What a trial param names in the config: a field, or "<field>.<plug-in>.<param>" of the chosen plug-in."""
    data = config.to_dict()
    if "." not in key:
        return data[key]
    field, plugin, name = key.split(".")
    assert data[field] == plugin
    return data[f"{field}_params"][name]


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
        assert ("layer_allocation.pyramid.beta" in params) == (config.layer_allocation == "pyramid")
        assert ("head_allocation.adaptive.alpha" in params) == (config.head_allocation == "adaptive")
        assert ("scoring" in params) == prompt_scorable(config.policy)
        if not prompt_scorable(config.policy):
            assert config.scoring == "window"
        # params are KVConfig field names (or a chosen plug-in's "<field>.<plug-in>.<param>"), so a trial's
        # params read as (part of) its config
        assert all(_config_value(config, k) == pytest.approx(v) if isinstance(v, float) else _config_value(config, k) == v
                   for k, v in params.items())
        rebuilt = config_from_params(params)
        assert all(_config_value(rebuilt, k) == pytest.approx(v) for k, v in params.items())
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
        assert config.layer_allocation_params["profile"] == profile and config.prefill_block_size == 256


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policies": ["snapkv"]}, "unknown search-space keys ['policies']"),
        ({"policy": ["snapkv", "lru"]}, "['lru'] not allowed"),
        ({"policy": ["full", "snapkv"]}, "'full' never evicts"),
        ({"layer_allocation": ["sensitivity"]}, "needs fixed.layer_allocation.sensitivity.profile"),
        ({"layer_allocation": ["explicit"]}, "needs fixed.layer_allocation.explicit.budgets"),
        ({"params": {"policy.snapkv.poolin": ["max"]}}, "unknown parameter 'policy.snapkv.poolin'"),
        ({"params": {"layer_allocation.pyramid.beta": [30.0, 2.0]}}, "low <= high"),
        ({"params": {"policy.snapkv.pooling": ["avg", "min"]}}, "'min': not allowed"),
        ({"fixed": {"pyramid_beta": 4.0}}, "are searched"),
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


def test_plugin_params_are_searched_when_their_plugin_is_chosen():
    space = SearchSpace.from_dict({
        "policy": ["snapkv", "h2o"], "layer_allocation": ["uniform"], "head_allocation": ["uniform"],
        "params": {"policy.snapkv.pooling": ["avg", "max"], "policy.snapkv.observation_window": [8, 64],
                   "policy.snapkv.pooling_kernel": [3]},
    })
    seen = set()
    for params, config in _suggestions(space, 40):
        snap = config.policy == "snapkv"
        assert ("policy.snapkv.pooling" in params) == snap and ("policy.snapkv.observation_window" in params) == snap
        if snap:
            seen.add(config.policy_params["pooling"])
            assert 8 <= config.policy_params["observation_window"] <= 64
            assert config.policy_params["pooling_kernel"] == 3  # pinned, not searched
            assert "policy.snapkv.pooling_kernel" not in params
    assert seen == {"avg", "max"}


def test_old_space_files_with_flat_range_keys_still_load():
    old = {**SearchSpace().to_dict(), "pyramid_beta": [3.0, 9.0], "session_ttl_s": [1.0, 60.0],
           "ttl_memory_price": [1e-10, 1e-7], "adaptive_alpha": [0.1, 0.4]}
    del old["params"]
    space = SearchSpace.from_dict(old)
    assert space.params == {"layer_allocation.pyramid.beta": (3.0, 9.0), "head_allocation.adaptive.alpha": (0.1, 0.4),
                            "layer_allocation.global.heads": (False, True), "policy.kvzip.plus": (False, True)}
    ttl = SearchSpace.from_dict({"policy": ["full"], "session_ttl": ["none", "fixed", "cdf"], "session_ttl_s": [2, 30]})
    assert {k: v for k, v in ttl.params.items() if k.startswith("session_ttl.")} == {
        "session_ttl.fixed.ttl_s": (2, 30), "session_ttl.cdf.memory_price": (1e-10, 1e-7)}
    for params, config in _suggestions(ttl, 30):
        assert ("session_ttl.fixed.ttl_s" in params) == (config.session_ttl == "fixed")
        assert ("session_ttl.cdf.memory_price" in params) == (config.session_ttl == "cdf")
        if config.session_ttl == "fixed":
            assert 2 <= config.session_ttl_params["ttl_s"] <= 30


def test_bundled_space_files_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "benchmarks" / "spaces").glob("*.json")):
        space = SearchSpace.from_file(str(path))
        assert _suggestions(space, 3)


def test_default_space_draws_what_it_drew_before_the_registries():
    """A seeded study of the default space (as it was then) draws the same configs (the order of suggestions
    is kept). The default space has since gained kvzip, keydiff, global layers, reconstruction scoring and
    windows of 0 and 4."""
    space = SearchSpace(policy=("snapkv", "tova", "h2o", "knorm", "streaming", "expected_attention"),
                        layer_allocation=("uniform", "pyramid"), scoring=("window", "prompt"), window=(8, 16, 32, 64))
    got = [(c.policy, c.compression_ratio, c.layer_allocation, c.layer_allocation_params.get("beta"),
            c.head_allocation, c.head_allocation_params.get("alpha"), c.window, c.scoring, c.granularity)
           for _, c in _suggestions(space, 4)]
    assert got == EXPECTED_DEFAULT_DRAWS


EXPECTED_DEFAULT_DRAWS = [  # drawn by the space before the registries (RandomSampler(seed=3))
    ("expected_attention", 0.55, "uniform", None, "uniform", None, 64, "window", "token"),
    ("streaming", 0.55, "pyramid", 4.049426569217192, "adaptive", 0.4745534599441722, 8, "window", "token"),
    ("snapkv", 0.6, "pyramid", 14.506542296437168, "uniform", None, 16, "window", "token"),
    ("tova", 0.65, "uniform", None, "uniform", None, 16, "prompt", "sentence"),
]
