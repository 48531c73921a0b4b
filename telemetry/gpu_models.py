"""GPU model catalogue: the power envelope the simulator and the planner need, per model.

Figures are board power (W) from the vendors' data sheets; idle power is a typical NVML reading of an
idle, clocked-down board. They are inputs to simulation and planning, never to measured energy.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    """Power envelope of one GPU model. Powers in watts, memory in bytes."""

    name: str
    tdp_watts: float
    idle_watts: float
    memory_bytes: int
    max_sm_clock_hertz: float


GIB = 1024**3

GPU_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in [
        GpuModel("A100-SXM4-40GB", 400.0, 55.0, 40 * GIB, 1.410e9),
        GpuModel("A100-SXM4-64GB", 440.0, 58.0, 64 * GIB, 1.410e9),
        GpuModel("H100-SXM5-64GB", 700.0, 72.0, 64 * GIB, 1.980e9),
        GpuModel("H100-SXM5-80GB", 700.0, 72.0, 80 * GIB, 1.980e9),
        GpuModel("H200-SXM-141GB", 700.0, 75.0, 141 * GIB, 1.980e9),
        GpuModel("GH200-96GB", 680.0, 90.0, 96 * GIB, 1.980e9),
        GpuModel("B200-SXM-180GB", 1000.0, 140.0, 180 * GIB, 1.965e9),
        GpuModel("MI250X", 560.0, 90.0, 128 * GIB, 1.700e9),
    ]
}
