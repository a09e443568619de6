"""The canary decision: the SPRT rule on figures, then the whole loop on the bundled model and a real store
(a lossy canary is rolled back, a faithful one promoted, each decision an event with its figures)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from kvpilot.attach import attach
from kvpilot.config import KVConfig
from kvpilot.engine import Engine
from kvpilot.engine.engine import Request
from kvpilot.evaluation.canary import CanaryJudge, CanaryRule, decide, sprt_llr
from kvpilot.storage import ArmData


def _arm(version, agreement=(), requests=None, errors=0, latency=()):
    return ArmData(version, agreement=list(agreement), kl=[0.0] * len(agreement), latency_s=list(latency),
                   requests=len(agreement) if requests is None else requests, errors=errors)


def test_sprt_llr_is_walds():
    assert sprt_llr([1.0], 0.1, 0.3) == pytest.approx(math.log(3))
    assert sprt_llr([0.0, 0.5], 0.1, 0.3) == pytest.approx(math.log(0.7 / 0.9) + 0.5 * math.log(3) + 0.5 * math.log(0.7 / 0.9))
    with pytest.raises(ValueError):
        sprt_llr([1.0], 0.3, 0.1)


def test_lossy_canary_is_rolled_back_and_faithful_one_promoted():
    rule = CanaryRule()
    incumbent = _arm(1, [1.0] * 40, latency=[0.5] * 40)
    lossy = decide(_arm(2, [0.6, 0.55, 0.7, 0.5], latency=[0.4] * 4), incumbent, rule)
    assert lossy.outcome == "rollback" and lossy.reason.startswith("fidelity:")
    assert lossy.figures["fidelity_llr"] >= rule.rollback_at
    assert lossy.figures["canary"]["measured"] == 4 and lossy.figures["incumbent"]["measured"] == 40
    lo, hi = lossy.figures["canary"]["agreement_ci"]
    assert lo < lossy.figures["canary"]["agreement"] < hi

    few = decide(_arm(2, [1.0] * 5, latency=[0.5] * 5), incumbent, rule)
    assert few.outcome == "continue"  # not enough evidence yet
    many = decide(_arm(2, [1.0] * 40, latency=[0.5] * 40), incumbent, rule)
    assert many.outcome == "promote" and many.figures["fidelity_llr"] <= rule.promote_at
    # one answer in ten losing a quarter of its tokens is within tolerance of a perfect incumbent? no: 2.5 % loss
    # is above the 2 % tolerance but below the 10 % harm, so the SPRT needs more answers either way
    edge = decide(_arm(2, ([1.0] * 9 + [0.75]) * 2, latency=[0.5] * 20), incumbent, rule)
    assert edge.outcome == "continue"


def test_errors_latency_rejections_and_truncation():
    rule = CanaryRule()
    incumbent = _arm(1, [1.0] * 40, requests=100, latency=[0.5] * 40)
    failing = decide(_arm(2, [1.0] * 3, requests=6, errors=3), incumbent, rule)
    assert failing.outcome == "rollback" and failing.reason.startswith("errors: 3 of 6")
    slow = decide(_arm(2, [1.0] * 40, latency=[1.0 + i / 100 for i in range(40)]), incumbent, rule)
    assert slow.outcome == "rollback" and slow.reason.startswith("latency:") and slow.figures["latency_p"] < 0.05
    rejected = _arm(2, [1.0] * 40)
    rejected.rejected.append("e0: canary: dry run failed")
    assert decide(rejected, incumbent, rule).reason == "rejected by an engine: e0: canary: dry run failed"
    short = CanaryRule(max_measurements=20)
    stuck = decide(_arm(2, [0.94] * 20), incumbent, short)  # between tolerance and harm: no verdict in 20
    assert stuck.outcome == "rollback" and stuck.reason.startswith("undecided after 20 measured answers")
    with pytest.raises(ValueError, match="tolerance < harm"):
        CanaryRule(tolerance=0.2, harm=0.1)


# ----- on the bundled model ------------------------------------------------------------------------------

FAST = CanaryRule(alpha=0.2, beta=0.2, min_measurements=6, min_baseline=3, report_every=2)


def _requests(engine, n):
    """Small conversations, four questions each (one shadow measurement per answer)."""
    from kvpilot.engine.prompts import chat_parts

    out = []
    for i in range(n):
        context = (f"Maya met Tom in Porto on day {i + 3}. Maya's dog is called Biscuit{i}. Tom works as a baker. "
                   f"They plan to visit Lisbon in {['May', 'June', 'July'][i % 3]}. Tom's sister is Ana.")
        questions = [("What is Maya's dog called?", "Maya's dog is called"), ("Where did Maya meet Tom?", "In"),
                     ("What is Tom's job?", "Tom is a"), ("Who is Tom's sister?", "Tom's sister is")]
        parts = [chat_parts(engine.tokenizer, context, q, p) for q, p in questions]
        out.append(Request(parts[0].context_ids, [p.question_ids for p in parts], 6))
    return out


def _serve_until_decided(handle, judge, store, canary, requests, limit):
    served = 0
    while served < limit:
        handle.serve(requests[served % len(requests)])
        served += 1
        assert handle.shadow.join(300)
        handle.flush(30)
        judge.check_once()
        info = next(c for c in store.canaries("chat") if c.id == canary.id)
        if not info.running:
            return info, served
    return info, served


def test_canary_on_the_bundled_model(bundled_engine, store, tmp_path):
    engine = Engine(bundled_engine.model, bundled_engine.tokenizer)
    store.push("chat", KVConfig())
    handle = attach(engine, store, "chat", probes=["latency"], otel=False, poll_s=3600, instance="e0",
                    spool_dir=tmp_path, shadow_fidelity=1.0, flush_interval_s=0.1)
    # fidelity decides here: on a shared 2-core machine the prompt-scored canary's latency can exceed the
    # incumbent's by more than the default 25 % (1.28 seen under load 4.7), which the unit tests cover
    judge = CanaryJudge(store, "chat", replace(FAST, latency_margin=1.0))
    requests = _requests(engine, 4)
    try:
        handle.shadow._random.seed(0)
        lossy = store.start_canary("chat", KVConfig(policy="streaming", compression_ratio=0.9), 0.5, seed=3)
        handle.watcher.check_once()
        info, served = _serve_until_decided(handle, judge, store, lossy, requests, 16)
        assert info.status == "rolled_back", info
        assert info.reason.startswith("fidelity:")
        figures = info.figures
        assert figures["canary"]["agreement"] < figures["incumbent"]["agreement"] == 1.0
        assert figures["fidelity_llr"] >= FAST.rollback_at

        # every request and quality row names the version that served it; the split is the watcher's stream
        rows = store.requests_window(deployment="chat")
        by_version = {v: sum(r.config_version == v for r in rows) for v in (1, 2)}
        assert by_version[1] + by_version[2] == len(rows) == 4 * served
        assert figures["canary"]["requests"] == by_version[2] and figures["incumbent"]["requests"] == by_version[1]
        quality = store.events(deployment="chat", kinds=["quality"])
        assert {e.detail["version"] for e in quality} == {1, 2}
        assert all((e.detail["config"] == "full") == (e.detail["version"] == 1) for e in quality)

        good = store.start_canary("chat", KVConfig(policy="snapkv", budget=1024), 0.5, seed=4)  # keeps everything
        handle.watcher.check_once()
        info, _ = _serve_until_decided(handle, judge, store, good, requests, 24)
        assert info.status == "promoted", info
        assert info.figures["canary"]["agreement"] == 1.0 and info.figures["fidelity_llr"] <= FAST.promote_at
        handle.watcher.check_once()  # the promoted version becomes the engine's config at its next request
        assert handle.watcher.version == good.version and handle.watcher.canary is None
        handle.serve(requests[0])
        handle.flush(30)
        assert engine.config.policy == "snapkv"
        assert {r.config_version for r in store.requests_window(deployment="chat", limit=4)} == {good.version}
    finally:
        handle.detach()
    events = store.canary_events("chat")
    kinds = [e["kind"] for e in reversed(events)]
    assert kinds[0] == "canary_started" and kinds[-1] == "canary_promoted" and "canary_rolled_back" in kinds
    assert "canary_undecided" in kinds  # the good canary needed several requests, reported every 2
    undecided = next(e for e in events if e["kind"] == "canary_undecided")
    assert undecided["detail"]["canary"]["requests"] >= 2 and "incumbent" in undecided["detail"]
    promoted = events[0]["detail"]
    assert promoted["canary"]["measured"] >= FAST.min_measurements and promoted["thresholds"]["promote_at"] < 0
