"""Overview: Europe's factories on a map (marker size = power, colour = % of cap), EuroHPC power and
energy today, active alerts, and every factory's power against its cap, now and over the last 24 hours."""

from __future__ import annotations

import time

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from aifmon.alerts.rules import paged
from aifmon.alerts.state import load_state
from aifmon.dashboard.pages import EVERYONE, GRAPH_CONFIG, PageContext, kpi, timed, utc
from aifmon.dashboard.panels import (
    BREACHED,
    CRITICAL,
    WARNING,
    facility_energy,
    factory_power_history,
    factory_status,
    format_energy,
    format_watts,
    level_of,
)
from aifmon.telemetry.inventory import Inventory

PATH = "/"
TITLE = "Overview"
PREFIX = "factories-"
ROLES = EVERYONE
MAP_CONFIG: dcc.Graph.Config = {**GRAPH_CONFIG, "topojsonURL": "/assets/topojson/"}
"""Plotly fetches its base map (europe_50m.json) from here, this server, instead of its CDN."""
_COLOURS = {"ok": "#2e7d32", "warning": "#f9a825", "critical": "#e65100", "breached": "#b71c1c", "no-data": "#9e9e9e"}
_HISTORY_H = 24
# Colour by level on a 0-110 % axis: greens up to the warning, then amber, orange, red (as the bars).
_LEVEL_SCALE = [
    [0.0, "#e8f5e9"], [WARNING * 100 / 110, "#43a047"],
    [WARNING * 100 / 110, "#f9a825"], [CRITICAL * 100 / 110, "#f9a825"],
    [CRITICAL * 100 / 110, "#e65100"], [BREACHED * 100 / 110, "#e65100"],
    [BREACHED * 100 / 110, "#b71c1c"], [1.0, "#b71c1c"],
]


def layout(ctx: PageContext, query: dict[str, list[str]]) -> html.Div:
    return html.Div(
        [
            html.H1("Overview: Europe's AI Factories, power against cap"),
            html.P(
                "Facility power (meter, or IT power x design PUE where there is none) as a share of each "
                f"factory's contracted power cap. Amber from {WARNING:.0%}, red from {CRITICAL:.0%}, over the cap above {BREACHED:.0%}.",
                className="lede",
            ),
            html.Div(id=PREFIX + "kpis", className="kpis"),
            html.Div(
                [
                    dcc.Graph(id=PREFIX + "map", config=MAP_CONFIG, className="panel"),
                    dcc.Graph(id=PREFIX + "bars", config=GRAPH_CONFIG, className="panel"),
                ],
                className="grid",
            ),
            html.Div([html.H2("Active alerts"), html.Div(id=PREFIX + "alerts")], className="panel"),
            dcc.Graph(id=PREFIX + "history", config=GRAPH_CONFIG, className="panel"),
            html.Div(id=PREFIX + "table", className="panel"),
            html.P(id=PREFIX + "updated", className="footnote"),
            dcc.Interval(id=PREFIX + "tick", interval=int(ctx.refresh_s * 1000)),
        ]
    )


def register(app: dash.Dash, ctx: PageContext) -> None:
    store, inventory = ctx.store, ctx.inventory

    @app.callback(
        Output(PREFIX + "kpis", "children"),
        Output(PREFIX + "map", "figure"),
        Output(PREFIX + "bars", "figure"),
        Output(PREFIX + "alerts", "children"),
        Output(PREFIX + "history", "figure"),
        Output(PREFIX + "table", "children"),
        Output(PREFIX + "updated", "children"),
        Output(PREFIX + "tick", "interval"),
        Input(PREFIX + "tick", "n_intervals"),
    )
    def refresh(_n: int | None):
        with timed(ctx, PREFIX, "refresh"):
            now_ms = int(time.time() * 1000)
            status = factory_status(store, inventory, now_ms)
            history = factory_power_history(store, inventory, now_ms - _HISTORY_H * 3_600_000, now_ms)
            midnight_ms = now_ms // 86_400_000 * 86_400_000
            energy_j = facility_energy(store, midnight_ms, now_ms)
            active = [a for a in load_state(ctx.alert_state)["alerts"] if a["state"] != "resolved" and paged(a["labels"], a.get("inhibited", False))]
            updated = f"Updated {utc(now_ms)}; store {store.url}."
            out = (_kpis(status, energy_j, active), map_figure(status), _bars(status), _alerts(active), _history(history, inventory),
                   _table(status), updated)
        return (*out, ctx.timings.interval_ms(PREFIX, ctx.refresh_s))


def _kpis(status: pd.DataFrame, energy_j: pd.Series, active: list[dict]) -> list[html.Div]:
    reporting = int(status["data_age_s"].notna().sum())
    total_w = status["facility_power_watts"].sum(min_count=1)
    caps = status["power_cap_watts"].sum()
    worst = status.loc[status["share_of_cap"].idxmax()] if status["share_of_cap"].notna().any() else None
    firing = sum(a["state"] == "firing" for a in active)
    return [
        kpi("EuroHPC facility power now", format_watts(total_w), PREFIX + "total"),
        kpi("EuroHPC facility energy today (since 00:00 UTC, metered)", format_energy(float(energy_j.sum())), PREFIX + "energy"),
        kpi("sum of power caps", format_watts(caps), PREFIX + "caps"),
        kpi("factories reporting", f"{reporting} / {len(status)}", PREFIX + "reporting"),
        kpi("highest share of cap", f"{worst['share_of_cap']:.0%} ({worst['name']})" if worst is not None else "no data", PREFIX + "worst",
            level_of(worst["share_of_cap"]) if worst is not None else ""),
        kpi("alerts firing / pending (paged)", f"{firing} / {len(active) - firing}", PREFIX + "alert-count", "critical" if firing else ""),
    ]


def map_figure(status: pd.DataFrame) -> go.Figure:
    """Europe's factories: marker area proportional to facility power, colour = % of cap (as the bars)."""
    s = status.assign(share_pct=status["share_of_cap"] * 100)
    power = s["facility_power_watts"].fillna(0.0)
    # Area, not diameter, proportional to power (sizemode "area"); the largest factory gets a 40 px marker.
    sizeref = 2.0 * max(float(power.max()), 1.0) / 40 ** 2
    fig = go.Figure(go.Scattergeo(
        lat=s["latitude"], lon=s["longitude"], text=s["name"], mode="markers+text", textposition="top center",
        textfont=dict(size=10, color="#12263f"),
        marker=dict(size=power, sizemode="area", sizeref=sizeref, sizemin=6, color=s["share_pct"].fillna(0), cmin=0, cmax=110,
                    colorscale=_LEVEL_SCALE, line=dict(width=1, color="#12263f"),
                    colorbar=dict(title="% of cap", tickvals=[0, 50, 85, 95, 100, 110], thickness=12)),
        customdata=list(zip(s["facility_power_watts"].map(format_watts), s["power_cap_watts"].map(format_watts))),
        hovertemplate="%{text}<br>%{customdata[0]} of %{customdata[1]} cap (%{marker.color:.1f} %)<extra></extra>",
    ))
    fig.update_geos(scope="europe", resolution=50, showcountries=True, countrycolor="#b0bec5", showland=True, landcolor="#f1f3f5",
                    showocean=True, oceancolor="#e3f2fd", lataxis_range=[34, 70], lonaxis_range=[-12, 35])
    fig.update_layout(title="Power now: marker area = power, colour = % of cap", height=520,
                      margin=dict(l=0, r=0, t=40, b=0), template="plotly_white")
    return fig


def _alerts(active: list[dict]) -> html.Div | html.P:
    if not active:
        return html.P("No alert is pending or firing.", className="empty", id=PREFIX + "alerts-none")
    order = {"firing": 0, "pending": 1}
    rows = []
    for a in sorted(active, key=lambda a: (order.get(a["state"], 2), a["labels"].get("severity") != "critical"))[:8]:
        labels = a["labels"]
        where = " ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity"))
        rows.append(html.Tr([html.Td(a["state"], className=f"state-{a['state']}"), html.Td(labels["alertname"]),
                             html.Td(labels.get("severity", ""), className=f"level-{labels.get('severity', '')}"), html.Td(where),
                             html.Td(a["annotations"].get("percentage", ""))], className="overview-alert"))
    more = f"{len(active) - 8} more on the Alerts page." if len(active) > 8 else ""
    return html.Div([html.Table([html.Thead(html.Tr([html.Th(h) for h in ("State", "Alert", "Severity", "Where", "Share of cap")])),
                                 html.Tbody(rows)], className="table"), html.P(more, className="footnote")])


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
