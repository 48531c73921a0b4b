"""What the factory-live page reads: one factory's GPUs as a node x GPU grid, its jobs, throttling,
telemetry coverage, and its power against its cap over time (downsampled on the server).

Plain functions of a store and an inventory, tested without a browser. Built for 25,000 GPUs and more:
every read is filtered to one factory (`match`), label strings become grid positions through one
vectorised lookup, and the grid layout is computed once per factory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aifmon.stores.store import SampleReader
from aifmon.telemetry.inventory import Factory, nodes_of
from aifmon.telemetry.power import facility_power

LIVE_LOOKBACK_S = 60.0
"""How old a sample may be and still count as live, s (a few scrape intervals)."""

RANGES: dict[str, tuple[int, int]] = {"1h": (3_600_000, 10_000), "6h": (21_600_000, 60_000),
                                      "24h": (86_400_000, 300_000), "7d": (604_800_000, 1_800_000)}
"""Range name -> (span, bucket) in ms: every range is drawn with 288 to 360 points whatever its length."""

GRID_METRICS = {"power": ("aif_gpu_power_watts", "W", 1.0), "utilisation": ("aif_gpu_utilization_ratio", "%", 100.0)}
"""Heatmap metric -> (store metric, unit shown, scale from base unit to the unit shown)."""


@dataclass(frozen=True)
class GpuGrid:
    """Where each GPU of a factory sits in the heatmap: nodes in inventory order, `nodes_per_row` nodes
    side by side per row, each node `width` columns wide (its GPUs by NVML index).

    `node_row`, `node_col`: row and first column of each node; `node_index`: the node names, hashed (`get_indexer` gives positions).
    Cells of GPUs that do not exist (narrower nodes, the end of the last row) stay NaN.
    """

    factory: str
    nodes: tuple[str, ...]
    gpus: np.ndarray  # GPUs per node
    width: int
    nodes_per_row: int
    rows: int
    node_index: pd.Index

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.nodes_per_row * self.width

    @property
    def gpu_count(self) -> int:
        return int(self.gpus.sum())

    def cells(self, node: pd.Series, gpu: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(flat cell index, valid) for label columns `node` and `gpu` of a store frame.

        Each distinct label is looked up once (a few thousand nodes, eight GPU indexes), not once per row: 25,000
        rows through `Series.map` took 7 ms of a 25,000-GPU tick."""
        codes, names = pd.factorize(node)  # code -1: no node label; it picks the NaN appended below
        at = self.node_index.get_indexer(names)
        pos = np.append(np.where(at >= 0, at, np.nan), np.nan)[codes]
        g_codes, g_names = pd.factorize(gpu)
        g = np.append(pd.to_numeric(pd.Series(g_names, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
                      np.nan)[g_codes]
        valid = np.isfinite(pos) & np.isfinite(g)
        p = np.where(valid, pos, 0).astype(np.int64)
        gi = np.where(valid, g, 0).astype(np.int64)
        valid &= (gi >= 0) & (gi < self.gpus[p])
        cell = (p // self.nodes_per_row) * (self.nodes_per_row * self.width) + (p % self.nodes_per_row) * self.width + gi
        return cell, valid

    def hover_text(self) -> np.ndarray:
        """'node GPU n' for every cell ('' where no GPU is): sent once with the full figure, never on live updates."""
        text = np.full(self.rows * self.nodes_per_row * self.width, "", dtype=object)
        for p, (name, n) in enumerate(zip(self.nodes, self.gpus)):
            start = (p // self.nodes_per_row) * (self.nodes_per_row * self.width) + (p % self.nodes_per_row) * self.width
            text[start:start + n] = [f"{name} GPU {g}" for g in range(n)]
        return text.reshape(self.shape)

    def row_labels(self) -> list[str]:
        """Each row named by its first and last node."""
        return [f"{self.nodes[r * self.nodes_per_row]}–{self.nodes[min(len(self.nodes), (r + 1) * self.nodes_per_row) - 1]}"
                for r in range(self.rows)]


def gpu_grid(factory: Factory, aspect: float = 2.0) -> GpuGrid:
    """The heatmap layout of a factory, about `aspect` times wider than tall in cells (a screen panel's shape),
    so that 25,000 GPUs fill a panel with cells a few pixels wide instead of 3,125 one-pixel rows.
    Walks every node of the inventory: callers keep the result (`factory_live` takes it)."""
    nodes = [n for n in nodes_of(factory) if n.gpus > 0]
    width = max((n.gpus for n in nodes), default=1)
    per_row = max(1, round(np.sqrt(aspect * len(nodes) / width))) if nodes else 1
    per_row = min(per_row, max(1, len(nodes)))
    rows = max(1, -(-len(nodes) // per_row))
    names = tuple(n.name for n in nodes)
    return GpuGrid(factory.id, names, np.array([n.gpus for n in nodes], dtype=np.int64), width, per_row, rows,
                   pd.Index(names, dtype=object))


def grid_values(grid: GpuGrid, latest: pd.DataFrame, scale: float = 1.0) -> np.ndarray:
    """A `SampleReader.latest` frame of a per-GPU metric as the grid (float32, NaN where a GPU did not report)."""
    z = np.full(grid.shape[0] * grid.shape[1], np.nan, dtype=np.float32)
    if len(latest):
        cell, valid = grid.cells(latest["node"], latest["gpu"])
        z[cell[valid]] = latest["value"].to_numpy()[valid] * scale
    return z.reshape(grid.shape)


@dataclass(frozen=True)
class FactoryLive:
    """One factory now. Powers in W: `facility_w` (meter, or IT x design PUE as `power_source` says),
    `it_w` (sum of node power), GPU power split by whether a job holds the GPU; `jobs` and `projects`:
    top consumers (job/project, gpus, watts); `throttled`: GPUs throttled per reason; `missing_nodes`:
    nodes with GPUs whose power did not report; `newest_age_s`: age of the newest GPU sample (s)."""

    grid: np.ndarray
    facility_w: float
    power_source: str
    it_w: float
    gpu_power_w: float
    allocated_w: float
    idle_w: float
    gpus_allocated: int
    gpus_idle: int
    gpus_reporting: int
    gpus_expected: int
    nodes_reporting: int
    nodes_expected: int
    missing_nodes: list[str]
    newest_age_s: float
    jobs: pd.DataFrame
    projects: pd.DataFrame
    throttled: pd.Series
    throttled_gpus: int


def factory_live(store: SampleReader, factory: Factory, grid: GpuGrid, metric: str, now_ms: int, top: int = 10) -> FactoryLive:
    """Read one factory's latest GPU power, the grid metric, job info and throttle reasons (all `match`ed to it)."""
    match = {"factory": factory.id}
    power = store.latest("aif_gpu_power_watts", now_ms, LIVE_LOOKBACK_S, match)
    name, _unit, scale = GRID_METRICS[metric]
    shown = power if name == "aif_gpu_power_watts" else store.latest(name, now_ms, LIVE_LOOKBACK_S, match)
    z = grid_values(grid, shown, scale)
    jobs = store.latest("aif_gpu_job_info", now_ms, LIVE_LOOKBACK_S, match)
    throttle = store.latest("aif_gpu_throttled", now_ms, _same_scrapes_s(power, now_ms), match)
    it = store.latest("aif_node_power_watts", now_ms, LIVE_LOOKBACK_S, match)
    meter = store.latest("aif_facility_power_watts", now_ms, LIVE_LOOKBACK_S, match)
    it_w = pd.Series({factory.id: it["value"].sum()}) if len(it) else pd.Series(dtype=float)
    meter_w = pd.Series({factory.id: meter["value"].sum()}) if len(meter) else pd.Series(dtype=float)
    facility_w, source = facility_power(factory, meter_w, it_w)

    watts = power["value"].to_numpy(dtype=np.float64)
    job_of = _job_of_each(power, jobs)  # row of `jobs` holding each GPU of `power`, -1 where none
    busy = job_of >= 0
    on = throttle[throttle["value"] > 0] if len(throttle) else throttle
    per_reason = on.groupby("reason").size().sort_values(ascending=False) if len(on) else pd.Series(dtype=np.int64)
    reporting_nodes = set(pd.unique(power["node"])) if len(power) else set()
    newest = int(power["t_ms"].max()) if len(power) else None
    return FactoryLive(
        grid=z, facility_w=facility_w, power_source=source, it_w=float(it_w.get(factory.id, np.nan)), gpu_power_w=float(watts.sum()),
        allocated_w=float(watts[busy].sum()), idle_w=float(watts[~busy].sum()), gpus_allocated=int(busy.sum()),
        gpus_idle=int((~busy).sum()), gpus_reporting=len(watts), gpus_expected=grid.gpu_count, nodes_reporting=len(reporting_nodes),
        nodes_expected=len(grid.nodes), missing_nodes=[n for n in grid.nodes if n not in reporting_nodes],
        newest_age_s=(now_ms - newest) / 1000.0 if newest is not None else float("nan"),
        jobs=_top_by_power(jobs, job_of, watts, ["job", "project"], top), projects=_top_by_power(jobs, job_of, watts, ["project"], top),
        throttled=per_reason, throttled_gpus=int(on[["node", "gpu"]].drop_duplicates().shape[0]) if len(on) else 0,
    )


def _job_of_each(power: pd.DataFrame, jobs: pd.DataFrame) -> np.ndarray:
    """For each row of `power` (a `latest` frame of a per-GPU metric), the first row of `jobs` (`aif_gpu_job_info`) on the
    same node and GPU, -1 where no job holds it. (node, GPU) pairs become integer keys through one factorisation of
    both frames' labels: pandas' merge on the two string columns and the groupbys after it took 30 ms at 25,000 GPUs."""
    held = np.full(len(power), -1, dtype=np.int64)
    if not len(power) or not len(jobs):
        return held
    node, _ = pd.factorize(pd.concat([power["node"], jobs["node"]], ignore_index=True))
    gpu, gpus = pd.factorize(pd.concat([power["gpu"], jobs["gpu"]], ignore_index=True))
    key = node.astype(np.int64) * (len(gpus) + 1) + gpu  # a missing label (code -1) never matches a present one
    power_key, job_key = key[:len(power)], key[len(power):]
    unique, first = np.unique(job_key, return_index=True)  # a GPU listed twice: its first job, as before
    at = np.minimum(np.searchsorted(unique, power_key), len(unique) - 1)
    found = (unique[at] == power_key) & (node[:len(power)] >= 0) & (gpu[:len(power)] >= 0)
    held[found] = first[at[found]]
    return held


def _top_by_power(jobs: pd.DataFrame, job_of: np.ndarray, watts: np.ndarray, by: list[str], top: int) -> pd.DataFrame:
    """The `top` groups of `by` (labels of `jobs`) by the GPU power (W) of the GPUs they hold (`job_of`, `watts`: per GPU,
    as `_job_of_each` gives them): the `by` columns, gpus, watts. A GPU whose job lacks one of the labels counts in none.
    Equal watts rank by the labels, as pandas' groupby (sorted) and `nlargest` would; only the `top` rows become a frame."""
    rows, w = job_of[job_of >= 0], watts[job_of >= 0]
    if not len(rows):  # no GPU in a job (and `jobs` may have no label columns at all)
        return pd.DataFrame({**{c: pd.Series(dtype=object) for c in by}, "gpus": pd.Series(dtype=np.int64), "watts": pd.Series(dtype=float)})
    key, keep, names = np.zeros(len(rows), dtype=np.int64), np.ones(len(rows), dtype=bool), []
    for c in by:  # each label's rank among its sorted distinct values, so that the key orders groups as their labels do
        codes, uniques = pd.factorize(jobs[c], sort=True)
        key = key * (len(uniques) + 1) + codes[rows]
        keep &= codes[rows] >= 0
        names.append(uniques)
    group_key, group = np.unique(key[keep], return_inverse=True)
    gpus = np.bincount(group, minlength=len(group_key))
    total = np.bincount(group, weights=w[keep], minlength=len(group_key))
    best = np.lexsort((group_key, -total))[:top]  # most watts first; a tie in label order
    out, rest = {}, group_key[best]
    for c, uniques in zip(reversed(by), reversed(names)):
        out[c] = np.asarray(uniques, dtype=object)[rest % (len(uniques) + 1)]
        rest = rest // (len(uniques) + 1)
    return pd.DataFrame({**{c: out[c] for c in by}, "gpus": gpus[best], "watts": total[best]})


def _same_scrapes_s(power: pd.DataFrame, now_ms: int) -> float:
    """The lookback that reaches the scrapes `power` (a `latest` frame of GPU power) came from, s: a GPU's throttle
    reasons come with its power, in the same exposition, so their newest samples are no older than its power's. At
    25,000 GPUs that reads the 125,000 throttle series of one or two scrapes, not of the whole `LIVE_LOOKBACK_S`
    (95 of the tick's 240 ms)."""
    if not len(power):
        return LIVE_LOOKBACK_S
    return min(LIVE_LOOKBACK_S, (now_ms - int(power["t_ms"].min())) / 1000.0 + 0.001)


def power_history(store: SampleReader, factory: Factory, start_ms: int, end_ms: int, bucket_ms: int) -> pd.DataFrame:
    """Facility power of one factory in buckets of `bucket_ms`: t_ms (bucket start), mean_w and peak_w (W).

    Downsampled here, on the server, so a week at a 5 s scrape interval reaches the browser as a few
    hundred points; the peak is kept beside the mean because a cap is broken by peaks. The meter where
    the factory has one, else the sum of its node power times the design PUE.
    """
    metric = "aif_facility_power_watts" if factory.facility_meter else "aif_node_power_watts"
    raw = store.range(metric, start_ms, end_ms, match={"factory": factory.id})
    if raw.empty:
        return pd.DataFrame({"t_ms": pd.Series(dtype=np.int64), "mean_w": pd.Series(dtype=float), "peak_w": pd.Series(dtype=float)})
    per_scrape = raw.groupby("t_ms", as_index=False)["value"].sum()  # feeds (or nodes) of one scrape
    if not factory.facility_meter:
        per_scrape["value"] *= factory.design_pue
    per_scrape["t_ms"] = per_scrape["t_ms"] // bucket_ms * bucket_ms
    out = per_scrape.groupby("t_ms", as_index=False).agg(mean_w=("value", "mean"), peak_w=("value", "max"))
    return out
