"""Eviction lineage in the store: one row per sampled request (table `eviction_lineage`).

Written by the probes' lineage writer (`kvpilot.probes.lineage`, `kvpilot.attach(..., lineage=rate)`) from
`kvpilot.engine.lineage`'s figures; read by the dashboard's lineage panel. `lineages` lists a scope's
requests newest first with the shadow probe's fidelity of the same request when it measured it (its
`quality` cache event carries the same `request` key); `lineage` returns one request's context and units.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from kvpilot.config import KVConfig
from kvpilot.storage.core import json_safe
from kvpilot.storage.entities import EntityStore
from kvpilot.storage.errors import NotFoundError, StoreError
from kvpilot.storage.schema import CACHE_EVENTS, Deployment, EvictionLineage
from kvpilot.storage.scope import Scope
from kvpilot.storage.types import LineageInfo, LineageSummary, LineageUnitInfo

LINEAGE_KINDS = ("turn", "sentence", "chunk", "span")
EVICTED_BELOW = 0.5  # as kvpilot.engine.lineage (torch-free here): a unit under half held counts as evicted
QUALITY_EVENT = "quality"


def _summary(row: EvictionLineage, deployment: str | None, quality: Mapping[str, tuple[float | None, float | None]],
             ) -> LineageSummary:
    answers = row.answers or []
    first = answers[0].get("question") if answers and isinstance(answers[0], dict) else None
    top1, kl = quality.get(row.request_key, (None, None))
    return LineageSummary(
        id=row.id, ts=row.ts, deployment=deployment, instance_id=row.instance_id, run_id=row.run_id,
        request_key=row.request_key, config=row.config, config_version=row.config_version, kind=row.kind,
        context_tokens=row.context_tokens, kept_fraction=row.kept_fraction, evicted_units=row.evicted_units,
        total_units=row.total_units, first_question=first, top1_agreement=top1, mean_kl=kl,
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class LineageStore(EntityStore):
    """Writer and readers of `eviction_lineage`."""

    def add_lineage(
        self,
        *,
        request_key: str,
        kind: str,
        context: str,
        context_tokens: int,
        kept_fraction: float,
        units: Sequence[Sequence[Any]],
        answers: Sequence[Mapping[str, Any]] = (),
        deployment: str | None = None,
        instance_id: int | None = None,
        run_id: int | None = None,
        config: KVConfig | Mapping[str, Any] | None = None,
        config_version: int | None = None,
        ts: float | None = None,
    ) -> int:
        """Store one request's lineage; ``units``: [token_start, token_end, char_start, char_end, kept] each."""
        if kind not in LINEAGE_KINDS:
            raise StoreError(f"lineage kind {kind!r} unknown; allowed: {', '.join(LINEAGE_KINDS)}")
        rows = []
        for u in units:
            if len(u) != 5:
                raise StoreError(f"a lineage unit is [token_start, token_end, char_start, char_end, kept], got {u!r}")
            ts_, te, cs, ce, kept = u
            if not (0 <= int(cs) <= int(ce) <= len(context)) or not 0.0 <= float(kept) <= 1.0:
                raise StoreError(f"lineage unit {list(u)!r} is outside the context ({len(context)} characters) "
                                 "or keeps a share outside [0, 1]")
            rows.append([int(ts_), int(te), int(cs), int(ce), float(kept)])
        cfg = config.to_dict() if isinstance(config, KVConfig) else (dict(config) if config is not None else None)

        def run(conn: Connection) -> int:
            dep_id = self._get_or_create_deployment(conn, deployment) if deployment else None
            with Session(bind=conn) as s:
                row = EvictionLineage(
                    ts=ts if ts is not None else time.time(), deployment_id=dep_id, instance_id=instance_id,
                    run_id=run_id, request_key=request_key, config=json_safe(cfg), config_version=config_version,
                    kind=kind, context_tokens=int(context_tokens), kept_fraction=float(kept_fraction),
                    evicted_units=sum(1 for r in rows if r[4] < EVICTED_BELOW), total_units=len(rows),
                    context=context, units=rows, answers=json_safe([dict(a) for a in answers]),
                )
                s.add(row)
                s.flush()
                return row.id

        return self._write(run)

    def lineages(self, scope: Scope | None = None, *, limit: int = 200) -> list[LineageSummary]:
        """The scope's sampled requests (deployment, instance, run, window), newest first, with fidelity."""
        scope = scope or Scope(window_s=None)

        def run(s: Session) -> list[LineageSummary]:
            q = select(EvictionLineage, Deployment.name).outerjoin(
                Deployment, EvictionLineage.deployment_id == Deployment.id)
            if scope.deployment is not None:
                q = q.where(Deployment.name == scope.deployment)
            if scope.instance_id is not None:
                q = q.where(EvictionLineage.instance_id == scope.instance_id)
            if scope.run_id is not None:
                q = q.where(EvictionLineage.run_id == scope.run_id)
            start, end = scope.bounds()
            if start is not None:
                q = q.where(EvictionLineage.ts >= start)
            if scope.until is not None:
                q = q.where(EvictionLineage.ts < end)
            q = q.order_by(EvictionLineage.ts.desc(), EvictionLineage.id.desc()).limit(limit)
            found = list(s.execute(q))
            quality = self._quality(s, [r for r, _ in found])
            return [_summary(r, dep, quality) for r, dep in found]

        return self._read_orm(run)

    def lineage(self, lineage_id: int) -> LineageInfo:
        """One request's lineage: its context, units and answers (NotFoundError when there is none)."""

        def run(s: Session) -> LineageInfo:
            found = s.execute(select(EvictionLineage, Deployment.name).outerjoin(
                Deployment, EvictionLineage.deployment_id == Deployment.id).where(
                EvictionLineage.id == lineage_id)).first()
            if found is None:
                raise NotFoundError(f"no eviction lineage with id {lineage_id}")
            row, dep = found
            units = [LineageUnitInfo(int(a), int(b), int(c), int(d), float(k), float(k) < EVICTED_BELOW)
                     for a, b, c, d, k in row.units]
            return LineageInfo(_summary(row, dep, self._quality(s, [row])), row.context, units,
                               [dict(a) for a in row.answers or []])

        return self._read_orm(run)

    def lineage_for_request(self, request_key: str) -> LineageInfo | None:
        """The lineage recorded under a request key (the `request` of its `quality` event), if any."""

        def run(s: Session) -> int | None:
            return s.scalar(select(EvictionLineage.id).where(EvictionLineage.request_key == request_key)
                            .order_by(EvictionLineage.id.desc()).limit(1))

        found = self._read_orm(run)
        return None if found is None else self.lineage(found)

    @staticmethod
    def _quality(s: Session, rows: list[EvictionLineage]) -> dict[str, tuple[float | None, float | None]]:
        """Shadow-probe fidelity per request key: `quality` events from the first lineage on (measured after
        the request), matched on their detail's `request`; the mean over the request's answers."""
        if not rows:
            return {}
        keys = {r.request_key for r in rows}
        ev = CACHE_EVENTS.table
        q = select(ev.c.detail).where(ev.c.kind == QUALITY_EVENT, ev.c.ts >= min(r.ts for r in rows) - 1.0)
        if len(rows) == 1 and rows[0].instance_id is not None:
            q = q.where(ev.c.instance_id == rows[0].instance_id)
        top1: dict[str, list[float]] = {}
        kl: dict[str, list[float]] = {}
        for (detail,) in s.execute(q.order_by(ev.c.ts).limit(20_000)):
            key = detail.get("request") if isinstance(detail, dict) else None
            if key not in keys:
                continue
            if detail.get("top1_agreement") is not None:
                top1.setdefault(key, []).append(float(detail["top1_agreement"]))
            if detail.get("mean_kl") is not None:
                kl.setdefault(key, []).append(float(detail["mean_kl"]))
        return {k: (_mean(top1.get(k, [])), _mean(kl.get(k, []))) for k in keys if k in top1 or k in kl}
