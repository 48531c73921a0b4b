"""`aifmon exporter node`: the agent on every GPU node. Background loops poll the sources; a scrape
returns the exposition rendered after the last poll and never touches the hardware.

Loops, each on its own thread so one slow source never delays another:
  - gpu:  NVML or amdsmi power and energy every `poll_s` (1 s), the slow fields every `slow_poll_s` (10 s);
          every library call time-boxed (exporters/gpu_poll.py);
  - host: RAPL, hwmon, HPE Cray pm_counters and the Slurm job files every `poll_s`;
  - bmc:  Redfish node power every `bmc_poll_s` (10 s); a BMC takes seconds per request.
Each loop re-renders the whole exposition when it has polled (about a hundred samples on an 8-GPU
node: a fraction of a millisecond), so the scrape path is one lock and a bytes copy.

Node power, one source per node: the BMC when one is configured (no series while it fails, and
its errors counted, rather than a silent switch to a guess); else HPE Cray EX pm_counters; else the
platform power meter in hwmon; else an estimate, `source="estimate"` = GPU board power + CPU package and
DRAM power (RAPL) + a configured baseline for everything unmeasured (fans, NICs, disks, PSU losses). On
a Grace Hopper node the estimate takes each superchip's module power (GPU, Grace CPU and memory) instead
of its board power, and no CPU power beside it, since the module figure already holds both. A BMC that
answers but reports no node power (stock OpenBMC, say) also falls back to the estimate.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from aifmon.exporters.amdsmi_source import AmdsmiSource
from aifmon.exporters.cray_pm import CrayPmSource
from aifmon.exporters.gpu_poll import Gpu, GpuPoller
from aifmon.exporters.hwmon import HwmonSource
from aifmon.exporters.nvml_source import NvmlSource
from aifmon.exporters.rapl import RaplSource
from aifmon.exporters.redfish import RedfishError, RedfishPower
from aifmon.exporters.slurm_jobs import JobMappings
from aifmon.telemetry.exposition import label_text, render_family
from aifmon.telemetry.schema import BY_NAME, THROTTLE_REASONS, Metric

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9401"
DEFAULT_BASELINE_W = 200.0


class NodeExporter:
    """Owns the sources and the loops; `body()` is the latest exposition (bytes)."""

    def __init__(self, node: str, nvml: NvmlSource | None = None, rapl: RaplSource | None = None,
                 hwmon: HwmonSource | None = None, bmc: RedfishPower | None = None, jobs: JobMappings | None = None,
                 poll_s: float = 1.0, bmc_poll_s: float = 10.0, baseline_w: float = DEFAULT_BASELINE_W,
                 amdsmi: AmdsmiSource | None = None, cray: CrayPmSource | None = None):
        if nvml is not None and amdsmi is not None:
            raise ValueError("one GPU library per node: NVML or amdsmi, not both (GPU indices would collide)")
        self.node = node
        self.gpu: GpuPoller | None = nvml if nvml is not None else amdsmi
        self.rapl, self.hwmon, self.bmc, self.jobs, self.cray = rapl, hwmon, bmc, jobs, cray
        self.poll_s = poll_s
        self.bmc_poll_s = bmc_poll_s
        self.baseline_w = baseline_w
        self.collect_seconds: dict[str, float] = {}
        self.bmc_errors = 0
        self.bmc_power_w: float | None = None
        self.bmc_has_power = True  # until discovery finds a BMC that reports no node power
        self._bmc_reason: str | None = None
        self._bmc_next_discovery = 0.0
        self._gpu_labels: dict[tuple[str, int, str], str] = {}
        self._body = b""
        self._render_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._node_label = label_text({"node": node})
        # the schema's HELP lines name NVML; a GPU library with other units or meanings says its own
        overrides = self.gpu.help_overrides if self.gpu is not None else {}
        self._metrics = {**BY_NAME, **{name: dataclasses.replace(BY_NAME[name], help=text) for name, text in overrides.items()}}

    # -- polling ------------------------------------------------------------------------------
    def poll_gpu(self) -> None:
        if self.gpu is not None:
            self._timed(self.gpu.name, self.gpu.poll)
        self.render()

    def poll_host(self) -> None:
        for name, source in (("rapl", self.rapl), ("hwmon", self.hwmon), ("cray_pm", self.cray), ("slurm", self.jobs)):
            if source is not None:
                self._timed(name, source.poll)
        self.render()

    def poll_bmc(self) -> None:
        if self.bmc is not None:
            self._timed("bmc", self._read_bmc)
        self.render()

    def _timed(self, name: str, fn: Callable[[], None]) -> None:
        started = time.perf_counter()
        try:
            fn()
        except Exception:  # a bug must not stop the loop; the last good readings stay served
            log.exception("%s poll failed", name)
        self.collect_seconds[name] = time.perf_counter() - started

    def _read_bmc(self) -> None:
        bmc = self.bmc
        assert bmc is not None
        try:
            if bmc.resource is None and time.monotonic() >= self._bmc_next_discovery:
                res = bmc.discover()
                if res is None:
                    self.bmc_has_power = False
                    self._bmc_next_discovery = time.monotonic() + 60 * self.bmc_poll_s
                    self._bmc_log("the BMC reports no node power (no PowerWatts, PowerConsumedWatts or power sensor); "
                                  "estimating node power instead")
                    return
                self.bmc_has_power = True
                log.info("BMC node power: chassis %s, %s (%s)", res.chassis, res.url, res.kind)
            if bmc.resource is None:
                return
            watts = bmc.read()
            if watts is None:
                bmc.resource = None  # the reading moved or vanished: find it again next time
                raise RedfishError("the BMC's power resource no longer carries a reading")
            self.bmc_power_w, self._bmc_reason = watts, None
        except RedfishError as e:
            self.bmc_errors += 1
            self.bmc_power_w = None
            self._bmc_log(str(e))

    def _bmc_log(self, reason: str) -> None:
        if reason != self._bmc_reason:  # once per distinct problem, not once per poll
            log.warning("BMC: %s", reason)
            self._bmc_reason = reason

    # -- rendering ----------------------------------------------------------------------------
    def body(self) -> bytes:
        return self._body

    def render(self) -> None:
        with self._render_lock:
            self._body = self._render().encode()

    def _gpu_label(self, g: Gpu) -> str:
        key = (g.uuid, g.index, g.model)
        text = self._gpu_labels.get(key)
        if text is None:
            text = self._gpu_labels[key] = label_text({"node": self.node, "gpu": str(g.index), "uuid": g.uuid, "model": g.model})
        return text

    def _render(self) -> str:
        out: list[str] = []

        def family(metric: Metric | str, samples: list[tuple[str, float]]) -> None:
            if samples:
                m = self._metrics[metric] if isinstance(metric, str) else metric
                out.append(render_family(m, [s[0] for s in samples], [s[1] for s in samples]))

        gpus = self.gpu.gpus() if self.gpu is not None else ()
        labelled = [(self._gpu_label(g), g) for g in gpus]
        up = [(lt, g) for lt, g in labelled if g.up]
        family("aif_gpu_power_watts", [(lt, g.power_w) for lt, g in up if g.power_w is not None])
        energy = self._metrics["aif_gpu_energy_joules_total"]
        integrated = [str(g.index) for g in gpus if g.integrated]
        if integrated and self.gpu is not None:  # say which GPUs have no energy counter, where a reader of the HELP looks
            energy = dataclasses.replace(energy, help=f"{energy.help} GPU {', '.join(integrated)}: no {self.gpu.title} energy "
                                                      "counter, board power integrated over polls instead.")
        family(energy, [(lt, g.energy_j) for lt, g in labelled if g.energy_j is not None])
        family("aif_gpu_module_power_watts", [(lt, g.module_power_w) for lt, g in up if g.module_power_w is not None])
        family("aif_gpu_package_info", [(label_text({"node": self.node, "gpu": str(g.index), "uuid": g.uuid, "package": g.package}), 1.0)
                                        for g in gpus if g.package is not None])
        family("aif_gpu_power_limit_watts", [(lt, g.limit_w) for lt, g in up if g.limit_w is not None])
        family("aif_gpu_utilization_ratio", [(lt, g.utilization_ratio) for lt, g in up if g.utilization_ratio is not None])
        family("aif_gpu_memory_used_bytes", [(lt, g.memory_used_bytes) for lt, g in up if g.memory_used_bytes is not None])
        family("aif_gpu_temperature_celsius", [(lt, g.temperature_c) for lt, g in up if g.temperature_c is not None])
        family("aif_gpu_sm_clock_hertz", [(lt, g.sm_clock_hz) for lt, g in up if g.sm_clock_hz is not None])
        family("aif_gpu_throttled", [(f'{lt},reason="{reason}"', 1.0 if reason in g.throttled else 0.0)
                                     for reason in THROTTLE_REASONS for lt, g in up if g.throttled is not None])
        xid = self.gpu.xid_errors() if self.gpu is not None else {}
        family("aif_gpu_xid_errors_total", [(lt, float(xid[g.uuid])) for lt, g in labelled if g.uuid in xid])
        family("aif_gpu_up", [(lt, 1.0 if g.up else 0.0) for lt, g in labelled])
        family("aif_gpu_job_info", self._job_samples())
        family("aif_node_power_watts", self._node_power(gpus))
        if self.cray is not None:
            family("aif_node_energy_joules_total", [(f'{self._node_label},component="{e.component}"', e.energy_j)
                                                    for e in self.cray.energies()])
            family("aif_node_component_power_watts", [(f'{self._node_label},component="{c}"', w)
                                                      for c, w in sorted(self.cray.power_w.items()) if c != "node"])
            family("aif_node_power_limit_watts", [(self._node_label, self.cray.power_cap_w)] if self.cray.power_cap_w is not None else [])
        family("aif_cpu_energy_joules_total", self._cpu_samples())
        sources = [name for name, s in ((self.gpu.name if self.gpu is not None else "", self.gpu), ("rapl", self.rapl),
                                        ("hwmon", self.hwmon), ("cray_pm", self.cray), ("bmc", self.bmc), ("slurm", self.jobs))
                   if s is not None]
        family("aif_exporter_collect_seconds", [(f'source="{s}"', self.collect_seconds[s]) for s in sources
                                                if s in self.collect_seconds])
        family("aif_exporter_errors_total", [(f'source="{s}"', float(self._errors(s))) for s in sources])
        return "".join(out)

    def _errors(self, source: str) -> int:
        if source == "bmc":
            return self.bmc_errors
        if self.gpu is not None and source == self.gpu.name:
            return self.gpu.errors
        return {"rapl": self.rapl, "hwmon": self.hwmon, "cray_pm": self.cray, "slurm": self.jobs}[source].errors  # type: ignore[union-attr]

    def _job_samples(self) -> list[tuple[str, float]]:
        if self.jobs is None or self.gpu is None:
            return []
        index = self.gpu.uuid_index()
        samples = []
        for j in self.jobs.jobs():
            gpu = index.get(j.uuid)
            if gpu is None:
                continue  # not a GPU the library shows on this node (yet)
            samples.append((label_text({"node": self.node, "gpu": str(gpu), "job": j.job, "project": j.project,
                                        "access_mode": self.jobs.access_mode(j.qos)}), 1.0))
        return sorted(set(samples))  # MIG: two instances of one job on one GPU are one series

    def _node_power(self, gpus: tuple[Gpu, ...]) -> list[tuple[str, float]]:
        if self.bmc is not None and self.bmc_has_power:
            return [(f'{self._node_label},source="bmc"', self.bmc_power_w)] if self.bmc_power_w is not None else []
        if self.cray is not None and self.cray.present:
            w = self.cray.power_w.get("node")
            return [(f'{self._node_label},source="cray_pm"', w)] if w is not None else []
        if self.hwmon is not None and self.hwmon.meter_path is not None:
            w = self.hwmon.node_power_w
            return [(f'{self._node_label},source="hwmon"', w)] if w is not None else []
        cpu = self.rapl.power_w() if self.rapl is not None else None
        if cpu is None and self.hwmon is not None:
            socket_power = [s.power_w for s in self.hwmon.sockets if s.power_w is not None]
            cpu = sum(socket_power) if socket_power else None
        measured = [g for g in gpus if g.up]
        if any(g.module_power_w is not None for g in measured):  # Grace Hopper: the module holds GPU, CPU and memory
            gpu_w = sum(g.module_power_w if g.module_power_w is not None else (g.power_w or 0.0) for g in measured)
            cpu = None
        else:
            gpu_w = sum(g.power_w for g in measured if g.power_w is not None)
        estimate = self.baseline_w + gpu_w + (cpu or 0.0)
        return [(f'{self._node_label},source="estimate"', estimate)]

    def _cpu_samples(self) -> list[tuple[str, float]]:
        samples: dict[tuple[int, str], float] = {}
        for z in self.rapl.zones() if self.rapl is not None else []:
            samples[(z.socket, z.domain)] = z.energy_uj / 1e6  # type: ignore[operator]
        for s in self.hwmon.sockets if self.hwmon is not None else []:
            if s.energy_uj is not None and (s.socket, "package") not in samples:
                samples[(s.socket, "package")] = s.energy_uj / 1e6
        return [(f'{self._node_label},socket="{sock}",domain="{dom}"', v) for (sock, dom), v in sorted(samples.items())]

    # -- loops --------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll everything once (so the first scrape has data), then start the loops."""
        self.poll_host()
        self.poll_gpu()
        loops = [("host", self.poll_host, self.poll_s, False)]
        if self.gpu is not None:
            loops.append(("gpu", self.poll_gpu, self.poll_s, False))
        if self.bmc is not None:
            loops.append(("bmc", self.poll_bmc, self.bmc_poll_s, True))  # its first poll, on its own thread
        for name, fn, period, now in loops:
            t = threading.Thread(target=self._loop, args=(fn, period, now), name=f"node-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _loop(self, fn: Callable[[], None], period_s: float, immediately: bool) -> None:
        if immediately:
            fn()
        next_at = time.monotonic()
        while True:
            next_at += period_s
            now = time.monotonic()
            if next_at < now:  # overran (a hung call's time box): skip the missed ticks
                next_at = now + period_s - (now - next_at) % period_s
            if self._stop.wait(next_at - now):
                return
            fn()

    def stop(self) -> None:
        self._stop.set()
        if self.gpu is not None:
            self.gpu.close()
