"""The governance board's monthly report: report.html, report.pdf, summary.csv and summary.json.

Figures come from the energy ledger (`aifmon.rollups.ledger`): the settled hourly rows, and every other finished hour
computed from the samples in memory (the report never writes to the store), counted in the provenance.

The report opens with an **executive summary**: per factory and EuroHPC-wide, IT energy, cost, CO2e (with the
carbon-intensity source and year), PUE where a facility meter exists and the busiest hour's power against the
factory's cap, each beside the same figure of the previous month (for a month-to-date report, the same number of
hours from the start of the previous month) and the change; the projects' GPU energy against their monthly
allocation (`allocation_mwh`, the figure the `EnergyBudget*` alerts use); data coverage in words where it is below
100 %; and a few sentences made from those figures by fixed templates. The detail pages follow: GPU and node
energy, GPU-hours, average power, cost, CO2e, PUE per factory, access mode, sector and project; daily power
against each factory's cap; the efficiency league (TOP500 November 2024 EuroHPC entries, plus HPL runs measured
with `aifmon efficiency hpl --record`).

An hour **with data** for a factory is an hour in which it reported GPU intervals or node energy; a factory's
average power is its IT energy over its hours with data, and any other grouping's is over the hours in which any
factory had data (both stated beside the figure). Coverage is the GPU-time covered by scrapes over the GPU-time of
every elapsed hour of the month (its GPUs: the most any hour saw), so a month with 18 hours of data out of 720 says
2.5 %, not 100 %.

report.html is self-contained (plotly.js inline once, no network); report.pdf is Chromium's print-to-PDF of
it, one section per page.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import html
import json
import math
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
from plotly.offline import get_plotlyjs

from aifmon.rollups.counters import HOUR_MS
from aifmon.rollups.efficiency import TOP500_SOURCE, league_table, measured_runs
from aifmon.rollups.energy import EnergyRollup, carbon_source
from aifmon.rollups.hourly import LATE_WINDOW_S, SETTLE_MS
from aifmon.rollups.ledger import LedgerRead, iso_utc, month_range, previous_month, read_ledger
from aifmon.rollups.report_format import GPU_ENERGY_SOURCE
from aifmon.stores.store import SampleReader
from aifmon.telemetry.csv_cells import csv_safe
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.inventory import Inventory

SECTIONS = ("Executive summary", "EuroHPC summary", "Energy by factory", "Energy by access mode", "Energy by sector", "Top projects",
            "Daily power against cap", "Efficiency league", "Provenance and method")
TOP_PROJECTS = 20
ALLOCATION_NAMED = 0.85
"""Projects that used this share of their monthly allocation or more are named in the summary (the first `EnergyBudget*` level)."""
PEAK_NAMED = 0.85
"""Factories whose busiest hour reached this share of their cap are named in the summary."""
PUE_LISTED = 4
"""Up to this many metered factories the summary names each PUE; beyond, the range."""
AVERAGES = ("avg power kW = IT energy / hours with data: a factory's own hours, every other grouping's the hours in which any "
            "factory had data")


@dataclass(frozen=True)
class Period:
    """The figures of the hours [start_ms, through_ms) (a month, or its elapsed part), from the hourly rollups.

    `factories`: one row per factory (every live factory of the inventory, and any other the data names), indexed by
    factory: `hours_with_data`, `gpus` (the most any hour saw), `covered_s` (GPU-time covered by scrapes, s) and
    `coverage` (covered_s over the GPU-time of every elapsed hour, 0-1; NaN where the rows do not say)."""

    start_ms: int
    through_ms: int
    by: dict[str, EnergyRollup]  # factory, access_mode, sector, project, total
    daily_power: pd.DataFrame  # factory, day, hours, avg_mw, peak_hour_mw, cap_mw, peak_share_of_cap, basis
    factories: pd.DataFrame
    hours_with_data: int
    computed: int  # windows (hours) computed from samples
    source: str
    coverage_of_hours_with_data: float  # covered GPU-time over the GPU-time of the hours with data (0-1)

    @property
    def hours_elapsed(self) -> int:
        return (self.through_ms - self.start_ms) // HOUR_MS

    @property
    def coverage(self) -> float:
        """GPU-time covered over the GPU-time of every elapsed hour, all factories with data (0-1): the ledger's rule."""
        return self.by["total"].coverage


@dataclass(frozen=True)
class MonthlyReport:
    month: str
    start_ms: int
    end_ms: int
    by: dict[str, EnergyRollup]  # factory, access_mode, sector, project, total
    daily_power: pd.DataFrame  # factory, day, hours, avg_mw, peak_hour_mw, cap_mw, peak_share_of_cap, basis
    league: pd.DataFrame
    provenance: dict
    summary: dict  # the executive summary's figures and sentences (see `_executive_summary`)


class ReportPdfError(UserError, RuntimeError):
    """report.pdf cannot be printed here (no Chromium, or it failed); the message says what to do (or --no-pdf)."""


def month_name(month: str) -> str:
    """`2025-03` -> `March 2025`."""
    year, number = month.split("-")
    return f"{calendar.month_name[int(number)]} {year}"


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
    """Gather every figure of the report (no files written). `progress` is called once per step done.

    Before the month is over (or within `SETTLE_MS` of its end) the report is **to date**: it holds the month's finished
    hours, and the previous month's figures are those of its first as many hours. It is `settled` once the hourly
    rollups no longer recheck the month's hours for late data (`LATE_WINDOW_S` after its end)."""
    start_ms, end_ms = month_range(month)
    now_ms = int(datetime.now(UTC).timestamp() * 1000) if now_ms is None else now_ms
    current = build_period(store, inventory, start_ms, end_ms, now_ms, progress)
    progress("month's figures")
    before = previous_month(month)
    prev_start, prev_end = month_range(before)
    previous = build_period(store, inventory, prev_start, min(prev_end, prev_start + current.through_ms - start_ms), now_ms,
                            progress)
    progress("previous month's figures")
    league = league_table(measured_runs(store, start_ms, end_ms))
    progress("efficiency league")
    to_date = current.through_ms < end_ms
    provenance = {
        "month": month, "start": iso_utc(start_ms), "end": iso_utc(end_ms), "through": iso_utc(current.through_ms),
        "to_date": to_date, "settled": now_ms >= end_ms + LATE_WINDOW_S * 1000,
        "generated_at": iso_utc(now_ms),
        "hours_in_month": (end_ms - start_ms) // HOUR_MS, "hours_elapsed": current.hours_elapsed,
        "hours_with_data": current.hours_with_data,
        "hours_computed_from_samples": current.computed + previous.computed, "figures_from": current.source,
        "coverage": current.coverage, "coverage_of_hours_with_data": current.coverage_of_hours_with_data,
        "averages": AVERAGES,
        "previous_period": f"{before}: {iso_utc(previous.start_ms)} to {iso_utc(previous.through_ms)}",
        "inventory": inventory.source, "inventory_hash": inventory_hash(inventory),
        "inventory_illustrative": inventory.illustrative,
        "software_version": software_version(),
        "carbon_intensity_source": carbon_source(), "league_source": TOP500_SOURCE,
        "energy_source": f"{GPU_ENERGY_SOURCE}; node energy from node power (BMC) or RAPL; facility energy from aif_facility_power_watts",
        "attribution": "aif_gpu_job_info per GPU; a node's non-GPU energy split by the GPU-seconds each job held on it",
        "cost_basis": "attributed IT energy (GPU + node share) x each factory's energy price (EUR/kWh) from the inventory",
        "peak_basis": "the busiest clock hour's facility energy (facility meter, else IT energy x design PUE) against power_cap_mw",
        "allocation_basis": "a project's GPU energy in the period against its monthly allocation_mwh (as the EnergyBudget alerts count it)",
    }
    summary = _executive_summary(month, current, before, previous, inventory, to_date)
    return MonthlyReport(month, start_ms, end_ms, current.by, current.daily_power, league, provenance, summary)


def build_period(store: SampleReader, inventory: Inventory, start_ms: int, end_ms: int, now_ms: int,
                 progress: Callable[[str], None] = lambda step: None) -> Period:
    """The figures of the finished hours of [start_ms, end_ms) (ms) as of `now_ms`, from the ledger."""
    through = min(end_ms, max(start_ms, (now_ms - SETTLE_MS) // HOUR_MS * HOUR_MS))
    read = read_ledger(store, inventory, start_ms, through, now_ms, progress=progress) if through > start_ms \
        else LedgerRead.nothing(start_ms, start_ms + HOUR_MS)
    site = _with_data(read.sites)
    factories, hours = _factory_hours(site, read.jobs, inventory, (through - start_ms) // HOUR_MS)
    by = {key: _over_hours_with_data(read.by(inventory, key), factories["hours_with_data"], hours)
          for key in ("total", "factory", "access_mode", "sector", "project")}
    progress("energy grouped")
    source = " and ".join(name for name, hours in (("hourly rollup tables", read.hours_from_rows), ("samples", read.windows_from_samples))
                          if hours) or "no data"
    return Period(start_ms, through, by, _daily_power(site, read.jobs, inventory), factories, hours, read.windows_from_samples, source,
                  _covered_share(site))


def _covered_share(site: pd.DataFrame) -> float:
    """Covered GPU-time over the GPU-time of the hours with data (0-1; 0 without any)."""
    expected = float(site["expected_s"].sum()) if len(site) else 0.0
    return float(site["covered_s"].sum()) / expected if expected else 0.0


def _with_data(site: pd.DataFrame) -> pd.DataFrame:
    """The site rows of hours in which the factory reported GPU intervals or node energy. A row made only of the
    samples on the hour's edge (the scrape at :00 that ends the previous hour's last interval) holds nothing."""
    if site.empty or "gpus" not in site:
        return site
    return site[(site["gpus"] > 0) | (site["it_energy_j"] > 0)].reset_index(drop=True)


def _factory_hours(site: pd.DataFrame, gpu: pd.DataFrame, inventory: Inventory, elapsed: int) -> tuple[pd.DataFrame, int]:
    """Per factory: hours with data, GPUs, covered GPU-seconds, coverage of the `elapsed` hours; and the hours in which
    any factory had data. Rollups made before the site table existed say only which hours hold GPU energy."""
    names = [f.id for f in inventory.live_factories()]
    if len(site):
        g = site.groupby("factory")
        frame = pd.DataFrame({"hours_with_data": g["window_start_ms"].nunique(), "gpus": g["gpus"].max(), "covered_s": g["covered_s"].sum()})
        hours = int(site["window_start_ms"].nunique())
    else:
        used = gpu[gpu["energy_j"] > 0]
        frame = pd.DataFrame({"hours_with_data": used.groupby("factory")["window_start_ms"].nunique(), "gpus": np.nan, "covered_s": np.nan})
        hours = int(used["window_start_ms"].nunique())
    frame = frame.reindex(names + [f for f in frame.index if f not in names])
    frame = frame.fillna({"hours_with_data": 0}).astype({"hours_with_data": np.int64})
    frame.loc[frame["hours_with_data"] == 0, ["gpus", "covered_s"]] = 0.0
    expected = frame["gpus"] * elapsed * 3600.0
    frame["coverage"] = (frame["covered_s"] / expected).where(expected > 0, 0.0).where(frame["gpus"].notna())
    frame.index.name = "factory"
    return frame, hours


def _over_hours_with_data(r: EnergyRollup, factory_hours: pd.Series, hours: int) -> EnergyRollup:
    """`avg_power_kw` over the hours with data (the factory's own for a factory row), stated in `hours_with_data`."""
    rows = r.rows.copy()
    used = rows["factory"].map(factory_hours).fillna(0).astype(np.int64) if r.by == "factory" else pd.Series(hours, index=rows.index)
    rows["hours_with_data"] = used
    rows["avg_power_kw"] = (rows["it_kwh"] / used.where(used > 0)).astype(float)
    return dataclasses.replace(r, rows=rows)


def _daily_power(site: pd.DataFrame, gpu: pd.DataFrame, inventory: Inventory) -> pd.DataFrame:
    """Per factory and UTC day: hours with data, average (over them) and peak-hour power (facility meter, else IT power x
    design PUE), MW, and the cap."""
    if len(site):
        hourly = site[["window_start_ms", "factory", "it_energy_j", "facility_energy_j"]].copy()
    elif len(gpu):  # rollups made before node and site tables existed: GPU energy only
        hourly = gpu.groupby(["window_start_ms", "factory"], as_index=False)["energy_j"].sum().rename(columns={"energy_j": "it_energy_j"})
        hourly = hourly[hourly["it_energy_j"] > 0]
        hourly["facility_energy_j"] = np.nan
    else:
        return pd.DataFrame(columns=["factory", "day", "hours", "avg_mw", "peak_hour_mw", "cap_mw", "peak_share_of_cap", "basis"])
    pue = {f.id: f.design_pue for f in inventory.factories}
    metered = hourly["facility_energy_j"].notna()
    hourly["facility_j"] = hourly["facility_energy_j"].where(metered, hourly["it_energy_j"] * hourly["factory"].map(pue).fillna(1.0))
    hourly["basis"] = np.where(metered, "facility meter", "IT power x design PUE")
    hourly["mw"] = hourly["facility_j"] / 3600.0 / 1e6
    hourly["day"] = pd.to_datetime(hourly["window_start_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    daily = hourly.groupby(["factory", "day"], as_index=False).agg(hours=("mw", "size"), avg_mw=("mw", "mean"),
                                                                    peak_hour_mw=("mw", "max"), basis=("basis", "first"))
    caps = {f.id: f.power_cap_mw for f in inventory.factories}
    daily["cap_mw"] = daily["factory"].map(caps)
    daily["peak_share_of_cap"] = daily["peak_hour_mw"] / daily["cap_mw"]
    return daily


# -- executive summary ---------------------------------------------------------------------------

_RELATIVE = ("it_kwh", "cost_eur", "co2e_kg")  # changes as a share of the previous figure; PUE and peak share as a difference


def _number(value: object) -> float | None:
    """A finite float, or None (no figure): NaN, None and missing values alike."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _scope_figures(period: Period, factory: str | None, inventory: Inventory) -> dict[str, float | None] | None:
    """IT energy kWh, cost EUR, CO2e kg, PUE, and for a factory its busiest hour (MW), cap (MW) and their ratio; None
    where the scope has no hour with data in the period (`factory` None: EuroHPC-wide)."""
    if factory is None:
        if not period.hours_with_data:
            return None
        row = period.by["total"].rows.iloc[0]
        return {"it_kwh": _number(row["it_kwh"]), "cost_eur": _number(row["cost_eur"]), "co2e_kg": _number(row["co2e_kg"]),
                "pue": _number(row.get("pue")), "peak_mw": None, "cap_mw": None, "peak_share_of_cap": None}
    if factory not in period.factories.index or not period.factories.loc[factory, "hours_with_data"]:
        return None
    rows = period.by["factory"].rows.set_index("factory")
    row = rows.loc[factory] if factory in rows.index else pd.Series(dtype=float)
    daily = period.daily_power[period.daily_power["factory"] == factory]
    peak = _number(daily["peak_hour_mw"].max()) if len(daily) else None
    cap = next((f.power_cap_mw for f in inventory.factories if f.id == factory), None)
    return {"it_kwh": _number(row.get("it_kwh", 0.0)), "cost_eur": _number(row.get("cost_eur", 0.0)),
            "co2e_kg": _number(row.get("co2e_kg", 0.0)), "pue": _number(row.get("pue")), "peak_mw": peak, "cap_mw": cap,
            "peak_share_of_cap": peak / cap if peak is not None and cap else None}


def _compare(now: dict[str, float | None] | None, before: dict[str, float | None] | None) -> dict[str, float | None]:
    """Each figure, its previous value (`<figure>_previous`) and the change (`<figure>_change`: a share of the previous
    figure for energy, cost and CO2e; a difference for PUE and the peak's share of cap); None where either is missing."""
    out: dict[str, float | None] = {}
    for key in ("it_kwh", "cost_eur", "co2e_kg", "pue", "peak_mw", "cap_mw", "peak_share_of_cap"):
        v = now.get(key) if now else None
        p = before.get(key) if before else None
        out[key], out[key + "_previous"] = v, p
        if key in ("peak_mw", "cap_mw"):
            continue
        if v is None or p is None:
            out[key + "_change"] = None
        elif key in _RELATIVE:
            out[key + "_change"] = (v - p) / p if p else None
        else:
            out[key + "_change"] = v - p
    return out


def _executive_summary(month: str, current: Period, before: str, previous: Period, inventory: Inventory, to_date: bool) -> dict:
    """The summary's figures and its sentences: `scopes` (EuroHPC, then each factory: figures, previous figures, changes,
    hours with data, coverage), `projects` (those with an allocation: GPU kWh used, share, previous share), `text` and
    `coverage_text` (sentences), `illustrative` (a sentence, or None for a real site's inventory), and the periods compared."""
    scopes = [{"scope": "EuroHPC", "name": "EuroHPC", **_compare(_scope_figures(current, None, inventory),
                                                               _scope_figures(previous, None, inventory)),
               "hours_with_data": current.hours_with_data, "coverage": current.coverage}]
    for factory, f in current.factories.iterrows():
        scopes.append({"scope": "factory", "name": str(factory),
                       **_compare(_scope_figures(current, str(factory), inventory), _scope_figures(previous, str(factory), inventory)),
                       "hours_with_data": int(f["hours_with_data"]), "coverage": _number(f["coverage"])})
    projects = _allocations(current, previous, inventory)
    period = f"{month_name(month)} to date (through {iso_utc(current.through_ms)})" if to_date else month_name(month)
    compared = (f"the first {previous.hours_elapsed} hours of {month_name(before)}" if to_date else month_name(before))
    summary = {"period": period, "hours_elapsed": current.hours_elapsed, "hours_with_data": current.hours_with_data,
               "previous_period": compared, "previous_hours_elapsed": previous.hours_elapsed,
               "previous_hours_with_data": previous.hours_with_data, "scopes": scopes, "projects": projects}
    summary["text"] = _sentences(summary)
    summary["coverage_text"] = _coverage_sentences(current, to_date)
    summary["illustrative"] = (f"The inventory ({inventory.source}) is illustrative: capacities, caps, PUEs, prices and allocations "
                               "are invented." if inventory.illustrative else None)
    return summary


def _allocations(current: Period, previous: Period, inventory: Inventory) -> list[dict]:
    """Each project with an `allocation_mwh`, most used first: GPU energy in the period (kWh), share of the allocation,
    the previous period's share (None without data then) and whether it reached `ALLOCATION_NAMED`."""
    def used(period: Period) -> dict[str, float]:
        rows = period.by["project"].rows
        return dict(zip(rows["project"], rows["energy_kwh"].astype(float)))

    now, before = used(current), used(previous)
    out = []
    for p in inventory.projects:
        if p.allocation_mwh is None:
            continue
        kwh = now.get(p.id, 0.0)
        share = kwh / (p.allocation_mwh * 1000.0)
        out.append({"project": p.id, "name": p.name, "factory": p.factory, "allocation_mwh": p.allocation_mwh, "used_gpu_kwh": kwh,
                    "share": share, "share_previous": before.get(p.id, 0.0) / (p.allocation_mwh * 1000.0) if previous.hours_with_data else None,
                    "named": share >= ALLOCATION_NAMED})
    return sorted(out, key=lambda a: -a["share"])


def _energy(kwh: float) -> str:
    return f"{kwh / 1000:,.1f} MWh" if abs(kwh) >= 10_000 else f"{kwh:,.1f} kWh"


def _mass(kg: float) -> str:
    return f"{kg / 1000:,.1f} t CO2e" if abs(kg) >= 10_000 else f"{kg:,.1f} kg CO2e"


def _change_text(key: str, change: float | None) -> str:
    """`+12.5 %`, `-0.040` (PUE), `+3.0 pp` (peak against cap) or `no data`."""
    if change is None:
        return "no data"
    if key == "pue":
        return f"{change:+.3f}"
    if key == "peak_share_of_cap":
        return f"{change * 100:+.1f} pp"
    return f"{change * 100:+.1f} %"


def _sentences(summary: dict) -> list[str]:
    """The paragraph a board member reads first, made from the figures by fixed templates."""
    total = summary["scopes"][0]
    factories = [s for s in summary["scopes"][1:] if s["it_kwh"] is not None]
    live = len(summary["scopes"]) - 1
    if total["it_kwh"] is None:
        return [f"{summary['period']}: no telemetry from any of the {live} live AI Factories, so there is no figure to report."]
    text = [f"{summary['period']}: {len(factories)} of the {live} live AI Factories reported, using {_energy(total['it_kwh'])} of IT energy "
            f"(GPUs and nodes) at a cost of EUR {total['cost_eur']:,.2f} and {_mass(total['co2e_kg'])} "
            f"(grid intensity: {carbon_source()})."]
    if total["it_kwh_previous"] is None:
        text.append(f"No data in {summary['previous_period']} to compare with.")
    else:
        text.append(f"Against {summary['previous_period']}: energy {_change_text('it_kwh', total['it_kwh_change'])}, "
                    f"cost {_change_text('cost_eur', total['cost_eur_change'])}, CO2e {_change_text('co2e_kg', total['co2e_kg_change'])}.")
    metered = sorted((s for s in factories if s["pue"] is not None), key=lambda s: s["pue"])
    if len(metered) > PUE_LISTED:
        text.append(f"PUE where a facility meter reports ({len(metered)} factories): {total['pue']:.2f} over them all, from "
                    f"{metered[0]['pue']:.2f} ({metered[0]['name']}) to {metered[-1]['pue']:.2f} ({metered[-1]['name']}).")
    elif metered:
        pue = ", ".join(f"{s['name']} {s['pue']:.2f}" + ("" if s["pue_change"] is None else f" ({_change_text('pue', s['pue_change'])})")
                        for s in metered)
        text.append(f"PUE where a facility meter reports: {pue}.")
    else:
        text.append("No factory reported a facility meter: no PUE was measured.")
    peaks = sorted((s for s in factories if s["peak_share_of_cap"] is not None), key=lambda s: -s["peak_share_of_cap"])
    if peaks:
        top = peaks[0]
        text.append(f"Closest to its power cap: {top['name']}, whose busiest hour drew {top['peak_mw']:.4g} MW, "
                    f"{top['peak_share_of_cap']:.1%} of its {top['cap_mw']:g} MW cap.")
        high = [s for s in peaks if s["peak_share_of_cap"] >= PEAK_NAMED]
        if high:
            text.append(f"{len(high)} factor{'y' if len(high) == 1 else 'ies'} reached {PEAK_NAMED:.0%} of the cap in the busiest hour: "
                        + ", ".join(f"{s['name']} ({s['peak_share_of_cap']:.1%})" for s in high) + ".")
        else:
            text.append(f"No factory's busiest hour reached {PEAK_NAMED:.0%} of its cap.")
    projects = summary["projects"]
    named = [p for p in projects if p["named"]]
    if not projects:
        text.append("No project has an energy allocation (allocation_mwh) in the inventory.")
    elif named:
        text.append(f"{len(named)} of the {len(projects)} projects with an energy allocation used {ALLOCATION_NAMED:.0%} of it or more: "
                    + ", ".join(f"{p['project']} ({p['share']:.1%} of {p['allocation_mwh']:g} MWh)" for p in named) + ".")
    else:
        text.append(f"None of the {len(projects)} projects with an energy allocation used {ALLOCATION_NAMED:.0%} of it "
                    f"(most: {projects[0]['project']}, {projects[0]['share']:.1%}).")
    return text


def _coverage_sentences(current: Period, to_date: bool) -> list[str]:
    """Data coverage in words, for each group of factories below 100 %: hours with data of the elapsed hours, and the
    GPU-time scrapes covered within those hours."""
    n = current.hours_elapsed
    span = f"the {n} hours so far this month" if to_date else f"{n} hours of the month"
    out = []
    f = current.factories
    silent = [str(x) for x in f.index[f["hours_with_data"] == 0]]
    if silent and n:
        out.append(f"No data from {', '.join(silent)} in {span}: no figure is shown for "
                   f"{'it' if len(silent) == 1 else 'them'}, which is not the same as no use.")
    partial = f[(f["hours_with_data"] > 0) & (f["hours_with_data"] < n)]
    for hours, group in partial.groupby("hours_with_data", sort=False):
        names = ", ".join(str(x) for x in group.index)
        out.append(f"Energy telemetry covers {hours} of {span} ({hours / n:.1%}) at {names}: "
                   f"{'its' if len(group) == 1 else 'their'} figures are for those hours only, and averages are over them.")
    within = f[f["hours_with_data"] > 0]
    within = within.assign(share=within["covered_s"] / (within["gpus"] * within["hours_with_data"] * 3600.0))
    gaps = within[within["share"] < 0.9995]
    if len(gaps):
        out.append("Within their hours with data, scrapes cover " + ", ".join(f"{s:.1%} of {x}'s GPU-time" for x, s in gaps["share"].items())
                   + "; energy across a gap still counts where a GPU's counter bridges it.")
    return out


# -- output --------------------------------------------------------------------------------------

_FIGURES = [("energy_kwh", "GPU energy kWh", "{:,.1f}"), ("node_other_kwh", "node other kWh", "{:,.1f}"),
            ("it_kwh", "IT energy kWh", "{:,.1f}"), ("share", "share of GPU energy", "{:.1%}"), ("gpu_hours", "GPU-hours", "{:,.0f}"),
            ("hours_with_data", "hours with data", "{:,.0f}"), ("avg_power_kw", "avg power kW (over hours with data)", "{:,.1f}"),
            ("cost_eur", "cost EUR", "{:,.0f}"), ("co2e_kg", "CO2e kg", "{:,.0f}"), ("pue", "PUE", "{:.3f}")]


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
        "executive_summary": r.summary,
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
    return frame.assign(month=p["month"], through=p["through"], coverage=p["coverage"], inventory_hash=p["inventory_hash"],
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


def _bar(frame: pd.DataFrame, key: str, title: str) -> str:
    fig = go.Figure()
    if len(frame):
        fig.add_bar(x=frame[key].astype(str), y=frame["energy_kwh"], name="GPU", marker_color="#1f6fb2")
        fig.add_bar(x=frame[key].astype(str), y=frame["node_other_kwh"], name="node, non-GPU", marker_color="#9cc3e6")
    fig.update_layout(barmode="stack", title=title, yaxis_title="kWh", height=380, width=980, margin=dict(l=60, r=20, t=50, b=120))
    return _plot(fig)


def _plot(fig: go.Figure) -> str:
    # plotly.js is in the page's head once (`_html`): the file opens offline and in print
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"staticPlot": True})


def _daily_figure(daily: pd.DataFrame) -> str:
    fig = go.Figure()
    for factory, d in daily.groupby("factory"):
        fig.add_scatter(x=d["day"], y=d["peak_share_of_cap"] * 100, mode="lines+markers", name=str(factory))
    fig.add_hline(y=100, line_dash="dash", line_color="#b00020", annotation_text="cap")
    fig.update_layout(title="Peak hourly power per day, % of each factory's cap", yaxis_title="% of cap", height=420, width=980,
                      margin=dict(l=60, r=20, t=50, b=60))
    return _plot(fig)


def _league_figure(league: pd.DataFrame) -> str:
    shown = league[league["gflops_per_watt"].notna()]
    colors = ["#d9822b" if s.startswith("measured") else "#1f6fb2" for s in shown["source"]]
    fig = go.Figure(go.Bar(x=shown["gflops_per_watt"], y=shown["system"], orientation="h", marker_color=colors))
    fig.update_layout(title="GFlops/W: TOP500 Nov 2024 EuroHPC entries (blue), measured here (orange)", xaxis_title="GFlops/W",
                      height=480, width=980, yaxis=dict(autorange="reversed"), margin=dict(l=200, r=20, t=50, b=60))
    return _plot(fig)


def _month_over_month_figure(summary: dict) -> str:
    factories = [s for s in summary["scopes"][1:] if s["it_kwh"] is not None or s["it_kwh_previous"] is not None]
    names = [s["name"] for s in factories]
    fig = go.Figure()
    fig.add_bar(x=names, y=[s["it_kwh_previous"] for s in factories], name=summary["previous_period"], marker_color="#b7c4d1")
    fig.add_bar(x=names, y=[s["it_kwh"] for s in factories], name=summary["period"], marker_color="#1f6fb2")
    fig.update_layout(barmode="group", title="IT energy per factory, against the previous month", yaxis_title="kWh", height=340,
                      width=490, margin=dict(l=60, r=10, t=50, b=90), legend=dict(orientation="h", y=-0.35), font=dict(size=10))
    return _plot(fig)


def _peak_figure(summary: dict) -> str:
    factories = [s for s in summary["scopes"][1:] if s["peak_share_of_cap"] is not None or s["peak_share_of_cap_previous"] is not None]
    names = [s["name"] for s in factories]
    now = [None if s["peak_share_of_cap"] is None else s["peak_share_of_cap"] * 100 for s in factories]
    before = [None if s["peak_share_of_cap_previous"] is None else s["peak_share_of_cap_previous"] * 100 for s in factories]
    fig = go.Figure()
    fig.add_bar(x=names, y=now, name="busiest hour, this period", marker_color=["#b00020" if v is not None and v >= PEAK_NAMED * 100
                                                                                 else "#1f6fb2" for v in now])
    fig.add_scatter(x=names, y=before, mode="markers", name="previous month", marker=dict(symbol="diamond", size=9, color="#555"))
    fig.add_hline(y=100, line_dash="dash", line_color="#b00020", annotation_text="cap")
    fig.add_hline(y=PEAK_NAMED * 100, line_dash="dot", line_color="#d9822b")
    fig.update_layout(title="Busiest hour's power, % of each factory's cap", yaxis_title="% of cap", height=340, width=490,
                      margin=dict(l=60, r=10, t=50, b=90), legend=dict(orientation="h", y=-0.35), font=dict(size=10))
    return _plot(fig)


def _allocation_figure(projects: list[dict]) -> str:
    shown = projects[:TOP_PROJECTS]  # most used first
    fig = go.Figure()
    labels = [f"{_energy(p['used_gpu_kwh'])} of {_energy(p['allocation_mwh'] * 1000)}" for p in shown] if len(shown) <= 10 else None
    fig.add_bar(x=[p["project"] for p in shown], y=[p["share"] * 100 for p in shown], name="GPU energy used, % of allocation",
                marker_color=["#b00020" if p["named"] else "#1f6fb2" for p in shown], text=labels, textposition="outside")
    fig.add_hline(y=100, line_dash="dash", line_color="#b00020", annotation_text="allocation")
    fig.add_hline(y=ALLOCATION_NAMED * 100, line_dash="dot", line_color="#d9822b", annotation_text=f"{ALLOCATION_NAMED:.0%}")
    title = "Projects' GPU energy against their monthly allocation" + (
        f" (the {len(shown)} most used of {len(projects)})" if len(shown) < len(projects) else "")
    fig.update_layout(title=title, yaxis_title="% of allocation", height=340,
                      width=980, margin=dict(l=60, r=20, t=50, b=90), font=dict(size=10))
    return _plot(fig)


def _cell(key: str, value: float | None, has_data: bool) -> str:
    if value is None:
        return "no meter" if key == "pue" and has_data else "no data"
    return {"it_kwh": "{:,.1f}", "cost_eur": "{:,.2f}", "co2e_kg": "{:,.1f}", "pue": "{:.3f}", "peak_mw": "{:.4g}",
            "cap_mw": "{:g}", "peak_share_of_cap": "{:.1%}"}[key].format(value)


def _summary_table(summary: dict) -> str:
    head = ["", "IT energy kWh", "change", "cost EUR", "change", "CO2e kg", "change", "PUE", "change",
            "busiest hour MW", "cap MW", "of cap", "change", "hours with data", "coverage"]
    body = []
    for s in summary["scopes"]:
        has = s["it_kwh"] is not None
        cells = [f"<th>{html.escape(s['name'])}</th>"]
        for key in ("it_kwh", "cost_eur", "co2e_kg", "pue"):
            cells += [f"<td class=num>{_cell(key, s[key], has)}</td>", f"<td class=num>{_change_text(key, s[key + '_change'])}</td>"]
        if s["scope"] == "EuroHPC":
            cells += ["<td class=num>-</td>"] * 4
        else:
            cells += [f"<td class=num>{_cell(k, s[k], has)}</td>" for k in ("peak_mw", "cap_mw", "peak_share_of_cap")]
            cells.append(f"<td class=num>{_change_text('peak_share_of_cap', s['peak_share_of_cap_change'])}</td>")
        coverage = "-" if s["coverage"] is None else f"{s['coverage']:.1%}"
        cells += [f"<td class=num>{s['hours_with_data']} of {summary['hours_elapsed']}</td>", f"<td class=num>{coverage}</td>"]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<table class=summary><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _allocation_table(projects: list[dict]) -> str:
    rows = "".join(f"<tr><td>{html.escape(p['project'])}</td><td>{html.escape(p['factory'])}</td><td class=num>{p['allocation_mwh']:g}</td>"
                   f"<td class=num>{p['used_gpu_kwh']:,.1f}</td><td class=num{' warn' if p['named'] else ''}>{p['share']:.1%}</td>"
                   f"<td class=num>{'no data' if p['share_previous'] is None else format(p['share_previous'], '.1%')}</td></tr>"
                   for p in projects)
    return ("<table><thead><tr><th>project</th><th>factory</th><th>allocation MWh</th><th>GPU energy used kWh</th><th>of allocation</th>"
            f"<th>previous month</th></tr></thead><tbody>{rows}</tbody></table>")


def _executive_html(r: MonthlyReport) -> str:
    s, p = r.summary, r.provenance
    warn = f"<p class=warn>{html.escape(s['illustrative'])}</p>" if s["illustrative"] else ""
    text = "".join(f"<p>{html.escape(t)}</p>" for t in s["text"])
    coverage = "".join(f"<p class=coverage>{html.escape(t)}</p>" for t in s["coverage_text"])
    allocations = (_allocation_figure(s["projects"]) + _allocation_table(s["projects"]) if s["projects"]
                   else "<p class=note>No project has an allocation_mwh in the inventory.</p>")
    note = (f"<p class=note>Change: against {html.escape(s['previous_period'])} ({s['previous_hours_with_data']} hours with data); "
            "energy, cost and CO2e as a share of the previous figure, PUE as a difference, peak against cap in percentage points. "
            f"IT energy = GPU energy + node energy (BMC or RAPL); cost at each factory's price (EUR/kWh, inventory); CO2e from "
            f"{html.escape(p['carbon_intensity_source'])}; PUE = facility meter / IT energy, only where a facility meter reports; busiest "
            "hour = the clock hour of most facility energy (facility meter, else IT energy x design PUE) against power_cap_mw (MW, "
            "inventory); allocation use = a project's GPU energy against its monthly allocation_mwh, as the EnergyBudget alerts count "
            "it; coverage = GPU-time covered by scrapes over the GPU-time of every elapsed hour.</p>")
    return (warn + f"<div class=lead>{text}{coverage}</div>" + _summary_table(s) + note
            + f"<div class=pair>{_month_over_month_figure(s)}{_peak_figure(s)}</div>" + allocations)


_CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 11px; margin: 24px; color: #1b1b1b; }
h1 { font-size: 20px; } h2 { font-size: 16px; border-bottom: 2px solid #1f6fb2; padding-bottom: 4px; }
section { break-before: page; page-break-before: always; } section:first-of-type { break-before: auto; page-break-before: auto; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #eef3f8; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; } .warn { color: #b00020; font-weight: bold; }
.lead p { font-size: 13px; margin: 4px 0; max-width: 980px; } .lead p.coverage { color: #7a4b00; }
.pair > div { display: inline-block; vertical-align: top; }
@page { size: A4 landscape; margin: 12mm; }
"""


def _html(r: MonthlyReport) -> str:
    p = r.provenance
    total = r.by["total"].rows
    facts = (f"<p>{p['start']} to {p['end']}; figures through {p['through']}: {p['hours_with_data']} of {p['hours_elapsed']} elapsed "
             f"hours have data ({p['hours_in_month']} in the month); coverage of elapsed GPU-time {p['coverage']:.1%} "
             f"({p['coverage_of_hours_with_data']:.1%} within the hours with data). Averages are over hours with data. "
             f"CO2e from {html.escape(p['carbon_intensity_source'])}.</p>")
    warn = "<p class=warn>Illustrative inventory: capacities, caps, PUEs and prices are invented.</p>" if p["inventory_illustrative"] else ""
    projects = r.by["project"].rows
    top = projects[projects["project"] != "(unallocated)"].head(TOP_PROJECTS)
    sections = {
        "Executive summary": _executive_html(r),
        "EuroHPC summary": facts + warn + _table(total, ["total"]),
        "Energy by factory": _bar(r.by["factory"].rows, "factory", "Energy by factory") + _table(r.by["factory"].rows, ["factory"]),
        "Energy by access mode": _bar(r.by["access_mode"].rows, "access_mode", "Energy by access mode")
        + _table(r.by["access_mode"].rows, ["access_mode"]),
        "Energy by sector": _bar(r.by["sector"].rows, "sector", "Energy by sector") + _table(r.by["sector"].rows, ["sector"]),
        "Top projects": _bar(top, "project", f"Top {TOP_PROJECTS} projects by GPU energy") + _table(top, ["project"]),
        "Daily power against cap": _daily_figure(r.daily_power) + _daily_table(r.daily_power),
        "Efficiency league": _league_figure(r.league) + _league_table_html(r.league),
        "Provenance and method": "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                                      for k, v in p.items()) + "</table>",
    }
    body = "".join(f"<section><h2>{html.escape(name)}</h2>{sections[name]}</section>" for name in SECTIONS)
    title = f"{r.month} to date" if p["to_date"] else r.month
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>aifmon monthly report {title}</title>"
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>EuroHPC AI Factories: energy report, {html.escape(r.summary['period'])}</h1>{body}</body></html>")


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
        # one renderer, no zygote, the GPU and network services in the browser process: 6 processes instead of 11, about
        # 0.2 GB less resident memory while it prints beside `aifmon up` (the PDF byte for byte the same)
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--renderer-process-limit=1", "--no-zygote", "--in-process-gpu", "--enable-features=NetworkServiceInProcess2",
               "--disable-background-networking", "--disable-component-update", "--no-pdf-header-footer",
               f"--user-data-dir={profile}", "--virtual-time-budget=30000", f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ReportPdfError(f"Chromium did not print {html_path} to PDF within {timeout_s:g} s; retry, or pass --no-pdf") from None
    if result.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        raise ReportPdfError(f"Chromium could not print {html_path} to PDF (status {result.returncode}): {result.stderr[-500:]}")
    return pdf_path
