"""The tuner's space searches EpiCache episodes only where they apply (a prompt-scored policy)."""

from __future__ import annotations

import optuna
import pytest

from kvpilot.tuner.space import SearchSpace, SearchSpaceError, config_from_params


def _configs(space: SearchSpace, n: int = 40) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, space.suggest(trial)))
        study.tell(trial, 0.0)
    return out


def test_episodes_are_searched_only_with_prompt_scoring():
    space = SearchSpace(policy=("kvzip", "knorm"), scoring=("window", "prompt"), episodes=(1, 4),
                        fixed={"episode_params": {"window": 3}})
    seen = set()
    for trial, config in _configs(space):
        prompt_scored = config.policy == "kvzip" and config.scoring == "prompt"
        assert ("episodes" in trial.params) == prompt_scored
        assert config.episodes == trial.params.get("episodes", 1)
        assert config.episode_params["window"] == 3
        assert config_from_params(trial.params).episodes == config.episodes
        seen.add(config.episodes)
    assert seen == {1, 4}


def test_the_default_space_does_not_search_episodes():
    for trial, config in _configs(SearchSpace(), 10):
        assert "episodes" not in trial.params and config.episodes == 1


@pytest.mark.parametrize("bad", [(0,), (1, 64), ()])
def test_bad_episode_counts_are_one_clear_error(bad):
    with pytest.raises(SearchSpaceError, match="episodes"):
        SearchSpace(episodes=bad)


def test_a_space_file_reads_episodes():
    space = SearchSpace.from_dict({"policy": ["kvzip"], "scoring": ["prompt"], "episodes": [2, 4]})
    assert space.episodes == (2, 4) and space.to_dict()["episodes"] == [2, 4]
