"""Reports: the board's monthly reports under the reports directory, to open (HTML, PDF) or download (HTML, PDF,
CSV, JSON): those the report scheduler writes (`YYYY-MM-to-date` daily, `YYYY-MM` once the month has settled;
`aifmon up` and `aifmon rollup schedule --reports-dir` run it) and those `aifmon report monthly --out DIR` wrote.

Each folder under the reports directory (and the directory itself) that holds a `summary.json` is one
report; its month, period and totals are read from that file. Hidden folders (a report being written) are
skipped. Files are served only from those folders, by name from a fixed list, so no other file of the
machine can be asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import dash
from dash import Input, Output, dcc, html

from aifmon.dashboard.pages import EVERYONE, PageContext, timed

PATH = "/reports"
TITLE = "Reports"
PREFIX = "reports-"
ROLES = EVERYONE
FILES_ROUTE = "/reports/files/"
REPORT_FILES = ("report.html", "report.pdf", "summary.csv", "summary.json")
REFRESH_S = 60.0
"""New reports appear monthly: the list is re-read every minute."""


def find_reports(reports_dir: Path) -> list[dict]:
    """Every report under `reports_dir`, newest month first and a month's final report before its report to date:
    folder (relative, '.' for the directory itself), month, to_date and through (the end of the hours it holds),
    generated_at, EuroHPC totals (GPU and IT kWh, EUR, kg CO2e), coverage (0-1, of the elapsed GPU-time), the
    summary's first sentence and the files present."""
    if not reports_dir.is_dir():
        return []
    found = []
    for folder in [reports_dir, *sorted(p for p in reports_dir.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        summary = folder / "summary.json"
        if not summary.is_file():
            continue
        try:
            doc = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        prov, total, summary = doc.get("provenance", {}), doc.get("eurohpc", {}), doc.get("executive_summary", {})
        text = summary.get("text") or [""]
        found.append({"folder": "." if folder == reports_dir else folder.name, "month": prov.get("month", folder.name),
                      "to_date": prov.get("to_date") is True, "through": prov.get("through", ""),
                      "generated_at": prov.get("generated_at", ""), "energy_kwh": total.get("energy_kwh"), "it_kwh": total.get("it_kwh"),
                      "cost_eur": total.get("cost_eur"), "co2e_kg": total.get("co2e_kg"), "coverage": prov.get("coverage"),
                      "headline": str(text[0]), "files": [name for name in REPORT_FILES if (folder / name).is_file()]})
    return sorted(found, key=lambda r: (str(r["month"]), not r["to_date"]), reverse=True)


def layout(ctx: PageContext, query: dict[str, list[str]]) -> html.Div:
    return html.Div([
        html.H1("Reports: the monthly board report"),
        html.P(["An executive summary (energy, cost, CO2e, PUE and peak against cap per factory against the previous month; "
                "projects against their allocation; data coverage), then energy, GPU-hours, cost and CO2e per factory, access mode, "
                "sector and project, daily power against cap and the efficiency league. The report scheduler writes the month to "
                "date daily and the month just ended once its hours have settled (the 1st, from 03:00 UTC); ",
                html.Code("aifmon report monthly --month YYYY-MM --out DIR/YYYY-MM"), f" writes one by hand. Reports directory: "
                f"{ctx.reports_dir}."], className="lede"),
        html.Div(id=PREFIX + "list", className="panel"),
        dcc.Interval(id=PREFIX + "tick", interval=int(max(ctx.refresh_s, REFRESH_S) * 1000)),
    ])


def register(app: dash.Dash, ctx: PageContext) -> None:
    from flask import abort, request, send_from_directory

    @app.callback(Output(PREFIX + "list", "children"), Input(PREFIX + "tick", "n_intervals"))
    def refresh(_n: int | None):
        with timed(ctx, PREFIX, "refresh"):
            return _table(find_reports(ctx.reports_dir), ctx.reports_dir)

    @app.server.route(FILES_ROUTE + "<folder>/<name>")
    def report_file(folder: str, name: str):
        # Only the report files, only in a report folder directly under the reports directory.
        known = {r["folder"] for r in find_reports(ctx.reports_dir)}
        if name not in REPORT_FILES or folder not in known:
            abort(404)
        directory = ctx.reports_dir.resolve() if folder == "." else (ctx.reports_dir / folder).resolve()
        return send_from_directory(directory, name, as_attachment=request.args.get("download") == "1")


def _table(reports: list[dict], reports_dir: Path) -> html.Table | html.P:
    if not reports:
        return html.P(f"No report in {reports_dir} yet. The report scheduler writes the month to date once the hourly rollups "
                      f"have the month's first hours; or write one with `aifmon report monthly --month YYYY-MM --out "
                      f"{reports_dir}/YYYY-MM`.", className="empty", id=PREFIX + "none")

    def num(v: object, fmt: str, unit: str) -> str:
        return f"{format(v, fmt)} {unit}" if isinstance(v, (int, float)) else "n/a"

    rows = []
    for r in reports:
        links: list = []
        for name in r["files"]:
            href = f"{FILES_ROUTE}{r['folder']}/{name}"
            if name.startswith("report."):
                links += [html.A(f"open {name}", href=href, target="_blank", className="report-open"), " "]
            links += [html.A(f"download {name}", href=href + "?download=1", className="report-download"), " "]
        period = f"to date, through {r['through']}" if r["to_date"] else "whole month"
        coverage = r["coverage"] * 100 if isinstance(r["coverage"], (int, float)) else None
        rows.append(html.Tr([html.Td(r["month"]), html.Td(period), html.Td(r["headline"], className="report-headline"),
                             html.Td(num(r["energy_kwh"], ",.0f", "kWh")), html.Td(num(r["it_kwh"], ",.0f", "kWh")),
                             html.Td(num(r["cost_eur"], ",.0f", "EUR")), html.Td(num(r["co2e_kg"], ",.0f", "kg CO2e")),
                             html.Td(num(coverage, ".1f", "%")), html.Td(r["generated_at"]), html.Td(links)], className="report-row"))
    head = ["Month", "Period", "Summary", "GPU energy", "IT energy", "Cost", "CO2e", "Coverage of the elapsed GPU-time", "Generated", "Files"]
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="table", id=PREFIX + "table")
