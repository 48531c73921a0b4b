"""The metric schema: every series aifmon exports, in base units and Prometheus naming.

This table is a public interface; docs/metrics.md shows it as `metric_table_markdown()` renders it
(`python -m aifmon.telemetry.schema` prints it; tests/test_docs.py checks the page against it).
`factory` and `system` labels come from the scrape target's configuration (the simulator, which
stands in for a whole factory, sets them itself).
"""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    name: str
    type: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...]


GPU_LABELS = ("node", "gpu", "uuid", "model")

METRICS: tuple[Metric, ...] = (
    Metric("aif_gpu_power_watts", "gauge", "GPU board power draw, W (NVML power usage).", GPU_LABELS),
    Metric(
        "aif_gpu_energy_joules_total",
        "counter",
        "GPU board energy, J: NVML's counter since driver load, kept monotonic across driver reloads and GPU resets.",
        GPU_LABELS,
    ),
    Metric(
        "aif_gpu_module_power_watts",
        "gauge",
        "Superchip module power, W (GH200: GPU, Grace CPU and memory; NVML module scope). It includes aif_gpu_power_watts: never add the two.",
        GPU_LABELS,
    ),
    Metric(
        "aif_gpu_package_info",
        "gauge",
        "Physical package a GPU die sits on (always 1), where several dies share one (AMD MI250X: two GCDs); "
        "the package's power and energy are reported on one of its dies only.",
        ("node", "gpu", "uuid", "package"),
    ),
    Metric("aif_gpu_power_limit_watts", "gauge", "Enforced GPU power limit, W.", GPU_LABELS),
    Metric("aif_gpu_utilization_ratio", "gauge", "GPU compute utilisation over the last sample period, 0-1.", GPU_LABELS),
    Metric("aif_gpu_memory_used_bytes", "gauge", "GPU framebuffer memory in use, bytes.", GPU_LABELS),
    Metric("aif_gpu_temperature_celsius", "gauge", "GPU die temperature, degrees Celsius.", GPU_LABELS),
    Metric("aif_gpu_sm_clock_hertz", "gauge", "GPU SM clock, Hz.", GPU_LABELS),
    Metric("aif_gpu_throttled", "gauge", "1 while the GPU clocks are held down for the given reason, else 0.", GPU_LABELS + ("reason",)),
    Metric("aif_gpu_xid_errors_total", "counter", "XID errors the driver reported for this GPU.", GPU_LABELS),
    Metric("aif_gpu_up", "gauge", "1 while NVML answers for this GPU, else 0.", GPU_LABELS),
    Metric(
        "aif_gpu_job_info",
        "gauge",
        "Slurm job using a GPU (always 1); join on node and gpu at query time.",
        ("node", "gpu", "job", "project", "access_mode"),
    ),
    Metric("aif_node_power_watts", "gauge", "Node input power, W, from the BMC, the platform power meter (hwmon) or estimated.", ("node", "source")),
    Metric(
        "aif_node_energy_joules_total",
        "counter",
        "Energy from the node's own meters (HPE Cray EX pm_counters), J, kept monotonic across counter restarts; "
        "component node is the whole node, cpuN, memory and accelN are parts of it (never add them to it).",
        ("node", "component"),
    ),
    Metric("aif_node_component_power_watts", "gauge", "Power of a part of the node (HPE Cray EX pm_counters: cpuN, memory, accelN), W.",
           ("node", "component")),
    Metric("aif_node_power_limit_watts", "gauge", "Node power cap, W (HPE Cray EX pm_counters power_cap; absent while uncapped).", ("node",)),
    Metric(
        "aif_cpu_energy_joules_total",
        "counter",
        "CPU package or DRAM energy from RAPL, J; corrected for counter wraps.",
        ("node", "socket", "domain"),
    ),
    Metric("aif_facility_power_watts", "gauge", "Facility power at a meter feed, W (IT plus cooling and losses).", ("feed",)),
    Metric("aif_exporter_collect_seconds", "gauge", "Time the exporter's last poll took, s.", ("source",)),
    Metric("aif_exporter_errors_total", "counter", "Errors the exporter met while polling, by source.", ("source",)),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

DCGM_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
"""dcgm-exporter's GPU energy counter (mJ since driver load), which the ledger reads as it is (`rollups/dcgm.py`)."""
FOREIGN_COUNTERS = frozenset({DCGM_ENERGY})
"""Counters that other exporters name without Prometheus' `_total`."""


def is_counter(metric: str) -> bool:
    """Whether `metric` is a cumulative counter (its per-minute aggregate is its last value, not its mean)."""
    return metric.endswith("_total") or metric in FOREIGN_COUNTERS

THROTTLE_REASONS = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")


def metric_table_markdown() -> str:
    """The Markdown table of every metric: name, type, labels and help (which states the unit)."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    rows += [f"| `{m.name}` | {m.type} | {', '.join(f'`{label}`' for label in m.labels)} | {m.help} |" for m in METRICS]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(metric_table_markdown(), end="")
