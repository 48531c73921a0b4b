"""dcgm-exporter's series read as aifmon's, through one mapping, so a site that runs NVIDIA's dcgm-exporter gets the
energy ledger without a new agent on its nodes (issue #16).

The mapping is `MAPPING` (docs/energy-accounting.md shows it as `mapping_table()` renders it; a test keeps them equal).

Rules (the ledger's own are in `aifmon.rollups.energy`):
- **Node.** `Hostname`, else `hostname`, else the host part of `instance` (dcgm-exporter leaves its host name out with
  `--no-hostname`); `--sacct` records match it against Slurm's node names.
- **One GPU, one meter.** Where aifmon's `aif_gpu_energy_joules_total` and dcgm-exporter both report a GPU (same
  `factory` and UUID), aifmon's series win: DCGM's samples of that GPU are left out from aifmon's first to its last
  sample in the read, and the GPU takes aifmon's labels. The two are never joined into one counter: both start from
  NVML's count since driver load, but aifmon's carries on across a driver reload where DCGM's restarts, so a step from
  one to the other is no increment. The scrape interval between the last sample of one and the first of the other is
  counted by neither (at most one interval each time a site switches exporter). Power, which the ledger integrates
  only for GPUs without an energy counter: DCGM's is left out for a GPU that aifmon's power samples or any energy
  counter in the read show.
- **Jobs.** `hpc_job` carries the job id only. The project and access mode are those of aifmon's `aif_gpu_job_info`
  for the same job id in the same factory within the read (a node running aifmon's Slurm prolog names them); a job
  seen nowhere else is `(project unknown)`, access mode `(unknown)`. A site without aifmon's job info gets projects
  from Slurm's accounting instead: `aifmon rollup energy --sacct`, which attributes by node and time and reads the
  mapped series like aifmon's. dcgm-exporter repeats a GPU's series once per job listed in its mapping file: the
  copies are duplicate samples (counted once), and of two jobs on one GPU at once the ledger keeps one.
- **Units and counter.** The energy field is declared `counter` in dcgm-exporter's shipped `default-counters.csv`
  ("Total energy consumption since boot (in mJ)"); it is NVML's count since the driver was loaded, so a driver
  reload restarts it from 0: a reset to the counter kernel. dcgm-exporter 4.9.0 renames the fields DCGM 4.7 deprecates
  and reports energy in joules under the new name; this mapping reads the name and unit above (through 4.8.x).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aifmon.rollups.counters import series_row
from aifmon.stores.store import SampleReader, SeriesSamples, concat_samples, range_with_edges, runs_of
from aifmon.telemetry.schema import DCGM_ENERGY

DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"
J_PER_MJ = 1e-3
NODE_LABELS = ("Hostname", "hostname")  # dcgm-exporter renamed the label in 4.8.3
LABELS = {"gpu": "gpu", "UUID": "uuid", "modelName": "model", "hpc_job": "hpc_job"}
"""dcgm-exporter label -> the label it becomes (`hpc_job` stays apart: a PromQL scraper's `job` label is its scrape job)."""
KEPT = ("factory", "system", "instance")  # the scraper's labels, kept as they are
MAPPING: tuple[tuple[str, str, str], ...] = (
    (f"`{DCGM_ENERGY}` (counter, mJ since driver load)", "`aif_gpu_energy_joules_total` (J)", f"x {J_PER_MJ:g}"),
    (f"`{DCGM_POWER}` (gauge, W)", "`aif_gpu_power_watts` (W)", "x 1"),
    ("label `Hostname` (`hostname` from 4.8.3; neither: the host of `instance`)", "`node`", "as is"),
    ("label `gpu` (DCGM's GPU id)", "`gpu`", "as is"),
    ("label `UUID`", "`uuid`", "as is"),
    ("label `modelName`", "`model`", "as is"),
    ("label `hpc_job` (HPC job mapping: the job id only)", "`job` of an `aif_gpu_job_info` sample", "value 1, at the sample's time"),
    ("`factory`, `system`, `instance` (the scraper's target labels)", "the same", "as is"),
)
"""(dcgm-exporter series or label, aifmon series or label, conversion)."""
UNKNOWN_PROJECT = "(project unknown)"
UNKNOWN_MODE = "(unknown)"
JOB_READ_GAP_MS = 15 * 60_000
"""Job info at interval ends past the range that lie closer than this (ms) is read in one range, not one read each."""
SEGMENTS = 3
"""Counter streams per GPU: 0 DCGM before aifmon's samples, 1 aifmon's, 2 DCGM after them (`gpu_energy`)."""


def mapping_table() -> str:
    """`MAPPING` as a Markdown table."""
    rows = [("dcgm-exporter", "aifmon", "conversion"), ("---", "---", "---"), *MAPPING]
    return "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


def relabel(samples: SeriesSamples, scale: float, id_offset: int) -> SeriesSamples:
    """DCGM samples under aifmon's label names (`node`, `gpu`, `uuid`, `model`, `hpc_job` and the scraper's labels), values
    times `scale`, series ids plus `id_offset` (so they cannot meet the ids of aifmon's series read beside them)."""
    s = samples.series
    out = pd.DataFrame({"series_id": s["series_id"].to_numpy(dtype=np.int64) + id_offset})
    for label in KEPT:
        if label in s:
            out[label] = s[label].to_numpy(dtype=object)
    node = pd.Series(np.full(len(s), None, dtype=object))
    for label in NODE_LABELS:
        if label in s:
            node = node.fillna(pd.Series(s[label].to_numpy(dtype=object)).replace("", None))
    if "instance" in s:  # host:port, or [v6]:port
        host = pd.Series(s["instance"].to_numpy(dtype=object)).str.rsplit(":", n=1).str[0].str.strip("[]")
        node = node.fillna(host)
    out["node"] = node.fillna("").to_numpy(dtype=object)
    for label, ours in LABELS.items():
        out[ours] = s[label].fillna("").to_numpy(dtype=object) if label in s else np.full(len(s), "", dtype=object)
    return SeriesSamples(out, np.asarray(samples.series_id, dtype=np.int64) + id_offset, samples.t_ms,
                         np.asarray(samples.value, dtype=np.float64) * scale)


def _next_id(samples: SeriesSamples) -> int:
    return int(samples.series["series_id"].max()) + 1 if len(samples.series) else 0


def _gpu_keys(s: pd.DataFrame) -> pd.Series:
    """(factory, uuid) text of each series of frame `s`, '' where it has no UUID."""
    uuid = s["uuid"].fillna("") if "uuid" in s else pd.Series("", index=s.index)
    factory = s["factory"].fillna("") if "factory" in s else pd.Series("", index=s.index)
    return (factory + "\x00" + uuid).where(uuid != "", "")


def _present(samples: SeriesSamples) -> pd.DataFrame:
    """The series that have samples in `samples` (the embedded store also lists series silent in the range read, a PromQL
    server does not: lookups use only these, so both answer alike)."""
    return samples.series[samples.series["series_id"].isin(np.unique(samples.series_id))]


def gpu_energy(store: SampleReader, energy_metric: str, start_ms: int, end_ms: int) -> tuple[SeriesSamples, np.ndarray | None]:
    """aifmon's `energy_metric` samples over [start_ms, end_ms] with each series' samples around it (`range_with_edges`) and
    dcgm-exporter's energy samples read alike and mapped onto them (J; rules: module docstring), and each sample's counter
    segment (`SEGMENTS`); (aifmon's samples, None) where dcgm-exporter has none."""
    ours = range_with_edges(store, energy_metric, start_ms, end_ms)
    theirs = range_with_edges(store, DCGM_ENERGY, start_ms, end_ms)
    if not len(theirs.t_ms):
        return ours, None
    dcgm = relabel(theirs, J_PER_MJ, _next_id(ours))
    row = series_row(dcgm)
    key = _gpu_keys(dcgm.series).to_numpy(dtype=object)[row]
    seg = np.zeros(len(dcgm.t_ms), dtype=np.int64)
    keep = np.ones(len(dcgm.t_ms), dtype=bool)
    if len(ours.t_ms):
        span = pd.DataFrame({"key": _gpu_keys(ours.series).to_numpy(dtype=object)[series_row(ours)], "t": ours.t_ms})
        span = span[span["key"] != ""].groupby("key")["t"].agg(["min", "max"])
        first = pd.Series(key).map(span["min"]).to_numpy(dtype=np.float64)  # NaN: a GPU aifmon does not report
        last = pd.Series(key).map(span["max"]).to_numpy(dtype=np.float64)
        t = dcgm.t_ms.astype(np.float64)
        keep = ~((t >= first) & (t <= last))
        seg[t > last] = 2
    merged = SeriesSamples(pd.concat([ours.series, _beside(ours, dcgm)], ignore_index=True),
                           np.concatenate([np.asarray(ours.series_id, dtype=np.int64), dcgm.series_id[keep]]),
                           np.concatenate([ours.t_ms, dcgm.t_ms[keep]]), np.concatenate([ours.value, dcgm.value[keep]]))
    return merged, np.concatenate([np.full(len(ours.t_ms), 1, dtype=np.int64), seg[keep]])


def _job_reads(t_ms: np.ndarray, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """The ranges `job_info` reads, ms: [start_ms, end_ms], and the times in `t_ms` after `end_ms` in runs of times closer
    than `JOB_READ_GAP_MS` (each run from its first time to its last)."""
    after = np.unique(t_ms[t_ms > end_ms])
    cut = np.flatnonzero(np.diff(after) >= JOB_READ_GAP_MS) + 1
    return [(start_ms, end_ms)] + [(int(run[0]), int(run[-1])) for run in np.split(after, cut) if len(run)]


def _beside(ours: SeriesSamples, dcgm: SeriesSamples) -> pd.DataFrame:
    """DCGM's series with the GPU labels (`system`, `node`, `gpu`) of aifmon's series of the same factory and UUID, so
    that one GPU is one GPU to the ledger whichever exporter reported it."""
    series = dcgm.series.copy()
    if not len(ours.series):
        return series
    theirs_key = _gpu_keys(dcgm.series)
    present = _present(ours)
    labels = present.assign(key=_gpu_keys(present))
    labels = labels[labels["key"] != ""].drop_duplicates("key").set_index("key")
    for col in ("system", "node", "gpu"):
        if col in labels:
            mapped = theirs_key.map(labels[col])
            series[col] = mapped.where(mapped.notna(), series.get(col))
    return series


def _uuids(samples: SeriesSamples, start_ms: int, end_ms: int) -> set[str]:
    """The GPUs, by factory and UUID, that `samples` (a `range_with_edges` read) measure over some of [start_ms, end_ms]: with
    a sample in it, or samples on both sides of it (a silence across it). A GPU whose only sample is one side's edge (its
    meter stopped before the range, or started after it) measures none of it."""
    if not len(samples.t_ms):
        return set()
    t = samples.t_ms
    frame = pd.DataFrame({"key": _gpu_keys(samples.series).to_numpy(dtype=object)[series_row(samples)], "t": t,
                          "inside": (t >= start_ms) & (t <= end_ms)})
    per_gpu = frame[frame["key"] != ""].groupby("key").agg(first=("t", "min"), last=("t", "max"), inside=("inside", "any"))
    measures = per_gpu["inside"] | ((per_gpu["first"] < start_ms) & (per_gpu["last"] > end_ms))
    return set(per_gpu.index[measures.to_numpy(dtype=bool)])


def gpu_power(store: SampleReader, power_metric: str, start_ms: int, end_ms: int, match: dict[str, str],
              energy: SeriesSamples) -> SeriesSamples:
    """aifmon's `power_metric` samples matching `match` over [start_ms, end_ms] with each series' samples around it
    (`range_with_edges`), and dcgm-exporter's power samples (W), read alike, of the GPUs that neither aifmon's power
    samples nor the energy samples `energy` (`gpu_energy`'s) measure over the range, under aifmon's labels."""
    ours = range_with_edges(store, power_metric, start_ms, end_ms, match=match)
    theirs = range_with_edges(store, DCGM_POWER, start_ms, end_ms, match=match)
    if not len(theirs.t_ms):
        return ours
    dcgm = relabel(theirs, 1.0, _next_id(ours))
    seen = _uuids(ours, start_ms, end_ms) | _uuids(energy, start_ms, end_ms)
    keep = ~_gpu_keys(dcgm.series).isin(seen).to_numpy()[series_row(dcgm)]
    return SeriesSamples(pd.concat([ours.series, dcgm.series], ignore_index=True),
                         np.concatenate([np.asarray(ours.series_id, dtype=np.int64), dcgm.series_id[keep]]),
                         np.concatenate([ours.t_ms, dcgm.t_ms[keep]]), np.concatenate([ours.value, dcgm.value[keep]]))


def job_info(store: SampleReader, job_metric: str, energy: SeriesSamples, start_ms: int, end_ms: int) -> SeriesSamples:
    """The runs (`SampleReader.runs`: `t_ms` a run's first sample, `value` its last, ms) of aifmon's `job_metric` over
    [start_ms, end_ms] and at the times of `energy`'s samples after it (`gpu_energy`'s: an interval that straddles the end
    belongs to the job holding the GPU at its closing sample, however long after the end that is), and the runs of the
    energy samples that carry an `hpc_job` label (`gpu_energy`'s DCGM samples: value 1 at each), with the project and
    access mode aifmon's job info gives that job in the same factory (`UNKNOWN_PROJECT` where it gives none).

    Not `range_with_edges`: every job that ever ran is a series of its own, and the first sample after the range of each
    job that started since would be read. The closing times after the range are read instead, those closer than
    `JOB_READ_GAP_MS` together: usually one read of the last scrape interval past the end."""
    ours = concat_samples([store.runs(job_metric, a, b) for a, b in _job_reads(energy.t_ms, start_ms, end_ms)])
    if "hpc_job" not in energy.series or not len(energy.t_ms):
        return ours
    row = series_row(energy)
    has_job = (energy.series["hpc_job"].fillna("") != "").to_numpy()
    use = has_job[row]
    if not use.any():
        return ours
    series = energy.series[has_job]
    factory = series["factory"].fillna("") if "factory" in series else pd.Series("", index=series.index)
    names = pd.DataFrame({"factory": factory, "job": series["hpc_job"]})
    if len(ours.t_ms) and {"factory", "job"} <= set(ours.series):
        known = _present(ours).drop_duplicates(["factory", "job"]).set_index(["factory", "job"])
        found = names.join(known[[c for c in ("project", "access_mode") if c in known]], on=["factory", "job"])
    else:
        found = names.assign(project=None, access_mode=None)
    jobs = pd.DataFrame({"series_id": series["series_id"].to_numpy(dtype=np.int64), "factory": factory.to_numpy(dtype=object),
                         **{c: series[c].to_numpy(dtype=object) for c in ("system", "node", "gpu") if c in series},
                         "job": series["hpc_job"].to_numpy(dtype=object),
                         "project": found.get("project", pd.Series(dtype=object)).reindex(series.index).fillna(UNKNOWN_PROJECT).to_numpy(dtype=object),
                         "access_mode": found.get("access_mode", pd.Series(dtype=object)).reindex(series.index).fillna(UNKNOWN_MODE).to_numpy(dtype=object)})
    theirs = runs_of(SeriesSamples(jobs, np.asarray(energy.series_id, dtype=np.int64)[use], energy.t_ms[use], np.ones(int(use.sum()))))
    return concat_samples([ours, theirs])
