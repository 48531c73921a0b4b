"""The governance board's monthly report: report.html, report.pdf, summary.csv and summary.json.

Figures come from the hourly rollup tables (`aifmon.rollups.hourly`), not raw samples; an hour of the month
that the store has samples for but no rollup yet is computed from the samples in memory (the report
never writes to the store) and counted in the provenance. Per factory and EuroHPC-wide: GPU and node
energy, GPU-hours, average power, cost, CO2e, PUE where a facility meter exists, coverage; energy by
access mode, sector and project; daily power against each factory's cap; the efficiency league
(TOP500 November 2024 EuroHPC entries, plus HPL runs measured with `aifmon efficiency hpl --record`).

report.html is self-contained (plotly.js inline, no network); report.pdf is Chromium's print-to-PDF of
it, one section per page.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from aifmon.rollups.efficiency import TOP500_SOURCE, league_table, measured_runs
from aifmon.rollups.energy import JOB_KEYS, EnergyRollup, carbon_source, summarise
from aifmon.rollups.hourly import HOUR_MS, NODE_TABLE, SETTLE_MS, SITE_COLUMNS, SITE_TABLE, TABLE, hour_rows
from aifmon.rollups.report_format import GPU_ENERGY_SOURCE
from aifmon.stores.store import RowStore, SampleReader
from aifmon.telemetry.csv_cells import csv_safe
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.inventory import Inventory

SECTIONS = ("EuroHPC summary", "Energy by factory", "Energy by access mode", "Energy by sector", "Top projects",
            "Daily power against cap", "Efficiency league", "Provenance and method")
TOP_PROJECTS = 20


@dataclass(frozen=True)
class MonthlyReport:
    month: str
    start_ms: int
    end_ms: int
    by: dict[str, EnergyRollup]  # factory, access_mode, sector, project, total
    daily_power: pd.DataFrame  # factory, day, avg_mw, peak_hour_mw, cap_mw, peak_share_of_cap
    league: pd.DataFrame
    provenance: dict


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MonthError(UserError, ValueError):
    """A month that is not `YYYY-MM`."""


class ReportPdfError(UserError, RuntimeError):
    """report.pdf cannot be printed here (no Chromium, or it failed); the message says what to do (or --no-pdf)."""


def month_range(month: str) -> tuple[int, int]:
    """[start, end) of a calendar month `YYYY-MM` in UTC, ms."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise MonthError(f"month {month!r}: expected YYYY-MM, e.g. 2025-03") from None
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def inventory_hash(inventory: Inventory) -> str:
    """sha256 of the validated inventory's canonical JSON: the same site description gives the same hash,
    whatever the file's layout or comments."""
    doc = {"name": inventory.name, "factories": [f.model_dump() for f in inventory.factories],
           "projects": [p.model_dump() for p in inventory.projects]}
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def software_version() -> str:
    try:
        return f"aifmon {metadata.version('aifmon')}"
    except metadata.PackageNotFoundError:
        return "aifmon (not installed as a package)"


def build_monthly_report(store: SampleReader, inventory: Inventory, month: str, now_ms: int | None = None,
                         progress: Callable[[str], None] = lambda step: None) -> MonthlyReport:
    """Gather every figure of the report (no files written). `progress` is called once per step done."""
    start_ms, end_ms = month_range(month)
    now_ms = int(datetime.now(UTC).timestamp() * 1000) if now_ms is None else now_ms
    gpu, node, site, computed, source = _hourly(store, inventory, start_ms, end_ms, now_ms, progress)
    progress("hourly rollups read")
    jobs = gpu.groupby(JOB_KEYS, as_index=False)[["energy_j", "gpu_seconds"]].sum()
    other = node.groupby(JOB_KEYS, as_index=False)["node_other_j"].sum() if len(node) else pd.DataFrame(columns=JOB_KEYS + ["node_other_j"])
    jobs = jobs.merge(other, on=JOB_KEYS, how="outer").fillna({"energy_j": 0.0, "gpu_seconds": 0.0, "node_other_j": 0.0})
    sites = site.groupby("factory", as_index=False)[[c for c in SITE_COLUMNS if c != "facility_energy_j"]].sum() if len(site) else \
        pd.DataFrame(columns=["factory"] + SITE_COLUMNS)
    if len(site):
        metered = site[site["facility_energy_j"].notna()].groupby("factory")["facility_energy_j"].sum()
        sites["facility_energy_j"] = sites["factory"].map(metered)
    hours_in_data = int(site["window_start_ms"].nunique()) if len(site) else int(gpu["window_start_ms"].nunique()) if len(gpu) else 0
    span_end = min(end_ms, max(start_ms, (now_ms - SETTLE_MS) // HOUR_MS * HOUR_MS))
    by = {key: summarise(jobs, sites, inventory, key, start_ms, max(span_end, start_ms + HOUR_MS))
          for key in ("total", "factory", "access_mode", "sector", "project")}
    progress("energy grouped")
    daily = _daily_power(site, gpu, inventory)
    league = league_table(measured_runs(store, start_ms, end_ms))
    progress("daily power and league")
    total = by["total"]
    provenance = {
        "month": month, "start": _iso(start_ms), "end": _iso(end_ms),
        "generated_at": _iso(now_ms),
        "hours_in_report": hours_in_data, "hours_in_month": (end_ms - start_ms) // HOUR_MS,
        "hours_computed_from_samples": computed, "figures_from": source,
        "coverage": total.coverage,
        "inventory": inventory.source, "inventory_hash": inventory_hash(inventory),
        "inventory_illustrative": inventory.illustrative,
        "software_version": software_version(),
        "carbon_intensity_source": carbon_source(), "league_source": TOP500_SOURCE,
        "energy_source": f"{GPU_ENERGY_SOURCE}; node energy from node power (BMC) or RAPL; facility energy from aif_facility_power_watts",
        "attribution": "aif_gpu_job_info per GPU; a node's non-GPU energy split by the GPU-seconds each job held on it",
        "cost_basis": "attributed IT energy (GPU + node share) x each factory's energy price (EUR/kWh) from the inventory",
    }
    return MonthlyReport(month, start_ms, end_ms, by, daily, league, provenance)


def _hourly(store: SampleReader, inventory: Inventory, start_ms: int, end_ms: int, now_ms: int,
            progress: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int, str]:
    """The month's hourly rows; hours with samples but no rollup are computed in memory."""
    bounds: tuple[int, int] | None
    if isinstance(store, RowStore):
        gpu, node, site = (store.read_rows(t, start_ms, end_ms) for t in (TABLE, NODE_TABLE, SITE_TABLE))
        bounds = store.time_bounds()
        source = "hourly rollup tables"
    else:  # a PromQL server keeps no derived tables: every hour comes from its samples
        gpu = node = site = pd.DataFrame()
        bounds = (start_ms, now_ms)
        source = "samples (this store keeps no rollup tables)"
    done = set(site["window_start_ms"].tolist()) if len(site) else set(gpu["window_start_ms"].tolist()) if len(gpu) else set()
    todo: list[int] = []
    if bounds is not None:
        first = max(start_ms, bounds[0] // HOUR_MS * HOUR_MS)
        # finished hours up to the one holding the newest sample
        last = min(end_ms, (now_ms - SETTLE_MS) // HOUR_MS * HOUR_MS, bounds[1] // HOUR_MS * HOUR_MS + HOUR_MS)
        todo = [h for h in range(first, last, HOUR_MS) if h not in done]
    frames: list[list[pd.DataFrame]] = [[gpu], [node], [site]]
    for hour in todo:
        for bucket, rows in zip(frames, hour_rows(store, hour, inventory)):
            bucket.append(rows)
        progress(f"hour {_iso(hour)} computed from samples")
    gpu, node, site = (pd.concat([f for f in bucket if len(f)], ignore_index=True) if any(len(f) for f in bucket) else pd.DataFrame()
                       for bucket in frames)
    if gpu.empty:
        gpu = pd.DataFrame(columns=["window_start_ms"] + JOB_KEYS + ["energy_j", "gpu_seconds"])
    return gpu, node, site, len(todo), source


def _daily_power(site: pd.DataFrame, gpu: pd.DataFrame, inventory: Inventory) -> pd.DataFrame:
    """Per factory and UTC day: average and peak-hour power (facility meter, else IT power x design PUE), MW, and the cap."""
    if len(site):
        hourly = site[["window_start_ms", "factory", "it_energy_j", "facility_energy_j"]].copy()
    elif len(gpu):  # rollups made before node and site tables existed: GPU energy only
        hourly = gpu.groupby(["window_start_ms", "factory"], as_index=False)["energy_j"].sum().rename(columns={"energy_j": "it_energy_j"})
        hourly["facility_energy_j"] = np.nan
    else:
        return pd.DataFrame(columns=["factory", "day", "avg_mw", "peak_hour_mw", "cap_mw", "peak_share_of_cap", "basis"])
    pue = {f.id: f.design_pue for f in inventory.factories}
    metered = hourly["facility_energy_j"].notna()
    hourly["facility_j"] = hourly["facility_energy_j"].where(metered, hourly["it_energy_j"] * hourly["factory"].map(pue).fillna(1.0))
    hourly["basis"] = np.where(metered, "facility meter", "IT power x design PUE")
    hourly["mw"] = hourly["facility_j"] / 3600.0 / 1e6
    hourly["day"] = pd.to_datetime(hourly["window_start_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    daily = hourly.groupby(["factory", "day"], as_index=False).agg(avg_mw=("mw", "mean"), peak_hour_mw=("mw", "max"),
                                                                    basis=("basis", "first"))
    caps = {f.id: f.power_cap_mw for f in inventory.factories}
    daily["cap_mw"] = daily["factory"].map(caps)
    daily["peak_share_of_cap"] = daily["peak_hour_mw"] / daily["cap_mw"]
    return daily


# -- output --------------------------------------------------------------------------------------

_FIGURES = [("energy_kwh", "GPU energy kWh", "{:,.1f}"), ("node_other_kwh", "node other kWh", "{:,.1f}"),
            ("it_kwh", "IT energy kWh", "{:,.1f}"), ("share", "share of GPU energy", "{:.1%}"), ("gpu_hours", "GPU-hours", "{:,.0f}"),
            ("avg_power_kw", "avg power kW", "{:,.1f}"), ("cost_eur", "cost EUR", "{:,.0f}"), ("co2e_kg", "CO2e kg", "{:,.0f}"),
            ("pue", "PUE", "{:.3f}")]


def write_monthly_report(report: MonthlyReport, out: Path, pdf: bool = True,
                         progress: Callable[[str], None] = lambda step: None) -> list[Path]:
    """Write report.html, summary.csv, summary.json and (with `pdf`) report.pdf into `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "summary.csv", out / "report.html"]
    paths[0].write_text(json.dumps(_summary_json(report), indent=2, default=_json_default), encoding="utf-8")
    csv_safe(_summary_frame(report)).to_csv(paths[1], index=False, float_format="%.6f")
    progress("summary written")
    paths[2].write_text(_html(report), encoding="utf-8")
    progress("report.html written")
    if pdf:
        paths.append(print_to_pdf(paths[2], out / "report.pdf"))
        progress("report.pdf printed")
    return paths


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    return str(value)


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))  # NaN -> null, NumPy scalars -> JSON numbers


def _summary_json(r: MonthlyReport) -> dict:
    return {
        "provenance": r.provenance,
        "eurohpc": _records(r.by["total"].rows)[0] if len(r.by["total"].rows) else {},
        **{key: _records(r.by[key].rows) for key in ("factory", "access_mode", "sector", "project")},
        "daily_power": _records(r.daily_power),
        "efficiency_league": _records(r.league),
    }


def _summary_frame(r: MonthlyReport) -> pd.DataFrame:
    """One row per figure set: EuroHPC, each factory, access mode, sector and project; provenance on every row."""
    parts = []
    for scope in ("total", "factory", "access_mode", "sector", "project"):
        rows = r.by[scope].rows.copy()
        rows.insert(0, "scope", "EuroHPC" if scope == "total" else scope)
        rows.insert(1, "name", rows[scope])
        parts.append(rows.drop(columns=[scope]))
    frame = pd.concat(parts, ignore_index=True)
    keep = ["scope", "name"] + [c for c, _, _ in _FIGURES if c in frame] + ["facility_kwh"]
    frame = frame.reindex(columns=keep)
    p = r.provenance
    return frame.assign(month=p["month"], coverage=p["coverage"], inventory_hash=p["inventory_hash"],
                        software_version=p["software_version"], carbon_intensity_source=p["carbon_intensity_source"])


def _table(frame: pd.DataFrame, keys: list[str], limit: int | None = None) -> str:
    cols = [(c, h, f) for c, h, f in _FIGURES if c in frame]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
    body = []
    for _, row in (frame.head(limit) if limit else frame).iterrows():
        cells = "".join(f"<td>{html.escape(str(row[k]))}</td>" for k in keys)
        cells += "".join(f"<td class=num>{'-' if pd.isna(row[c]) else f.format(row[c])}</td>" for c, _, f in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _bar(frame: pd.DataFrame, key: str, title: str, first: bool) -> str:
    fig = go.Figure()
    if len(frame):
        fig.add_bar(x=frame[key].astype(str), y=frame["energy_kwh"], name="GPU", marker_color="#1f6fb2")
        fig.add_bar(x=frame[key].astype(str), y=frame["node_other_kwh"], name="node, non-GPU", marker_color="#9cc3e6")
    fig.update_layout(barmode="stack", title=title, yaxis_title="kWh", height=380, width=980, margin=dict(l=60, r=20, t=50, b=120))
    return _plot(fig, first)


def _plot(fig: go.Figure, first: bool) -> str:
    # plotly.js goes inline once, with the first figure: the file opens offline and in print
    return fig.to_html(full_html=False, include_plotlyjs=bool(first), config={"staticPlot": True})


def _daily_figure(daily: pd.DataFrame) -> str:
    fig = go.Figure()
    for factory, d in daily.groupby("factory"):
        fig.add_scatter(x=d["day"], y=d["peak_share_of_cap"] * 100, mode="lines+markers", name=str(factory))
    fig.add_hline(y=100, line_dash="dash", line_color="#b00020", annotation_text="cap")
    fig.update_layout(title="Peak hourly power per day, % of each factory's cap", yaxis_title="% of cap", height=420, width=980,
                      margin=dict(l=60, r=20, t=50, b=60))
    return _plot(fig, False)


def _league_figure(league: pd.DataFrame) -> str:
    shown = league[league["gflops_per_watt"].notna()]
    colors = ["#d9822b" if s.startswith("measured") else "#1f6fb2" for s in shown["source"]]
    fig = go.Figure(go.Bar(x=shown["gflops_per_watt"], y=shown["system"], orientation="h", marker_color=colors))
    fig.update_layout(title="GFlops/W: TOP500 Nov 2024 EuroHPC entries (blue), measured here (orange)", xaxis_title="GFlops/W",
                      height=480, width=980, yaxis=dict(autorange="reversed"), margin=dict(l=200, r=20, t=50, b=60))
    return _plot(fig, False)


_CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 11px; margin: 24px; color: #1b1b1b; }
h1 { font-size: 20px; } h2 { font-size: 16px; border-bottom: 2px solid #1f6fb2; padding-bottom: 4px; }
section { break-before: page; page-break-before: always; } section:first-of-type { break-before: auto; page-break-before: auto; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #eef3f8; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; } .warn { color: #b00020; font-weight: bold; }
@page { size: A4 landscape; margin: 12mm; }
"""


def _html(r: MonthlyReport) -> str:
    p = r.provenance
    total = r.by["total"].rows
    facts = (f"<p>{p['start']} to {p['end']}; {p['hours_in_report']} of {p['hours_in_month']} hours have data; "
             f"coverage {p['coverage']:.1%}. CO2e from {html.escape(p['carbon_intensity_source'])}.</p>")
    warn = "<p class=warn>Illustrative inventory: capacities, caps, PUEs and prices are invented.</p>" if p["inventory_illustrative"] else ""
    projects = r.by["project"].rows
    top = projects[projects["project"] != "(unallocated)"].head(TOP_PROJECTS)
    sections = {
        "EuroHPC summary": facts + warn + _table(total, ["total"]),
        "Energy by factory": _bar(r.by["factory"].rows, "factory", "Energy by factory", True) + _table(r.by["factory"].rows, ["factory"]),
        "Energy by access mode": _bar(r.by["access_mode"].rows, "access_mode", "Energy by access mode", False)
        + _table(r.by["access_mode"].rows, ["access_mode"]),
        "Energy by sector": _bar(r.by["sector"].rows, "sector", "Energy by sector", False) + _table(r.by["sector"].rows, ["sector"]),
        "Top projects": _bar(top, "project", f"Top {TOP_PROJECTS} projects by GPU energy", False) + _table(top, ["project"]),
        "Daily power against cap": _daily_figure(r.daily_power) + _daily_table(r.daily_power),
        "Efficiency league": _league_figure(r.league) + _league_table_html(r.league),
        "Provenance and method": "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                                      for k, v in p.items()) + "</table>",
    }
    body = "".join(f"<section><h2>{html.escape(name)}</h2>{sections[name]}</section>" for name in SECTIONS)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>aifmon monthly report {r.month}</title>"
            f"<style>{_CSS}</style></head><body><h1>EuroHPC AI Factories: energy report, {r.month}</h1>{body}</body></html>")


def _daily_table(daily: pd.DataFrame) -> str:
    if daily.empty:
        return "<p class=note>No hourly data this month.</p>"
    worst = daily.sort_values("peak_share_of_cap", ascending=False).groupby("factory").head(1)
    rows = "".join(f"<tr><td>{html.escape(str(d.factory))}</td><td>{d.day}</td><td class=num>{d.peak_hour_mw:.3f}</td>"
                   f"<td class=num>{d.cap_mw:g}</td><td class=num>{d.peak_share_of_cap:.1%}</td><td>{d.basis}</td></tr>"
                   for d in worst.itertuples())
    return ("<table><thead><tr><th>factory</th><th>peak day</th><th>peak hour MW</th><th>cap MW</th><th>of cap</th><th>basis</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _league_table_html(league: pd.DataFrame) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(x.system))}</td><td>{html.escape(str(x.country))}</td>"
                   f"<td class=num>{'-' if pd.isna(x.gflops_per_watt) else f'{x.gflops_per_watt:.2f}'}</td>"
                   f"<td class=num>{'-' if pd.isna(x.power_kw) else f'{x.power_kw:,.0f}'}</td><td>{html.escape(str(x.source))}</td></tr>"
                   for x in league.itertuples())
    return ("<table><thead><tr><th>system</th><th>country</th><th>GFlops/W</th><th>power kW</th><th>source</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def print_to_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 120.0) -> Path:
    """Chromium's headless print-to-PDF of `html_path` (after its scripts ran, so the plots are drawn)."""
    binary = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if binary is None:
        raise ReportPdfError("report.pdf needs Chromium (Debian package `chromium`); install it, or pass --no-pdf")
    with tempfile.TemporaryDirectory(prefix="aifmon-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--no-pdf-header-footer",
               f"--user-data-dir={profile}", "--virtual-time-budget=30000", f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        raise ReportPdfError(f"Chromium could not print {html_path} to PDF (status {result.returncode}): {result.stderr[-500:]}")
    return pdf_path
