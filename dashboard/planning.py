"""MW budgets as a tree (site -> hall -> system) with headroom, and the gigafactory power planner.

Plain functions of the inventory and live power, tested without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aifmon.telemetry.gpu_models import GPU_MODELS
from aifmon.telemetry.inventory import Factory, Inventory

GIGAFACTORY_BUDGETS_MW = (100.0, 150.0)
"""The seed's AI Gigafactory power envelope: 100-150 MW per site."""


def planned_peak_it_w(factory: Factory) -> float:
    """IT power of a factory with every GPU at its TDP and every node at its base power, W (the planning ceiling)."""
    return float(sum(g.count * (g.node_base_watts + g.gpus_per_node * g.model.tdp_watts)
                     for s in factory.systems for g in s.node_groups))


def budget_tree(inventory: Inventory, facility_w: dict[str, float], system_it_w: dict[tuple[str, str], float]) -> pd.DataFrame:
    """One row per site, hall and system: level, id, parent, name, budget_w, draw_w, planned_peak_w, headroom_w, share.

    Budgets: a site's power cap (facility power, cooling included); a system's power cap (IT power; the
    site's cap split by GPU count where the inventory gives none); a hall's is the sum of its systems'.
    Draw: live facility power for a site, live IT power (sum of node power) for halls and systems; NaN
    for planning scenarios, whose headroom is taken against the planned peak instead (every GPU at TDP,
    times the design PUE at site level). Headroom = budget - (draw, else planned peak).
    """
    rows: list[dict] = []
    for f in inventory.factories:
        site_draw = facility_w.get(f.id, np.nan)
        site_peak = planned_peak_it_w(f) * f.design_pue
        rows.append(_row("site", f.id, "", f.name, f.power_cap_mw * 1e6, site_draw, site_peak, f.planning_only))
        gpus = max(1, f.gpu_count)
        halls: dict[str, list[dict]] = {}
        for s in f.systems:
            budget = s.power_cap_kw * 1e3 if s.power_cap_kw else f.power_cap_mw * 1e6 / f.design_pue * s.gpu_count / gpus
            peak = float(sum(g.count * (g.node_base_watts + g.gpus_per_node * g.model.tdp_watts) for g in s.node_groups))
            halls.setdefault(s.hall, []).append(
                _row("system", f"{f.id}/{s.id}", f"{f.id}/{s.hall}", s.name, budget, system_it_w.get((f.id, s.id), np.nan), peak,
                     f.planning_only))
        for hall, systems in halls.items():
            draw = [r["draw_w"] for r in systems]
            rows.append(_row("hall", f"{f.id}/{hall}", f.id, hall, sum(r["budget_w"] for r in systems),
                             np.nan if f.planning_only or all(np.isnan(draw)) else float(np.nansum(draw)),
                             sum(r["planned_peak_w"] for r in systems), f.planning_only))
            rows.extend(systems)
    return pd.DataFrame(rows)


def _row(level: str, node_id: str, parent: str, name: str, budget_w: float, draw_w: float, peak_w: float, planning: bool) -> dict:
    used = peak_w if planning or not np.isfinite(draw_w) else draw_w
    return {"level": level, "id": node_id, "parent": parent, "name": name, "budget_w": budget_w,
            "draw_w": np.nan if planning else draw_w, "planned_peak_w": peak_w, "headroom_w": budget_w - used,
            "share": used / budget_w, "basis": "planned peak" if planning or not np.isfinite(draw_w) else "live"}


@dataclass(frozen=True)
class Plan:
    """What a planned site draws. Powers in W; `gpus_in_budget`: GPUs that fit the budget at these settings."""

    gpu_w: float
    overhead_w: float
    it_w: float
    facility_w: float
    budget_w: float
    headroom_w: float
    gpus_in_budget: int
    watts_per_gpu_at_facility: float


def plan_power(gpus: int, model: str, utilisation: float, pue: float, overhead_w_per_gpu: float, budget_mw: float) -> Plan:
    """Facility power of `gpus` GPUs of `model` at `utilisation` (0-1) and `pue`.

    Per GPU: board power linear from idle to TDP with utilisation (an upper-side planning model: real
    boards draw a little less at part load), plus `overhead_w_per_gpu` for CPUs, memory, network and
    storage (W); times the PUE for cooling and power distribution.
    """
    if model not in GPU_MODELS:
        raise ValueError(f"unknown GPU model {model!r}; expected one of {', '.join(GPU_MODELS)}")
    if not 0.0 <= utilisation <= 1.0 or pue < 1.0 or gpus < 0 or overhead_w_per_gpu < 0 or budget_mw <= 0:
        raise ValueError("expected 0 <= utilisation <= 1, PUE >= 1, GPUs >= 0, overhead >= 0 W and a budget > 0 MW")
    m = GPU_MODELS[model]
    board_w = m.idle_watts + (m.tdp_watts - m.idle_watts) * utilisation
    per_gpu_facility = (board_w + overhead_w_per_gpu) * pue
    facility = gpus * per_gpu_facility
    budget = budget_mw * 1e6
    return Plan(gpus * board_w, gpus * overhead_w_per_gpu, gpus * (board_w + overhead_w_per_gpu), facility, budget,
                budget - facility, int(budget // per_gpu_facility), per_gpu_facility)
