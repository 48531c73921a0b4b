"""Exact GPU energy per job, project, access mode, sector, system, factory and country, from counters.

Rules (so that every figure can be traced):
- Energy comes from `aif_gpu_energy_joules_total` increments between consecutive samples of a series.
  A drop is a counter reset (driver reload): the increment is then the new value. Nothing is
  extrapolated past the first or last sample.
- An increment covers (previous sample, sample]. When that interval straddles the range's start or
  end, the increment is split in proportion to time (constant power within one scrape interval), so
  consecutive ranges (hours of a day) add up exactly to the whole.
- An increment belongs to the job whose `aif_gpu_job_info` sample for that GPU carries the same
  timestamp as the interval's end (the collector stamps one scrape's samples alike). Energy with no
  job is reported as its own line, `(unallocated)`, so jobs + unallocated = measured total.
- Coverage is the share of GPU-time in the range covered by intervals no longer than `max_gap_s`;
  energy across a longer gap is still exact (the counter bridges it) but is flagged by the coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from telemetry.inventory import Inventory, carbon_intensity_table
from telemetry.store import Store

ENERGY_METRIC = "aif_gpu_energy_joules_total"
JOB_METRIC = "aif_gpu_job_info"
UNALLOCATED = "(unallocated)"
GROUPINGS = ("job", "project", "access_mode", "sector", "system", "factory", "country", "total")
_GPU = ["factory", "node", "gpu"]
_MARGIN_MS = 15 * 60 * 1000  # how far past each end of the range to look for the samples that straddle it


@dataclass(frozen=True)
class EnergyRollup:
    """Rows per group, and the provenance every figure carries."""

    rows: pd.DataFrame
    by: str
    start_ms: int
    end_ms: int
    coverage: float  # 0-1, see module docstring
    carbon_source: str
    total_energy_kwh: float


def gpu_intervals(store: Store, start_ms: int, end_ms: int) -> pd.DataFrame:
    """Energy increments clipped to [start_ms, end_ms], one row per (series, scrape interval).

    Columns: factory, system, node, gpu, t_ms (interval end), energy_j, seconds (clipped duration),
    interval_s (full duration).
    """
    e = store.range(ENERGY_METRIC, start_ms - _MARGIN_MS, end_ms + _MARGIN_MS)
    cols = ["factory", "system", "node", "gpu", "t_ms", "energy_j", "seconds", "interval_s"]
    if e.empty:
        return pd.DataFrame(columns=cols)
    e = e.sort_values(["series_id", "t_ms"], kind="stable")
    same = e["series_id"].eq(e["series_id"].shift())
    prev_t = e["t_ms"].shift().where(same)
    prev_v = e["value"].shift().where(same)
    inc = e["value"] - prev_v
    inc = inc.where(inc >= 0, e["value"])  # a counter reset: the counter restarted from zero
    lo = np.maximum(prev_t, start_ms)
    hi = np.minimum(e["t_ms"], end_ms)
    span = e["t_ms"] - prev_t
    overlap = (hi - lo).clip(lower=0)
    keep = same & (overlap > 0) & (span > 0)
    out = e.loc[keep, ["factory", "system", "node", "gpu", "t_ms"]].copy()
    out["energy_j"] = (inc * overlap / span)[keep]
    out["seconds"] = overlap[keep] / 1000.0
    out["interval_s"] = span[keep] / 1000.0
    return out[cols].reset_index(drop=True)


def attribute_jobs(store: Store, intervals: pd.DataFrame, start_ms: int, end_ms: int) -> pd.DataFrame:
    """Add job, project, access_mode columns to `intervals` (NaN where no job held the GPU)."""
    jobs = store.range(JOB_METRIC, start_ms - _MARGIN_MS, end_ms + _MARGIN_MS)
    if jobs.empty:
        return intervals.assign(job=np.nan, project=np.nan, access_mode=np.nan)
    jobs = jobs[jobs["value"] > 0][_GPU + ["t_ms", "job", "project", "access_mode"]]
    # One GPU holds one job at a time; if an exporter ever showed two, keep one so energy is not doubled.
    jobs = jobs.drop_duplicates(_GPU + ["t_ms"])
    return intervals.merge(jobs, on=_GPU + ["t_ms"], how="left")


def energy_rollup(
    store: Store, inventory: Inventory, start_ms: int, end_ms: int, by: str = "project", max_gap_s: float = 60.0
) -> EnergyRollup:
    """GPU energy and GPU-hours per group over [start_ms, end_ms] (see module docstring for the rules)."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUPINGS)}")
    if end_ms <= start_ms:
        raise ValueError("the range's end must be after its start")
    iv = attribute_jobs(store, gpu_intervals(store, start_ms, end_ms), start_ms, end_ms)
    coverage = _coverage(iv, start_ms, end_ms, max_gap_s)
    iv = _with_inventory(iv, inventory)
    allocated = iv["job"].notna()
    for col in ("job", "project", "access_mode", "sector"):
        iv[col] = iv[col].where(allocated, UNALLOCATED)
    iv["gpu_seconds"] = iv["seconds"].where(allocated, 0.0)
    iv["kwh"] = iv["energy_j"] / 3.6e6
    iv["cost_eur"] = iv["kwh"] * iv["price_eur_per_kwh"]
    iv["co2e_kg"] = iv["kwh"] * iv["gco2e_per_kwh"] / 1000.0
    keys = {"job": ["factory", "job", "project"], "total": []}.get(by, [by])
    agg = {"energy_kwh": ("kwh", "sum"), "gpu_hours": ("gpu_seconds", "sum"), "cost_eur": ("cost_eur", "sum"),
           "co2e_kg": ("co2e_kg", "sum")}
    rows = iv.assign(total="EuroHPC").groupby(keys or ["total"], dropna=False).agg(**agg).reset_index()
    rows["gpu_hours"] /= 3600.0
    hours = (end_ms - start_ms) / 3.6e6
    rows["avg_power_kw"] = rows["energy_kwh"] / hours
    total = float(rows["energy_kwh"].sum())
    rows["share"] = rows["energy_kwh"] / total if total else 0.0
    rows = rows.sort_values("energy_kwh", ascending=False, kind="stable").reset_index(drop=True)
    src = next(iter(carbon_intensity_table().values()))
    return EnergyRollup(rows, by, start_ms, end_ms, coverage, f"{src.source}, {src.year}", total)


def _with_inventory(iv: pd.DataFrame, inventory: Inventory) -> pd.DataFrame:
    """Add sector (from the project), country, energy price and carbon intensity (from the factory)."""
    intensity = carbon_intensity_table()
    factories = pd.DataFrame(
        [(f.id, f.country, f.energy_price_eur_per_kwh, intensity[f.country].gco2e_per_kwh) for f in inventory.factories],
        columns=["factory", "country", "price_eur_per_kwh", "gco2e_per_kwh"],
    )
    sectors = pd.DataFrame([(p.id, p.sector) for p in inventory.projects], columns=["project", "sector"])
    iv = iv.merge(factories, on="factory", how="left").merge(sectors, on="project", how="left")
    iv["sector"] = iv["sector"].where(iv["project"].isna() | iv["sector"].notna(), "(project not in inventory)")
    return iv


def _coverage(iv: pd.DataFrame, start_ms: int, end_ms: int, max_gap_s: float) -> float:
    series = iv[_GPU].drop_duplicates().shape[0]
    if not series:
        return 0.0
    covered = iv.loc[iv["interval_s"] <= max_gap_s, "seconds"].sum()
    return float(min(1.0, covered / (series * (end_ms - start_ms) / 1000.0)))
