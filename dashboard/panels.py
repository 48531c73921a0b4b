"""What the live panels read: factory power against its cap, now and over the last hours.

These are plain functions of a store and an inventory, so they are tested without a browser.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from aifmon.stores.store import SampleReader
from aifmon.telemetry.inventory import Inventory
from aifmon.telemetry.power import BREACHED, CRITICAL, WARNING, facility_power
from aifmon.telemetry.power import sum_by_factory as _sum_by_factory

__all__ = ["BREACHED", "CRITICAL", "WARNING", "facility_energy", "factory_power_history", "factory_status", "format_energy",
           "format_watts", "level_of"]

MAX_BRIDGED_GAP_MS = 300_000
"""Facility energy is not integrated across a gap longer than this between two readings (5 min): unknown, not guessed."""


def factory_status(store: SampleReader, inventory: Inventory, now_ms: int | None = None, lookback_s: float = 60.0) -> pd.DataFrame:
    """One row per live factory: facility and IT power (W), cap (W), share of cap, busy GPUs, data age (s).

    Facility power is the meter (`aif_facility_power_watts`) where the factory has one and it reported;
    otherwise IT power (sum of node power) times the design PUE, and `power_source` says so.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    meter = _sum_by_factory(store.latest("aif_facility_power_watts", now_ms, lookback_s))
    it = _sum_by_factory(store.latest("aif_node_power_watts", now_ms, lookback_s))
    jobs = store.latest("aif_gpu_job_info", now_ms, lookback_s)
    busy = jobs.groupby("factory").size() if not jobs.empty else pd.Series(dtype=float)
    rows = []
    for f in inventory.live_factories():
        it_w = it["value"].get(f.id, np.nan)
        facility_w, source = facility_power(f, meter["value"], it["value"])
        newest = max(meter["t_ms"].get(f.id, -1), it["t_ms"].get(f.id, -1))
        cap_w = f.power_cap_mw * 1e6
        rows.append({
            "factory": f.id, "name": f.name, "country": f.country, "latitude": f.latitude, "longitude": f.longitude,
            "facility_power_watts": facility_w, "it_power_watts": it_w, "power_cap_watts": cap_w,
            "share_of_cap": facility_w / cap_w, "power_source": source,
            "gpus": f.gpu_count, "gpus_busy": int(busy.get(f.id, 0)),
            "data_age_s": (now_ms - newest) / 1000.0 if newest >= 0 else np.nan,
        })
    return pd.DataFrame(rows)


def factory_power_history(store: SampleReader, inventory: Inventory, start_ms: int, end_ms: int, bucket_s: int = 300) -> pd.DataFrame:
    """Facility power per factory averaged over `bucket_s` buckets: factory, t_ms (bucket start), watts, share_of_cap."""
    raw = store.range("aif_facility_power_watts", start_ms, end_ms)
    if raw.empty:
        return pd.DataFrame(columns=["factory", "t_ms", "watts", "share_of_cap"])
    bucket_ms = bucket_s * 1000
    # Sum the feeds of one scrape first, then average the scrapes of a bucket.
    per_scrape = raw.groupby(["factory", "t_ms"], as_index=False)["value"].sum()
    per_scrape["t_ms"] = per_scrape["t_ms"] // bucket_ms * bucket_ms
    hist = per_scrape.groupby(["factory", "t_ms"], as_index=False)["value"].mean().rename(columns={"value": "watts"})
    caps = {f.id: f.power_cap_mw * 1e6 for f in inventory.factories}
    hist["share_of_cap"] = hist["watts"] / hist["factory"].map(caps)
    return hist


def facility_energy(store: SampleReader, start_ms: int, end_ms: int) -> pd.Series:
    """Metered facility energy per factory over [start_ms, end_ms], J: the trapezoid integral of
    `aif_facility_power_watts` (feeds of one scrape summed), across gaps of at most `MAX_BRIDGED_GAP_MS`."""
    raw = store.range("aif_facility_power_watts", start_ms, end_ms)
    if raw.empty:
        return pd.Series(dtype=float)
    per_scrape = raw.groupby(["factory", "t_ms"], as_index=False)["value"].sum().sort_values(["factory", "t_ms"])
    dt_ms = per_scrape.groupby("factory")["t_ms"].diff()
    mean_w = (per_scrape["value"] + per_scrape.groupby("factory")["value"].shift()) / 2.0
    joules = (mean_w * dt_ms / 1000.0).where(dt_ms <= MAX_BRIDGED_GAP_MS, 0.0)
    return joules.groupby(per_scrape["factory"]).sum()


def format_energy(joules: float) -> str:
    """Energy in kWh or MWh (1 kWh = 3.6 MJ)."""
    if joules is None or not np.isfinite(joules):
        return "no data"
    kwh = joules / 3.6e6
    return f"{kwh / 1000:,.2f} MWh" if kwh >= 1000 else f"{kwh:,.1f} kWh"


def format_watts(w: float) -> str:
    """Power with a unit a person reads at a glance: W, kW or MW."""
    if w is None or not np.isfinite(w):
        return "no data"
    for unit, scale in (("MW", 1e6), ("kW", 1e3)):
        if abs(w) >= scale:
            return f"{w / scale:,.2f} {unit}" if scale == 1e6 else f"{w / scale:,.1f} {unit}"
    return f"{w:,.0f} W"


def level_of(share: float) -> str:
    """`ok`, `warning`, `critical` or `breached` for a share of cap; `no-data` for NaN."""
    if not np.isfinite(share):
        return "no-data"
    if share > BREACHED:
        return "breached"
    if share >= CRITICAL:
        return "critical"
    return "warning" if share >= WARNING else "ok"
