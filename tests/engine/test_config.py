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
        ({"pooling_kernel": 4}, "pooling_kernel", "odd"),
        ({"budget": 10, "compression_ratio": 0.5}, "budget", "only one"),
        ({"bogus": 1}, "bogus", "allowed fields"),
        ({"layer_allocation": "sensitivity"}, "sensitivity_profile", "kvpilot profile"),
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
