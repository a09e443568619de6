"""The layer-sensitivity profiler: one value per layer per method, stored, usable as a KVConfig."""

from __future__ import annotations

import math

import pytest
import torch

from kvpilot.config import KVConfig
from kvpilot.evaluation.sensitivity import (
    CalibrationSample,
    ablation_profile,
    block_mask,
    key_cosine_profile,
    kl_divergence,
    profile_layers,
    save_profile,
)
from tests.probes.conftest import ids


@pytest.fixture(scope="module")
def samples():
    return [CalibrationSample(ids(160, 1), ids(4, 50)), CalibrationSample(ids(150, 9))]


def test_one_value_per_layer(tiny_model, samples, store):
    profiles = profile_layers(tiny_model, samples, block=48, sink=4, window=20, continuation=4,
                              compression_ratio=0.75)
    assert set(profiles) == {"ablation_kl", "key_cosine", "retained_mass"}
    for prof in profiles.values():
        assert len(prof.values) == tiny_model.config.num_hidden_layers
        assert all(math.isfinite(v) and v >= 0 for v in prof.values)
    kc = profiles["key_cosine"]
    assert kc.values[0] == pytest.approx(0.0, abs=1e-5)  # layer 0 keys depend on the token alone (EpiCache)
    assert max(kc.values) > 0
    assert all(v > 0 for v in profiles["ablation_kl"].values)
    cfg = profiles["ablation_kl"].as_config(KVConfig(policy="snapkv", compression_ratio=0.5))
    cfg.validate_for_model(4, 2, 4)
    assert cfg.layer_allocation == "sensitivity" and cfg.layer_allocation_params["profile"] == profiles["ablation_kl"].values
    pid = save_profile(store, "tiny", profiles["ablation_kl"])
    saved = store.latest_profile("tiny", "ablation_kl")
    assert saved.id == pid and saved.values == pytest.approx(profiles["ablation_kl"].values)
    assert saved.meta["policy"] == "snapkv"


def test_ablation_without_compression_is_zero(tiny_model, samples):
    prof = ablation_profile(tiny_model, samples[:1], compression_ratio=0.0, continuation=3)
    assert prof.values == pytest.approx([0.0] * 4, abs=1e-6)


def test_block_mask_shape():
    m = block_mask(10, sink=1, block=4, overlap=2)
    assert m[9].tolist() == [True, False, False, False, False, False, True, True, True, True]
    assert m[3].tolist() == [True] * 4 + [False] * 6
    assert not m.triu(1).any()


def test_key_cosine_rejects_short_samples(tiny_model):
    with pytest.raises(ValueError, match="block"):
        key_cosine_profile(tiny_model, [CalibrationSample(ids(20))], block=64)


def test_kl_divergence():
    p = torch.tensor([[2.0, 0.0, -1.0]])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-7)
    assert kl_divergence(p, torch.zeros(1, 3)) > 0
