"""Simulated history written straight into a store: the last hours of a factory, before it goes live.

The backfill runs the same simulation (same seed and epoch) as the live simulator, so its history
and the live scrapes form one continuous series: counters do not reset where the backfill ends.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aifmon.exporters.sim import JOB_INFO, SimFamilies
from aifmon.exporters.simulation import FactorySimulation, Job
from aifmon.ingest.collector import target_labels
from aifmon.stores.store import SampleWriter, series_key

_WRITE_EVERY = 30  # snapshots per transaction: few commits...
_WRITE_SAMPLES = 1_000_000  # ...and at most about this many samples pending (20 MB): a 25,000-GPU snapshot is 400,000


def backfill(store: SampleWriter, sim: FactorySimulation, start: float, end: float, step_s: float = 60.0,
             progress: Callable[[int], None] = lambda n: None) -> int:
    """Write a snapshot every `step_s` seconds in [start, end) of `sim` into `store`; returns samples written.

    `progress` is called with the number of snapshots done since its last call.
    """
    if start < sim.epoch:
        raise ValueError("backfill cannot start before the simulation's epoch")
    families = SimFamilies(sim)
    ids: dict[str, np.ndarray] = {}
    kind_labels: dict[str, list[dict[str, str]]] = {}  # label sets while the first snapshot registers its series
    pending_ids: list[np.ndarray] = []
    pending_t: list[np.ndarray] = []
    pending_v: list[np.ndarray] = []
    written = 0
    # The labels the collector gives the live scrapes of this factory's simulator: history and live data
    # are then one series, not two that live panels would add up while both are within their lookback.
    instance = target_labels(sim.factory.id, sim.factory.targets[0] if sim.factory.targets else "backfill")
    job_series: dict[str, np.ndarray] = {}
    job_gpu_labels = families.job_gpu_labels()

    def job_ids(job: Job) -> np.ndarray:
        sid = job_series.get(job.job_id)
        if sid is None:
            keys = [series_key(JOB_INFO, {**instance, **lb}) for lb in families.job_labels(job, job_gpu_labels)]
            sid = job_series[job.job_id] = store.series_ids(keys)
        return sid

    times = np.arange(start, end, step_s)
    since_progress = pending = 0
    for i, snap in enumerate(sim.snapshots([float(t) for t in times])):
        t_ms = int(snap.t * 1000)
        for metric, kind, values in families.families(snap, 0.0):
            if metric.name == JOB_INFO:
                sid = np.concatenate([job_ids(j) for j in snap.jobs] or [np.zeros(0, dtype=np.int32)])
            else:
                if metric.name not in ids:
                    labels = kind_labels.setdefault(kind, families.labels(kind))
                    ids[metric.name] = store.series_ids([series_key(metric.name, {**instance, **lb}) for lb in labels])
                sid = ids[metric.name]
            pending_ids.append(sid)
            pending_t.append(np.full(len(sid), t_ms, dtype=np.int64))
            pending_v.append(np.asarray(values, dtype=np.float64))
            pending += len(sid)
        kind_labels.clear()
        if (i + 1) % _WRITE_EVERY == 0 or pending >= _WRITE_SAMPLES or i == len(times) - 1:
            batch = np.concatenate(pending_ids)
            store.append(batch, np.concatenate(pending_t), np.concatenate(pending_v))
            written += len(batch)
            progress(i + 1 - since_progress)
            since_progress = i + 1
            pending_ids, pending_t, pending_v, pending = [], [], [], 0
    return written
