import json

import pytest

from kvpilot.config import KVConfig, KVConfigError


def test_json_round_trip_and_schema():
    cfg = KVConfig(policy="snapkv", compression_ratio=0.5, layer_allocation="pyramid", granularity="turn")
    again = KVConfig.parse(cfg.to_json())
    assert again == cfg
    schema = KVConfig.json_schema()
    assert "policy" in schema["properties"] and "compression_ratio" in schema["properties"]
    json.dumps(schema)


@pytest.mark.parametrize(
    "bad, field, allowed",
    [
        ({"policy": "lru"}, "policy", "snapkv"),
        ({"compression_ratio": 1.5}, "compression_ratio", "less than 1"),
        ({"budget": 0}, "budget", "greater than or equal to 1"),
        ({"policy": "snapkv", "pooling_kernel": 4}, "pooling_kernel", "odd"),
        ({"policy": "snapkv", "policy_params": {"pooling_kernel": 4}}, "policy_params.pooling_kernel", "odd"),
        ({"policy": "snapkv", "policy_params": {"observation_window": 0}}, "observation_window=0", "[1, 8192]"),
        ({"policy": "snapkv", "policy_params": {"pooling": "min"}}, "pooling='min'", "avg, max, none"),
        ({"policy": "snapkv", "policy_params": {"seed": 1}}, "policy_params.seed", "observation_window, pooling"),
        ({"policy": "h2o", "pooling": "max"}, "pooling='max'", "only policy 'snapkv' uses it"),
        ({"layer_allocation": "pyramid", "layer_allocation_params": {"beta": 0.5}}, "beta=0.5", "[1, inf]"),
        ({"session_ttl": "fixed"}, "session_ttl_params.ttl_s", "required"),
        ({"session_ttl": "fixed", "session_ttl_s": 0.0}, "ttl_s=0.0", "must be > 0"),
        ({"budget": 10, "compression_ratio": 0.5}, "budget", "only one"),
        ({"bogus": 1}, "bogus", "allowed fields"),
        ({"layer_allocation": "sensitivity"}, "layer_allocation_params.profile", "kvpilot profile"),
        ({"layer_allocation": "explicit", "layer_budgets": [4, 0]}, "budgets=[4, 0]", "[1, inf]"),
    ],
)
def test_validation_names_field_value_and_allowed(bad, field, allowed):
    with pytest.raises(KVConfigError) as exc:
        KVConfig.parse(bad)
    msg = str(exc.value)
    assert field in msg and allowed in msg


def test_bad_json_is_a_config_error():
    with pytest.raises(KVConfigError, match="not valid JSON"):
        KVConfig.parse("{policy: snapkv")


def test_validate_for_model_checks_layer_count():
    cfg = KVConfig(policy="snapkv", budget=64, layer_allocation="explicit", layer_budgets=[8, 8])
    cfg.validate_for_model(2, 1, 1)
    with pytest.raises(KVConfigError, match="model has 30 layers"):
        cfg.validate_for_model(30, 3, 9)


def test_rejected_config_leaves_cache_unchanged(tiny_model):
    from kvpilot.cache.managed import ManagedCache

    good = KVConfig(policy="snapkv", compression_ratio=0.5)
    cache = ManagedCache.for_model(tiny_model, good)
    bad = KVConfig(policy="h2o", budget=8, layer_allocation="explicit", layer_budgets=[1, 2, 3])
    with pytest.raises(KVConfigError, match="4 layers"):
        cache.set_config(bad)
    assert cache.config == good and cache.policy.name == "snapkv"


# ----- plug-in parameters: nested, and the flat names of older configs ------------------------------------

# What KVConfig(policy="snapkv", compression_ratio=0.75, pooling="max").to_json() wrote before plug-ins owned
# their parameters: every flat field, defaults included.
OLD_JSON = {
    "policy": "snapkv", "budget": None, "compression_ratio": 0.75, "layer_allocation": "pyramid",
    "pyramid_beta": 4.0, "sensitivity_alpha": 1.1, "sensitivity_floor": 0.25, "sensitivity_profile": None,
    "layer_budgets": None, "head_allocation": "adaptive", "adaptive_alpha": 0.3, "sink_tokens": 4, "window": 16,
    "observation_window": 16, "pooling": "max", "pooling_kernel": 7, "scoring": "window", "scoring_prompt": "x",
    "granularity": "token", "chunk_size": 16, "unit_pooling": "max", "prefill_block_size": None,
    "decode_interval": None, "seed": 0, "session_ttl": "cdf", "session_ttl_s": 0.0, "ttl_memory_price": 2e-9,
}


def test_flat_legacy_keywords_move_into_the_plugins_params():
    cfg = KVConfig(policy="snapkv", compression_ratio=0.75, pooling="max", observation_window=16)
    assert cfg.policy_params == {"observation_window": 16, "pooling": "max", "pooling_kernel": 5, "reduce": "sum"}
    assert cfg == KVConfig(policy="snapkv", compression_ratio=0.75,
                           policy_params={"pooling": "max", "observation_window": 16})


def test_old_stored_json_still_parses_with_the_same_meaning():
    cfg = KVConfig.parse(json.dumps(OLD_JSON))
    assert cfg.policy_params == {"observation_window": 16, "pooling": "max", "pooling_kernel": 7, "reduce": "sum"}
    assert cfg.layer_allocation_params == {"beta": 4.0}
    assert cfg.head_allocation_params == {"alpha": 0.3}
    assert cfg.session_ttl_params == {"memory_price": 2e-9, "max_ttl_s": 120.0}  # the old 0 meant 120 s
    assert KVConfig.parse(cfg.to_json()) == cfg
    # the full-cache default dumped in the old shape is the default
    old_full = {**OLD_JSON, "policy": "full", "compression_ratio": None, "layer_allocation": "uniform",
                "pyramid_beta": 20.0, "head_allocation": "uniform", "adaptive_alpha": 0.2, "observation_window": 32,
                "pooling": "avg", "pooling_kernel": 5, "scoring_prompt": KVConfig().scoring_prompt,
                "session_ttl": "none", "ttl_memory_price": 1e-9}
    assert KVConfig.parse(old_full) == KVConfig()


def test_unused_legacy_keys_are_dropped_at_their_old_default_and_rejected_otherwise():
    assert KVConfig(policy="h2o", pooling="avg", seed=0, pyramid_beta=20.0).policy_params == {}
    with pytest.raises(KVConfigError, match=r"seed=3: only policy 'random' uses it; this config's policy is 'h2o'"):
        KVConfig.parse({"policy": "h2o", "seed": 3})
    with pytest.raises(KVConfigError, match=r"pyramid_beta=4.0: only layer_allocation 'pyramid' uses it"):
        KVConfig.parse({"policy": "snapkv", "budget": 8, "pyramid_beta": 4.0})


def test_replace_keeps_params_of_the_same_plugin_and_drops_another_plugins():
    cfg = KVConfig(policy="snapkv", compression_ratio=0.5, pooling="max", layer_allocation="pyramid", pyramid_beta=4)
    assert cfg.replace(observation_window=8).policy_params["pooling"] == "max"
    assert cfg.replace(observation_window=8).policy_params["observation_window"] == 8
    h2o = cfg.replace(policy="h2o")
    assert h2o.policy_params == {} and h2o.layer_allocation_params == {"beta": 4.0}
    explicit = cfg.replace(layer_allocation="explicit", layer_budgets=[3, 4], compression_ratio=None)
    assert explicit.layer_allocation_params == {"budgets": [3, 4]} and explicit.compresses


def test_json_schema_lists_plugins_and_their_params():
    schema = KVConfig.json_schema()
    assert "snapkv" in schema["properties"]["policy"]["enum"]
    assert set(schema["properties"]["session_ttl"]["enum"]) == {"none", "fixed", "cdf"}
    snap = next(c for c in schema["allOf"] if c["if"]["properties"].get("policy") == {"const": "snapkv"})
    pooling = snap["then"]["properties"]["policy_params"]["properties"]["pooling"]
    assert pooling["enum"] == ["avg", "max", "none"] and pooling["default"] == "avg"


def test_config_hash_is_canonical_and_label_is_short():
    from kvpilot.config import config_hash, config_label

    a = KVConfig(policy="snapkv", compression_ratio=0.75, pooling="max")
    b = KVConfig.parse({"pooling": "max", "compression_ratio": 0.75, "policy": "snapkv"})
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 8
    assert config_hash(a) != config_hash(a.replace(pooling="avg"))
    assert config_label(KVConfig()) == "full" and config_label(a) == "snapkv-0.75"
    assert config_label(KVConfig(policy="h2o", budget=64)) == "h2o-b64"
    assert config_label(KVConfig(policy="h2o", layer_allocation="explicit", layer_budgets=[4])) == "h2o-explicit"
    assert config_label(KVConfig(policy="knorm")) == "knorm-0"


def test_every_stored_benchmark_config_parses():
    """The configs recorded in benchmarks/results (old shape) all load."""
    from pathlib import Path

    found = []

    def walk(node):
        if isinstance(node, dict):
            if "policy" in node and ("pooling" in node or "policy_params" in node):
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in sorted((Path(__file__).parents[2] / "benchmarks" / "results").glob("*.json")):
        walk(json.loads(path.read_text()))
    for data in found:
        KVConfig.parse(data)
