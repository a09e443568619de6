"""kvpilot's store: probe samples, runs and the config registry on SQLite or PostgreSQL (no torch here).

    from kvpilot.storage import Store
    store = Store.open()                      # $KVPILOT_DB, else $KVPILOT_HOME/kvpilot.db
    inst = store.register_instance("chat", "engine-0")
    store.add_layer_stats([{"layer": 0, "entropy": 2.1}], instance_id=inst.id)
    store.push("chat", {"policy": "snapkv", "compression_ratio": 0.5}, pushed_by="alice")

Names load lazily (PEP 562): `from kvpilot.storage.protocols import SampleSink` costs no SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule that defines it
_EXPORTS = {
    **dict.fromkeys(
        ("BadDatabaseURLError", "CorruptConfigError", "DatabaseUnavailableError", "NotFoundError", "RegistryError",
         "SchemaError", "SchemaOutdatedError", "SchemaTooNewError", "StoreError"),
        "errors",
    ),
    "CHANNEL": "registry",
    **dict.fromkeys(("ArmData", "CanaryInfo"), "canary"),
    **dict.fromkeys(
        ("ACK_STATUSES", "EVENT_KINDS", "RUN_KINDS", "RUN_STATUSES", "SESSION_KINDS", "POOL_DETAIL_KEYS", "SAMPLES",
         "LAYER_STATS", "REQUESTS", "MEMORY_SAMPLES", "CACHE_EVENTS", "VLLM_SAMPLES", "SKEW_METRICS", "LayerStat", "Request",
         "MemorySample", "Event"),
        "schema",
    ),
    "Store": "store",
    **dict.fromkeys(("Scope", "bucket_width"), "scope"),
    **dict.fromkeys(("ConfigSource", "RunRecorder", "SampleSink"), "protocols"),
    "SampleRow": "rows",
    **dict.fromkeys(("BACKENDS", "BackendSpec", "register_backend"), "backends"),
    **dict.fromkeys(
        ("Ack", "Activation", "CellMean", "ConfigVersionInfo", "DeploymentInfo", "EventBucket", "EventRow",
         "FieldChange", "Histogram", "InstanceInfo", "KindTotal", "LayerShape", "LayerStatBucket", "LayerStatRow",
         "LayerSummary", "LayerView", "LineageInfo", "LineageSummary", "LineageUnitInfo", "MemoryBucket", "MemoryRow",
         "PoolBucket", "Profile", "RequestBucket",
         "RequestRow", "RequestTotals", "RunInfo", "RunSummary", "SamplePlan"),
        "types",
    ),
    **dict.fromkeys(("default_db_path", "resolve_url"), "url"),
}

__all__ = [  # the keys of _EXPORTS (a test keeps them equal), spelled out for tools that read __all__
    "ACK_STATUSES", "Ack", "Activation", "ArmData", "CanaryInfo", "BACKENDS", "BackendSpec", "BadDatabaseURLError", "CACHE_EVENTS",
    "CHANNEL", "CellMean", "ConfigSource", "ConfigVersionInfo", "CorruptConfigError",
    "DatabaseUnavailableError", "DeploymentInfo", "EVENT_KINDS", "Event", "EventBucket", "EventRow",
    "FieldChange", "Histogram", "InstanceInfo", "KindTotal", "LAYER_STATS", "LayerShape", "LayerStat",
    "LayerStatBucket", "LayerStatRow", "LayerSummary", "LayerView", "LineageInfo",
    "LineageSummary", "LineageUnitInfo", "MEMORY_SAMPLES", "MemoryBucket",
    "MemoryRow", "MemorySample", "NotFoundError", "POOL_DETAIL_KEYS", "PoolBucket", "Profile", "REQUESTS",
    "RUN_KINDS", "RUN_STATUSES", "RegistryError", "Request", "RequestBucket", "RequestRow", "RequestTotals",
    "RunInfo", "RunRecorder", "RunSummary", "SAMPLES", "SESSION_KINDS", "SKEW_METRICS", "SamplePlan", "SampleRow",
    "SampleSink", "SchemaError", "SchemaOutdatedError", "SchemaTooNewError", "Scope", "Store", "StoreError",
    "VLLM_SAMPLES", "bucket_width", "default_db_path", "register_backend", "resolve_url",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvpilot.storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kvpilot.storage.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from kvpilot.storage.backends import BACKENDS, BackendSpec, register_backend
    from kvpilot.storage.canary import ArmData, CanaryInfo
    from kvpilot.storage.errors import (
        BadDatabaseURLError,
        CorruptConfigError,
        DatabaseUnavailableError,
        NotFoundError,
        RegistryError,
        SchemaError,
        SchemaOutdatedError,
        SchemaTooNewError,
        StoreError,
    )
    from kvpilot.storage.protocols import ConfigSource, RunRecorder, SampleSink
    from kvpilot.storage.registry import CHANNEL
    from kvpilot.storage.rows import SampleRow
    from kvpilot.storage.schema import (
        ACK_STATUSES,
        CACHE_EVENTS,
        EVENT_KINDS,
        LAYER_STATS,
        MEMORY_SAMPLES,
        POOL_DETAIL_KEYS,
        REQUESTS,
        RUN_KINDS,
        RUN_STATUSES,
        SAMPLES,
        SESSION_KINDS,
        SKEW_METRICS,
        VLLM_SAMPLES,
        Event,
        LayerStat,
        MemorySample,
        Request,
    )
    from kvpilot.storage.scope import Scope, bucket_width
    from kvpilot.storage.store import Store
    from kvpilot.storage.types import (
        Ack,
        Activation,
        CellMean,
        ConfigVersionInfo,
        DeploymentInfo,
        EventBucket,
        EventRow,
        FieldChange,
        Histogram,
        InstanceInfo,
        KindTotal,
        LayerShape,
        LayerStatBucket,
        LayerStatRow,
        LayerSummary,
        LayerView,
        LineageInfo,
        LineageSummary,
        LineageUnitInfo,
        MemoryBucket,
        MemoryRow,
        PoolBucket,
        Profile,
        RequestBucket,
        RequestRow,
        RequestTotals,
        RunInfo,
        RunSummary,
        SamplePlan,
    )
    from kvpilot.storage.url import default_db_path, resolve_url
