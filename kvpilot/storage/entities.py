"""Deployments, engine instances, runs and sensitivity profiles: the store's metadata, via the typed ORM."""

from __future__ import annotations

import functools
import math
import os
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from kvpilot.config import KVConfig
from kvpilot.storage.core import json_safe
from kvpilot.storage.errors import NotFoundError, StoreError
from kvpilot.storage.rollup_jobs import FINEST_S, RollupJobs
from kvpilot.storage.schema import (
    RUN_KINDS,
    RUN_STATUSES,
    SAMPLE_TABLES,
    SAMPLES,
    Deployment,
    EngineInstance,
    EvictionLineage,
    IngestedPart,
    Run,
    SensitivityProfile,
    table_of,
)
from kvpilot.storage.types import DeploymentInfo, InstanceInfo, Profile, RunInfo

DEFAULT_STALE_AFTER_S = 30.0


def _deployment_info(d: Deployment) -> DeploymentInfo:
    return DeploymentInfo(d.id, d.name, d.model, d.created_at, d.active_version)


def _instance_info(i: EngineInstance, deployment: str, now: float, stale_after_s: float) -> InstanceInfo:
    return InstanceInfo(
        id=i.id,
        deployment=deployment,
        name=i.name,
        host=i.host,
        pid=i.pid,
        started_at=i.started_at,
        last_heartbeat=i.last_heartbeat,
        config_version=i.config_version,
        alive=now - i.last_heartbeat <= stale_after_s,
    )


def _run_info(r: Run, deployment: str | None) -> RunInfo:
    return RunInfo(
        id=r.id,
        kind=r.kind,
        status=r.status,
        deployment=deployment,
        instance_id=r.instance_id,
        name=r.name,
        study_name=r.study_name,
        trial_number=r.trial_number,
        started_at=r.started_at,
        finished_at=r.finished_at,
        config=r.config,
        params=r.params,
        metrics=r.metrics,
    )


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class EntityStore(RollupJobs):
    """Metadata writers and readers."""

    # ----- deployments and instances ---------------------------------------------------------------

    def _get_or_create_deployment(self, conn: Connection, name: str, model: str | None = None) -> int:
        """The deployment's id, creating it race-free (INSERT ... ON CONFLICT DO NOTHING)."""
        if not name or not name.strip():
            raise StoreError("deployment name must not be empty")
        table = table_of(Deployment)
        found = conn.execute(select(table.c.id).where(table.c.name == name)).scalar()
        if found is not None:
            return found
        conn.execute(
            self._backend.insert(table).values(name=name, model=model, created_at=time.time()).on_conflict_do_nothing()
        )
        return conn.execute(select(table.c.id).where(table.c.name == name)).scalar_one()

    def ensure_deployment(self, name: str, *, model: str | None = None) -> DeploymentInfo:
        """Get or create a deployment by name."""
        self._write(lambda conn: self._get_or_create_deployment(conn, name, model))
        return self.deployment(name)

    def deployment(self, name: str) -> DeploymentInfo:
        def run(s: Session) -> DeploymentInfo:
            d = s.scalar(select(Deployment).where(Deployment.name == name))
            if d is None:
                known = ", ".join(s.scalars(select(Deployment.name).order_by(Deployment.name))) or "none yet"
                raise NotFoundError(f"no deployment named {name!r} (known: {known})")
            return _deployment_info(d)

        return self._read_orm(run)

    def deployments(self) -> list[DeploymentInfo]:
        return self._read_orm(
            lambda s: [_deployment_info(d) for d in s.scalars(select(Deployment).order_by(Deployment.name))]
        )

    def register_instance(
        self,
        deployment: str,
        name: str,
        *,
        model: str | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> InstanceInfo:
        """Register (or re-register after a restart) an engine instance; creates the deployment if new."""
        host = host if host is not None else socket.gethostname()
        pid = pid if pid is not None else os.getpid()
        now = time.time()
        table = table_of(EngineInstance)

        def run(conn: Connection) -> int:
            dep_id = self._get_or_create_deployment(conn, deployment, model)
            values = {"host": host, "pid": pid, "started_at": now, "last_heartbeat": now}
            conn.execute(
                self._backend.insert(table)
                .values(deployment_id=dep_id, name=name, **values)
                .on_conflict_do_update(index_elements=["deployment_id", "name"], set_=values)
            )
            return conn.execute(
                select(table.c.id).where(table.c.deployment_id == dep_id, table.c.name == name)
            ).scalar_one()

        instance_id = self._write(run)
        return self.instance(instance_id)

    def heartbeat(self, instance_id: int, *, config_version: int | None = None, ts: float | None = None) -> None:
        """Mark an instance alive (and record the config version it runs, when given)."""
        values: dict[str, Any] = {"last_heartbeat": ts if ts is not None else time.time()}
        if config_version is not None:
            values["config_version"] = config_version
        table = table_of(EngineInstance)

        def run(conn: Connection) -> None:
            if conn.execute(update(table).where(table.c.id == instance_id).values(**values)).rowcount == 0:
                raise NotFoundError(f"no engine instance with id {instance_id}; register it first")

        self._write(run)

    def instance(self, instance_id: int, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> InstanceInfo:
        found = self.instances(ids=[instance_id], stale_after_s=stale_after_s)
        if not found:
            raise NotFoundError(f"no engine instance with id {instance_id}")
        return found[0]

    def instances(
        self,
        deployment: str | None = None,
        *,
        alive_only: bool = False,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        now: float | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[InstanceInfo]:
        """Engine instances, each marked alive when its last heartbeat is under `stale_after_s` old."""
        now = time.time() if now is None else now

        def run(s: Session) -> list[InstanceInfo]:
            q = select(EngineInstance, Deployment.name).join(Deployment)
            if deployment is not None:
                q = q.where(Deployment.name == deployment)
            if ids is not None:
                q = q.where(EngineInstance.id.in_(list(ids)))
            if alive_only:
                q = q.where(EngineInstance.last_heartbeat >= now - stale_after_s)
            q = q.order_by(Deployment.name, EngineInstance.name)
            return [_instance_info(i, dep, now, stale_after_s) for i, dep in s.execute(q)]

        return self._read_orm(run)

    # ----- runs --------------------------------------------------------------------------------------

    def start_run(
        self,
        kind: str,
        *,
        deployment: str | None = None,
        instance_id: int | None = None,
        name: str | None = None,
        study_name: str | None = None,
        trial_number: int | None = None,
        config: KVConfig | dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        started_at: float | None = None,
    ) -> int:
        """Open a run (serving, eval, tuning_trial or probe) and return its id for tagging samples."""
        if kind not in RUN_KINDS:
            raise StoreError(f"run kind {kind!r} unknown; allowed: {', '.join(RUN_KINDS)}")
        cfg = config.to_dict() if isinstance(config, KVConfig) else config

        def run(conn: Connection) -> int:
            dep_id = self._get_or_create_deployment(conn, deployment) if deployment else None
            with Session(bind=conn) as s:
                row = Run(
                    kind=kind,
                    deployment_id=dep_id,
                    instance_id=instance_id,
                    name=name,
                    study_name=study_name,
                    trial_number=trial_number,
                    status="running",
                    started_at=started_at if started_at is not None else time.time(),
                    config=json_safe(cfg),
                    params=json_safe(params),
                )
                s.add(row)
                s.flush()
                return row.id

        return self._write(run)

    def finish_run(
        self,
        run_id: int,
        *,
        status: str = "completed",
        metrics: dict[str, Any] | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Close a run with its final status and metrics (merged into any metrics already stored)."""
        if status not in RUN_STATUSES:
            raise StoreError(f"run status {status!r} unknown; allowed: {', '.join(RUN_STATUSES)}")

        def run(s: Session) -> None:
            row = s.get(Run, run_id)
            if row is None:
                raise NotFoundError(f"no run with id {run_id}")
            row.status = status
            row.finished_at = finished_at if finished_at is not None else time.time()
            if metrics:
                row.metrics = {**(row.metrics or {}), **json_safe(metrics)}

        self._write_orm(run)

    def get_run(self, run_id: int) -> RunInfo:
        found = self.runs(ids=[run_id])
        if not found:
            raise NotFoundError(f"no run with id {run_id}")
        return found[0]

    def runs(
        self,
        *,
        kind: str | None = None,
        deployment: str | None = None,
        study_name: str | None = None,
        status: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int = 1000,
    ) -> list[RunInfo]:
        """Runs, newest first."""

        def run(s: Session) -> list[RunInfo]:
            q = select(Run, Deployment.name).outerjoin(Deployment, Run.deployment_id == Deployment.id)
            if kind is not None:
                q = q.where(Run.kind == kind)
            if deployment is not None:
                q = q.where(Deployment.name == deployment)
            if study_name is not None:
                q = q.where(Run.study_name == study_name)
            if status is not None:
                q = q.where(Run.status == status)
            if ids is not None:
                q = q.where(Run.id.in_(list(ids)))
            q = q.order_by(Run.started_at.desc(), Run.id.desc()).limit(limit)
            return [_run_info(r, dep) for r, dep in s.execute(q)]

        return self._read_orm(run)

    # ----- sensitivity profiles ----------------------------------------------------------------------

    def save_profile(
        self,
        model: str,
        method: str,
        values: Sequence[float],
        *,
        meta: dict[str, Any] | None = None,
        run_id: int | None = None,
    ) -> int:
        """Store a per-layer sensitivity profile (one value per layer) and return its id."""

        def run(s: Session) -> int:
            row = SensitivityProfile(
                model=model,
                method=method,
                values=[float(v) for v in json_safe(list(values))],
                meta=json_safe(meta),
                run_id=run_id,
                created_at=time.time(),
            )
            s.add(row)
            s.flush()
            return row.id

        return self._write_orm(run)

    def profiles(self, model: str | None = None, method: str | None = None) -> list[Profile]:
        """Sensitivity profiles, newest first."""

        def run(s: Session) -> list[Profile]:
            q = select(SensitivityProfile)
            if model is not None:
                q = q.where(SensitivityProfile.model == model)
            if method is not None:
                q = q.where(SensitivityProfile.method == method)
            q = q.order_by(SensitivityProfile.created_at.desc(), SensitivityProfile.id.desc())
            return [
                Profile(p.id, p.model, p.method, list(p.values), p.meta, p.run_id, p.created_at) for p in s.scalars(q)
            ]

        return self._read_orm(run)

    def latest_profile(self, model: str, method: str | None = None) -> Profile | None:
        found = self.profiles(model, method)
        return found[0] if found else None

    # ----- retention ---------------------------------------------------------------------------------

    def prune(
        self, older_than: float | timedelta, *, now: float | None = None, batch_rows: int = 50_000,
        minute_rollups_older_than: float | timedelta | None = None,
        hour_rollups_older_than: float | timedelta | None = None,
    ) -> dict[str, int]:
        """Delete samples (and eviction lineage) older than `older_than` (seconds or a timedelta); metadata and
        configs stay.

        Retention by downsampling: the rollups are refreshed first, so every raw row deleted is already in
        the per-minute and per-hour rollups, which stay (dashboards keep their long windows) until their own
        ages, `minute_rollups_older_than` / `hour_rollups_older_than`, when given.

        Deletes per owner (instance or run) through the (owner, ts) indexes, and layer stats (no instance index,
        migration 0011) by time slices for all owners at once, in batches of about `batch_rows`,
        each its own short transaction, so engines writing to a SQLite file wait at most one batch for the
        lock. Returns rows deleted per table.
        """
        age = _seconds(older_than)
        ages = {"1m": minute_rollups_older_than, "1h": hour_rollups_older_than}
        rollup_ages = {g: _seconds(a) for g, a in ages.items() if a is not None}
        if age < 0 or any(a < 0 for a in rollup_ages.values()):
            raise StoreError("prune: ages must be positive")
        now = time.time() if now is None else now
        cutoff = math.floor((now - age) / FINEST_S) * FINEST_S  # whole rollup buckets: no minute is half raw
        self.refresh_rollups()
        self.cover_until(cutoff)

        def owners(conn: Connection) -> list[tuple[str, int]]:
            inst = conn.execute(select(EngineInstance.id)).scalars().all()
            runs = conn.execute(select(Run.id)).scalars().all()
            return [("instance_id", i) for i in inst] + [("run_id", r) for r in runs]

        deleted: dict[str, int] = {}
        for name, table in SAMPLE_TABLES.items():
            if SAMPLES[name].time_index:  # no (owner, ts) index to walk: whole time slices, every owner's rows
                deleted[name] = self._prune_by_time(table, cutoff, batch_rows)
                continue
            total = 0
            for column, owner in self._read(owners):
                while True:
                    n, more = self._write(functools.partial(_delete_batch, table=table, column=column, owner=owner,
                                                            cutoff=cutoff, batch_rows=batch_rows))
                    total += n
                    if not more:
                        break
            deleted[name] = total
        parts = table_of(IngestedPart)  # ids of parts ingested before the cutoff: their spools are long replayed
        deleted["ingested_parts"] = self._write(
            lambda conn: conn.execute(parts.delete().where(parts.c.ts < cutoff)).rowcount
        )
        lineage = table_of(EvictionLineage)  # traced requests age like the samples they explain
        deleted["eviction_lineage"] = self._write(
            lambda conn: conn.execute(lineage.delete().where(lineage.c.ts < cutoff)).rowcount
        )
        for grain, rollup_age in rollup_ages.items():
            deleted.update(self.prune_rollups(grain, rollup_age, now=now))
        return deleted

    def _prune_by_time(self, table: Table, cutoff: float, batch_rows: int) -> int:
        """Delete the rows of `table` older than `cutoff` in time slices of about `batch_rows` rows, each its own
        transaction and a range of the table's time index (BRIN on PostgreSQL).

        Slices start at the time of the lowest id (rows arrive about in time order; the first slice has no lower
        bound, so older late rows go with it) and are sized from the previous slice's row count. Returns rows
        deleted."""
        first = self._read(lambda conn: conn.execute(select(table.c.ts).order_by(table.c.id).limit(1)).scalar())
        if first is None:
            return 0
        lo: float | None = None
        hi, step, total = float(first), 60.0, 0
        while True:
            hi = min(hi + step, cutoff)
            n = self._write(functools.partial(_delete_slice, table=table, lo=lo, hi=hi))
            total += n
            if hi >= cutoff:
                return total
            step = min(step * 4, max(step / 4, step * batch_rows / n)) if n else step * 4
            lo = hi


def _delete_slice(conn: Connection, *, table: Table, lo: float | None, hi: float) -> int:
    """Delete the rows with lo <= ts < hi (no lower bound when `lo` is None)."""
    older = (table.c.ts < hi, *(() if lo is None else (table.c.ts >= lo,)))
    return int(conn.execute(delete(table).where(*older)).rowcount)


def _delete_batch(
    conn: Connection, *, table: Table, column: str, owner: int, cutoff: float, batch_rows: int
) -> tuple[int, bool]:
    """Delete about `batch_rows` of one owner's rows older than `cutoff`, as an index range on (owner, ts).

    A time range, not `id IN (subquery)`: PostgreSQL plans the latter as a scan of the whole table.
    Returns (rows deleted, whether more may remain)."""
    col = table.c[column]
    mine = (col == owner, col.is_not(None))
    edge = conn.execute(
        select(table.c.ts).where(*mine, table.c.ts < cutoff).order_by(table.c.ts).offset(batch_rows).limit(1)
    ).scalar()
    older = table.c.ts < cutoff if edge is None else table.c.ts <= edge
    n = conn.execute(delete(table).where(*mine, older)).rowcount
    return n, edge is not None
