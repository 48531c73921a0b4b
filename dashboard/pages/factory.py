"""Factory live: one factory's power against its cap over time, every GPU as a node x GPU heatmap,
allocated against idle power, the jobs and projects drawing the most, throttled GPUs, telemetry coverage.

Fast at 25,000 GPUs: the heatmap is one `go.Heatmap` whose z is a float32 grid (sent as a base64 typed
array, 4 bytes a GPU); live refreshes patch only z (`dash.Patch`), and the power history gets only its
newly completed buckets (`extendData`); hover names (node, GPU) travel once, with the full figure.
"""

from __future__ import annotations

import time

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from _plotly_utils.utils import to_typed_array_spec
from dash import Input, Output, Patch, State, dcc, html, no_update

from aifmon.dashboard.live import GRID_METRICS, LIVE_LOOKBACK_S, RANGES, FactoryLive, GpuGrid, factory_live, gpu_grid, power_history
from aifmon.dashboard.pages import GRAPH_CONFIG, OPERATOR, PageContext, kpi, query_string, timed, utc
from aifmon.dashboard.panels import CRITICAL, WARNING, format_watts, level_of
from aifmon.telemetry.inventory import Factory

PATH = "/factory"
TITLE = "Factory live"
PREFIX = "factory-"
ROLES = OPERATOR
_COLOURS = {"allocated": "#1565c0", "idle": "#90caf9", "node": "#78909c", "cooling": "#cfd8dc"}


def _choice(query: dict[str, list[str]], key: str, options: list[str], default: str) -> str:
    value = query.get(key, [default])[0]
    return value if value in options else default


def layout(ctx: PageContext, query: dict[str, list[str]]) -> html.Div:
    live = ctx.inventory.live_factories()
    ids = [f.id for f in live]
    factory = _choice(query, "factory", ids, ids[0] if ids else "")
    return html.Div([
        dcc.Location(id=PREFIX + "url", refresh=False),
        html.H1("Factory live: power against cap, every GPU"),
        html.Div([
            html.Label(["Factory ", dcc.Dropdown(id=PREFIX + "factory", options=[{"label": f"{f.name} ({f.gpu_count:,} GPUs)", "value": f.id}
                                                                                   for f in live], value=factory, clearable=False)],
                       className="control wide"),
            html.Label(["Heatmap ", dcc.RadioItems(id=PREFIX + "metric", options=[{"label": " power (W)", "value": "power"},
                                                                                  {"label": " utilisation (%)", "value": "utilisation"}],
                                                   value=_choice(query, "metric", list(GRID_METRICS), "power"), inline=True)],
                       className="control"),
            html.Label(["History ", dcc.RadioItems(id=PREFIX + "range", options=list(RANGES),
                                                   value=_choice(query, "range", list(RANGES), "6h"), inline=True)],
                       className="control"),
        ], className="controls"),
        html.Div(id=PREFIX + "kpis", className="kpis"),
        html.Div([
            dcc.Graph(id=PREFIX + "history", config=GRAPH_CONFIG, className="panel"),
            dcc.Graph(id=PREFIX + "breakdown", config=GRAPH_CONFIG, className="panel"),
        ], className="grid"),
        dcc.Graph(id=PREFIX + "heatmap", config=GRAPH_CONFIG, className="panel"),
        html.Div([
            html.Div([html.H2("Top jobs by GPU power now"), html.Div(id=PREFIX + "jobs")], className="panel"),
            html.Div([html.H2("Top projects by GPU power now"), html.Div(id=PREFIX + "projects")], className="panel"),
            html.Div([html.H2("Throttled GPUs"), html.Div(id=PREFIX + "throttled"),
                      html.H2("Telemetry coverage"), html.Div(id=PREFIX + "coverage")], className="panel"),
        ], className="grid3"),
        html.P(id=PREFIX + "updated", className="footnote"),
        dcc.Store(id=PREFIX + "grid-key"),
        dcc.Store(id=PREFIX + "history-state"),
        dcc.Interval(id=PREFIX + "tick", interval=int(ctx.refresh_s * 1000)),
    ])


def register(app: dash.Dash, ctx: PageContext) -> None:
    factories = {f.id: f for f in ctx.inventory.live_factories()}
    grids: dict[str, GpuGrid] = {}

    def grid_of(f: Factory) -> GpuGrid:
        if f.id not in grids:  # walking 3,125 nodes of the inventory once per factory, not per refresh
            grids[f.id] = gpu_grid(f)
        return grids[f.id]

    @app.callback(Output(PREFIX + "url", "search"), Input(PREFIX + "factory", "value"), Input(PREFIX + "metric", "value"),
                  Input(PREFIX + "range", "value"))
    def remember(factory: str, metric: str, range_: str) -> str:
        return query_string({"factory": factory, "metric": metric, "range": range_})

    @app.callback(
        Output(PREFIX + "heatmap", "figure"), Output(PREFIX + "grid-key", "data"), Output(PREFIX + "kpis", "children"),
        Output(PREFIX + "breakdown", "figure"), Output(PREFIX + "jobs", "children"), Output(PREFIX + "projects", "children"),
        Output(PREFIX + "throttled", "children"), Output(PREFIX + "coverage", "children"), Output(PREFIX + "updated", "children"),
        Output(PREFIX + "tick", "interval"),
        Input(PREFIX + "tick", "n_intervals"), Input(PREFIX + "factory", "value"), Input(PREFIX + "metric", "value"),
        State(PREFIX + "grid-key", "data"),
    )
    def refresh(_n: int | None, factory_id: str, metric: str, shown_key: str | None):
        with timed(ctx, PREFIX, "live"):
            f = factories.get(factory_id)
            if f is None:
                raise dash.exceptions.PreventUpdate
            now_ms = int(time.time() * 1000)
            grid = grid_of(f)
            live = factory_live(ctx.store, f, grid, metric, now_ms)
            key = f"{f.id}|{metric}"
            if key == shown_key:  # the same view: send the new values only
                heatmap = Patch()
                heatmap["data"][0]["z"] = to_typed_array_spec(live.grid)
                breakdown: go.Figure | Patch = _breakdown_patch(f, live)
            else:
                heatmap = heatmap_figure(f, grid, live.grid, metric)
                breakdown = _breakdown(f, live)
            out = (heatmap, key, _kpis(f, live), breakdown, _top(live.jobs, "job"), _top(live.projects, "project"),
                   _throttled(live), _coverage(live), f"Updated {utc(now_ms)}; samples older than {LIVE_LOOKBACK_S:.0f} s do not count as live.")
        return (*out, ctx.timings.interval_ms(PREFIX, ctx.refresh_s))

    @app.callback(
        Output(PREFIX + "history", "figure"), Output(PREFIX + "history", "extendData"), Output(PREFIX + "history-state", "data"),
        Input(PREFIX + "tick", "n_intervals"), Input(PREFIX + "factory", "value"), Input(PREFIX + "range", "value"),
        State(PREFIX + "history-state", "data"),
    )
    def history(_n: int | None, factory_id: str, range_: str, state: dict | None):
        with timed(ctx, PREFIX, "history"):
            f = factories.get(factory_id)
            if f is None or range_ not in RANGES:
                raise dash.exceptions.PreventUpdate
            span_ms, bucket_ms = RANGES[range_]
            now_ms = int(time.time() * 1000)
            done_ms = now_ms // bucket_ms * bucket_ms  # buckets before this one are complete
            key = f"{f.id}|{range_}"
            if state and state.get("key") == key:  # append the buckets completed since the last refresh
                new = power_history(ctx.store, f, state["next_ms"], done_ms - 1, bucket_ms)
                if new.empty:
                    return no_update, no_update, no_update
                x = [_times(new["t_ms"])] * 2
                extend = ({"x": x, "y": [_scaled(new["peak_w"], f), _scaled(new["mean_w"], f)]}, [0, 1], span_ms // bucket_ms)
                return no_update, extend, {"key": key, "next_ms": done_ms}
            hist = power_history(ctx.store, f, done_ms - span_ms, done_ms - 1, bucket_ms)
            return history_figure(f, hist, range_), no_update, {"key": key, "next_ms": done_ms}


def _power_unit(f: Factory) -> tuple[str, float]:
    return ("MW", 1e6) if f.power_cap_mw >= 1 else ("kW", 1e3)


def _scaled(watts: pd.Series, f: Factory) -> list[float]:
    return (watts / _power_unit(f)[1]).round(4).tolist()


def _times(t_ms: pd.Series) -> list[str]:
    return pd.to_datetime(t_ms, unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()


def history_figure(f: Factory, hist: pd.DataFrame, range_: str) -> go.Figure:
    """Peak and mean facility power per bucket against the cap, with the warning and critical levels drawn."""
    unit, scale = _power_unit(f)
    cap = f.power_cap_mw * 1e6 / scale
    bucket_s = RANGES[range_][1] // 1000
    x = _times(hist["t_ms"])
    fig = go.Figure([
        go.Scatter(x=x, y=_scaled(hist["peak_w"], f), name=f"peak per {_span(bucket_s)}", mode="lines",
                   line=dict(color="#c62828", width=1), hovertemplate=f"%{{x|%H:%M}} UTC: peak %{{y:.3f}} {unit}<extra></extra>"),
        go.Scatter(x=x, y=_scaled(hist["mean_w"], f), name=f"mean per {_span(bucket_s)}", mode="lines",
                   line=dict(color="#12263f", width=2), hovertemplate=f"%{{x|%H:%M}} UTC: mean %{{y:.3f}} {unit}<extra></extra>"),
    ])
    for share, colour, label, where in ((1.0, "#b71c1c", "cap", "top left"), (CRITICAL, "#e65100", "critical", "top right"),
                                        (WARNING, "#b8860b", "warning", "bottom right")):
        fig.add_hline(y=cap * share, line_dash="solid" if share == 1.0 else "dot", line_color=colour,
                      annotation_text=f"{label} {cap * share:,.3g} {unit} ({share:.0%})", annotation_position=where,
                      annotation_font_color=colour)
    fig.update_layout(
        title=f"Facility power against the {cap:,.3g} {unit} cap, last {range_}",
        yaxis=dict(title=f"facility power ({unit})", rangemode="tozero", range=[0, cap * 1.12]),
        xaxis=dict(title="time (UTC)"), legend=dict(orientation="h", y=-0.25), height=360,
        margin=dict(l=10, r=10, t=50, b=40), template="plotly_white", uirevision=f.id,
    )
    return fig


def _span(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def heatmap_figure(f: Factory, grid: GpuGrid, z: np.ndarray, metric: str) -> go.Figure:
    """Every GPU as one cell of a single heatmap: rows of `grid.nodes_per_row` nodes, each node `grid.width` cells."""
    _name, unit, _scale = GRID_METRICS[metric]
    zmax = max(g.model.tdp_watts for s in f.systems for g in s.node_groups) if metric == "power" else 100.0
    fig = go.Figure(go.Heatmap(
        z=z, text=grid.hover_text(), y=grid.row_labels(), zmin=0, zmax=zmax,
        colorscale="Inferno" if metric == "power" else "Viridis",
        colorbar=dict(title=f"{'power' if metric == 'power' else 'utilisation'} ({unit})", thickness=14),
        hovertemplate=f"%{{text}}: %{{z:.0f}} {unit}<extra></extra>", hoverongaps=False, xgap=0, ygap=0,
    ))
    what = "GPU board power (W)" if metric == "power" else "GPU utilisation (%)"
    fig.update_layout(
        title=f"{what}, every GPU of {f.name}: {grid.gpu_count:,} GPUs, {grid.nodes_per_row} nodes per row x "
              f"{grid.width} GPUs each; grey = no sample",
        xaxis=dict(showticklabels=False, title=f"nodes side by side, GPUs 0-{grid.width - 1} of each node", showgrid=False, zeroline=False),
        yaxis=dict(autorange="reversed", showgrid=False, tickfont=dict(size=9), nticks=30),
        plot_bgcolor="#cfd8dc", height=max(320, min(900, 120 + 5 * grid.rows)),
        margin=dict(l=10, r=10, t=50, b=40), template="plotly_white", uirevision=f"{f.id}|{metric}",
    )
    return fig


def _kpis(f: Factory, live: FactoryLive) -> list[html.Div]:
    cap_w = f.power_cap_mw * 1e6
    share = live.facility_w / cap_w
    gpus = live.gpus_allocated + live.gpus_idle
    return [
        kpi(f"facility power ({live.power_source})", format_watts(live.facility_w), PREFIX + "power", level_of(share)),
        kpi(f"of the {format_watts(cap_w)} power cap", f"{share:.1%}" if np.isfinite(share) else "no data", PREFIX + "share", level_of(share)),
        kpi("IT power (sum of node power)", format_watts(live.it_w), PREFIX + "it"),
        kpi("GPUs in jobs", f"{live.gpus_allocated:,} / {gpus:,}" if gpus else "no data", PREFIX + "busy"),
        kpi("GPUs throttled now", f"{live.throttled_gpus:,}", PREFIX + "throttled-count", "warning" if live.throttled_gpus else ""),
        kpi("GPUs reporting", f"{live.gpus_reporting / live.gpus_expected:.1%} of {live.gpus_expected:,}" if live.gpus_expected else "no GPUs",
            PREFIX + "coverage-kpi", "" if live.gpus_reporting == live.gpus_expected else "warning"),
    ]


def _breakdown_parts(f: Factory, live: FactoryLive) -> tuple[list[tuple[str, str, float]], str]:
    """Where the facility's power goes now: (colour key, label, W) of GPUs in jobs, idle GPUs, the rest of the nodes,
    cooling and losses; and the figure's title."""
    node_rest = max(0.0, live.it_w - live.gpu_power_w) if np.isfinite(live.it_w) else 0.0
    cooling = max(0.0, live.facility_w - live.it_w) if np.isfinite(live.facility_w) and np.isfinite(live.it_w) else 0.0
    parts = [("allocated", f"GPUs in jobs ({live.gpus_allocated:,})", live.allocated_w),
             ("idle", f"idle GPUs ({live.gpus_idle:,})", live.idle_w),
             ("node", "CPUs, memory, fans, NICs", node_rest),
             ("cooling", "cooling and losses (facility - IT)", cooling)]
    per_idle = live.idle_w / live.gpus_idle if live.gpus_idle else float("nan")
    return parts, f"Where the power goes now (an idle GPU draws {format_watts(per_idle)})"


def _breakdown(f: Factory, live: FactoryLive) -> go.Figure:
    """The stacked bar of `_breakdown_parts` against the cap."""
    unit, scale = _power_unit(f)
    parts, title = _breakdown_parts(f, live)
    fig = go.Figure([go.Bar(y=["now"], x=[w / scale], name=label, orientation="h", marker_color=_COLOURS[k],
                            text=[format_watts(w)], textposition="inside", insidetextanchor="middle",
                            hovertemplate=f"{label}: %{{x:.3f}} {unit}<extra></extra>") for k, label, w in parts])
    cap = f.power_cap_mw * 1e6 / scale
    fig.add_vline(x=cap, line_color="#b71c1c", annotation_text=f"cap {cap:,.3g} {unit}", annotation_position="top")
    fig.update_layout(
        barmode="stack", title=title,
        xaxis=dict(title=f"power ({unit})", range=[0, cap * 1.1]), yaxis=dict(showticklabels=False),
        legend=dict(orientation="h", y=-0.6), height=300, margin=dict(l=10, r=10, t=50, b=40), template="plotly_white",
    )
    return fig


def _breakdown_patch(f: Factory, live: FactoryLive) -> Patch:
    """A live tick's change to the shown `_breakdown` figure: the bars' values, labels and the title only (a whole
    figure costs 40 ms of plotly's validation at every tick)."""
    unit, scale = _power_unit(f)
    parts, title = _breakdown_parts(f, live)
    patch = Patch()
    for i, (_k, label, w) in enumerate(parts):
        patch["data"][i]["x"] = [w / scale]
        patch["data"][i]["name"] = label
        patch["data"][i]["text"] = [format_watts(w)]
        patch["data"][i]["hovertemplate"] = f"{label}: %{{x:.3f}} {unit}<extra></extra>"
    patch["layout"]["title"]["text"] = title
    return patch


def _top(frame: pd.DataFrame, key: str) -> html.Table | html.P:
    if frame.empty:
        return html.P("No GPU is in a job now.", className="empty")
    head = ["Job", "Project", "GPUs", "GPU power"] if key == "job" else ["Project", "GPUs", "GPU power"]
    rows = [html.Tr(([html.Td(r.job)] if key == "job" else []) + [html.Td(r.project), html.Td(f"{r.gpus:,}"), html.Td(format_watts(r.watts))],
                    className=f"top-{key}") for r in frame.itertuples()]
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="table")


def _throttled(live: FactoryLive) -> html.Div | html.P:
    if live.throttled.empty:
        return html.P("No GPU is throttled.", className="empty")
    return html.Div([
        html.P(f"{live.throttled_gpus:,} GPUs held back by at least one reason "
               "(sw_power_cap: at its power limit; *_thermal: too hot; hw_power_brake: the node's power brake)."),
        html.Table([html.Thead(html.Tr([html.Th("Reason"), html.Th("GPUs")])),
                    html.Tbody([html.Tr([html.Td(r), html.Td(f"{n:,}")]) for r, n in live.throttled.items()])], className="table"),
    ])


def _coverage(live: FactoryLive) -> html.Div:
    missing = live.missing_nodes
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8:,} more" if len(missing) > 8 else "")
    return html.Div([
        html.P(f"GPU power from {live.gpus_reporting:,} of {live.gpus_expected:,} GPUs and {live.nodes_reporting:,} of "
               f"{live.nodes_expected:,} nodes; newest sample {_age(live.newest_age_s)} old."),
        html.P(f"Silent nodes: {shown}." if missing else "Every node reported.", className="level-warning" if missing else "level-ok"),
    ])


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if np.isfinite(seconds) else "no data"
