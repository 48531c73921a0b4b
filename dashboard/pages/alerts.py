"""Alerts: what is pending or firing now, and what resolved in the last 24 hours, with the rule behind each.

Reads the evaluator's state file (`aifmon.alerts.state`), so it shows the same alerts the
notifiers were sent, whichever process evaluates them.
"""

from __future__ import annotations

import time

import dash
from dash import Input, Output, dcc, html

from aifmon.alerts.rules import paged
from aifmon.alerts.state import load_state
from aifmon.dashboard.pages import OPERATOR, PageContext

PATH = "/alerts"
TITLE = "Alerts"
PREFIX = "alerts-"
ROLES = OPERATOR
_ORDER = {"firing": 0, "pending": 1, "resolved": 2}
_SEVERITY = {"critical": 0, "warning": 1}
GROUP_OPEN_UP_TO = 5
"""A group of at most this many alerts is shown open; larger ones show their count until clicked."""


def layout(ctx: PageContext, query: dict[str, list[str]]) -> html.Div:
    return html.Div(
        [
            html.H1("Alerts: power caps, MW budgets, telemetry"),
            html.P(
                "Pending and firing alerts of the embedded evaluator, and those resolved in the last 24 hours, grouped by "
                "rule and place. Each row names the rule that put it there: its threshold, its duration and its hysteresis. "
                "GPUs held at their power limit are shown, not paged; an alert inhibited by a firing one (a factory's "
                "cap above its systems' warnings) is shown, not sent.",
                className="lede",
            ),
            html.Div(id=PREFIX + "banner"),
            html.Div(id=PREFIX + "kpis", className="kpis"),
            html.H2("Active"),
            html.Div(id=PREFIX + "active", className="panel"),
            html.H2("Resolved in the last 24 hours"),
            html.Div(id=PREFIX + "recent", className="panel"),
            html.P(id=PREFIX + "updated", className="footnote"),
            dcc.Interval(id=PREFIX + "tick", interval=int(ctx.refresh_s * 1000)),
        ]
    )


def register(app: dash.Dash, ctx: PageContext) -> None:
    state_path = ctx.alert_state

    @app.callback(
        Output(PREFIX + "banner", "children"),
        Output(PREFIX + "kpis", "children"),
        Output(PREFIX + "active", "children"),
        Output(PREFIX + "recent", "children"),
        Output(PREFIX + "updated", "children"),
        Input(PREFIX + "tick", "n_intervals"),
    )
    def refresh(_n: int | None):
        state = load_state(state_path)
        alerts = state["alerts"]
        active = sorted((a for a in alerts if a["state"] != "resolved"),
                        key=lambda a: (_ORDER[a["state"]], _SEVERITY.get(a["labels"].get("severity"), 2), -(a["fired_ms"] or a["active_ms"])))
        recent = sorted((a for a in alerts if a["state"] == "resolved"), key=lambda a: -a["resolved_ms"])
        banner = html.Div(
            ["The alert rules file was refused; the evaluator runs on its last good rules:", html.Pre(state["rules_error"])],
            className="banner error", id=PREFIX + "rules-error",
        ) if state.get("rules_error") else None
        saved = state.get("saved_ms")
        updated = (f"State {state_path}, saved {_utc(saved)} (written when an alert changes state); "
                   f"rules {state.get('rules_source', 'not evaluated yet')}." if saved else f"No evaluation saved yet in {state_path}.")
        return banner, _kpis(active, recent), _groups(active, "active"), _groups(recent, "recent"), updated


def _kpis(active: list[dict], recent: list[dict]) -> list[html.Div]:
    def kpi(label: str, value: int, kid: str) -> html.Div:
        return html.Div([html.Div(str(value), className="kpi-value", id=PREFIX + kid), html.Div(label, className="kpi-label")], className="kpi")

    sent = [a for a in active if _paged(a)]  # one `paged` decision per alert (a local named `paged` would shadow the rule)
    firing = [a for a in sent if a["state"] == "firing"]
    return [
        kpi("firing, critical", sum(a["labels"].get("severity") == "critical" for a in firing), "critical"),
        kpi("firing, warning", sum(a["labels"].get("severity") == "warning" for a in firing), "warning"),
        kpi("pending", sum(a["state"] == "pending" for a in sent), "pending"),
        kpi("shown, not paged", len(active) - len(sent), "not-paged"),
        kpi("resolved (24 h)", len(recent), "resolved"),
    ]


def _paged(alert: dict) -> bool:
    return paged(alert["labels"], alert.get("inhibited", False))


def _groups(alerts: list[dict], kind: str) -> html.Div | html.P:
    """One collapsible group per rule and place (alert name, severity, state, factory, system), with its count; small
    groups open. Hundreds of GPUs at their limit are then one line, not hundreds."""
    if not alerts:
        return html.P("None.", className="empty", id=f"{PREFIX}{kind}-empty")
    groups: dict[tuple, list[dict]] = {}
    for a in alerts:
        labels = a["labels"]
        key = (a["state"], labels["alertname"], labels.get("severity", ""), labels.get("scope", ""), labels.get("factory", ""), labels.get("system", ""))
        groups.setdefault(key, []).append(a)
    parts = []
    for (state, name, severity, scope, factory, system), members in groups.items():
        where = " / ".join(x for x in (factory, system) if x)
        note = "" if all(_paged(a) for a in members) else " (shown, not paged)"
        summary = html.Summary([html.Span(state, className=f"state-{state}"), f" {name} ", html.Span(severity, className=f"level-{severity}"),
                                f" {scope} {where}: {len(members)} alert{'s' if len(members) > 1 else ''}{note}"])
        parts.append(html.Details([summary, _table(members, kind)], open=len(members) <= GROUP_OPEN_UP_TO, className="alert-group"))
    return html.Div(parts, id=f"{PREFIX}{kind}-table")


def _table(alerts: list[dict], kind: str) -> html.Table:
    head = ["State", "Alert", "Severity", "Where", "Value", "Cap", "Share", "Since", "Resolved" if kind == "recent" else "Rule"]
    rows = []
    for a in alerts[:500]:
        labels = a["labels"]
        where = " ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity"))
        ann = a["annotations"]
        last = _utc(a["resolved_ms"]) if kind == "recent" else a.get("rule", "")
        state = a["state"] + (" (inhibited)" if a.get("inhibited") else "")
        rows.append(html.Tr(
            [html.Td(state, className=f"state-{a['state']}"), html.Td(labels["alertname"], title=ann.get("summary", "")),
             html.Td(labels.get("severity", ""), className=f"level-{labels.get('severity', '')}"), html.Td(where),
             html.Td(ann.get("value", "")), html.Td(ann.get("cap", "")), html.Td(ann.get("percentage", "")),
             html.Td(_utc(a["fired_ms"] or a["active_ms"])), html.Td(last)],
            className=f"alert-row alert-{kind}",
        ))
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="table")


def _utc(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000)) if ms else ""
