"""The canary decision: promote a canary config or roll it back, on shadow fidelity, errors and latency.

A canary (`kvpilot push --canary F`, `kvpilot.storage.canary`) serves a fraction of requests next to the
incumbent; the shadow fidelity probe (`kvpilot.evaluation.shadow`) measures sampled answers of both
against the full cache and tags each measurement with the version that served it. `CanaryJudge` reads
both arms from the store and applies `decide`:

- Fidelity, a Wald sequential probability ratio test (SPRT) on the canary's per-answer disagreement
  d = 1 - top-1 agreement (a share in [0, 1], used as a fractional Bernoulli outcome). With b the
  incumbent's disagreement (one minus the upper end of its 95 % Wilson interval, so an incumbent
  measured on few answers makes the test stricter), H0 "acceptable": d = b + tolerance, against H1
  "harmful": d = b + harm. The log-likelihood ratio over the canary's n answers is
  LLR = sum(d_i log(p1/p0) + (1 - d_i) log((1-p1)/(1-p0))); it rolls back at LLR >= log((1-alpha)/beta)
  and may promote at LLR <= log(alpha/(1-beta)), where alpha is the chance of promoting a harmful canary
  and beta the chance of rolling back an acceptable one. The SPRT may be looked at after every answer.
- Errors, the same SPRT on failed requests (1 per failure): H0 the incumbent's error rate plus a fifth
  of `error_margin`, H1 plus `error_margin`; crossing the upper threshold rolls back.
- Latency, checked once, when fidelity says promote: a one-sided Mann-Whitney U test of the canary's
  end-to-end latencies against the incumbent's; a canary whose median is more than `latency_margin`
  slower with p < `latency_alpha` is rolled back instead.
- Any engine's rejection of the canary (its dry run failed, or `max_failures` requests failed in a row)
  rolls it back at once; so does a change of the active version by hand (the comparison no longer holds).
- Still undecided after `max_measurements` canary answers: rolled back (a truncated SPRT keeps the
  incumbent). Every `report_every` canary requests without a decision, a `canary_undecided` event.

Every decision goes to the store with its figures (`Store.finish_canary`): requests and measured answers
per arm, agreement with its Wilson interval, KL, error rate, latency percentiles, the LLRs, thresholds
and the latency test's p. Decisions run in a control-plane process, `kvpilot canary watch` (a loop over
the running canaries; `Store.finish_canary` decides once, so two judges do no harm).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from kvpilot.evaluation.intervals import wilson_interval

log = logging.getLogger(__name__)

OUTCOMES = ("promote", "rollback", "continue")


@dataclass(frozen=True)
class CanaryRule:
    """The decision's parameters (defaults documented in README, "Canary rollouts")."""

    tolerance: float = 0.02  # top-1 agreement a canary may lose and still be acceptable (H0)
    harm: float = 0.10  # agreement loss that is harmful (H1)
    alpha: float = 0.05  # chance of promoting a harmful canary
    beta: float = 0.10  # chance of rolling back an acceptable canary
    error_margin: float = 0.05  # extra error rate that is harmful
    latency_margin: float = 0.25  # the canary's median latency may exceed the incumbent's by this share
    latency_alpha: float = 0.05
    min_measurements: int = 10  # canary answers measured before a promotion
    min_baseline: int = 10  # incumbent answers measured before any fidelity decision
    max_measurements: int = 200  # canary answers after which an undecided canary is rolled back
    report_every: int = 25  # a `canary_undecided` event every N canary requests while undecided

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.tolerance < self.harm < 1:
            problems.append(f"need 0 <= tolerance < harm < 1, got tolerance={self.tolerance}, harm={self.harm}")
        for name in ("alpha", "beta", "latency_alpha"):
            if not 0 < getattr(self, name) < 0.5:
                problems.append(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        if not 0 < self.error_margin < 1 or self.latency_margin < 0:
            problems.append("error_margin must be in (0, 1) and latency_margin >= 0")
        if min(self.min_measurements, self.min_baseline, self.report_every) < 1 or \
                self.max_measurements < self.min_measurements:
            problems.append("min_measurements, min_baseline, report_every >= 1 and max_measurements >= min_measurements")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def rollback_at(self) -> float:
        """The SPRT's upper threshold: LLR at or above it rolls back."""
        return math.log((1 - self.alpha) / self.beta)

    @property
    def promote_at(self) -> float:
        """The SPRT's lower threshold: fidelity LLR at or below it allows a promotion."""
        return math.log(self.alpha / (1 - self.beta))


def sprt_llr(outcomes: list[float], p0: float, p1: float) -> float:
    """Wald's log-likelihood ratio of H1 (rate p1) against H0 (rate p0) for outcomes in [0, 1]
    (1: the bad outcome; a share counts fractionally)."""
    if not 0 < p0 < p1 < 1:
        raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
    up, down = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    return sum(x * up + (1 - x) * down for x in outcomes)


@dataclass(frozen=True)
class Decision:
    outcome: str  # promote | rollback | continue
    reason: str
    figures: dict[str, Any]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def arm_figures(arm: Any) -> dict[str, Any]:
    """One arm's figures (an `ArmData`): counts, agreement with its 95 % Wilson interval, KL, errors, latency."""
    n = len(arm.agreement)
    mean = sum(arm.agreement) / n if n else None
    ci = wilson_interval(min(n, round(mean * n)), n) if mean is not None else None
    p50, p95 = _percentile(arm.latency_s, 0.5), _percentile(arm.latency_s, 0.95)
    return {
        "version": arm.version, "requests": arm.requests, "errors": arm.errors,
        "error_rate": arm.errors / arm.requests if arm.requests else None,
        "measured": n, "agreement": mean, "agreement_ci": list(ci) if ci else None,
        "kl": sum(arm.kl) / len(arm.kl) if arm.kl else None,
        "latency_p50_ms": None if p50 is None else 1000 * p50, "latency_p95_ms": None if p95 is None else 1000 * p95,
        "rejected": list(arm.rejected),
    }


def decide(canary: Any, incumbent: Any, rule: CanaryRule) -> Decision:
    """The decision for one canary from both arms' `ArmData` (see the module docstring)."""
    c, b = arm_figures(canary), arm_figures(incumbent)
    figures: dict[str, Any] = {"canary": c, "incumbent": b, "rule": asdict(rule),
                               "thresholds": {"rollback_at": rule.rollback_at, "promote_at": rule.promote_at}}
    if canary.rejected:
        return Decision("rollback", f"rejected by an engine: {canary.rejected[0]}", figures)

    # errors: the SPRT's upper side only
    base_err = incumbent.errors / incumbent.requests if incumbent.requests else 0.0
    e0 = min(base_err + rule.error_margin / 5, 0.98)
    e1 = min(base_err + rule.error_margin, 0.99)
    outcomes = [1.0] * canary.errors + [0.0] * (canary.requests - canary.errors)
    figures["error_llr"] = err_llr = sprt_llr(outcomes, e0, e1) if e0 < e1 else 0.0
    if err_llr >= rule.rollback_at:
        return Decision("rollback", f"errors: {canary.errors} of {canary.requests} canary requests failed "
                        f"(incumbent {base_err:.1%}); error LLR {err_llr:.2f} >= {rule.rollback_at:.2f}", figures)

    # fidelity
    n, nb = len(canary.agreement), len(incumbent.agreement)
    if nb < rule.min_baseline or n == 0:
        figures["fidelity_llr"] = None
        return _undecided(canary, rule, figures, f"waiting for measurements (canary {n}, incumbent {nb}; the "
                          f"incumbent needs {rule.min_baseline})")
    base_agree_hi = b["agreement_ci"][1]
    base_bad = max(0.0, 1.0 - base_agree_hi)
    p0 = min(base_bad + rule.tolerance, 0.98)
    p0 = max(p0, 1e-3)
    p1 = min(base_bad + rule.harm, 0.99)
    if p1 <= p0:
        p1 = min(p0 + 0.01, 0.995)
    llr = sprt_llr([1.0 - a for a in canary.agreement], p0, p1)
    figures.update(fidelity_llr=llr, p0_disagreement=p0, p1_disagreement=p1)
    summary = (f"canary agreement {_pct(c['agreement'])} [{_pct(c['agreement_ci'][0])}, {_pct(c['agreement_ci'][1])}]"
               f" on {n} answers vs incumbent {_pct(b['agreement'])} on {nb}; LLR {llr:.2f}")
    if llr >= rule.rollback_at:
        return Decision("rollback", f"fidelity: {summary} >= {rule.rollback_at:.2f}", figures)
    if llr <= rule.promote_at and n >= rule.min_measurements:
        slower = _latency(canary, incumbent, rule, figures)
        if slower is not None:
            return Decision("rollback", f"latency: {slower}", figures)
        return Decision("promote", f"fidelity: {summary} <= {rule.promote_at:.2f}", figures)
    if n >= rule.max_measurements:
        return Decision("rollback", f"undecided after {n} measured answers ({summary}); the incumbent stays",
                        figures)
    return _undecided(canary, rule, figures, summary)


def _undecided(canary: Any, rule: CanaryRule, figures: dict[str, Any], why: str) -> Decision:
    return Decision("continue", f"undecided after {canary.requests} canary requests: {why}", figures)


def _latency(canary: Any, incumbent: Any, rule: CanaryRule, figures: dict[str, Any]) -> str | None:
    """None when the canary is not significantly slower by more than the margin, else why it is."""
    a, b = canary.latency_s, incumbent.latency_s
    if len(a) < 5 or len(b) < 5:
        figures["latency_p"] = None
        return None
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(a, b, alternative="greater").pvalue)
    ma, mb = _percentile(a, 0.5), _percentile(b, 0.5)
    assert ma is not None and mb is not None
    ratio = ma / mb if mb > 0 else math.inf
    figures.update(latency_p=p, latency_ratio=ratio)
    if ratio > 1 + rule.latency_margin and p < rule.latency_alpha:
        return (f"canary median {1000 * ma:.0f} ms vs incumbent {1000 * mb:.0f} ms ({ratio - 1:+.0%}, more than "
                f"{rule.latency_margin:.0%}; Mann-Whitney p = {p:.3g})")
    return None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


class CanaryJudge:
    """The control plane's canary loop: decide every running canary (of one deployment, or all).

    `check_once()` decides each running canary once and returns the decisions; `watch()` repeats it every
    `poll_s` seconds until `stop()`."""

    def __init__(self, store: Any, deployment: str | None = None, rule: CanaryRule | None = None, *,
                 by: str = "canary-judge") -> None:
        self.store = store
        self.deployment = deployment
        self.rule = rule or CanaryRule()
        self.by = by
        self._reported: dict[int, int] = {}  # canary id -> the last `report_every` multiple reported
        self._stop = threading.Event()

    def judge(self, canary: Any) -> Decision:
        """Decide one running canary (an `kvpilot.storage.CanaryInfo`) and record the decision."""
        active = self.store.active_version(canary.deployment)
        arms = self.store.canary_arms(canary)
        can, inc = arms[canary.version], arms[canary.baseline_version]
        if active is None or active.version != canary.baseline_version:
            now = None if active is None else active.version
            d = Decision("rollback", f"the active version changed by hand (v{canary.baseline_version} -> v{now}) "
                         "while the canary ran; its comparison no longer holds", {
                             "canary": arm_figures(can), "incumbent": arm_figures(inc)})
        else:
            d = decide(can, inc, self.rule)
        if d.outcome == "continue":
            step = can.requests // self.rule.report_every
            if step > self._reported.get(canary.id, 0):
                self._reported[canary.id] = step
                self.store.canary_event(canary, "canary_undecided", {"reason": d.reason, **d.figures})
            return d
        done = self.store.finish_canary(canary.id, d.outcome, d.reason, d.figures, by=self.by)
        if done is not None:
            log.warning("%s: canary version %s %s: %s", canary.deployment, canary.version,
                        "promoted" if d.outcome == "promote" else "rolled back", d.reason)
        return d

    def check_once(self) -> list[tuple[Any, Decision]]:
        """Decide every running canary once: [(canary, decision)]."""
        out = []
        for canary in self.store.canaries(self.deployment, running=True):
            try:
                out.append((canary, self.judge(canary)))
            except Exception:  # one canary's failure must not stop the others' decisions
                log.exception("canary %s of %s: decision failed", canary.version, canary.deployment)
        return out

    def watch(self, poll_s: float = 5.0, *, on_decision: Any = None) -> None:
        """Repeat `check_once` every `poll_s` seconds until `stop()`; `on_decision(canary, decision)` per decision."""
        while not self._stop.is_set():
            try:
                for canary, d in self.check_once():
                    if on_decision is not None:
                        on_decision(canary, d)
            except Exception:  # the store is down: try again next poll
                log.exception("canary judge: check failed")
            self._stop.wait(poll_s)

    def stop(self) -> None:
        self._stop.set()

    def wait_decided(self, canary_id: int, timeout_s: float, poll_s: float = 1.0) -> Any:
        """Check until canary `canary_id` is decided or `timeout_s` passes; its CanaryInfo (maybe still running)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_once()
            info = next((c for c in self.store.canaries(self.deployment) if c.id == canary_id), None)
            if info is None or not info.running or time.monotonic() >= deadline:
                return info
            time.sleep(poll_s)
