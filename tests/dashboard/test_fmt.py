"""How the dashboard writes values (units, times, escaped stored text) and picks its defaults (which versions a
diff compares, which deployment it opens on): the pure functions behind the pages."""

from __future__ import annotations

import time

import pytest

from kvpilot.dashboard import fmt
from kvpilot.dashboard.context import most_recent
from kvpilot.dashboard.views.configs import diff_defaults
from kvpilot.storage import ConfigVersionInfo, DeploymentInfo, InstanceInfo


@pytest.mark.parametrize(("seconds", "shown"), [(0.0704, "70.4 ms"), (10.7789, "10.8 s"), (2.5, "2.50 s"),
                                                 (600, "10.0 min"), (None, "-")])
def test_durations_read_at_a_glance(seconds, shown):
    assert fmt.duration(seconds) == shown


def test_values_carry_their_units():
    assert fmt.human_bytes(1_581_004_800) == "1.5 GiB"
    assert fmt.value("kv_bytes", 3 * 2**20) == "3.0 MiB"
    assert fmt.value("accuracy", 1 / 6) == "16.7 %"
    assert fmt.value("ttft_s", 0.25) == "250.0 ms"
    assert fmt.detail({"pool_bytes": 2**21, "reason": "x"}) == "pool_bytes 2.0 MiB, reason x"
    assert fmt.rows({"a": {"b": 1}, "c": None}) == [{"field": "a.b", "value": "1"}, {"field": "c", "value": "-"}]
    assert fmt.value("head_allocation_params", {}) == "-" and fmt.value("layers", [1, 2]) == "[1, 2]"  # no bare {}
    assert fmt.when(0) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(0))  # 24-hour


def test_stored_text_is_escaped_for_markdown():
    shown = fmt.md("[x](https://e.example) **b** <i>")
    assert "[" not in shown.replace("\\[", "") and "](" not in shown and "https:" not in shown
    assert shown.replace("\\", "") == "[x](https://e.example) **b** <i>"  # the same characters, as typed
    assert fmt.code("a`b") == "``a`b``"


def _v(version: int, parent: int | None, active: bool = False) -> ConfigVersionInfo:
    return ConfigVersionInfo(deployment="d", version=version, config_hash="h", config_json="{}", created_at=0.0,
                             pushed_by=None, source=None, parent_version=parent, active=active)


def test_diff_never_compares_a_version_with_itself():
    one = [_v(1, None, True)]
    assert diff_defaults(one, one[0]) == (1, 1)  # a single version: the page says so and shows no diff
    two = [_v(1, None, True), _v(2, 1)]
    assert diff_defaults(two, two[0]) == (2, 1)  # v1 active (rolled back): v2 against it
    assert diff_defaults([_v(1, None), _v(2, 1, True)], None) == (2, 1)
    three = [_v(1, None), _v(2, 1), _v(3, None, True)]
    assert diff_defaults(three, three[2]) == (3, 2)  # no parent recorded: the version before


def test_opens_on_the_newest_samples_then_the_newest_engine():
    deps = [DeploymentInfo(1, "aaa", None, 30.0, 1), DeploymentInfo(2, "demo", None, 10.0, 1),
            DeploymentInfo(3, "idle", None, 20.0, None)]
    insts = [InstanceInfo(1, "demo", "e", None, None, 0.0, 15.0, None, False),
             InstanceInfo(2, "idle", "e", None, None, 0.0, 25.0, None, False)]
    assert most_recent(deps, insts, {"demo": 12.0}) == "demo"
    assert most_recent(deps, insts, {}) == "idle"  # no samples anywhere: the engine that reported last
    assert most_recent(deps, [], {}) == "aaa"


def test_a_trial_that_fails_a_constraint_is_not_called_dominated():
    import optuna
    from optuna.distributions import FloatDistribution

    from kvpilot.dashboard.tuning import trial_rows

    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"compression_ratio": FloatDistribution(0.5, 0.9)}
    for ratio, values, violation in [(0.5, [1.0, 9.0], 0.0), (0.9, [0.2, 4.0], 0.8)]:
        study.add_trial(optuna.trial.create_trial(params={"compression_ratio": ratio}, distributions=dist,
                                                  values=values, system_attrs={"constraints": [violation]}))
    rows = trial_rows(study)
    assert [(r["pareto"], r["feasible"]) for r in rows] == [(True, True), (False, False)]
