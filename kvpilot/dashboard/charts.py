"""Altair chart builders shared by the pages (Altair ships with streamlit; plotly is not needed).

Charts take small, already-aggregated DataFrames. Layers, heads and trial numbers are encoded as ordinal
or nominal, never quantitative, so legends show categories instead of a 0.0-1.0 gradient.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

HEIGHT = 260


def heatmap(df: pd.DataFrame, x: str, y: str, value: str, *, x_type: str = "O", title: str = "") -> alt.Chart:
    """A rectangle per (x, y) cell coloured by `value` (e.g. layer x head, or time x layer)."""
    return (
        alt.Chart(df, title=title)
        .mark_rect()
        .encode(
            x=alt.X(f"{x}:{x_type}", title=x),
            y=alt.Y(f"{y}:O", title=y, sort="ascending"),
            color=alt.Color(f"{value}:Q", title=value, scale=alt.Scale(scheme="viridis")),
            tooltip=[alt.Tooltip(f"{x}:{x_type}"), alt.Tooltip(f"{y}:O"), alt.Tooltip(f"{value}:Q", format=".4g")],
        )
        .properties(height=max(HEIGHT, 12 * df[y].nunique()) if len(df) else HEIGHT)
    )


def lines(df: pd.DataFrame, y_title: str, *, fmt: str = ".3s", title: str = "") -> alt.Chart:
    """Lines over time from a long frame with columns `time`, `series`, `value`."""
    return (
        alt.Chart(df, title=title)
        .mark_line(point=len(df) < 40)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("value:Q", title=y_title, axis=alt.Axis(format=fmt)),
            color=alt.Color("series:N", title=None),
            tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "series:N", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(height=HEIGHT)
    )


def bars(df: pd.DataFrame, x: str, y: str, *, x_type: str = "O", color: str | None = None, title: str = "") -> alt.Chart:
    enc = {
        "x": alt.X(f"{x}:{x_type}", title=x),
        "y": alt.Y(f"{y}:Q", title=y),
        "tooltip": [alt.Tooltip(f"{x}:{x_type}"), alt.Tooltip(f"{y}:Q", format=".4g")],
    }
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=None)
    return alt.Chart(df, title=title).mark_bar().encode(**enc).properties(height=HEIGHT)


def histogram(df: pd.DataFrame, unit: str, *, title: str = "") -> alt.Chart:
    """Bars from a frame with `start`, `end`, `requests` (bins computed in SQL)."""
    return (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            x=alt.X("start:Q", title=unit, bin="binned"),
            x2="end:Q",
            y=alt.Y("requests:Q", title="requests"),
            tooltip=[alt.Tooltip("start:Q", format=".4g"), alt.Tooltip("end:Q", format=".4g"), "requests:Q"],
        )
        .properties(height=HEIGHT)
    )


def pareto(df: pd.DataFrame, x: str, y: str) -> alt.Chart:
    """Completed trials as points, the Pareto front highlighted and joined; clicking a point selects it."""
    pick = alt.selection_point(name="pick", fields=["trial"], on="click")
    base = alt.Chart(df)
    points = base.mark_circle(size=90).encode(
        x=alt.X(f"{x}:Q", title=x, scale=alt.Scale(zero=False)),
        y=alt.Y(f"{y}:Q", title=y, scale=alt.Scale(zero=False)),
        color=alt.Color("front:N", title=None, scale=alt.Scale(domain=["Pareto front", "dominated"],
                                                                range=["#d62728", "#9ecae1"])),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.5)),
        tooltip=["trial:O", alt.Tooltip(f"{x}:Q", format=".4g"), alt.Tooltip(f"{y}:Q", format=".4g")],
    ).add_params(pick)
    front = base.transform_filter(alt.datum.front == "Pareto front").mark_line(color="#d62728").encode(
        x=f"{x}:Q", y=f"{y}:Q", order=f"{x}:Q"
    )
    return alt.layer(front, points).properties(height=360)
