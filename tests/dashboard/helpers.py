"""Reading what an AppTest run drew: metrics by label, charts by title (with their data), texts."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
from streamlit.testing.v1 import AppTest

PAGES = ("overview", "runs", "layers", "sessions", "events", "tuning", "configs", "quality")


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def charts(at: AppTest) -> dict[str, pd.DataFrame]:
    """Every Vega-Lite chart on the page by its title, with its (first) dataset as a DataFrame."""
    out = {}
    for el in at.get("vega_lite_chart"):
        spec = json.loads(el.proto.spec)
        title = spec.get("title") or "".join(json.dumps(layer.get("title", "")) for layer in spec.get("layer", []))
        frame = pd.DataFrame()
        if el.proto.datasets:
            frame = pa.ipc.open_stream(el.proto.datasets[0].data.data).read_all().to_pandas()
        out[title if isinstance(title, str) else str(title)] = frame
    return out


def texts(at: AppTest) -> str:
    """All info, warning, error, caption and markdown text on the page, joined."""
    parts = [e.value for kind in ("info", "warning", "error", "caption", "markdown", "subheader", "title")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def frame(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first table on the page that has all of `columns`."""
    for d in at.dataframe:
        if set(columns) <= set(d.value.columns):
            return d.value
    raise AssertionError(f"no table with columns {columns}; tables: {[list(d.value.columns) for d in at.dataframe]}")


def button_labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]
