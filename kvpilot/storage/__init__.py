"""kvpilot's store: probe samples, runs and the config registry on SQLite or PostgreSQL (no torch here).

    from kvpilot.storage import Store
    store = Store.open()                      # $KVPILOT_DB, else $KVPILOT_HOME/kvpilot.db
    inst = store.register_instance("chat", "engine-0")
    store.add_layer_stats([{"layer": 0, "entropy": 2.1}], instance_id=inst.id)
    store.push("chat", {"policy": "snapkv", "compression_ratio": 0.5}, pushed_by="alice")
"""

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
from kvpilot.storage.registry import CHANNEL
from kvpilot.storage.schema import ACK_STATUSES, EVENT_KINDS, RUN_KINDS, RUN_STATUSES
from kvpilot.storage.store import Store
from kvpilot.storage.types import (
    Ack,
    Activation,
    ConfigVersionInfo,
    DeploymentInfo,
    Event,
    EventBucket,
    EventRow,
    FieldChange,
    InstanceInfo,
    LayerStat,
    LayerStatBucket,
    LayerStatRow,
    LayerSummary,
    MemoryBucket,
    MemoryRow,
    Profile,
    Request,
    RequestBucket,
    RequestRow,
    RunInfo,
    RunSummary,
)
from kvpilot.storage.url import default_db_path, resolve_url

__all__ = [
    "ACK_STATUSES",
    "CHANNEL",
    "EVENT_KINDS",
    "RUN_KINDS",
    "RUN_STATUSES",
    "Ack",
    "Activation",
    "BadDatabaseURLError",
    "ConfigVersionInfo",
    "CorruptConfigError",
    "DatabaseUnavailableError",
    "DeploymentInfo",
    "Event",
    "EventBucket",
    "EventRow",
    "FieldChange",
    "InstanceInfo",
    "LayerStat",
    "LayerStatBucket",
    "LayerStatRow",
    "LayerSummary",
    "MemoryBucket",
    "MemoryRow",
    "NotFoundError",
    "Profile",
    "RegistryError",
    "Request",
    "RequestBucket",
    "RequestRow",
    "RunInfo",
    "RunSummary",
    "SchemaError",
    "SchemaOutdatedError",
    "SchemaTooNewError",
    "Store",
    "StoreError",
    "default_db_path",
    "resolve_url",
]
