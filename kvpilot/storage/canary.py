"""Canary rollouts in the store: start one, read it, gather each arm's figures, record the decision.

`start_canary` stores a new config version without activating it, plus a `canaries` row (fraction of
requests, seed, the incumbent it is compared with) and a run of kind "canary" that owns the rollout's
events (`canary_started`, `canary_undecided`, then `canary_promoted` or `canary_rolled_back`, each with
its figures). Engines' config watchers read `active_canary` every poll and serve that fraction of their
requests with it. `canary_arms` gathers what the decision needs for both versions (shadow fidelity from
`quality` events, latency and errors from request rows, rejections from acks); `finish_canary` records
the decision in one transaction, and a promotion activates the canary (activation action "promote").
A decision is taken once: a second judge finding the row no longer running records nothing.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvpilot.config import KVConfig
from kvpilot.storage.errors import NotFoundError, RegistryError
from kvpilot.storage.registry import CHANNEL, RegistryStore, _info
from kvpilot.storage.schema import (
    CACHE_EVENTS,
    REQUESTS,
    Canary,
    ConfigAck,
    ConfigVersion,
    Deployment,
    EngineInstance,
    Run,
)
from kvpilot.storage.tabledef import json_safe
from kvpilot.storage.types import ConfigVersionInfo
from kvpilot.vllm_config import VLLMConfig

OUTCOMES = {"promote": "promoted", "rollback": "rolled_back"}


@dataclass(frozen=True)
class CanaryInfo:
    """One canary rollout of a deployment."""

    id: int
    deployment: str
    version: int
    baseline_version: int
    fraction: float
    seed: int
    status: str  # running | promoted | rolled_back
    run_id: int | None
    started_at: float
    decided_at: float | None
    reason: str | None
    figures: dict[str, Any] | None
    config: ConfigVersionInfo | None = None  # the canary's version (with `active_canary`)

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass
class ArmData:
    """What one arm (a config version) did since the canary started."""

    version: int
    agreement: list[float] = field(default_factory=list)  # per measured answer, shadow top-1 agreement
    kl: list[float] = field(default_factory=list)  # per measured answer, mean KL(full || served), nats
    latency_s: list[float] = field(default_factory=list)  # per served request, end to end
    requests: int = 0  # request rows (answers) served
    errors: int = 0  # request rows that failed
    rejected: list[str] = field(default_factory=list)  # engines' rejections of this version: "instance: reason"


def _canary_info(c: Canary, deployment: str, config: ConfigVersionInfo | None = None) -> CanaryInfo:
    return CanaryInfo(c.id, deployment, c.version, c.baseline_version, c.fraction, c.seed, c.status, c.run_id,
                      c.started_at, c.decided_at, c.reason, c.figures, config)


def check_fraction(fraction: float) -> float:
    """The canary's share of requests, strictly between 0 and 1 (RegistryError otherwise)."""
    if not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise RegistryError(f"a canary's fraction of requests must be between 0 and 1 (exclusive), got {fraction!r}; "
                            "e.g. --canary 0.1 serves 10 % of requests with the new version")
    return float(fraction)


class CanaryStore(RegistryStore):
    """Canary methods: start_canary, active_canary, canaries, canary_arms, finish_canary, canary_event."""

    def start_canary(
        self,
        deployment: str,
        config: KVConfig | VLLMConfig | dict[str, Any] | str | bytes,
        fraction: float,
        *,
        seed: int | None = None,
        pushed_by: str | None = None,
        source: str | None = None,
    ) -> CanaryInfo:
        """Push `config` as a new version served to `fraction` of requests next to the active version.

        Refused (RegistryError, nothing stored) without an active version to compare with, or while another
        canary of the deployment is running (checked again under the deployment's row lock once the version
        is stored: two pushes at once leave the loser's version stored, inactive and never served)."""
        fraction = check_fraction(fraction)
        seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
        current = self.active_version(deployment)
        if current is None:
            raise RegistryError(f"deployment {deployment!r} has no active version to compare a canary with; push the "
                                "first config without --canary")
        running = self.active_canary(deployment)
        if running is not None:
            raise RegistryError(f"deployment {deployment!r} already has a canary running (version {running.version}, "
                                f"{running.fraction:.0%} of requests); wait for its decision (`kvpilot canary status "
                                f"-d {deployment}`) or push without --canary to replace the incumbent")
        v = self.push(deployment, config, pushed_by=pushed_by, source=source, activate=False)
        now = time.time()

        def run(s: Session) -> CanaryInfo:
            d = self._deployment_row(s, deployment, lock=True)
            if s.scalar(select(Canary.id).where(Canary.deployment_id == d.id, Canary.status == "running")):
                raise RegistryError(f"deployment {deployment!r} got another canary while this one was pushed; version "
                                    f"{v.version} is stored but not served")
            baseline = d.active_version if d.active_version is not None else current.version
            params = {"version": v.version, "baseline_version": baseline, "fraction": fraction, "seed": seed}
            r = Run(kind="canary", deployment_id=d.id, name=f"canary v{v.version} vs v{baseline}",
                    status="running", started_at=now, config=json_safe(v.config_dict()), params=params)
            s.add(r)
            s.flush()
            c = Canary(deployment_id=d.id, version=v.version, baseline_version=baseline, fraction=fraction,
                       seed=seed, status="running", run_id=r.id, started_at=now)
            s.add(c)
            s.flush()
            s.execute(CACHE_EVENTS.table.insert(), [{
                "ts": now, "run_id": r.id, "instance_id": None, "kind": "canary_started", "count": 1,
                "detail": json_safe({"deployment": deployment, "canary": params, "by": pushed_by})}])
            self._backend.notify(s.connection(), CHANNEL, d.name)
            return _canary_info(c, d.name, v)

        return self._write_orm(run)

    def active_canary(self, deployment: str) -> CanaryInfo | None:
        """The deployment's running canary with its version, or None (also for an unknown deployment).

        One indexed query: the config watcher calls it every poll."""

        def run(s: Session) -> CanaryInfo | None:
            row = s.execute(
                select(Canary, ConfigVersion, Deployment.active_version)
                .join(Deployment, Canary.deployment_id == Deployment.id)
                .join(ConfigVersion, (ConfigVersion.deployment_id == Deployment.id)
                      & (ConfigVersion.version == Canary.version))
                .where(Deployment.name == deployment, Canary.status == "running")
                .order_by(Canary.id.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            c, v, active = row
            return _canary_info(c, deployment, _info(v, deployment, active))

        return self._read_orm(run)

    def canaries(self, deployment: str | None = None, *, running: bool = False, limit: int = 100) -> list[CanaryInfo]:
        """Canaries, newest first (of one deployment, or all; only running ones with `running`)."""

        def run(s: Session) -> list[CanaryInfo]:
            q = select(Canary, Deployment.name).join(Deployment, Canary.deployment_id == Deployment.id)
            if deployment is not None:
                q = q.where(Deployment.name == deployment)
            if running:
                q = q.where(Canary.status == "running")
            q = q.order_by(Canary.id.desc()).limit(limit)
            return [_canary_info(c, name) for c, name in s.execute(q)]

        return self._read_orm(run)

    def canary_arms(self, canary: CanaryInfo) -> dict[int, ArmData]:
        """Both arms' figures since the canary started: {version: ArmData} for the canary and the incumbent.

        Shadow fidelity comes from the deployment's `quality` events whose detail names the version, latency
        and errors from request rows tagged with it, rejections from the engines' acks."""
        arms = {v: ArmData(v) for v in (canary.version, canary.baseline_version)}

        def run(s: Session) -> dict[int, ArmData]:
            d = self._deployment_row(s, canary.deployment)
            ids = list(s.scalars(select(EngineInstance.id).where(EngineInstance.deployment_id == d.id)))
            if ids:
                ev, rq = CACHE_EVENTS.table, REQUESTS.table
                q = select(ev.c.ts, ev.c.detail).where(
                    ev.c.instance_id.in_(ids), ev.c.kind == "quality", ev.c.ts >= canary.started_at)
                for _ts, detail in s.execute(q.order_by(ev.c.ts)):
                    version = (detail or {}).get("version")
                    arm = arms.get(version) if isinstance(version, int) else None
                    if arm is None or detail.get("top1_agreement") is None:
                        continue
                    arm.agreement.append(float(detail["top1_agreement"]))
                    if detail.get("mean_kl") is not None:
                        arm.kl.append(float(detail["mean_kl"]))
                q2 = select(rq.c.config_version, rq.c.e2e_s, rq.c.error).where(
                    rq.c.instance_id.in_(ids), rq.c.ts >= canary.started_at, rq.c.config_version.in_(list(arms)))
                for version, e2e, error in s.execute(q2):
                    arm = arms[version]
                    arm.requests += 1
                    if error is not None:
                        arm.errors += 1
                    elif e2e is not None:
                        arm.latency_s.append(float(e2e))
            acks = s.execute(
                select(ConfigAck.version, ConfigAck.reason, EngineInstance.name)
                .join(EngineInstance, ConfigAck.instance_id == EngineInstance.id)
                .where(ConfigAck.deployment_id == d.id, ConfigAck.status == "rejected",
                       ConfigAck.version == canary.version, ConfigAck.ts >= canary.started_at)
            )
            for version, reason, name in acks:
                arms[version].rejected.append(f"{name}: {reason or 'no reason given'}")
            return arms

        return self._read_orm(run)

    def finish_canary(
        self, canary_id: int, outcome: str, reason: str, figures: dict[str, Any], *, by: str | None = None
    ) -> CanaryInfo | None:
        """Record the decision (`outcome`: "promote" or "rollback") with its figures: the canary row, its run,
        a `canary_promoted` / `canary_rolled_back` event, and for a promotion the activation of the version.
        Returns None when the canary was no longer running (someone else decided first)."""
        if outcome not in OUTCOMES:
            raise RegistryError(f"canary outcome {outcome!r} unknown; allowed: {', '.join(OUTCOMES)}")
        status = OUTCOMES[outcome]

        def run(s: Session) -> CanaryInfo | None:
            c = s.scalar(select(Canary).where(Canary.id == canary_id).with_for_update())
            if c is None:
                raise NotFoundError(f"no canary with id {canary_id}")
            if c.status != "running":
                return None
            d = s.get(Deployment, c.deployment_id)
            assert d is not None
            now = time.time()
            c.status, c.decided_at, c.reason, c.figures = status, now, reason, json_safe(figures)
            if outcome == "promote":
                self._set_active(s, d, c.version, "promote", by)
            else:
                self._backend.notify(s.connection(), CHANNEL, d.name)  # engines drop it at once
            if c.run_id is not None:
                r = s.get(Run, c.run_id)
                if r is not None:
                    r.status, r.finished_at = "completed", now
                    r.metrics = json_safe({"outcome": status, "reason": reason, **figures})
                s.execute(CACHE_EVENTS.table.insert(), [{
                    "ts": now, "run_id": c.run_id, "instance_id": None, "kind": f"canary_{status}", "count": 1,
                    "detail": json_safe({"deployment": d.name, "version": c.version,
                                         "baseline_version": c.baseline_version, "reason": reason,
                                         "by": by, **figures})}])
            s.flush()
            return _canary_info(c, d.name)

        return self._write_orm(run)

    def canary_event(self, canary: CanaryInfo, kind: str, detail: dict[str, Any]) -> None:
        """Record another event of a canary's run (e.g. `canary_undecided` with the figures so far)."""
        if canary.run_id is None:
            return
        row = {"ts": time.time(), "run_id": canary.run_id, "instance_id": None, "kind": kind, "count": 1,
               "detail": json_safe({"deployment": canary.deployment, "version": canary.version,
                                    "baseline_version": canary.baseline_version, **detail})}
        self._write_orm(lambda s: s.execute(CACHE_EVENTS.table.insert(), [row]))

    def canary_events(self, deployment: str, *, limit: int = 500) -> list[dict[str, Any]]:
        """The deployment's canary events (all its canaries' runs), newest first, as {ts, kind, detail, run_id}."""

        def run(s: Session) -> list[dict[str, Any]]:
            ev = CACHE_EVENTS.table
            runs = select(Canary.run_id).join(Deployment, Canary.deployment_id == Deployment.id).where(
                Deployment.name == deployment, Canary.run_id.is_not(None))
            q = (select(ev.c.ts, ev.c.kind, ev.c.detail, ev.c.run_id)
                 .where(ev.c.run_id.in_(runs), ev.c.kind.like("canary_%"))
                 .order_by(ev.c.ts.desc(), ev.c.id.desc()).limit(limit))
            return [{"ts": ts, "kind": kind, "detail": detail or {}, "run_id": rid} for ts, kind, detail, rid in s.execute(q)]

        return self._read_orm(run)
