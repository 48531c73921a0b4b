"""Energy rollup benchmark: per-project GPU energy over a day, aifmon against VictoriaMetrics and Prometheus
answering the same question over the same samples in the same run; then the monthly report of a 100,000-GPU
factory from hourly rollups.

Data (deterministic, seed 1): G GPUs (default 1,000, 4 per node) over one UTC day, scraped every 15 s
(5.76 M counter samples and 4.88 M aif_gpu_job_info samples at 1,000 GPUs); every node runs a 1-hour job
of one of 20 projects in 85 % of the hours and idles otherwise; power is constant within each scrape
interval and drawn at random, so the truth per project is the sum of power x 15 s over the intervals whose
job-info sample names it. The same samples go into aifmon's DuckDB store, into VictoriaMetrics (`store
import`) and into Prometheus (promtool blocks from `store export`). The PromQL question, per hour and summed
over the day:

    sum by (project) (increase(aif_gpu_energy_joules_total[1h])
                      * on (factory, node, gpu) group_left (project) last_over_time(aif_gpu_job_info[3599s]))

(query_range, step 1h, the job-info window 1 s short of the hour; exact attribution for hour-aligned jobs,
which this data has). Rows, each the median of 5 warm runs:
- aifmon, default: `energy_rollup(store, inv, day, day + 24 h, by="project")` as `aifmon rollup energy` runs
  it: the day's 24 settled hours come from the hourly rollup tables, which `rollup_hour` filled hour by hour
  first, as `HourlyRollups` does while data arrives (that catch-up is timed on its own and printed above the
  table; it is work done once, as the data comes in, not per query);
- aifmon, raw samples only: the same call with `from_hourly=False`, everything from the samples through the
  Store interface (DuckDB reads included);
- aifmon, raw kernel: the raw computation with the store's reads answered from memory: the answers of every read the
  ledger made of DuckDB in one run (`range_arrays`, `edges`, `sample_spans`: one clock hour at a time) are kept
  (`Kept`), and the timed runs are answered from them;
- VictoriaMetrics, cached: the query above over HTTP, warm: repeats are answered from VictoriaMetrics' rollup
  result cache, its counterpart of aifmon's hourly tables;
- VictoriaMetrics, nocache=1: the same query with its result cache bypassed, computed from its samples;
- aifmon over VictoriaMetrics: the raw computation reading VictoriaMetrics' samples (`/api/v1/export`), as
  `aifmon rollup energy --store victoriametrics+http://...` does at a site that keeps no rollup rows; each run on a new
  store object, as a new process would be (`read_ledger` keeps the hours it computed per store);
- Prometheus: the query above over HTTP (Prometheus keeps no result cache);
- DuckDB alone (not an answer): the least a push-down of the ledger into DuckDB's SQL would cost, one lag() window over
  the day's counter samples summed per series and hour (see FLOOR_SQL), timed against VictoriaMetrics nocache.
Throughput = counter samples / time; error = largest relative error of any project against the truth. The
two ratios compare like with like: aifmon's default path with VictoriaMetrics' cached answer, aifmon's raw
path with VictoriaMetrics computing from samples.

Then where the site path's time goes (medians of 5): the day's export of the two metrics with data moved to
/dev/null by curl (VictoriaMetrics' part: the least any read of the raw samples costs), the ledger's own reads of
VictoriaMetrics made again without the ledger, and the ledger over their answers kept in memory; and its peak memory:
`aifmon rollup energy`'s computation run once in a fresh process (VmHWM, and the resident memory after the imports,
before the read). Figures also go to bench/results/rollup_energy_<gpus>[_site].json.

Run by hand (not in the test suite):  .venv/bin/python bench/rollup_energy.py [--gpus 1000] [--report-gpus 100000] [--site-only]
(`--site-only`: the VictoriaMetrics rows and the site path only; no DuckDB rows, Prometheus or monthly report)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.ingest.openmetrics import export_openmetrics, import_openmetrics
from aifmon.rollups.energy import UNALLOCATED
from aifmon.rollups.hourly import NODE_TABLE, SITE_COLUMNS, SITE_TABLE, TABLE, rollup_hour
from aifmon.rollups.ledger import energy_rollup
from aifmon.rollups.monthly_report import build_monthly_report, write_monthly_report
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import SampleReader, SampleWriter, SeriesSamples, open_store, series_key
from aifmon.telemetry.inventory import ACCESS_MODES, SECTORS, parse_inventory
from bench.ingest import installed, peak_rss_mb, rss_mb
from tests.servers import prometheus, victoria_metrics

H = 3_600_000
STEP_MS = 15_000
PROJECTS = 20
# the job-info window is 1 s short of the hour: Prometheus 2.x range selectors include their left edge,
# where the previous hour's job still shows, and the join would find two jobs for one GPU
DEFAULT_ROW = "aifmon, default (24 h from hourly rollups)"
RAW_ROW = "aifmon, raw samples only (from_hourly=False)"
KERNEL_ROW = "aifmon, raw kernel (the same reads, answered from memory)"
VM_CACHED_ROW = "VictoriaMetrics, cached (query_range, 24 x 1h)"
VM_NOCACHE_ROW = "VictoriaMetrics, nocache=1 (from its samples)"
ON_VM_ROW = "aifmon over VictoriaMetrics (its raw samples, /api/v1/export)"
FLOOR_ROW = "DuckDB alone: counter increments per series-hour in SQL"
# FLOOR_ROW is not an answer: the least a push-down of the ledger into DuckDB would cost. One lag() window over the
# day's counter samples, increments summed per series and hour, no reset rule, no split at hour bounds, no job
# attribution, no coverage. Its error is that of the day's total against the truth's.
FLOOR_SQL = """
    WITH energy AS (SELECT id FROM series WHERE metric = 'aif_gpu_energy_joules_total'),
    steps AS (SELECT s.series_id, s.t_ms, s.value - lag(s.value) OVER (PARTITION BY s.series_id ORDER BY s.t_ms) AS step
              FROM samples s SEMI JOIN energy ON s.series_id = energy.id WHERE s.t_ms >= {start} AND s.t_ms <= {end})
    SELECT series_id, t_ms // 3600000 AS hour, sum(greatest(step, 0)) AS joules FROM steps GROUP BY ALL"""
RUNS = 5  # timed runs per row; rows give the median
LEDGER_DATA = ("aif_gpu_energy_joules_total", "aif_gpu_job_info")  # the metrics of the ledger's that this data holds
RESULTS = Path(__file__).resolve().parent / "results"
QUERY = ("sum by (project) (increase(aif_gpu_energy_joules_total[1h]) "
         "* on (factory, node, gpu) group_left (project) last_over_time(aif_gpu_job_info[3599s]))")


def inventory(gpus: int, projects: int, factory: str = "f", country: str = "DE"):
    nodes = gpus // (8 if gpus >= 10_000 else 4)
    per_node = gpus // nodes
    modes, sectors = list(ACCESS_MODES), list(SECTORS)
    project_lines = "\n".join(
        f"  - {{id: p{i:02d}, name: Project {i}, access_mode: {modes[i % len(modes)]}, sector: {sectors[i % len(sectors)]}, factory: {factory}}}"
        for i in range(projects))
    return parse_inventory(f"""
name: bench
illustrative: true
factories:
  - id: {factory}
    name: Bench AI Factory
    country: {country}
    latitude: 50.9
    longitude: 6.4
    power_cap_mw: {gpus * 0.0012:.3f}
    design_pue: 1.15
    energy_price_eur_per_kwh: 0.15
    systems:
      - id: {factory}-gpu
        name: Booster
        node_groups:
          - {{prefix: {factory}n, count: {nodes}, gpus_per_node: {per_node}, gpu_model: H100-SXM5-80GB}}
projects:
{project_lines}
""", "bench-inventory.yaml")


def make_day(store: DuckDBStore, gpus: int, day_ms: int, seed: int = 1) -> pd.Series:
    """Write one day of counters and job info; return the true GPU energy per project (J), `(unallocated)` included.

    The samples are appended in time order, as scrapes arrive: the store then holds them clustered by time, as it does
    in service, and a read of one hour skips the rest of the day (DuckDB's row-group zone maps). Written series after
    series, every hour's read would scan the whole day."""
    rng = np.random.default_rng(seed)
    per_node = 4
    nodes = gpus // per_node
    times = day_ms + np.arange(0, 24 * H + 1, STEP_MS)
    k = len(times)
    hour_of = np.clip((times - 1 - day_ms) // H, 0, 23)  # the hour of the interval ending at each sample
    busy = rng.random((24, nodes)) < 0.85
    project = rng.integers(0, PROJECTS, (24, nodes))
    base = {"factory": "f", "system": "f-gpu"}
    e_ids = store.series_ids([series_key("aif_gpu_energy_joules_total", {**base, "node": f"fn{g // per_node + 1:04d}", "gpu": str(g % per_node),
                                                                           "uuid": f"GPU-{g}", "model": "H100"}) for g in range(gpus)])
    truth: dict[str, float] = {}
    ids: list[np.ndarray] = []
    at: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for g in range(gpus):
        node = g // per_node
        job_busy = busy[hour_of, node]
        watts = np.where(job_busy, rng.uniform(300, 700, k), rng.uniform(60, 90, k))
        counter = rng.uniform(0, 1e9) + np.concatenate([[0.0], np.cumsum(watts[1:] * STEP_MS / 1000)])
        ids.append(np.full(k, e_ids[g]))
        at.append(times)
        values.append(counter)
        inc = np.diff(counter)  # the increments the truth is made of, as float64 sees them
        owner = np.where(job_busy[1:], np.char.add("p", np.char.zfill(project[hour_of[1:], node].astype(str), 2)), UNALLOCATED)
        for p, j in pd.Series(inc).groupby(owner).sum().items():
            truth[p] = truth.get(p, 0.0) + j
        hours = [h for h in range(24) if busy[h, node]]
        sids = store.series_ids([series_key("aif_gpu_job_info", {**base, "node": f"fn{node + 1:04d}", "gpu": str(g % per_node),
                                                                  "job": f"{h:02d}{node:05d}", "project": f"p{project[h, node]:02d}",
                                                                  "access_mode": "Regular"}) for h in hours])
        with_job = np.flatnonzero(busy[hour_of, node] & (np.arange(k) > 0))
        if len(with_job):
            sid_of_hour = np.zeros(24, dtype=np.int64)
            sid_of_hour[hours] = sids
            ids.append(sid_of_hour[hour_of[with_job]])
            at.append(times[with_job])
            values.append(np.ones(len(with_job)))
    order = np.argsort(np.concatenate(at), kind="stable")
    sid_all, t_all, v_all = (np.concatenate(parts)[order] for parts in (ids, at, values))
    for chunk in range(0, len(order), 1_000_000):
        store.append(sid_all[chunk:chunk + 1_000_000], t_all[chunk:chunk + 1_000_000], v_all[chunk:chunk + 1_000_000])
    return pd.Series(truth)


def median_of(n: int, fn):
    """(median wall time of `n` calls of `fn`, s; the last call's result)."""
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def promql_per_project(base_url: str, day_ms: int, nocache: bool = False) -> pd.Series:
    """The day's GPU energy per project (J) by the query above; `nocache`: bypass VictoriaMetrics' result cache."""
    params = {"query": QUERY, "start": (day_ms + H) / 1000, "end": (day_ms + 24 * H) / 1000, "step": "3600"}
    query = urllib.parse.urlencode({**params, **({"nocache": "1"} if nocache else {})})
    try:
        with urllib.request.urlopen(f"{base_url}/api/v1/query_range?{query}", timeout=600) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{base_url} refused the query: {e.read().decode(errors='replace')[:500]}") from None
    assert body["status"] == "success", body
    return pd.Series({res["metric"].get("project", "?"): sum(float(v) for _, v in res["values"]) for res in body["data"]["result"]})


class Kept(SampleReader):
    """The ledger's sample reads of `store` (`range_arrays`, `edges`, `sample_spans`), kept in memory: `record` passes
    each read to `store` and keeps its answer; a `replay` answers each from what was kept and refuses a read that was
    not, so the ledger over a replay computes exactly what it computed over the store, without the store's reads. Each
    replay is a new store object, so `read_ledger`'s per-store cache of computed hours starts empty, as in a new process."""

    def __init__(self, store: SampleReader | None, kept: dict[tuple, tuple[str, tuple, Any]] | None = None,
                 reads_are_requests: bool = False):
        self.store = store
        self.kept: dict[tuple, tuple[str, tuple, Any]] = {} if kept is None else kept
        self.reads_are_requests = store.reads_are_requests if store is not None else reads_are_requests  # the ledger's reads as over `store`

    @classmethod
    def record(cls, store: SampleReader) -> Kept:
        return cls(store)

    def replay(self) -> Kept:
        return Kept(None, self.kept, self.reads_are_requests)

    def reads(self) -> list[tuple[str, tuple]]:
        """Every read kept, in the order the ledger made them: (method name, its arguments)."""
        return [(name, args) for name, args, _ in self.kept.values()]

    def _read(self, name: str, *args):
        key = (name, *(tuple(sorted(a.items())) if isinstance(a, dict) else tuple(a) if isinstance(a, list) else a for a in args))
        if self.store is None:
            return self.kept[key][2]  # a KeyError: the replay would compute something the recorded run did not
        answer = getattr(self.store, name)(*args)
        self.kept[key] = (name, args, answer)
        return answer

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self._read("range_arrays", metric, start_ms, end_ms, match)

    def edges(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self._read("edges", metric, start_ms, end_ms, match)

    def sample_spans(self, metrics: list[str], start_ms: int, end_ms: int) -> dict[str, tuple[int, int]]:
        return self._read("sample_spans", metrics, start_ms, end_ms)

    def runs(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self._read("runs", metric, start_ms, end_ms, match)

    def sample_generation(self) -> int | None:
        return None  # a replay's answers never change


def reissue(store: SampleReader, reads: list[tuple[str, tuple]]) -> None:
    """Make the reads `Kept.reads` lists of `store` again, in order, each answer dropped when the next is made (as the
    ledger, one hour at a time, drops an hour's samples)."""
    for name, args in reads:
        getattr(store, name)(*args)


def error(answer: pd.Series, truth: pd.Series) -> float:
    allocated = truth.drop(UNALLOCATED, errors="ignore")
    got = answer.reindex(allocated.index).fillna(0.0)
    return float(((got - allocated).abs() / allocated).max())


def bench_per_project(gpus: int, work: Path, site_only: bool = False) -> tuple[list[tuple[str, float, float, float]], float | None, dict]:
    """(rows: (answer, time s, samples/s, max error); time s the hourly rollups took to catch up with the day, None with
    `site_only`; where the site path's time and memory go, `site_path`)."""
    inv = inventory(gpus, PROJECTS)
    day_ms = (int(time.time() * 1000) // (24 * H) - 2) * 24 * H  # the day before yesterday: inside every retention, hours settled
    store = DuckDBStore(work / "day.duckdb")
    t0 = time.perf_counter()
    truth = make_day(store, gpus, day_ms)
    n = int((store.range("aif_gpu_energy_joules_total", day_ms, day_ms + 24 * H, match={"node": "fn0001", "gpu": "0"})).shape[0]) * gpus
    print(f"data: {gpus} GPUs, {n:,} counter samples in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = []
    catch_up = None
    if not site_only:
        t, ans = median_of(RUNS, lambda: per_project(store, inv, day_ms, from_hourly=False))
        raw = (RAW_ROW, t, n / t, error(ans, truth))
        kept = Kept.record(store)
        per_project(kept, inv, day_ms, from_hourly=False)
        t, ans = median_of(RUNS, lambda: per_project(kept.replay(), inv, day_ms, from_hourly=False))
        kernel = (KERNEL_ROW, t, n / t, error(ans, truth))
        t0 = time.perf_counter()
        for hour in range(day_ms, day_ms + 24 * H, H):
            rollup_hour(store, hour, inv)
        catch_up = time.perf_counter() - t0
        t, ans = median_of(RUNS, lambda: per_project(store, inv, day_ms))
        assert energy_rollup(store, inv, day_ms, day_ms + 24 * H).notes["hours_from_hourly_rollups"] == 24
        rows += [(DEFAULT_ROW, t, n / t, error(ans, truth)), raw, kernel]
        with duckdb.connect(str(work / "day.duckdb")) as con:  # the store's own database, shared within this process
            t, got = median_of(RUNS, lambda: con.execute(FLOOR_SQL.format(start=day_ms, end=day_ms + 24 * H)).fetchnumpy()["joules"].sum())
        rows.append((FLOOR_ROW, t, n / t, abs(got - truth.sum()) / truth.sum()))

    om = work / "day.om"
    with om.open("w") as fh:
        export_openmetrics(store, fh, day_ms - H, day_ms + 25 * H)
    store.close()
    with victoria_metrics(work) as vm:
        import_openmetrics(open_store(vm.url.replace("http://", "victoriametrics+http://"), needs=SampleWriter), om)
        vm.force_flush()
        promql_per_project(vm.url, day_ms)  # warm: the repeats are answered from VictoriaMetrics' rollup result cache
        t, ans = median_of(RUNS, lambda: promql_per_project(vm.url, day_ms))
        rows.append((VM_CACHED_ROW, t, n / t, error(ans, truth)))
        t, ans = median_of(RUNS, lambda: promql_per_project(vm.url, day_ms, nocache=True))
        rows.append((VM_NOCACHE_ROW, t, n / t, error(ans, truth)))
        # `aifmon rollup energy --store victoriametrics+http://...`: the ledger computed from VictoriaMetrics' raw samples
        # a new store object per run: `read_ledger` keeps the settled hours it computed per store, and a second
        # `aifmon rollup energy` is a new process
        def on_vm() -> SampleReader:
            return open_store(vm.url.replace("http://", "victoriametrics+http://"), needs=SampleReader)

        t, ans = median_of(RUNS, lambda: per_project(on_vm(), inv, day_ms, from_hourly=False))
        rows.append((ON_VM_ROW, t, n / t, error(ans, truth)))
        site = site_path(vm.url, on_vm(), gpus, day_ms, truth)
    if not site_only:
        blocks = work / "prom-data"
        subprocess.run([installed("promtool", "prometheus"), "tsdb", "create-blocks-from", "openmetrics", str(om), str(blocks)],
                       check=True, capture_output=True, timeout=1800)
        (work / "prom").mkdir()
        with prometheus("global: {scrape_interval: 1m}\n", work / "prom", storage=blocks) as url:
            promql_per_project(url, day_ms)
            t, ans = median_of(RUNS, lambda: promql_per_project(url, day_ms))
            rows.append(("Prometheus (query_range, 24 x 1h)", t, n / t, error(ans, truth)))
    return rows, catch_up, site


def per_project(store, inv, day_ms: int, **kw) -> pd.Series:
    """The day's GPU energy per project (J), as `aifmon rollup energy --by project` computes it."""
    return energy_rollup(store, inv, day_ms, day_ms + 24 * H, by="project", **kw).rows.set_index("project")["energy_kwh"] * 3.6e6


def site_path(vm_url: str, on_vm: SampleReader, gpus: int, day_ms: int, truth: pd.Series) -> dict:
    """Where the site path's time goes, medians of RUNS (s): VictoriaMetrics' export of the day's samples of the metrics
    with data, moved to /dev/null by curl (`transfer_s`, with `export_mb` the answers' size: the least any read of the
    raw samples costs); the ledger's own reads of VictoriaMetrics, made again without the ledger (`read_s`, `reads` of
    them: `range_arrays`, `edges`, `sample_spans`, one clock hour at a time); the ledger over those reads' answers in
    memory (`ledger_s`); and the whole path once in a fresh process (`child`, see `site_path_child`)."""
    sizes: list[int] = []

    def transfer() -> None:
        sizes.clear()
        for metric in LEDGER_DATA:
            query = urllib.parse.urlencode({"match[]": metric + "{}", "start": f"{day_ms / 1000:.3f}", "end": f"{(day_ms + 24 * H) / 1000:.3f}"})
            out = subprocess.run([installed("curl", "curl"), "-sS", "-o", "/dev/null", "-w", "%{size_download}", f"{vm_url}/api/v1/export?{query}"],
                                 check=True, capture_output=True, text=True, timeout=600)
            sizes.append(int(out.stdout))

    transfer_s, _ = median_of(RUNS, transfer)
    inv = inventory(gpus, PROJECTS)
    kept = Kept.record(on_vm)
    per_project(kept, inv, day_ms, from_hourly=False)
    reads = kept.reads()
    read_s, _ = median_of(RUNS, lambda: reissue(on_vm, reads))
    ledger_s, ans = median_of(RUNS, lambda: per_project(kept.replay(), inv, day_ms, from_hourly=False))
    assert error(ans, truth) < 1e-9
    child = json.loads(subprocess.run([sys.executable, __file__, "--site-path-child", vm_url, str(day_ms), str(gpus)],
                                      check=True, capture_output=True, text=True, timeout=1800).stdout)
    return {"transfer_s": transfer_s, "export_mb": sum(sizes) / 1e6, "read_s": read_s, "reads": len(reads),
            "reads_by_method": {m: sum(1 for name, _ in reads if name == m) for m in ("range_arrays", "runs", "edges", "sample_spans")},
            "ledger_s": ledger_s, "child": child}


def site_path_child(vm_url: str, day_ms: int, gpus: int) -> None:
    """Run `aifmon rollup energy`'s computation over VictoriaMetrics once in this fresh process; print JSON: its wall time
    (s), the resident memory after the imports (MB) and the peak (VmHWM, MB)."""
    inv = inventory(gpus, PROJECTS)
    store = open_store(vm_url.replace("http://", "victoriametrics+http://"), needs=SampleReader)
    before = rss_mb()
    t0 = time.perf_counter()
    per_project(store, inv, day_ms, from_hourly=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "rss_after_imports_mb": before, "peak_rss_mb": peak_rss_mb()}))


def bench_monthly_report(gpus: int, work: Path, month: str = "2025-03") -> tuple[float, int, int]:
    """Hourly rows of a month for a `gpus`-GPU factory (synthetic, ~1,500 jobs an hour), then the report from them."""
    inv = inventory(gpus, 40, factory="big")
    store = DuckDBStore(work / "month.duckdb")
    rng = np.random.default_rng(2)
    start = int(pd.Timestamp(f"{month}-01", tz="UTC").timestamp() * 1000)
    end = int((pd.Timestamp(f"{month}-01", tz="UTC") + pd.offsets.MonthBegin(1)).timestamp() * 1000)
    rows = 0
    for hour in range(start, end, H):
        sizes = rng.choice([1, 2, 4, 8, 16, 32, 64], size=2000, p=[.3, .2, .2, .12, .1, .05, .03]) * 8
        sizes = sizes[np.cumsum(sizes) <= gpus * 0.85]
        jobs = pd.DataFrame({
            "window_start_ms": np.int64(hour), "factory": "big", "system": "big-gpu",
            "job": [f"{hour // H % 100000}{i:05d}" for i in range(len(sizes))],
            "project": [f"p{p:02d}" for p in rng.integers(0, 40, len(sizes))], "access_mode": "Regular",
            "energy_j": sizes * rng.uniform(350, 650, len(sizes)) * 3600.0, "gpu_seconds": sizes * 3600.0})
        idle_gpus = gpus - sizes.sum()
        jobs = pd.concat([jobs, pd.DataFrame([{"window_start_ms": np.int64(hour), "factory": "big", "system": "big-gpu", "job": UNALLOCATED,
                                               "project": UNALLOCATED, "access_mode": UNALLOCATED, "energy_j": idle_gpus * 70.0 * 3600,
                                               "gpu_seconds": 0.0}])], ignore_index=True)
        nodes = jobs.drop(columns=["energy_j", "gpu_seconds"]).assign(node_other_j=jobs["energy_j"] * 0.25)
        it = jobs["energy_j"].sum() * 1.25
        site = pd.DataFrame([{"window_start_ms": np.int64(hour), "factory": "big", "gpu_energy_j": jobs["energy_j"].sum(), "it_energy_j": it,
                              "facility_energy_j": it * 1.15, "estimated_j": 0.0, "covered_s": gpus * 3600.0, "expected_s": gpus * 3600.0,
                              "gpus": gpus, "energy_samples": gpus * 240, "job_samples": int(sizes.sum() * 240)}])[["window_start_ms", "factory"] + SITE_COLUMNS]
        store.replace_rows(TABLE, hour, jobs)
        store.replace_rows(NODE_TABLE, hour, nodes)
        store.replace_rows(SITE_TABLE, hour, site)
        rows += len(jobs)
    t0 = time.perf_counter()
    report = build_monthly_report(store, inv, month, now_ms=end + H)
    paths = write_monthly_report(report, work / "report")
    took = time.perf_counter() - t0
    store.close()
    pages = subprocess.run(["pdfinfo", str(paths[-1])], capture_output=True, text=True).stdout
    n_pages = int(next((line.split()[-1] for line in pages.splitlines() if line.startswith("Pages:")), "0"))
    return took, rows, n_pages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=1000, help="GPUs for the per-project comparison (default 1000)")
    p.add_argument("--report-gpus", type=int, default=100_000, help="GPUs of the factory whose monthly report is timed (default 100000)")
    p.add_argument("--site-only", action="store_true", help="only the VictoriaMetrics rows and the site path (no DuckDB, Prometheus, report)")
    p.add_argument("--site-path-child", nargs=3, metavar=("VM_URL", "DAY_MS", "GPUS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.site_path_child:
        url, day_ms, gpus = args.site_path_child
        site_path_child(url, int(day_ms), int(gpus))
        return
    with tempfile.TemporaryDirectory(prefix="aifmon-bench-") as tmp:
        work = Path(tmp)
        rows, catch_up, site = bench_per_project(args.gpus, work, args.site_only)
        print(f"\nper-project GPU energy, 1 day, {args.gpus} GPUs, 15 s scrapes (median of {RUNS}, warm)")
        if catch_up is not None:
            print(f"hourly rollups, caught up hour by hour before the default row (rollup_hour x 24, once): {catch_up:.2f} s")
        print(f"{'answer':62s} {'time s':>8s} {'M samples/s':>12s} {'max error':>10s}")
        for name, t, rate, err in rows:
            print(f"{name:62s} {t:8.3f} {rate / 1e6:12.1f} {err:10.2e}")
        took_s = {name: t for name, t, _, _ in rows}
        ratios = {f"{ours} / {theirs}": took_s[theirs] / took_s[ours]
                  for ours, theirs in ((DEFAULT_ROW, VM_CACHED_ROW), (RAW_ROW, VM_NOCACHE_ROW), (FLOOR_ROW, VM_NOCACHE_ROW), (ON_VM_ROW, VM_NOCACHE_ROW))
                  if ours in took_s}
        for pair, ratio in ratios.items():
            print(f"{pair}: {ratio:.2f}x VictoriaMetrics' throughput")
        child = site["child"]
        print(f"\nsite path (aifmon over VictoriaMetrics), medians of {RUNS}: the day's export to /dev/null (curl) {site['transfer_s']:.3f} s "
              f"for {site['export_mb']:.0f} MB; the ledger's {site['reads']} reads ({site['reads_by_method']}) made again "
              f"{site['read_s']:.3f} s; the ledger over their answers in memory {site['ledger_s']:.3f} s")
        print(f"site path once in a fresh process: {child['seconds']:.2f} s, resident after imports "
              f"{child['rss_after_imports_mb']:.0f} MB, peak {child['peak_rss_mb']:.0f} MB (VmHWM)")
        results = {"gpus": args.gpus, "runs": RUNS, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                   "rows": [{"answer": name, "median_s": t, "samples_per_s": rate, "max_error": err} for name, t, rate, err in rows],
                   "hourly_catch_up_s": catch_up, "ratios": ratios, "site_path": site}
        if not args.site_only:
            took, n, pages = bench_monthly_report(args.report_gpus, work)
            print(f"\nmonthly report, {args.report_gpus:,} GPUs, {n:,} hourly rows: {took:.1f} s (html, pdf with {pages} pages, csv, json)")
            results["monthly_report"] = {"gpus": args.report_gpus, "hourly_rows": n, "seconds": took, "pdf_pages": pages}
        out = RESULTS / f"rollup_energy_{args.gpus}{'_site' if args.site_only else ''}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written: {out.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
