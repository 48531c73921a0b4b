"""Efficiency: measured GFlops/W of HPL runs beside the TOP500 November 2024 EuroHPC figures; PUE per factory
(live, and over a month); energy per GPU-hour per factory."""

from __future__ import annotations

import time

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from aifmon.dashboard.accounting import MonthEnergy, month_energy, months_with_data
from aifmon.dashboard.pages import EVERYONE, GRAPH_CONFIG, PageContext, query_string, timed, utc
from aifmon.dashboard.panels import factory_status
from aifmon.rollups.efficiency import TOP500_SOURCE, league_table, measured_runs
from aifmon.rollups.energy import UNALLOCATED
from aifmon.telemetry.inventory import Inventory

PATH = "/efficiency"
TITLE = "Efficiency"
PREFIX = "efficiency-"
ROLES = EVERYONE
REFRESH_S = 60.0
"""Month figures move slowly: refreshed every minute, or slower if a read takes longer."""


def layout(ctx: PageContext, query: dict[str, list[str]]) -> html.Div:
    months = months_with_data(ctx.store)
    month = query.get("month", [months[0]])[0]
    return html.Div([
        dcc.Location(id=PREFIX + "url", refresh=False),
        html.H1("Efficiency: GFlops/W, PUE, energy per GPU-hour"),
        html.P("Green500-style GFlops/W of HPL runs measured here (`aifmon efficiency hpl --record`, with their EEHPC level) "
               f"beside the EuroHPC entries of the {TOP500_SOURCE.split(':')[0]}. PUE = facility energy / IT energy, where a "
               "facility meter exists.", className="lede"),
        html.Div([html.Label(["Month (UTC) ", dcc.Dropdown(id=PREFIX + "month", options=months,
                                                            value=month if month in months else months[0], clearable=False)],
                             className="control")], className="controls"),
        dcc.Graph(id=PREFIX + "league", config=GRAPH_CONFIG, className="panel"),
        html.Div([dcc.Graph(id=PREFIX + "pue", config=GRAPH_CONFIG, className="panel"),
                  dcc.Graph(id=PREFIX + "per-gpu-hour", config=GRAPH_CONFIG, className="panel")], className="grid2"),
        html.Div(id=PREFIX + "table", className="panel"),
        html.P(id=PREFIX + "updated", className="footnote"),
        dcc.Interval(id=PREFIX + "tick", interval=int(max(ctx.refresh_s, REFRESH_S) * 1000)),
    ])


def register(app: dash.Dash, ctx: PageContext) -> None:
    @app.callback(Output(PREFIX + "url", "search"), Input(PREFIX + "month", "value"))
    def remember(month: str) -> str:
        return query_string({"month": month})

    @app.callback(Output(PREFIX + "league", "figure"), Output(PREFIX + "pue", "figure"), Output(PREFIX + "per-gpu-hour", "figure"),
                  Output(PREFIX + "table", "children"), Output(PREFIX + "updated", "children"), Output(PREFIX + "tick", "interval"),
                  Input(PREFIX + "tick", "n_intervals"), Input(PREFIX + "month", "value"))
    def refresh(_n: int | None, month: str):
        with timed(ctx, PREFIX, "refresh"):
            now_ms = int(time.time() * 1000)
            league = league_table(measured_runs(ctx.store, 0, now_ms + 1))  # every run so far
            energy = month_energy(ctx.store, ctx.inventory, month, now_ms)
            per_factory = factory_efficiency(energy, ctx.inventory, factory_status(ctx.store, ctx.inventory, now_ms))
            out = (league_figure(league), _pue_figure(per_factory, month), _per_gpu_hour_figure(per_factory, month),
                   _table(per_factory, month), f"Updated {utc(now_ms)}. League: {TOP500_SOURCE}.")
        return (*out, ctx.timings.interval_ms(PREFIX, max(ctx.refresh_s, REFRESH_S)))


def factory_efficiency(energy: MonthEnergy, inventory: Inventory, status: pd.DataFrame) -> pd.DataFrame:
    """Per factory: pue_month (facility / IT energy over the month's hours, metered only), pue_now (facility / IT
    power now, meter only), design_pue, gpu_kwh_per_gpu_hour and it_kwh_per_gpu_hour (energy of jobs per
    GPU-hour they held, kWh/h = average kW per GPU)."""
    names = {f.id: f.name for f in inventory.live_factories()}
    out = pd.DataFrame({"factory": list(names), "name": list(names.values()),
                        "design_pue": [f.design_pue for f in inventory.live_factories()]})
    sites = energy.sites.set_index("factory") if len(energy.sites) else pd.DataFrame(columns=["facility_energy_j", "it_energy_j"])
    it = sites["it_energy_j"].astype(float)
    out["pue_month"] = out["factory"].map((sites["facility_energy_j"].astype(float) / it).where(it > 0))
    live = status.set_index("factory")
    metered = live["power_source"] == "meter"
    out["pue_now"] = out["factory"].map((live["facility_power_watts"] / live["it_power_watts"]).where(metered))
    jobs = energy.jobs[energy.jobs["project"] != UNALLOCATED]
    per = jobs.groupby("factory")[["energy_j", "node_other_j", "gpu_seconds"]].sum()
    hours = per["gpu_seconds"] / 3600.0
    out["gpu_hours"] = out["factory"].map(hours).fillna(0.0)
    out["gpu_kwh_per_gpu_hour"] = out["factory"].map((per["energy_j"] / 3.6e6 / hours).where(hours > 0))
    out["it_kwh_per_gpu_hour"] = out["factory"].map(((per["energy_j"] + per["node_other_j"]) / 3.6e6 / hours).where(hours > 0))
    return out


def league_figure(league: pd.DataFrame) -> go.Figure:
    """GFlops/W per system, best first; measured runs in a colour of their own."""
    rows = league[league["gflops_per_watt"].notna()].iloc[::-1]
    measured = rows["top500_rank"].isna()
    fig = go.Figure(go.Bar(
        x=rows["gflops_per_watt"], y=rows["system"], orientation="h",
        marker_color=np.where(measured, "#e65100", "#1565c0"),
        text=[f"{v:.2f}" for v in rows["gflops_per_watt"]], textposition="outside", textfont=dict(size=12),
        customdata=np.stack([rows["source"], rows["power_kw"].fillna(0)], axis=-1),
        hovertemplate="%{y}: %{x:.2f} GFlops/W at %{customdata[1]:,.0f} kW<br>%{customdata[0]}<extra></extra>",
    ))
    n_measured = int(measured.sum())
    fig.update_layout(
        title=f"Energy efficiency (GFlops/W): TOP500 Nov 2024 EuroHPC entries (blue), measured here (orange, {n_measured} runs)",
        xaxis=dict(title="GFlops/W (higher is better)"), height=max(300, 60 + 22 * len(rows)),
        margin=dict(l=10, r=10, t=50, b=40), template="plotly_white",
    )
    return fig


def _pue_figure(per: pd.DataFrame, month: str) -> go.Figure:
    fig = go.Figure([go.Bar(x=per["name"], y=per[col], name=label, marker_color=colour,
                            hovertemplate=f"%{{x}}: {label} %{{y:.3f}}<extra></extra>")
                     for col, label, colour in (("design_pue", "design PUE", "#cfd8dc"), ("pue_month", f"measured PUE, {month}", "#1565c0"),
                                                ("pue_now", "measured PUE, now", "#43a047"))])
    fig.update_layout(barmode="group", title=f"PUE per factory (facility / IT energy; 1.0 is ideal), {month}",
                      yaxis=dict(title="PUE (ratio)", range=[1.0, max(1.6, float(np.nanmax(per[["design_pue", "pue_month", "pue_now"]]
                                                                                         .to_numpy(dtype=float), initial=1.0)) + 0.05)]),
                      legend=dict(orientation="h", y=-0.45), height=380, margin=dict(l=10, r=10, t=40, b=40), template="plotly_white")
    return fig


def _per_gpu_hour_figure(per: pd.DataFrame, month: str) -> go.Figure:
    fig = go.Figure([go.Bar(x=per["name"], y=per[col], name=label, marker_color=colour,
                            hovertemplate=f"%{{x}}: {label} %{{y:.3f}} kWh per GPU-hour<extra></extra>")
                     for col, label, colour in (("gpu_kwh_per_gpu_hour", "GPU board", "#1565c0"),
                                                ("it_kwh_per_gpu_hour", "GPU + share of node", "#78909c"))])
    fig.update_layout(barmode="group", title=f"Energy per GPU-hour in jobs (kWh per GPU-hour = average kW per GPU), {month}",
                      yaxis=dict(title="kWh per GPU-hour"), legend=dict(orientation="h", y=-0.45), height=380,
                      margin=dict(l=10, r=10, t=40, b=40), template="plotly_white")
    return fig


def _table(per: pd.DataFrame, month: str) -> html.Table:
    def num(v: float, fmt: str) -> str:
        return format(v, fmt) if np.isfinite(v) else "no data"

    head = ["Factory", "Design PUE", f"PUE {month}", "PUE now", "GPU-hours in jobs (h)", "GPU kWh per GPU-hour", "IT kWh per GPU-hour"]
    rows = [html.Tr([html.Td(r.name), html.Td(num(r.design_pue, ".2f")), html.Td(num(r.pue_month, ".3f")), html.Td(num(r.pue_now, ".3f")),
                     html.Td(num(r.gpu_hours, ",.0f")), html.Td(num(r.gpu_kwh_per_gpu_hour, ".3f")), html.Td(num(r.it_kwh_per_gpu_hour, ".3f"))],
                    className="efficiency-row") for r in per.itertuples()]
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="table")
