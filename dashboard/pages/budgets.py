"""Gigafactory budgets: every MW budget as a tree (site -> hall -> system) with its headroom, and a planner:
GPUs x model x utilisation x PUE -> MW, against the 100-150 MW budgets of an AI Gigafactory."""

from __future__ import annotations

import time

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from aifmon.dashboard.live import LIVE_LOOKBACK_S
from aifmon.dashboard.pages import GRAPH_CONFIG, OPERATOR, PageContext, kpi, query_string, timed, utc
from aifmon.dashboard.panels import factory_status, format_watts, level_of
from aifmon.dashboard.planning import GIGAFACTORY_BUDGETS_MW, Plan, budget_tree, plan_power
from aifmon.telemetry.gpu_models import GPU_MODELS

PATH = "/budgets"
TITLE = "Gigafactory budgets"
PREFIX = "budgets-"
ROLES = OPERATOR
_DEFAULT_MODEL = "B200-SXM-180GB"
_DEFAULTS: dict[str, float] = {"gpus": 100_000, "util": 80, "pue": 1.12, "overhead": 187.5, "budget": 120}
"""Planner start: the seed's 100,000 AI processors; 1,500 W of host power per 8-GPU node = 187.5 W per GPU."""


def _number(query: dict[str, list[str]], key: str, lo: float, hi: float) -> float:
    default = float(_DEFAULTS[key])
    try:
        value = float(query[key][0]) if key in query else default
    except ValueError:
        return default
    return value if lo <= value <= hi else default


def _default_site(ctx: PageContext) -> str:
    """The largest site by power cap: the gigafactory where there is one."""
    return max(ctx.inventory.factories, key=lambda f: f.power_cap_mw).id


def layout(ctx: PageContext, query: dict[str, list[str]]) -> html.Div:
    model = query.get("model", [_DEFAULT_MODEL])[0]
    model = model if model in GPU_MODELS else _DEFAULT_MODEL
    site = query.get("site", [""])[0]
    site = site if site in {f.id for f in ctx.inventory.factories} else _default_site(ctx)
    return html.Div([
        dcc.Location(id=PREFIX + "url", refresh=False),
        html.H1("Gigafactory budgets: MW budgets, headroom, and a planner"),
        html.P("Budgets as the inventory sets them: a site's power cap is facility power (cooling included); a system's "
               "is IT power; a hall's is the sum of its systems'. Live sites are measured now; planning scenarios "
               "show their planned peak (every GPU at TDP).", className="lede"),
        html.Div(id=PREFIX + "kpis", className="kpis"),
        html.Div([html.Label(["Site drawn as a tree ", dcc.Dropdown(id=PREFIX + "site", clearable=False, value=site, options=[
            {"label": f"{f.name} ({f.power_cap_mw:,.3g} MW)", "value": f.id} for f in ctx.inventory.factories])],
            className="control wide")], className="controls"),
        html.Div([dcc.Graph(id=PREFIX + "tree", config=GRAPH_CONFIG, className="panel"),
                  html.Div(id=PREFIX + "table", className="panel scroll")], className="grid"),
        html.H2("Planner: what a site of N GPUs draws"),
        html.Div([
            html.Label(["GPUs ", dcc.Input(id=PREFIX + "gpus", type="number", min=0, max=1_000_000, step=1000,
                                           value=int(_number(query, "gpus", 0, 1_000_000)), debounce=True)], className="control"),
            html.Label(["GPU model ", dcc.Dropdown(id=PREFIX + "model", options=list(GPU_MODELS), value=model, clearable=False)],
                       className="control wide"),
            html.Label(["Utilisation (%) ", dcc.Slider(id=PREFIX + "util", min=0, max=100, step=5, value=_number(query, "util", 0, 100),
                                                       marks={v: f"{v}" for v in range(0, 101, 20)})], className="control wide"),
            html.Label(["PUE ", dcc.Input(id=PREFIX + "pue", type="number", min=1.0, max=3.0, step="any",
                                          value=_number(query, "pue", 1.0, 3.0), debounce=True)], className="control"),
            html.Label(["Host power per GPU (W) ", dcc.Input(id=PREFIX + "overhead", type="number", min=0, max=5000, step="any",
                                                             value=_number(query, "overhead", 0, 5000), debounce=True)], className="control"),
            html.Label(["Budget (MW) ", dcc.RadioItems(id=PREFIX + "budget", options=[100, 120, 150],
                                                       value=int(_number(query, "budget", 1, 2000)), inline=True)], className="control"),
        ], className="controls"),
        html.Div(id=PREFIX + "plan-kpis", className="kpis"),
        dcc.Graph(id=PREFIX + "plan", config=GRAPH_CONFIG, className="panel"),
        html.P(id=PREFIX + "updated", className="footnote"),
        dcc.Interval(id=PREFIX + "tick", interval=int(ctx.refresh_s * 1000)),
    ])


def register(app: dash.Dash, ctx: PageContext) -> None:
    inputs = [Input(PREFIX + k, "value") for k in ("gpus", "model", "util", "pue", "overhead", "budget")]

    @app.callback(Output(PREFIX + "url", "search"), Input(PREFIX + "site", "value"), *inputs)
    def remember(site, gpus, model, util, pue, overhead, budget) -> str:
        return query_string({"site": site, "gpus": gpus, "model": model, "util": util, "pue": pue, "overhead": overhead, "budget": budget})

    @app.callback(Output(PREFIX + "plan-kpis", "children"), Output(PREFIX + "plan", "figure"), *inputs)
    def planner(gpus, model, util, pue, overhead, budget):
        if None in (gpus, model, util, pue, overhead, budget):  # a field being typed: keep the last answer
            raise dash.exceptions.PreventUpdate
        try:
            plan = plan_power(int(gpus), model, float(util) / 100.0, float(pue), float(overhead), float(budget))
        except ValueError as e:
            return [html.P(str(e), className="banner error")], dash.no_update
        return _plan_kpis(plan, int(gpus)), plan_figure(plan, int(gpus), model, float(util))

    @app.callback(Output(PREFIX + "kpis", "children"), Output(PREFIX + "tree", "figure"), Output(PREFIX + "table", "children"),
                  Output(PREFIX + "updated", "children"), Output(PREFIX + "tick", "interval"), Input(PREFIX + "tick", "n_intervals"),
                  Input(PREFIX + "site", "value"))
    def refresh(_n: int | None, site: str):
        with timed(ctx, PREFIX, "refresh"):
            now_ms = int(time.time() * 1000)
            status = factory_status(ctx.store, ctx.inventory, now_ms)
            nodes = ctx.store.latest("aif_node_power_watts", now_ms, LIVE_LOOKBACK_S)
            per_system = nodes.groupby(["factory", "system"])["value"].sum().to_dict() if len(nodes) else {}
            tree = budget_tree(ctx.inventory, status.set_index("factory")["facility_power_watts"].to_dict(), per_system)
            out = (_kpis(tree), tree_figure(tree, site), _table(tree), f"Updated {utc(now_ms)}.")
        return (*out, ctx.timings.interval_ms(PREFIX, ctx.refresh_s))


def _kpis(tree: pd.DataFrame) -> list[html.Div]:
    sites = tree[tree["level"] == "site"]
    live = sites[sites["basis"] == "live"]
    planned = sites[sites["basis"] != "live"]
    tightest = live.loc[live["share"].idxmax()] if len(live) else None
    over = planned["headroom_w"].sum()
    return [
        kpi("live sites: power caps, summed", format_watts(live["budget_w"].sum()), PREFIX + "live-budget"),
        kpi("live sites: headroom now, summed", format_watts(live["headroom_w"].sum()), PREFIX + "live-headroom"),
        kpi("tightest live site (share of its cap used now)", f"{tightest['share']:.0%} ({tightest['name']})" if tightest is not None else "none",
            PREFIX + "tightest", level_of(tightest["share"]) if tightest is not None else ""),
        kpi(f"planning scenarios: {format_watts(planned['budget_w'].sum())} budget, headroom at planned peak",
            format_watts(over), PREFIX + "planned-headroom", "breached" if over < 0 else "ok"),
    ]


def tree_figure(tree: pd.DataFrame, site: str) -> go.Figure:
    """One site as an icicle: width = budget, colour = share of it used (live draw, or planned peak for scenarios).
    One site at a time: a 120 MW gigafactory beside 50 kW demo slices would leave the slices invisible."""
    tree = tree[(tree["id"] == site) | tree["id"].str.startswith(site + "/")]
    name = tree["name"].iloc[0] if len(tree) else site
    fig = go.Figure(go.Icicle(
        ids=tree["id"], parents=tree["parent"], labels=tree["name"], values=_nested_widths(tree), branchvalues="total",
        marker=dict(colors=(tree["share"] * 100).clip(0, 130), colorscale=[[0, "#e8f5e9"], [0.65, "#43a047"], [0.72, "#f9a825"],
                                                                           [0.77, "#e65100"], [0.8, "#b71c1c"], [1, "#7f0000"]],
                    cmin=0, cmax=130, colorbar=dict(title="% of budget used", thickness=12)),
        customdata=np.stack([tree["budget_w"].map(format_watts), tree["headroom_w"].map(format_watts), tree["basis"]], axis=-1),
        hovertemplate="%{label}<br>budget %{customdata[0]}<br>headroom %{customdata[1]} (%{customdata[2]})<extra></extra>",
        tiling=dict(orientation="v"), maxdepth=3,
    ))
    fig.update_layout(title=f"{name}: budget tree site -> hall -> system (width = budget, colour = % used)", height=520,
                      margin=dict(l=0, r=0, t=40, b=0), template="plotly_white")
    return fig


def _nested_widths(tree: pd.DataFrame) -> list[float]:
    """Budgets (MW) as icicle widths: children sized within their parent. A site's cap is facility power and
    its systems' caps IT power, so children may add up to more than the parent; they are then shrunk in
    proportion for the drawing only (the hover shows each real budget)."""
    width = dict(zip(tree["id"], tree["budget_w"] / 1e6))
    for parent, children in tree[tree["parent"] != ""].groupby("parent", sort=False)["id"]:
        total = sum(width[c] for c in children)
        if total > width[parent]:
            for c in children:
                width[c] *= width[parent] / total
    return [width[i] for i in tree["id"]]


def _table(tree: pd.DataFrame) -> html.Table:
    head = ["Budget", "Level", "Budget", "Draw now", "Planned peak", "Headroom", "% used"]
    rows = [html.Tr([
        html.Td(r.name, className=f"tree-{r.level}"), html.Td(r.level), html.Td(format_watts(r.budget_w)),
        html.Td(format_watts(r.draw_w) if np.isfinite(r.draw_w) else "planning" if r.basis != "live" else "no data"),
        html.Td(format_watts(r.planned_peak_w)), html.Td(format_watts(r.headroom_w), className="level-breached" if r.headroom_w < 0 else ""),
        html.Td(f"{r.share:.0%} ({r.basis})", className=f"level-{level_of(r.share)}"),
    ], className="budget-row") for r in tree.itertuples()]
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="table", id=PREFIX + "tree-table")


def _plan_kpis(plan: Plan, gpus: int) -> list[html.Div]:
    return [
        kpi(f"facility power of {gpus:,} GPUs", format_watts(plan.facility_w), PREFIX + "plan-facility", level_of(plan.facility_w / plan.budget_w)),
        kpi(f"IT power (GPUs {format_watts(plan.gpu_w)} + hosts {format_watts(plan.overhead_w)})", format_watts(plan.it_w), PREFIX + "plan-it"),
        kpi(f"headroom in the {format_watts(plan.budget_w)} budget", format_watts(plan.headroom_w), PREFIX + "plan-headroom",
            "breached" if plan.headroom_w < 0 else "ok"),
        kpi("GPUs that fit the budget at these settings", f"{plan.gpus_in_budget:,}", PREFIX + "plan-fit"),
        kpi("facility power per GPU", format_watts(plan.watts_per_gpu_at_facility), PREFIX + "plan-per-gpu"),
    ]


def plan_figure(plan: Plan, gpus: int, model: str, util: float) -> go.Figure:
    """The plan's facility power, stacked by GPUs / hosts / cooling, against 100, 150 MW and the chosen budget."""
    cooling = plan.facility_w - plan.it_w
    fig = go.Figure([go.Bar(y=["plan"], x=[w / 1e6], name=name, orientation="h", marker_color=colour, text=[format_watts(w)],
                            textposition="inside", hovertemplate=f"{name}: %{{x:.1f}} MW<extra></extra>")
                     for name, w, colour in (("GPU boards", plan.gpu_w, "#1565c0"), ("hosts (CPU, memory, network)", plan.overhead_w, "#78909c"),
                                             ("cooling and losses (PUE)", cooling, "#cfd8dc"))])
    for mw in sorted({*GIGAFACTORY_BUDGETS_MW, plan.budget_w / 1e6}):
        chosen = mw == plan.budget_w / 1e6
        fig.add_vline(x=mw, line_color="#b71c1c" if chosen else "#52606d", line_dash="solid" if chosen else "dot",
                      annotation_text=f"{mw:g} MW{' budget' if chosen else ''}", annotation_position="top")
    top = max(plan.facility_w / 1e6, *GIGAFACTORY_BUDGETS_MW) * 1.1
    fig.update_layout(barmode="stack", title=f"{gpus:,} x {model} at {util:g} % utilisation: facility power (MW)",
                      xaxis=dict(title="facility power (MW)", range=[0, top]), yaxis=dict(showticklabels=False),
                      legend=dict(orientation="h", y=-0.5), height=260, margin=dict(l=10, r=10, t=60, b=40), template="plotly_white")
    return fig
