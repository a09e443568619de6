"""The control plane's config registry: versioned KVConfigs per deployment, activation history, acks.

Versions are immutable and numbered 1, 2, ... per deployment. A deployment's active version is the one
engines should run. `rollback` walks back through the activation history like an undo stack: after pushes
1, 2, 3, rollbacks go to 2 then 1; after `activate(1)` while 3 was active, a rollback returns to 3.
Every config is validated before it is stored, so a bad push stores nothing.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kvpilot.config import KVConfig, config_hash
from kvpilot.storage.backends import Listener
from kvpilot.storage.entities import EntityStore
from kvpilot.storage.errors import NotFoundError, RegistryError, StoreError
from kvpilot.storage.schema import (
    ACK_STATUSES,
    ConfigAck,
    ConfigActivation,
    ConfigVersion,
    Deployment,
    EngineInstance,
)
from kvpilot.storage.types import Ack, Activation, ConfigVersionInfo, FieldChange
from kvpilot.vllm_config import VLLMConfig, is_vllm_document

CHANNEL = "kvpilot_config"  # PostgreSQL NOTIFY channel; the payload is the deployment name


def _as_config(config: KVConfig | VLLMConfig | dict[str, Any] | str | bytes) -> KVConfig | VLLMConfig:
    """Validate first: raises KVConfigError (VLLMConfigError for a vLLM document), and the caller stores nothing."""
    if isinstance(config, (KVConfig, VLLMConfig)):
        return config
    return VLLMConfig.parse(config) if is_vllm_document(config) else KVConfig.parse(config)


def _info(v: ConfigVersion, deployment: str, active: int | None) -> ConfigVersionInfo:
    return ConfigVersionInfo(
        deployment=deployment,
        version=v.version,
        config_json=v.config,
        config_hash=v.config_hash,
        pushed_by=v.pushed_by,
        source=v.source,
        parent_version=v.parent_version,
        created_at=v.created_at,
        active=v.version == active,
    )


class RegistryStore(EntityStore):
    """Config registry methods (push, list, show, diff, activate, rollback, acknowledgements)."""

    def _deployment_row(self, s: Session, name: str, *, lock: bool = False) -> Deployment:
        q = select(Deployment).where(Deployment.name == name)
        d = s.scalar(q.with_for_update() if lock else q)
        if d is None:
            known = ", ".join(s.scalars(select(Deployment.name).order_by(Deployment.name))) or "none yet"
            raise NotFoundError(f"no deployment named {name!r} (known: {known}); push a config to create it")
        return d

    def _version_row(self, s: Session, d: Deployment, version: int) -> ConfigVersion:
        v = s.scalar(
            select(ConfigVersion).where(ConfigVersion.deployment_id == d.id, ConfigVersion.version == version)
        )
        if v is None:
            have = list(s.scalars(select(ConfigVersion.version).where(ConfigVersion.deployment_id == d.id)))
            known = f"{min(have)}..{max(have)}" if have else "none yet"
            raise NotFoundError(f"deployment {d.name!r} has no config version {version} (versions: {known})")
        return v

    def _set_active(self, s: Session, d: Deployment, version: int, action: str, by: str | None) -> None:
        d.active_version = version
        s.add(ConfigActivation(deployment_id=d.id, version=version, action=action, by=by, ts=time.time()))
        s.flush()
        self._backend.notify(s.connection(), CHANNEL, d.name)

    # ----- writes ------------------------------------------------------------------------------------

    def push(
        self,
        deployment: str,
        config: KVConfig | VLLMConfig | dict[str, Any] | str | bytes,
        *,
        pushed_by: str | None = None,
        source: str | None = None,
        activate: bool = True,
    ) -> ConfigVersionInfo:
        """Validate and store a new config version (and make it active unless `activate` is false).

        A document with `"engine": "vllm"` is a VLLMConfig (a deployment that `kvpilot vllm serve` supervises);
        anything else is a KVConfig.
        `source` says what produced it, e.g. 'user:alice' or 'tuner:study/trial-12'."""
        cfg = _as_config(config)

        def run(s: Session) -> ConfigVersionInfo:
            dep_id = self._get_or_create_deployment(s.connection(), deployment)
            d = s.scalar(select(Deployment).where(Deployment.id == dep_id).with_for_update())
            assert d is not None
            last = s.scalar(
                select(ConfigVersion.version)
                .where(ConfigVersion.deployment_id == d.id)
                .order_by(ConfigVersion.version.desc())
                .limit(1)
            )
            row = ConfigVersion(
                deployment_id=d.id,
                version=(last or 0) + 1,
                config=cfg.to_json(),
                config_hash=config_hash(cfg),
                pushed_by=pushed_by,
                source=source,
                parent_version=d.active_version,
                created_at=time.time(),
            )
            s.add(row)
            s.flush()
            if activate:
                self._set_active(s, d, row.version, "push", pushed_by)
            return _info(row, d.name, d.active_version)

        return self._write_orm(run)

    def activate(self, deployment: str, version: int, *, by: str | None = None) -> ConfigVersionInfo:
        """Make an existing version the active one (a no-op when it already is)."""

        def run(s: Session) -> ConfigVersionInfo:
            d = self._deployment_row(s, deployment, lock=True)
            v = self._version_row(s, d, version)
            _info(v, d.name, None).document()  # refuse to activate a corrupt row
            if d.active_version != version:
                self._set_active(s, d, version, "activate", by)
            return _info(v, d.name, d.active_version)

        return self._write_orm(run)

    def rollback(self, deployment: str, *, by: str | None = None) -> ConfigVersionInfo:
        """Re-activate the version that was active before the current one."""

        def run(s: Session) -> ConfigVersionInfo:
            d = self._deployment_row(s, deployment, lock=True)
            stack = self._undo_stack(s, d.id)
            if len(stack) < 2:
                raise RegistryError(
                    f"deployment {deployment!r} has no earlier active version to roll back to "
                    f"(active: {d.active_version}); use `kvpilot configs --deployment {deployment}` to list "
                    "versions and `kvpilot activate` to pick one"
                )
            target = self._version_row(s, d, stack[-2])
            _info(target, d.name, None).document()
            self._set_active(s, d, target.version, "rollback", by)
            return _info(target, d.name, d.active_version)

        return self._write_orm(run)

    @staticmethod
    def _undo_stack(s: Session, deployment_id: int) -> list[int]:
        stack: list[int] = []
        for action, version in s.execute(
            select(ConfigActivation.action, ConfigActivation.version)
            .where(ConfigActivation.deployment_id == deployment_id)
            .order_by(ConfigActivation.id)
        ):
            if action == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != version:  # history edited by hand: trust the record
                    stack.append(version)
            else:
                stack.append(version)
        return stack

    def ack(self, instance_id: int, version: int, status: str, reason: str | None = None) -> None:
        """Record an engine's answer to a version; 'applied' also marks the version in force on the instance."""
        if status not in ACK_STATUSES:
            raise StoreError(f"ack status {status!r} unknown; allowed: {', '.join(ACK_STATUSES)}")

        def run(s: Session) -> None:
            inst = s.get(EngineInstance, instance_id)
            if inst is None:
                raise NotFoundError(f"no engine instance with id {instance_id}; register it first")
            now = time.time()
            s.add(
                ConfigAck(
                    deployment_id=inst.deployment_id,
                    instance_id=instance_id,
                    version=version,
                    status=status,
                    reason=reason,
                    ts=now,
                )
            )
            if status == "applied":
                s.execute(
                    update(EngineInstance)
                    .where(EngineInstance.id == instance_id)
                    .values(config_version=version, last_heartbeat=now)
                )

        self._write_orm(run)

    def config_listener(self) -> Listener | None:
        """A Listener woken by pushes, activations and rollbacks (PostgreSQL), or None (SQLite: poll)."""
        return self._backend.listener(self._engine, CHANNEL)

    # ----- reads -------------------------------------------------------------------------------------

    def list_versions(self, deployment: str) -> list[ConfigVersionInfo]:
        """All versions of a deployment, oldest first."""

        def run(s: Session) -> list[ConfigVersionInfo]:
            d = self._deployment_row(s, deployment)
            rows = s.scalars(
                select(ConfigVersion).where(ConfigVersion.deployment_id == d.id).order_by(ConfigVersion.version)
            )
            return [_info(v, d.name, d.active_version) for v in rows]

        return self._read_orm(run)

    def get_version(self, deployment: str, version: int | None = None) -> ConfigVersionInfo:
        """One version (the active one when `version` is None)."""

        def run(s: Session) -> ConfigVersionInfo:
            d = self._deployment_row(s, deployment)
            want = d.active_version if version is None else version
            if want is None:
                raise NotFoundError(f"deployment {deployment!r} has no active config version yet")
            return _info(self._version_row(s, d, want), d.name, d.active_version)

        return self._read_orm(run)

    def active_version(self, deployment: str) -> ConfigVersionInfo | None:
        """The active version, or None if the deployment or an active version does not exist yet.

        One indexed query: the config watcher calls this every poll."""

        def run(s: Session) -> ConfigVersionInfo | None:
            row = s.execute(
                select(ConfigVersion, Deployment.active_version)
                .join(Deployment, ConfigVersion.deployment_id == Deployment.id)
                .where(Deployment.name == deployment, ConfigVersion.version == Deployment.active_version)
            ).first()
            return None if row is None else _info(row[0], deployment, row[1])

        return self._read_orm(run)

    def diff(self, deployment: str, a: int, b: int) -> list[FieldChange]:
        """Fields whose values differ between versions `a` and `b` (old = a, new = b).

        A plug-in's parameters (`policy_params`, ...) are compared one by one (`policy_params.pooling`) while
        the plug-in stays the same; when it changes, the plug-in's own change stands for them (the
        parameters of two different policies are not comparable)."""
        va = _flatten_params(self.get_version(deployment, a).config_dict())
        vb = _flatten_params(self.get_version(deployment, b).config_dict())
        changed = {k for k in set(va) | set(vb) if va.get(k) != vb.get(k)}
        return [
            FieldChange(k, va.get(k), vb.get(k))
            for k in sorted(changed, key=_field_order)
            if not (_PARAMS in k and k.split(_PARAMS)[0] in changed)
        ]

    def activations(self, deployment: str) -> list[Activation]:
        """The activation history, oldest first."""

        def run(s: Session) -> list[Activation]:
            d = self._deployment_row(s, deployment)
            q = select(ConfigActivation).where(ConfigActivation.deployment_id == d.id).order_by(ConfigActivation.id)
            return [Activation(a.version, a.action, a.by, a.ts) for a in s.scalars(q)]

        return self._read_orm(run)

    def acks(self, deployment: str, version: int | None = None, *, limit: int = 1000) -> list[Ack]:
        """Engine acknowledgements, newest first."""

        def run(s: Session) -> list[Ack]:
            d = self._deployment_row(s, deployment)
            q = (
                select(ConfigAck, EngineInstance.name)
                .join(EngineInstance, ConfigAck.instance_id == EngineInstance.id)
                .where(ConfigAck.deployment_id == d.id)
            )
            if version is not None:
                q = q.where(ConfigAck.version == version)
            q = q.order_by(ConfigAck.ts.desc(), ConfigAck.id.desc()).limit(limit)
            return [
                Ack(d.name, a.instance_id, name, a.version, a.status, a.reason, a.ts) for a, name in s.execute(q)
            ]

        return self._read_orm(run)


_FIELDS = list(KVConfig.model_fields)
_PARAMS = "_params"


def _flatten_params(config: dict[str, Any]) -> dict[str, Any]:
    """`{"policy_params": {"pooling": "max"}}` -> `{"policy_params.pooling": "max"}`; other fields as they are."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k.endswith(_PARAMS) and isinstance(v, dict):
            out.update({f"{k}.{p}": pv for p, pv in v.items()})
        else:
            out[k] = v
    return out


def _field_order(name: str) -> tuple[int, str]:
    base = name.split(".")[0]
    return (_FIELDS.index(base) if base in _FIELDS else len(_FIELDS), name)
