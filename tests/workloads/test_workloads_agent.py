"""Agent-session traces: arrival statistics, tool durations, program structure, JSONL round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvpilot.workloads import (
    AgentWorkload,
    ToolSpec,
    gamma_arrivals,
    generate_agent_trace,
    programs,
    read_trace,
    write_trace,
)
from kvpilot.workloads.distributions import (
    Categorical,
    Fixed,
    Gamma,
    Geometric,
    LogNormal,
    Zipf,
    dist_from_dict,
)


@pytest.mark.parametrize(("rate", "cv"), [(2.0, 1.0), (0.5, 3.0), (10.0, 0.5)])
def test_gamma_interarrivals_match_rate_and_cv(rate, cv):
    gaps = np.diff(gamma_arrivals(np.random.default_rng(0), 200_000, rate, cv))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


@pytest.fixture(scope="module")
def big_trace():
    return generate_agent_trace(AgentWorkload(n_programs=20_000, rate=4.0, cv=2.5), seed=3)


def test_program_arrivals_match_requested_statistics(big_trace):
    starts = np.sort([e.arrival_s for e in big_trace if e.turn == 0])
    gaps = np.diff(starts)
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(2.5, rel=0.08)


def test_tool_durations_follow_their_own_distributions(big_trace):
    wl = AgentWorkload()
    for tool in wl.tools:
        d = np.array([e.tool_duration_s for e in big_trace if e.tool == tool.name])
        assert len(d) > 5000
        assert d.mean() == pytest.approx(tool.duration_s.mean, rel=0.08)
    means = {t.name: t.duration_s.mean for t in wl.tools}
    assert len(set(means.values())) == len(means)  # tools differ, which is what a TTL policy must learn


def test_program_structure(big_trace):
    grouped = programs(big_trace)
    assert len(grouped) == 20_000
    turns = np.array([len(v) for v in grouped.values()])
    assert turns.min() >= 2 and turns.mean() == pytest.approx(5, rel=0.05)
    for events in list(grouped.values())[:2000]:
        for prev, cur in zip(events, events[1:], strict=False):
            assert prev.tool is not None and prev.tool_duration_s > 0
            assert cur.arrival_s == pytest.approx(prev.arrival_s + prev.tool_duration_s, abs=1e-5)
            grown = prev.prompt_tokens + prev.response_tokens + cur.new_tokens
            assert cur.prompt_tokens == min(grown, 32768)
        assert events[-1].tool is None and events[-1].tool_duration_s == 0.0
        assert events[0].new_tokens == events[0].prompt_tokens


def test_lengths_are_long_tailed(big_trace):
    first = np.array([e.prompt_tokens for e in big_trace if e.turn == 0])
    resp = np.array([e.response_tokens for e in big_trace])
    for x in (first, resp):
        assert x.mean() > 1.3 * np.median(x)  # right-skewed
        assert np.percentile(x, 99) > 5 * np.median(x)


def test_trace_is_ordered_and_deterministic(big_trace):
    arrivals = [e.arrival_s for e in big_trace]
    assert arrivals == sorted(arrivals)
    small = AgentWorkload(n_programs=50)
    assert generate_agent_trace(small, seed=1) == generate_agent_trace(small, seed=1)
    assert generate_agent_trace(small, seed=1) != generate_agent_trace(small, seed=2)


def test_trace_round_trip(tmp_path):
    events = generate_agent_trace(AgentWorkload(n_programs=300, rate=1.0, cv=1.5), seed=0)
    path = tmp_path / "trace.jsonl"
    write_trace(events, path)
    assert read_trace(path) == events
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {
        "program_id",
        "turn",
        "n_turns",
        "arrival_s",
        "prompt_tokens",
        "new_tokens",
        "response_tokens",
        "tool",
        "tool_duration_s",
    }


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.pop("tool"), "missing field 'tool'"),
        (lambda d: d.update(turn="1"), "'turn' has the wrong type"),
        (lambda d: d.update(turn=99), "turn must be"),
        (lambda d: d.update(tool_duration_s=-1.0), "times"),
    ],
)
def test_bad_trace_line_names_the_line(tmp_path, edit, reason):
    events = generate_agent_trace(AgentWorkload(n_programs=3), seed=0)
    path = tmp_path / "bad.jsonl"
    write_trace(events, path)
    lines = path.read_text().splitlines()
    obj = json.loads(lines[1])
    edit(obj)
    lines[1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"line 2: .*{reason}"):
        read_trace(path)


def test_custom_tools_and_turns():
    wl = AgentWorkload(
        n_programs=200,
        turns=Categorical((3.0,), (1.0,)),
        tools=(ToolSpec("only_tool", Fixed(2.0), Fixed(10)),),
        prompt_tokens=Fixed(100),
        response_tokens=Fixed(5),
    )
    grouped = programs(generate_agent_trace(wl, seed=0))
    for events in grouped.values():
        assert [e.prompt_tokens for e in events] == [100, 115, 130]
        assert [e.tool for e in events] == ["only_tool", "only_tool", None]


@pytest.mark.parametrize(
    "dist",
    [
        Fixed(3),
        Gamma(2.0, 3.0),
        LogNormal(5.0, 1.0, low=1),
        Zipf(1.2, 64, 8192),
        Geometric(5, 2, 40),
        Categorical((1.0, 2.0), (0.5, 0.5)),
    ],
)
def test_distributions_round_trip_and_means(dist):
    assert dist_from_dict(json.loads(json.dumps(dist.to_dict()))) == dist
    x = dist.sample(np.random.default_rng(0), 200_000)
    if not isinstance(dist, (LogNormal, Geometric)):  # those two are clipped, so only roughly
        assert x.mean() == pytest.approx(dist.mean, rel=0.03)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError):
        AgentWorkload(rate=0)
    with pytest.raises(ValueError):
        Gamma(1.0, 0.0)
    with pytest.raises(ValueError, match="unknown distribution"):
        dist_from_dict({"kind": "pareto"})
