"""Factories live: every factory's power against its cap, now and over the last 24 hours."""

from __future__ import annotations

import time

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from dashboard.panels import BREACHED, CRITICAL, WARNING, factory_power_history, factory_status, format_watts, level_of
from telemetry.inventory import Inventory
from telemetry.store import Store

PREFIX = "factories-"
_COLOURS = {"ok": "#2e7d32", "warning": "#f9a825", "critical": "#e65100", "breached": "#b71c1c", "no-data": "#9e9e9e"}
_HISTORY_H = 24
# Colour by level on a 0-110 % axis: greens up to the warning, then amber, orange, red (as the bars).
_LEVEL_SCALE = [
    [0.0, "#e8f5e9"], [WARNING * 100 / 110, "#43a047"],
    [WARNING * 100 / 110, "#f9a825"], [CRITICAL * 100 / 110, "#f9a825"],
    [CRITICAL * 100 / 110, "#e65100"], [BREACHED * 100 / 110, "#e65100"],
    [BREACHED * 100 / 110, "#b71c1c"], [1.0, "#b71c1c"],
]


def layout(inventory: Inventory, refresh_s: float) -> html.Div:
    return html.Div(
        [
            html.H1("Factories live: power against cap"),
            html.P(
                "Facility power (meter, or IT power x design PUE where there is none) as a share of each "
                f"factory's contracted power cap. Amber from {WARNING:.0%}, red from {CRITICAL:.0%}, over the cap above {BREACHED:.0%}.",
                className="lede",
            ),
            html.Div(id=PREFIX + "kpis", className="kpis"),
            html.Div(
                [
                    dcc.Graph(id=PREFIX + "bars", config={"displaylogo": False}, className="panel"),
                    dcc.Graph(id=PREFIX + "history", config={"displaylogo": False}, className="panel"),
                ],
                className="grid",
            ),
            html.Div(id=PREFIX + "table", className="panel"),
            html.P(id=PREFIX + "updated", className="footnote"),
            dcc.Interval(id=PREFIX + "tick", interval=int(refresh_s * 1000)),
        ]
    )


def register(app: dash.Dash, store: Store, inventory: Inventory) -> None:
    @app.callback(
        Output(PREFIX + "kpis", "children"),
        Output(PREFIX + "bars", "figure"),
        Output(PREFIX + "history", "figure"),
        Output(PREFIX + "table", "children"),
        Output(PREFIX + "updated", "children"),
        Input(PREFIX + "tick", "n_intervals"),
    )
    def refresh(_n: int | None):
        now_ms = int(time.time() * 1000)
        status = factory_status(store, inventory, now_ms)
        history = factory_power_history(store, inventory, now_ms - _HISTORY_H * 3_600_000, now_ms)
        updated = f"Updated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now_ms / 1000))}; store {store.url}."
        return _kpis(status), _bars(status), _history(history, inventory), _table(status), updated


def _kpis(status: pd.DataFrame) -> list[html.Div]:
    reporting = int(status["data_age_s"].notna().sum())
    total_w = status["facility_power_watts"].sum(min_count=1)
    caps = status["power_cap_watts"].sum()
    worst = status.loc[status["share_of_cap"].idxmax()] if status["share_of_cap"].notna().any() else None

    def kpi(label: str, value: str, kid: str) -> html.Div:
        return html.Div([html.Div(value, className="kpi-value", id=PREFIX + kid), html.Div(label, className="kpi-label")], className="kpi")

    return [
        kpi("EuroHPC facility power", format_watts(total_w), "total"),
        kpi("sum of power caps", format_watts(caps), "caps"),
        kpi("factories reporting", f"{reporting} / {len(status)}", "reporting"),
        kpi("highest share of cap", f"{worst['share_of_cap']:.0%} ({worst['name']})" if worst is not None else "no data", "worst"),
    ]


def _bars(status: pd.DataFrame) -> go.Figure:
    s = status.sort_values("share_of_cap", na_position="first")
    levels = [level_of(v) for v in s["share_of_cap"]]
    fig = go.Figure(
        go.Bar(
            x=s["share_of_cap"].fillna(0) * 100,
            y=s["name"],
            orientation="h",
            marker_color=[_COLOURS[lv] for lv in levels],
            text=[f"{v:.0%}" if pd.notna(v) else "no data" for v in s["share_of_cap"]],
            textposition="outside",
            customdata=list(zip(s["facility_power_watts"].map(format_watts), s["power_cap_watts"].map(format_watts), s["power_source"])),
            hovertemplate="%{y}<br>%{customdata[0]} of %{customdata[1]} cap (%{x:.1f} %)<br>source: %{customdata[2]}<extra></extra>",
        )
    )
    for share, colour in ((WARNING, _COLOURS["warning"]), (CRITICAL, _COLOURS["critical"]), (BREACHED, _COLOURS["breached"])):
        fig.add_vline(x=share * 100, line_dash="dot", line_color=colour)
    fig.update_layout(
        title="Facility power now, % of power cap",
        xaxis=dict(title="% of power cap (dotted: warning 85, critical 95, cap 100)", range=[0, 115],
                   tickvals=[0, 25, 50, 85, 95, 100]),
        margin=dict(l=10, r=20, t=50, b=40),
        height=60 + 28 * len(s),
        template="plotly_white",
    )
    return fig


def _history(history: pd.DataFrame, inventory: Inventory) -> go.Figure:
    """Factory x time heatmap of the share of cap: 13 lines would tangle, a row per factory reads at a glance."""
    names = {f.id: f.name for f in inventory.live_factories()}
    grid = history.pivot_table(index="factory", columns="t_ms", values="share_of_cap").reindex(list(names)[::-1])
    watts = history.pivot_table(index="factory", columns="t_ms", values="watts").reindex(grid.index)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy() * 100,
        x=pd.to_datetime(grid.columns, unit="ms", utc=True),
        y=[names[f] for f in grid.index],
        customdata=np.vectorize(format_watts, otypes=[str])(watts.to_numpy()) if watts.size else None,
        zmin=0, zmax=110,
        colorscale=_LEVEL_SCALE,
        colorbar=dict(title="% of cap", tickvals=[0, 50, 85, 95, 100, 110]),
        hovertemplate="%{y}<br>%{x|%H:%M} UTC: %{z:.1f} % of cap (%{customdata})<extra></extra>",
        xgap=0, ygap=1,
    ))
    fig.update_layout(
        title=f"Facility power, % of cap, last {_HISTORY_H} h (5-minute means)",
        xaxis=dict(title="time (UTC)"),
        margin=dict(l=10, r=10, t=50, b=40),
        height=60 + 28 * max(1, len(grid)) + 40,
        template="plotly_white",
    )
    return fig


def _table(status: pd.DataFrame) -> html.Table:
    head = ["Factory", "Country", "Facility power", "IT power", "Power cap", "% of cap", "Source", "GPUs busy", "Data age"]
    rows = []
    for r in status.sort_values("share_of_cap", ascending=False, na_position="last").itertuples():
        level = level_of(r.share_of_cap)
        rows.append(html.Tr(
            [
                html.Td(r.name), html.Td(r.country), html.Td(format_watts(r.facility_power_watts)),
                html.Td(format_watts(r.it_power_watts)), html.Td(format_watts(r.power_cap_watts)),
                html.Td(f"{r.share_of_cap:.1%}" if pd.notna(r.share_of_cap) else "no data", className=f"level-{level}"),
                html.Td(r.power_source), html.Td(f"{r.gpus_busy} / {r.gpus}"),
                html.Td(f"{r.data_age_s:.0f} s" if pd.notna(r.data_age_s) else "no data"),
            ],
            id=f"{PREFIX}row-{r.factory}", className="factory-row",
        ))
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="table")
