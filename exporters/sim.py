"""`aifmon exporter sim`: a simulated factory served as Prometheus text, re-rendered once per poll."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from aifmon.exporters.simulation import FactorySimulation, Job, Snapshot
from aifmon.telemetry.exposition import label_text, render_family
from aifmon.telemetry.schema import BY_NAME, THROTTLE_REASONS, Metric

log = logging.getLogger(__name__)

JOB_INFO = "aif_gpu_job_info"
Family = tuple[Metric, list[dict[str, str]], np.ndarray]
"""A metric, one label set per series, one value per series."""


class SimFamilies:
    """Turns snapshots of one simulation into metric families of the DESIGN.md schema.

    Every family but job info has the same label list at every snapshot (built once here), so
    consumers can cache what they derive from it (rendered text, store series ids) per metric.
    """

    def __init__(self, sim: FactorySimulation):
        self.sim = sim
        f = sim.factory.id
        self.gpu_labels = [
            {"factory": f, "system": sim.node_systems[n], "node": sim.node_names[n], "gpu": str(g), "uuid": u, "model": m}
            for n, g, u, m in zip(sim.gpu_node, sim.gpu_index, sim.gpu_uuids, sim.gpu_model_names)
        ]
        self.throttle_labels = [{**lb, "reason": r} for r in THROTTLE_REASONS for lb in self.gpu_labels]
        self.node_labels = [
            {"factory": f, "system": s, "node": n, "source": "bmc"} for n, s in zip(sim.node_names, sim.node_systems)
        ]
        self.cpu_labels = [
            {"factory": f, "system": s, "node": n, "socket": str(sock), "domain": d}
            for d in ("package", "dram") for sock in (0, 1) for n, s in zip(sim.node_names, sim.node_systems)
        ]
        self.facility_labels = [{"factory": f, "feed": "main"}]
        self.self_labels = [{"source": "sim"}]
        self.ones = np.ones(sim.gpu_count)

    def families(self, s: Snapshot, collect_seconds: float) -> list[Family]:
        g, n = self.gpu_labels, self.sim.gpu_count
        throttled = np.concatenate([s.gpu_power_capped if r == "sw_power_cap" else np.zeros(n) for r in THROTTLE_REASONS])
        cpu = np.concatenate([arr[:, sock] for arr in (s.cpu_package_energy_joules, s.cpu_dram_energy_joules) for sock in (0, 1)])
        job_labels = [lb for j in s.jobs for lb in self.job_labels(j)]
        return [
            (BY_NAME["aif_gpu_power_watts"], g, s.gpu_power_watts),
            (BY_NAME["aif_gpu_energy_joules_total"], g, s.gpu_energy_joules),
            (BY_NAME["aif_gpu_power_limit_watts"], g, self.sim.gpu_limit_watts),
            (BY_NAME["aif_gpu_utilization_ratio"], g, s.gpu_utilization_ratio),
            (BY_NAME["aif_gpu_memory_used_bytes"], g, s.gpu_memory_used_bytes),
            (BY_NAME["aif_gpu_temperature_celsius"], g, s.gpu_temperature_celsius),
            (BY_NAME["aif_gpu_sm_clock_hertz"], g, s.gpu_sm_clock_hertz),
            (BY_NAME["aif_gpu_throttled"], self.throttle_labels, throttled),
            (BY_NAME["aif_gpu_xid_errors_total"], g, s.gpu_xid_errors),
            (BY_NAME["aif_gpu_up"], g, self.ones),
            (BY_NAME[JOB_INFO], job_labels, np.ones(len(job_labels))),
            (BY_NAME["aif_node_power_watts"], self.node_labels, s.node_power_watts),
            (BY_NAME["aif_cpu_energy_joules_total"], self.cpu_labels, cpu),
            (BY_NAME["aif_facility_power_watts"], self.facility_labels, np.array([s.facility_power_watts])),
            (BY_NAME["aif_exporter_collect_seconds"], self.self_labels, np.array([collect_seconds])),
            (BY_NAME["aif_exporter_errors_total"], self.self_labels, np.zeros(1)),
        ]

    def job_labels(self, job: Job) -> list[dict[str, str]]:
        """The `aif_gpu_job_info` label sets of one job, one per GPU it holds."""
        return [
            {**{k: v for k, v in self.gpu_labels[gi].items() if k in ("factory", "system", "node", "gpu")},
             "job": job.job_id, "project": job.project, "access_mode": job.access_mode}
            for gi in job.gpus
        ]


class SimExporter:
    """Polls the simulation every `poll_s` seconds in a background thread; `body()` is the latest exposition."""

    def __init__(self, sim: FactorySimulation, poll_s: float = 1.0):
        self.sim = sim
        self.poll_s = poll_s
        self._families = SimFamilies(sim)
        self._texts: dict[str, list[str]] = {}
        self._body = b""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.poll()
        self._thread = threading.Thread(target=self._loop, name=f"sim-{sim.factory.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poll(self) -> None:
        started = time.perf_counter()
        snap = self.sim.snapshot(time.time())
        families = self._families.families(snap, time.perf_counter() - started)
        body = "".join(render_family(m, self._label_texts(m, labels), values) for m, labels, values in families).encode()
        with self._lock:
            self._body = body

    def _label_texts(self, metric: Metric, labels: list[dict[str, str]]) -> list[str]:
        """Rendered label sets; cached per metric, except job info, whose series change every poll."""
        if metric.name == JOB_INFO:
            return [label_text(lb) for lb in labels]
        texts = self._texts.get(metric.name)
        if texts is None:
            texts = self._texts[metric.name] = [label_text(lb) for lb in labels]
        return texts

    def body(self) -> bytes:
        with self._lock:
            return self._body

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s - (time.time() % self.poll_s)):
            try:
                self.poll()
            except Exception:  # a bug in one poll must not stop the exporter; the last body stays served
                log.exception("simulation poll failed")

    def stop(self) -> None:
        self._stop.set()
