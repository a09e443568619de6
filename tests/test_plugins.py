"""Adding a policy is one class plus one registry call: a throwaway policy registered here is validated by
KVConfig, offered and sampled by the tuner's search space, and run through the shared exactness matrix.
Also: the generic parameter and registry types, and the torch-free import of every plug-in spec."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import optuna
import pytest

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.plugins import Param, ParamError, UnknownPluginError, param
from kvpilot.policies import HEAD_ALLOCATORS, LAYER_ALLOCATORS, POLICY_REGISTRY, TTL_RULES, make_policy
from kvpilot.policies.base import Policy, ScoringInputs, scoring_mass_or_raise
from kvpilot.tuner import SearchSpace, SearchSpaceError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SharpenedMass(Policy):
    """Observation-window mass raised to a power, optionally averaged over the layer's heads."""

    name = "throwaway_sharpened"
    description = "scoring mass ** exponent (a test policy)"
    stats = "scoring"

    exponent: float = param(1.0, low=0.5, high=4.0, search=(0.5, 2.0), description="sharpening exponent")
    reduce: Literal["none", "mean"] = param("none", search=("none", "mean"), description="share one ranking")
    observation_window: int = param(8, low=1, high=64, description="queries that score the cache")

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        mass = scoring_mass_or_raise(inp).masked_fill(~inp.valid, 0.0).clamp_min(0.0) ** self.exponent
        return mass.mean(dim=0, keepdim=True).expand_as(mass).contiguous() if self.reduce == "mean" else mass


@pytest.fixture
def throwaway():
    POLICY_REGISTRY.register(SharpenedMass)
    try:
        yield SharpenedMass.name
    finally:
        POLICY_REGISTRY.unregister(SharpenedMass.name)


def test_throwaway_policy_is_validated_by_kvconfig(throwaway):
    cfg = KVConfig(policy=throwaway, compression_ratio=0.5, policy_params={"exponent": 2.0})
    assert cfg.policy_params == {"exponent": 2.0, "reduce": "none", "observation_window": 8}
    assert KVConfig.parse(cfg.to_json()) == cfg and cfg.compresses
    policy = make_policy(cfg)
    assert isinstance(policy, SharpenedMass) and policy.exponent == 2.0 and policy.observation_window == 8
    assert policy.stats == "scoring" and not policy.last_query_only
    with pytest.raises(KVConfigError, match=r"policy_params.exponent=9.0: must be in \[0.5, 4\]"):
        KVConfig.parse({"policy": throwaway, "policy_params": {"exponent": 9.0}})
    with pytest.raises(KVConfigError, match=r"policy_params.reduce='max': not allowed; allowed values: none, mean"):
        KVConfig.parse({"policy": throwaway, "policy_params": {"reduce": "max"}})
    with pytest.raises(KVConfigError, match=r"policy_params.pooling: unknown parameter of 'throwaway_sharpened'"):
        KVConfig.parse({"policy": throwaway, "policy_params": {"pooling": "max"}})
    assert throwaway in KVConfig.json_schema()["properties"]["policy"]["enum"]
    assert f"`{throwaway}`" in POLICY_REGISTRY.markdown()


def test_throwaway_policy_is_offered_and_sampled_by_the_search_space(throwaway):
    space = SearchSpace.from_dict({"policy": [throwaway, "snapkv"], "layer_allocation": ["uniform"],
                                   "head_allocation": ["uniform"]})
    assert space.params == {f"policy.{throwaway}.exponent": (0.5, 2.0), f"policy.{throwaway}.reduce": ("none", "mean")}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_policies, seen_reduce = set(), set()
    for _ in range(40):
        trial = study.ask()
        config = space.suggest(trial)
        study.tell(trial, 0.0)
        seen_policies.add(config.policy)
        mine = config.policy == throwaway
        assert (f"policy.{throwaway}.exponent" in trial.params) == mine
        assert "scoring" in trial.params  # it says it is scored by chosen queries, so scoring is searched
        if mine:
            assert 0.5 <= config.policy_params["exponent"] <= 2.0
            assert config.policy_params["exponent"] == trial.params[f"policy.{throwaway}.exponent"]
            seen_reduce.add(config.policy_params["reduce"])
            assert config.policy_params["observation_window"] == 8  # declared without a search range
    assert seen_policies == {throwaway, "snapkv"} and seen_reduce == {"none", "mean"}
    narrowed = SearchSpace.from_dict({"policy": [throwaway], "params": {f"policy.{throwaway}.exponent": [3.0]}})
    assert narrowed.params[f"policy.{throwaway}.exponent"] == (3.0,)
    with pytest.raises(SearchSpaceError, match=r"exponent: 5.0: must be in \[0.5, 4\]"):
        SearchSpace.from_dict({"policy": [throwaway], "params": {f"policy.{throwaway}.exponent": [1.0, 5.0]}})


def test_throwaway_policy_passes_the_exactness_matrix(throwaway, tiny_model):
    from tests.engine.exactness import assert_exact_in_every_mode

    assert_exact_in_every_mode(tiny_model, throwaway)
    assert_exact_in_every_mode(tiny_model, throwaway, {"exponent": 2.0, "reduce": "mean"})


def test_throwaway_policy_compresses_to_its_budget(throwaway, tiny_model):
    import torch

    from kvpilot.cache.managed import ManagedCache
    from kvpilot.engine.generation import prefill

    cache = ManagedCache.for_model(tiny_model, KVConfig(policy=throwaway, budget=40))
    with torch.inference_mode():
        prefill(tiny_model, cache, list(range(3, 123)))
    assert cache.kept_tokens() == [[40, 40]] * 4 and cache.policy.observation_window == 8


def test_unregistered_policy_is_unknown_again():
    assert SharpenedMass.name not in POLICY_REGISTRY
    with pytest.raises(KVConfigError, match="policy='throwaway_sharpened': not allowed; allowed values: "):
        KVConfig.parse({"policy": SharpenedMass.name})
    with pytest.raises(SearchSpaceError, match=r"\['throwaway_sharpened'\] not allowed"):
        SearchSpace(policy=(SharpenedMass.name,))


# ----- the generic types -----------------------------------------------------------------------------------


def test_registry_rejects_mistakes_and_lists_names_on_a_miss():
    with pytest.raises(UnknownPluginError, match=r"unknown policy 'lru'; known: .*snapkv"):
        POLICY_REGISTRY.get("lru")
    with pytest.raises(ValueError, match="already registered"):
        POLICY_REGISTRY.register(POLICY_REGISTRY.get("snapkv"))

    class NotADataclass(Policy):
        name = "nope"

    with pytest.raises(TypeError, match="@dataclass"):
        POLICY_REGISTRY.register(NotADataclass)
    with pytest.raises(TypeError, match="must subclass"):
        LAYER_ALLOCATORS.register(POLICY_REGISTRY.get("snapkv"))  # type: ignore[arg-type]
    assert "snapkv" in POLICY_REGISTRY and len(POLICY_REGISTRY) == len(POLICY_REGISTRY.names())
    assert sorted(POLICY_REGISTRY) == sorted(spec.name for spec in POLICY_REGISTRY.specs())


def test_param_validation_messages():
    p = Param("k", int, 5, low=1, high=63, check=lambda v: None if v % 2 else "must be odd")
    assert p.validate(7) == 7
    for bad, message in ((0, r"must be in \[1, 63\]"), (4, "must be odd"), ("x", "expected int")):
        with pytest.raises(ParamError, match=message):
            p.validate(bad)
    layers = Param("budgets", list[int], low=1, per_layer=True)
    assert layers.required and layers.allowed() == "list[int] in [1, inf], one per layer"
    with pytest.raises(ParamError, match="one value per layer"):
        layers.validate([])
    assert layers.schema()["items"]["minimum"] == 1


def test_every_builtin_declares_what_the_docs_and_the_tuner_read():
    for registry in (POLICY_REGISTRY, LAYER_ALLOCATORS, HEAD_ALLOCATORS, TTL_RULES):
        for spec in registry.specs():
            assert spec.description, spec
            for p in spec.params():
                assert p.description, (spec.name, p.name)
                if not p.required:
                    assert p.validate(p.default) == p.default
    assert {s.name: s.stats for s in POLICY_REGISTRY.specs()} == {
        "expected_attention": "queries", "full": "none", "h2o": "accumulated", "knorm": "none",
        "random": "none", "snapkv": "scoring", "streaming": "none", "tova": "scoring", "keydiff": "none",
        "kvzip": "scoring", "surrogate": "none"}


def test_legacy_names_are_the_old_flat_fields():
    from kvpilot.config import LEGACY_DEFAULTS, SLOTS

    declared = {p.legacy for s in SLOTS for spec in s.registry.specs() for p in spec.params() if p.legacy}
    assert declared == set(LEGACY_DEFAULTS)


def test_specs_import_without_torch():
    code = ("import sys\nimport kvpilot.config, kvpilot.policies, kvpilot.tuner.space\n"
            "from kvpilot.config import KVConfig\nKVConfig.json_schema()\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
