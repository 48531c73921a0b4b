"""Rollup results as text tables, JSON and CSV; every figure with its unit and provenance."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aifmon.telemetry.csv_cells import csv_safe

if TYPE_CHECKING:  # annotations only: `inventory show` formats tables without loading pandas
    from aifmon.rollups.energy import EnergyRollup

GPU_ENERGY_SOURCE = ("GPU energy counters (aif_gpu_energy_joules_total, or dcgm-exporter's DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION "
                     "through the mapping of rollups/dcgm.py), increments per scrape interval, no extrapolation")
"""Where every GPU energy figure comes from: the rollup's JSON and the monthly report say it the same way."""

_COLUMNS = [  # (column, heading with unit, format); columns a rollup lacks (pue outside factory/country/total) are left out
    ("energy_kwh", "GPU energy kWh", "{:,.3f}"),
    ("node_other_kwh", "node other kWh", "{:,.3f}"),
    ("it_kwh", "IT kWh", "{:,.3f}"),
    ("share", "share", "{:.1%}"),
    ("gpu_hours", "GPU-hours h", "{:,.1f}"),
    ("avg_power_kw", "avg power kW", "{:,.2f}"),
    ("cost_eur", "cost EUR", "{:,.2f}"),
    ("co2e_kg", "CO2e kg", "{:,.1f}"),
    ("facility_kwh", "facility kWh", "{:,.3f}"),
    ("pue", "PUE", "{:.3f}"),
]


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table; columns whose cells look numeric are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(r[i][:1].isdigit() or r[i][:1] == "-" for r in rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(r: EnergyRollup) -> dict:
    return {
        "by": r.by,
        "start": _iso(r.start_ms),
        "end": _iso(r.end_ms),
        "hours": (r.end_ms - r.start_ms) / 3.6e6,
        "energy_source": GPU_ENERGY_SOURCE,
        "coverage": r.coverage,
        "total_energy_kwh": r.total_energy_kwh,
        "cost_basis": "each factory's energy price (EUR/kWh) from the inventory",
        "carbon_intensity_source": r.carbon_source,
        **r.notes,  # attribution source, counter resets, wraps, duplicate samples, estimated energy
    }


def format_energy_rollup(r: EnergyRollup, fmt: str) -> str:
    keys = [c for c in r.rows.columns if c not in {c for c, _, _ in _COLUMNS}]
    if fmt == "json":
        return json.dumps({**provenance(r), "rows": r.rows.to_dict(orient="records")}, indent=2, default=float)
    if fmt == "csv":
        buf = io.StringIO()
        # provenance on every row, so a row copied out of the file still says where it came from
        p = provenance(r)
        rows = r.rows.assign(start=p["start"], end=p["end"], coverage=r.coverage, carbon_intensity_source=r.carbon_source)
        csv_safe(rows).to_csv(buf, index=False, float_format="%.6f")
        return buf.getvalue().rstrip("\n")
    p = provenance(r)
    columns = [col for col in _COLUMNS if col[0] in r.rows]
    rows = [[str(getattr(row, k)) for k in keys] + [f.format(getattr(row, c)) for c, _, f in columns]
            for row in r.rows.itertuples(index=False)]
    head = (f"GPU energy by {r.by}, {p['start']} to {p['end']} ({p['hours']:.2f} h); total {r.total_energy_kwh:,.3f} kWh; "
            f"coverage {r.coverage:.1%}\nCost at each factory's price; CO2e from {r.carbon_source}.\n"
            + (f"Attribution: {r.notes['attribution']}; counter resets {r.notes['counter_resets']}, wraps {r.notes['counter_wraps']}, "
               f"duplicate samples {r.notes['duplicate_samples']}; estimated {r.notes['estimated_energy_kwh']:,.3f} kWh.\n" if r.notes else "")
            + (f"Sources: {r.notes['hours_from_hourly_rollups']} settled hour(s) from the hourly rollups, "
               f"{r.notes['hours_from_samples']:.2f} h from samples (resets, wraps and duplicates counted over the samples).\n"
               if r.notes.get("hours_from_hourly_rollups") else ""))
    return head + text_table(keys + [h for _, h, _ in columns], rows)
