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
Family = tuple[Metric, str, np.ndarray]
"""A metric, the name of its label sets (see `SimFamilies.labels`), one value per series."""

_JOB_GPU_LABELS = ("factory", "system", "node", "gpu")


class SimFamilies:
    """Turns snapshots of one simulation into metric families of the DESIGN.md schema.

    Every family but job info has the same label sets at every snapshot, named by kind ("gpu", "throttle", "node",
    "cpu", "facility", "self"); `labels(kind)` builds them on request, so that a consumer keeps only what it derives
    from them (rendered text, store series ids): at 25,000 GPUs, 400,000 label dicts held for good would cost
    hundreds of MB.
    """

    def __init__(self, sim: FactorySimulation):
        self.sim = sim
        self.ones = np.ones(sim.gpu_count)

    def labels(self, kind: str) -> list[dict[str, str]]:
        """The label sets of one kind, one per series, in the order of the values `families()` gives."""
        sim, f = self.sim, self.sim.factory.id
        if kind == "gpu":
            return [{"factory": f, "system": sim.node_systems[n], "node": sim.node_names[n], "gpu": str(g), "uuid": u, "model": m}
                    for n, g, u, m in zip(sim.gpu_node, sim.gpu_index, sim.gpu_uuids, sim.gpu_model_names)]
        if kind == "throttle":
            gpu = self.labels("gpu")
            return [{**lb, "reason": r} for r in THROTTLE_REASONS for lb in gpu]
        if kind == "node":
            return [{"factory": f, "system": s, "node": n, "source": "bmc"} for n, s in zip(sim.node_names, sim.node_systems)]
        if kind == "cpu":
            return [{"factory": f, "system": s, "node": n, "socket": str(sock), "domain": d}
                    for d in ("package", "dram") for sock in (0, 1) for n, s in zip(sim.node_names, sim.node_systems)]
        if kind == "facility":
            return [{"factory": f, "feed": "main"}]
        if kind == "self":
            return [{"source": "sim"}]
        raise ValueError(f"no label sets of kind {kind!r}")

    def families(self, s: Snapshot, collect_seconds: float) -> list[Family]:
        """Every family at one snapshot; job info's label sets are those of `job_labels` for each of `s.jobs`."""
        n = self.sim.gpu_count
        throttled = np.concatenate([s.gpu_power_capped if r == "sw_power_cap" else np.zeros(n) for r in THROTTLE_REASONS])
        cpu = np.concatenate([arr[:, sock] for arr in (s.cpu_package_energy_joules, s.cpu_dram_energy_joules) for sock in (0, 1)])
        return [
            (BY_NAME["aif_gpu_power_watts"], "gpu", s.gpu_power_watts),
            (BY_NAME["aif_gpu_energy_joules_total"], "gpu", s.gpu_energy_joules),
            (BY_NAME["aif_gpu_power_limit_watts"], "gpu", self.sim.gpu_limit_watts),
            (BY_NAME["aif_gpu_utilization_ratio"], "gpu", s.gpu_utilization_ratio),
            (BY_NAME["aif_gpu_memory_used_bytes"], "gpu", s.gpu_memory_used_bytes),
            (BY_NAME["aif_gpu_temperature_celsius"], "gpu", s.gpu_temperature_celsius),
            (BY_NAME["aif_gpu_sm_clock_hertz"], "gpu", s.gpu_sm_clock_hertz),
            (BY_NAME["aif_gpu_throttled"], "throttle", throttled),
            (BY_NAME["aif_gpu_xid_errors_total"], "gpu", s.gpu_xid_errors),
            (BY_NAME["aif_gpu_up"], "gpu", self.ones),
            (BY_NAME[JOB_INFO], "job", np.ones(sum(len(j.gpus) for j in s.jobs))),
            (BY_NAME["aif_node_power_watts"], "node", s.node_power_watts),
            (BY_NAME["aif_cpu_energy_joules_total"], "cpu", cpu),
            (BY_NAME["aif_facility_power_watts"], "facility", np.array([s.facility_power_watts])),
            (BY_NAME["aif_exporter_collect_seconds"], "self", np.array([collect_seconds])),
            (BY_NAME["aif_exporter_errors_total"], "self", np.zeros(1)),
        ]

    def job_gpu_labels(self) -> list[dict[str, str]]:
        """Per GPU, the labels job info shares with the GPU's series (those of `_JOB_GPU_LABELS`)."""
        return [{k: lb[k] for k in _JOB_GPU_LABELS} for lb in self.labels("gpu")]

    @staticmethod
    def job_own_labels(job: Job) -> dict[str, str]:
        """The labels job info adds to a GPU's: which job, project and access mode."""
        return {"job": job.job_id, "project": job.project, "access_mode": job.access_mode}

    def job_labels(self, job: Job, gpu_labels: list[dict[str, str]]) -> list[dict[str, str]]:
        """The `aif_gpu_job_info` label sets of one job, one per GPU it holds; `gpu_labels` from `job_gpu_labels()`."""
        own = self.job_own_labels(job)
        return [{**gpu_labels[gi], **own} for gi in job.gpus]


class SimExporter:
    """Polls the simulation every `poll_s` seconds in a background thread; `body()` is the latest exposition.

    Label text is rendered once per GPU and node and shared by every family of that kind; the throttle and job-info
    lines are composed from it at each poll, so a 25,000-GPU factory holds its label text once, not 400,000 times.
    """

    def __init__(self, sim: FactorySimulation, poll_s: float = 1.0):
        self.sim = sim
        self.poll_s = poll_s
        self._families = SimFamilies(sim)
        self._texts = {kind: [label_text(lb) for lb in self._families.labels(kind)] for kind in ("gpu", "node", "cpu", "facility", "self")}
        self._job_gpu_texts = [label_text(lb) for lb in self._families.job_gpu_labels()]
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
        body = b"".join(render_family(m, self._label_texts(kind, snap), values).encode() for m, kind, values in families)
        with self._lock:
            self._body = body

    def _label_texts(self, kind: str, snap: Snapshot) -> list[str]:
        if kind == "throttle":
            return [f'{t},reason="{r}"' for r in THROTTLE_REASONS for t in self._texts["gpu"]]
        if kind == "job":
            return [f"{self._job_gpu_texts[g]},{own}" for j in snap.jobs for own in [label_text(SimFamilies.job_own_labels(j))] for g in j.gpus]
        return self._texts[kind]

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
