"""Where kvpilot keeps its files. Torch-free, so storage and the CLI can import it cheaply."""

from __future__ import annotations

import os
from pathlib import Path


def kvpilot_home() -> Path:
    """kvpilot's local directory: $KVPILOT_HOME, else ~/.cache/kvpilot (converted models, default database)."""
    return Path(os.environ.get("KVPILOT_HOME", Path.home() / ".cache" / "kvpilot"))
