"""Projects: energy, GPU-hours, cost and CO2e per project, with its access mode and sector, for a chosen month;
a sortable table and its CSV. Figures come from the hourly rollups (`aifmon.dashboard.accounting`)."""

from __future__ import annotations

import time

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from aifmon.dashboard.accounting import MonthEnergy, month_energy, months_with_data
from aifmon.dashboard.pages import EVERYONE, GRAPH_CONFIG, PageContext, kpi, query_string, timed, utc
from aifmon.rollups.energy import UNALLOCATED
from aifmon.telemetry.csv_cells import csv_safe
from aifmon.telemetry.inventory import Inventory

PATH = "/projects"
TITLE = "Projects"
PREFIX = "projects-"
ROLES = EVERYONE
REFRESH_S = 60.0
"""Month figures move slowly (hourly rollups): refreshed every minute, or slower if a read takes longer."""
COLUMNS = [("project", "Project", "text"), ("name", "Name", "text"), ("factory", "Factory", "text"),
           ("access_mode", "Access mode", "text"), ("sector", "Sector", "text"), ("energy_kwh", "GPU energy (kWh)", "numeric"),
           ("it_kwh", "IT energy (kWh)", "numeric"), ("share", "Share of GPU energy (%)", "numeric"),
           ("gpu_hours", "GPU-hours (h)", "numeric"), ("cost_eur", "Cost (EUR)", "numeric"), ("co2e_kg", "CO2e (kg)", "numeric")]
_SORTABLE = [c for c, _, _ in COLUMNS]


def layout(ctx: PageContext, query: dict[str, list[str]]) -> html.Div:
    months = months_with_data(ctx.store)
    month = query.get("month", [months[0]])[0]
    month = month if month in months else months[0]
    sort = query.get("sort", ["energy_kwh"])[0]
    sort = sort if sort in _SORTABLE else "energy_kwh"
    direction = "asc" if query.get("dir", ["desc"])[0] == "asc" else "desc"
    return html.Div([
        dcc.Location(id=PREFIX + "url", refresh=False),
        html.H1("Projects: energy, GPU-hours, cost and CO2e per project"),
        html.P("Attributed per project from each GPU's energy counter and the job running on it; node energy apart from "
               "the GPUs (CPUs, memory, fans) is shared by GPU-seconds. Cost = IT energy x the factory's price; CO2e = IT "
               "energy x the country's grid intensity. (unallocated) is energy no job held.", className="lede"),
        html.Div([
            html.Label(["Month (UTC) ", dcc.Dropdown(id=PREFIX + "month", options=months, value=month, clearable=False)], className="control"),
            html.Label(["Sort by ", dcc.Dropdown(id=PREFIX + "sort", options=[{"label": n, "value": c} for c, n, _ in COLUMNS],
                                                 value=sort, clearable=False)], className="control wide"),
            dcc.RadioItems(id=PREFIX + "dir", options=[{"label": " largest first", "value": "desc"}, {"label": " smallest first", "value": "asc"}],
                           value=direction, inline=True, className="control"),
            html.Button("Download CSV", id=PREFIX + "csv-button", className="button"),
            dcc.Download(id=PREFIX + "csv"),
        ], className="controls"),
        html.Div(id=PREFIX + "kpis", className="kpis"),
        html.Div([dcc.Graph(id=PREFIX + "by-access", config=GRAPH_CONFIG, className="panel"),
                  dcc.Graph(id=PREFIX + "by-sector", config=GRAPH_CONFIG, className="panel")], className="grid2"),
        html.Div(id=PREFIX + "table", className="panel scroll"),
        html.P(id=PREFIX + "updated", className="footnote"),
        dcc.Interval(id=PREFIX + "tick", interval=int(max(ctx.refresh_s, REFRESH_S) * 1000)),
    ])


def register(app: dash.Dash, ctx: PageContext) -> None:
    @app.callback(Output(PREFIX + "url", "search"), Input(PREFIX + "month", "value"), Input(PREFIX + "sort", "value"),
                  Input(PREFIX + "dir", "value"))
    def remember(month: str, sort: str, direction: str) -> str:
        return query_string({"month": month, "sort": sort, "dir": direction})

    @app.callback(Output(PREFIX + "kpis", "children"), Output(PREFIX + "by-access", "figure"), Output(PREFIX + "by-sector", "figure"),
                  Output(PREFIX + "table", "children"), Output(PREFIX + "updated", "children"), Output(PREFIX + "tick", "interval"),
                  Input(PREFIX + "tick", "n_intervals"), Input(PREFIX + "month", "value"), Input(PREFIX + "sort", "value"),
                  Input(PREFIX + "dir", "value"))
    def refresh(_n: int | None, month: str, sort: str, direction: str):
        with timed(ctx, PREFIX, "refresh"):
            energy = month_energy(ctx.store, ctx.inventory, month)
            rows = project_rows(energy, ctx.inventory)
            out = (_kpis(energy, rows), _bars(energy, ctx.inventory, "access_mode", "Access mode"),
                   _bars(energy, ctx.inventory, "sector", "Sector"), _table(rows, sort, direction == "asc"), _provenance(energy, ctx.inventory))
        return (*out, ctx.timings.interval_ms(PREFIX, max(ctx.refresh_s, REFRESH_S)))

    @app.callback(Output(PREFIX + "csv", "data"), Input(PREFIX + "csv-button", "n_clicks"), State(PREFIX + "month", "value"),
                  prevent_initial_call=True)
    def download(_clicks: int, month: str):
        rows = project_rows(month_energy(ctx.store, ctx.inventory, month), ctx.inventory)
        return dcc.send_data_frame(csv_safe(rows).to_csv, f"aifmon-projects-{month}.csv", index=False, float_format="%.6f")


def project_rows(energy: MonthEnergy, inventory: Inventory) -> pd.DataFrame:
    """One row per project (and `(unallocated)`): the columns of `COLUMNS`, in kWh, h, EUR, kg, % of GPU energy."""
    rows = energy.by(inventory, "project").rows
    known = inventory.project_by_id
    out = pd.DataFrame({
        "project": rows["project"],
        "name": rows["project"].map(lambda p: known[p].name if p in known else ""),
        "factory": rows["project"].map(lambda p: known[p].factory if p in known else ""),
        "access_mode": rows["project"].map(lambda p: known[p].access_mode if p in known else UNALLOCATED if p == UNALLOCATED else "(unknown)"),
        "sector": rows["project"].map(lambda p: known[p].sector if p in known else UNALLOCATED if p == UNALLOCATED else "(unknown)"),
    })
    for c in ("energy_kwh", "it_kwh", "gpu_hours", "cost_eur", "co2e_kg"):
        out[c] = rows[c]
    out["share"] = rows["share"] * 100.0
    return out[[c for c, _, _ in COLUMNS]]


def _table(rows: pd.DataFrame, sort: str, ascending: bool) -> html.Table:
    """Every project, sorted on the server by `sort` (the sort is in the URL, so a sorted view can be linked)."""
    ordered = rows.sort_values(sort if sort in rows else "energy_kwh", ascending=ascending, kind="stable", na_position="last")
    head = html.Thead(html.Tr([html.Th(n + (" ▲" if c == sort and ascending else " ▼" if c == sort else "")) for c, n, _ in COLUMNS]))
    body = [html.Tr([html.Td(f"{getattr(r, c):,.1f}" if t == "numeric" else getattr(r, c), className="num" if t == "numeric" else None)
                     for c, _, t in COLUMNS], className="project-row") for r in ordered.itertuples()]
    return html.Table([head, html.Tbody(body)], className="table", id=PREFIX + "rows")


def _kpis(energy: MonthEnergy, rows: pd.DataFrame) -> list[html.Div]:
    allocated = rows[rows["project"] != UNALLOCATED]
    return [
        kpi(f"GPU energy, {energy.month}", f"{rows['energy_kwh'].sum():,.1f} kWh", PREFIX + "energy"),
        kpi("GPU-hours in jobs", f"{allocated['gpu_hours'].sum():,.0f} h", PREFIX + "gpu-hours"),
        kpi("cost (IT energy x price)", f"{rows['cost_eur'].sum():,.0f} EUR", PREFIX + "cost"),
        kpi("CO2e (IT energy x grid intensity)", f"{rows['co2e_kg'].sum():,.0f} kg", PREFIX + "co2e"),
        kpi("projects with energy", f"{len(allocated):,}", PREFIX + "count"),
    ]


def _bars(energy: MonthEnergy, inventory: Inventory, key: str, label: str) -> go.Figure:
    rows = energy.by(inventory, key).rows.sort_values("energy_kwh")
    fig = go.Figure(go.Bar(x=rows["energy_kwh"], y=rows[key], orientation="h", marker_color="#1565c0",
                           text=[f"{v:,.0f} kWh, {c:,.0f} EUR" for v, c in zip(rows["energy_kwh"], rows["cost_eur"])],
                           textposition="auto", hovertemplate="%{y}: %{x:,.1f} kWh<extra></extra>"))
    fig.update_layout(title=f"GPU energy by {label.lower()}, {energy.month} (kWh)", xaxis=dict(title="GPU energy (kWh)"),
                      height=80 + 26 * max(3, len(rows)), margin=dict(l=10, r=10, t=40, b=40), template="plotly_white")
    return fig


def _provenance(energy: MonthEnergy, inventory: Inventory) -> str:
    missing = (f" {energy.hours_missing} older hours without settled rows are not counted yet (each refresh computes more; "
               "`aifmon rollup hourly` writes them)." if energy.hours_missing else "")
    coverage = energy.by(inventory, "total").coverage
    return (f"{energy.month}: {energy.hours_rolled_up} hours from the ledger's hourly rows, {energy.hours_computed} computed now from "
            f"samples (hours still open to late data, the hour in progress included).{missing} Data coverage {coverage:.1%} "
            f"of GPU-time. Updated {utc(time.time() * 1000)}.")
