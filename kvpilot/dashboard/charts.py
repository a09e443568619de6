"""Altair chart builders shared by the pages (Altair ships with streamlit; plotly is not needed).

Charts take small, already-aggregated DataFrames. Layers, heads and trial numbers are encoded as ordinal
or nominal, never quantitative, so legends show categories instead of a 0.0-1.0 gradient.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from kvpilot.dashboard.fmt import AXIS_TIME

HEIGHT = 260


def time_axis(times: pd.Series | None) -> alt.Axis:
    """A 24-hour time axis (Vega's default labels are 12-hour without AM/PM) whose ticks never repeat a label:
    seconds shown for spans under 10 minutes, else ticks on whole minutes or hours, about 6 of them."""
    span = 0.0
    if times is not None and len(times):
        span = (pd.Timestamp(times.max()) - pd.Timestamp(times.min())).total_seconds()
    if span < 600:
        return alt.Axis(format="%H:%M:%S", labelAngle=0, tickCount=6)
    # Vega picks a nice interval near span/6, at least a minute here, so "%H:%M" labels never repeat.
    # (A {"interval": "minute", "step": n} tick count breaks Streamlit's Vega: the chart draws empty.)
    return alt.Axis(format="%H:%M", labelAngle=0, tickCount=6)


def local_time(ts: float) -> pd.Timestamp:
    """A timestamp for a chart in the same local time as the tables (a naive time: Vega shows it as given)."""
    return pd.Timestamp.fromtimestamp(ts)


def _x(field: str, x_type: str, title: str | None, df: pd.DataFrame) -> alt.X:
    if x_type == "T":
        return alt.X(f"{field}:T", title=title, axis=time_axis(df[field] if field in df else None))
    return alt.X(f"{field}:{x_type}", title=title)


def _tip(field: str, x_type: str) -> alt.Tooltip:
    return alt.Tooltip(f"{field}:T", format=AXIS_TIME) if x_type == "T" else alt.Tooltip(f"{field}:{x_type}")


def heatmap(df: pd.DataFrame, x: str, y: str, value: str, *, x_type: str = "O", title: str = "") -> alt.Chart:
    """A rectangle per (x, y) cell coloured by `value` (e.g. layer x head, or time x layer)."""
    return (
        alt.Chart(df, title=title)
        .mark_rect()
        .encode(
            x=_x(x, x_type, None if x_type == "T" else x, df),
            y=alt.Y(f"{y}:O", title=y, sort="ascending"),
            color=alt.Color(f"{value}:Q", title=value, scale=alt.Scale(scheme="viridis")),
            tooltip=[_tip(x, x_type), alt.Tooltip(f"{y}:O"), alt.Tooltip(f"{value}:Q", format=".4g")],
        )
        .properties(height=max(HEIGHT, 12 * df[y].nunique()) if len(df) else HEIGHT)
    )


def lines(df: pd.DataFrame, y_title: str, *, fmt: str = ".3s", title: str = "") -> alt.Chart:
    """Lines over time from a long frame with columns `time`, `series`, `value` (already in the unit of
    `y_title`: MiB, ms, ...); points are drawn when there are few, so a short run still shows its values."""
    return (
        alt.Chart(df, title=title)
        .mark_line(point=len(df) < 80)
        .encode(
            x=alt.X("time:T", title=None, axis=time_axis(df["time"] if "time" in df else None)),
            y=alt.Y("value:Q", title=y_title, axis=alt.Axis(format=fmt)),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=[alt.Tooltip("time:T", format=AXIS_TIME), "series:N", alt.Tooltip("value:Q", format=",.4~f")],
        )
        .properties(height=HEIGHT)
    )


def bars(df: pd.DataFrame, x: str, y: str, *, x_type: str = "O", color: str | None = None, title: str = "",
         colors: dict[str, str] | None = None) -> alt.Chart:
    """Vertical bars; `colors` fixes a colour per category of `color` (e.g. grey for harmless event kinds)."""
    tooltip = [_tip(x, x_type), alt.Tooltip(f"{y}:Q", format=",.4~f")]
    enc: dict = {"x": _x(x, x_type, None if x_type == "T" else x, df), "y": alt.Y(f"{y}:Q", title=y), "tooltip": tooltip}
    if color:
        scale = alt.Scale(domain=list(colors), range=list(colors.values())) if colors else alt.Undefined
        enc["color"] = alt.Color(f"{color}:N", title=None, scale=scale, legend=alt.Legend(orient="bottom"))
        tooltip.append(alt.Tooltip(f"{color}:N"))
    return alt.Chart(df, title=title).mark_bar().encode(**enc).properties(height=HEIGHT)


def hbars(df: pd.DataFrame, label: str, value: str, *, title: str = "", fmt: str = ".0%") -> alt.Chart:
    """Horizontal bars, one row per label (long names stay readable), tall enough for every row."""
    return (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            y=alt.Y(f"{label}:N", title=None, sort="-x", axis=alt.Axis(labelLimit=360)),
            x=alt.X(f"{value}:Q", title=value, axis=alt.Axis(format=fmt)),
            tooltip=[alt.Tooltip(f"{label}:N"), alt.Tooltip(f"{value}:Q", format=fmt)],
        )
        .properties(height=hbars_height(len(df)) - 60)
    )


def hbars_height(rows: int) -> int:
    """The pixel height `hbars` needs for `rows` bars plus its title and axis (Streamlit is told it too)."""
    return max(180, 32 * rows + 100)


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


def pareto(df: pd.DataFrame, x: str, y: str, *, x_fmt: str = ",.4~f", y_fmt: str = ",.4~f",
           reference: pd.DataFrame | None = None) -> alt.Chart:
    """Completed trials as points, the Pareto front highlighted and joined; clicking a point selects it.
    `reference` (same x/y columns and a `label`) adds fixed points such as the full cache, drawn as crosses."""
    pick = alt.selection_point(name="pick", fields=["trial"], on="click")
    base = alt.Chart(df)
    # padded scales: the extreme points (often the full cache) are drawn inside the frame, with their label
    x_enc = alt.X(f"{x}:Q", title=x, scale=alt.Scale(zero=False, padding=40), axis=alt.Axis(format=x_fmt))
    y_enc = alt.Y(f"{y}:Q", title=y, scale=alt.Scale(zero=False, padding=24), axis=alt.Axis(format=y_fmt))
    points = base.mark_circle(size=90).encode(
        x=x_enc, y=y_enc,
        color=alt.Color("front:N", title=None, legend=alt.Legend(orient="bottom"),
                        scale=alt.Scale(domain=["Pareto front", "dominated", "fails a constraint", "full cache"],
                                        range=["#d62728", "#9ecae1", "#bdbdbd", "#444444"])),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.5)),
        tooltip=["trial:O", alt.Tooltip(f"{x}:Q", format=x_fmt), alt.Tooltip(f"{y}:Q", format=y_fmt)],
    ).add_params(pick)
    front = base.transform_filter(alt.datum.front == "Pareto front").mark_line(color="#d62728").encode(
        x=f"{x}:Q", y=f"{y}:Q", order=f"{x}:Q"
    )
    layers: list[alt.Chart] = [front, points]
    if reference is not None and len(reference):
        ref = alt.Chart(reference)
        layers.append(ref.mark_point(shape="cross", size=160, filled=True, color="#444444").encode(
            x=x_enc, y=y_enc, tooltip=["label:N", alt.Tooltip(f"{x}:Q", format=x_fmt),
                                       alt.Tooltip(f"{y}:Q", format=y_fmt)]))
        layers.append(ref.mark_text(align="left", dx=10, color="#444444").encode(x=x_enc, y=y_enc, text="label:N"))
    return alt.layer(*layers).properties(height=360)
