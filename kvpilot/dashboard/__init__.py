"""kvpilot's Streamlit dashboard: a control room over the store (run it with `kvpilot dashboard`).

The app (`app.py`) is a multipage Streamlit script; each page lives in `views/`. Pages read the store only
through `Store` methods (`context.query`), whose readers and aggregates run in the database
(`kvpilot.storage.queries`, `kvpilot.storage.aggregates`), so they stay fast on stores with tens of
millions of samples. Nothing here imports torch. Settings come from environment variables that
`kvpilot dashboard` sets: KVPILOT_DB (the store) and KVPILOT_DASHBOARD_READ_ONLY (hide push/rollback/promote).
"""

from __future__ import annotations

from pathlib import Path

APP_PATH = Path(__file__).resolve().parent / "app.py"
READ_ONLY_ENV = "KVPILOT_DASHBOARD_READ_ONLY"

__all__ = ["APP_PATH", "READ_ONLY_ENV"]
