"""A factory in software: Slurm-like jobs on GPUs that draw realistic power, deterministic per seed.

Time is cut into ticks of `step_s` seconds from `epoch`. Each GPU's power is constant within a tick,
and its energy counter is the exact integral of that piecewise-constant power:
E(t) = sum of P_k * step_s over the whole ticks before t, plus P_now * (t - start of this tick).
So energy equals the integral of reported power by construction, at any sampling.

Everything that looks random comes from a counter-based hash of (seed, GPU, tick) or from one
generator consumed in a fixed order, so two simulations with the same factory, seed and epoch agree
exactly: the backfill and the live simulator of `make up` produce one continuous history.
"""

from __future__ import annotations

import itertools
import math
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from aifmon.telemetry.inventory import Factory, Project, nodes_of

# Job profiles: how a job loads its GPUs.
IDLE, TRAIN, INFERENCE, HPL, DEVELOP = 0, 1, 2, 3, 4
PROFILE_NAMES = ("idle", "train", "inference", "hpl", "develop")

# Which profiles each access mode runs, with weights (train, inference, hpl, develop).
_MODE_PROFILES: dict[str, tuple[float, float, float, float]] = {
    "Playground": (0.2, 0.3, 0.0, 0.5),
    "Fast Lane": (0.5, 0.4, 0.0, 0.1),
    "Large Scale": (0.85, 0.1, 0.05, 0.0),
    "AI for Science": (0.6, 0.3, 0.0, 0.1),
    "Benchmark": (0.2, 0.0, 0.8, 0.0),
    "Development": (0.2, 0.1, 0.0, 0.7),
    "Regular": (0.6, 0.3, 0.05, 0.05),
    "Extreme Scale": (0.85, 0.0, 0.15, 0.0),
}
_BIG_MODES = {"Large Scale", "Extreme Scale", "Benchmark"}
_OFFERED_LOAD = 0.95  # share of GPU-time the arrival process asks for; rejections bring use to ~70-85 %
_SCHEDULE_CHUNK_S = 3600.0
_MAX_JOB_S = 12 * 3600.0  # longest simulated job, s
_BLOCK_CELLS = 250_000  # ticks x GPUs evaluated at once when fast-forwarding: a dozen arrays of 2 MB, not 16 MB each
_MEMORY_SHARE = np.array([0.0, 0.85, 0.6, 0.9, 0.3])  # of the board's memory, per profile
_XID_PER_GPU_TICK = 2e-7


def _hash01(seed: int, salt: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) from a splitmix64-style hash of (seed, salt, a, b); broadcasts a against b."""
    key = np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64) ^ np.uint64(salt * 0xBF58476D1CE4E5B9 % 2**64)
    x = key + a.astype(np.uint64) * np.uint64(0x94D049BB133111EB) + b.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass(frozen=True)
class Job:
    job_id: str
    project: str
    access_mode: str
    profile: int
    start_tick: int
    end_tick: int
    gpus: tuple[int, ...]  # indices into the simulation's GPU arrays


@dataclass
class Snapshot:
    """Every simulated reading at one instant `t` (unix seconds). Arrays are per GPU or per node."""

    t: float
    gpu_power_watts: np.ndarray
    gpu_energy_joules: np.ndarray
    gpu_utilization_ratio: np.ndarray
    gpu_memory_used_bytes: np.ndarray
    gpu_temperature_celsius: np.ndarray
    gpu_sm_clock_hertz: np.ndarray
    gpu_power_capped: np.ndarray  # 1.0 while demand exceeds the limit (sw_power_cap throttling)
    gpu_xid_errors: np.ndarray
    node_power_watts: np.ndarray
    cpu_package_energy_joules: np.ndarray  # per node, per socket (2 sockets): shape (nodes, 2)
    cpu_dram_energy_joules: np.ndarray
    facility_power_watts: float
    jobs: list[Job]  # running at t


class FactorySimulation:
    """A whole factory's GPUs, nodes, jobs and facility meter, advanced in ticks of `step_s` seconds."""

    def __init__(self, factory: Factory, projects: list[Project], seed: int = 1, epoch: float = 0.0, step_s: float = 1.0):
        if not projects:
            raise ValueError(f"factory {factory.id!r} has no projects in the inventory; the simulator needs at least one")
        if step_s <= 0:
            raise ValueError("step_s must be positive")
        self.factory = factory
        self.projects = projects
        # Each factory draws its own sequence from the one seed an operator gives.
        self.seed = (seed * 1_000_003 + zlib.crc32(factory.id.encode())) % 2**32
        self.epoch = float(epoch)
        self.step_s = float(step_s)
        self._init_hardware()
        self._rng = np.random.default_rng([self.seed, 0x5EED])
        self._jobs: list[Job] = []
        # Steady state from the first tick: arrivals start one longest job before the epoch, so the jobs a real
        # factory would be running at the epoch are placed (with negative start ticks), not an empty machine.
        warm_up_start = self.epoch - _MAX_JOB_S
        self._gpu_free_tick = np.full(self.gpu_count, math.floor(-_MAX_JOB_S / self.step_s), dtype=np.int64)
        self._scheduled_until = warm_up_start
        self._job_seq = 0
        self._arrival_rate_per_s = self._arrival_rate()
        self._next_arrival = warm_up_start + self._rng.exponential(1 / self._arrival_rate_per_s)
        # Integrated state: whole ticks [0, self._tick) are summed into the counters.
        self._tick = 0
        self._gpu_energy_j = np.zeros(self.gpu_count)
        self._cpu_pkg_energy_j = np.zeros((self.node_count, 2))
        self._cpu_dram_energy_j = np.zeros((self.node_count, 2))
        self._xid = np.zeros(self.gpu_count)

    # -- hardware --------------------------------------------------------------------------------
    def _init_hardware(self) -> None:
        nodes = list(nodes_of(self.factory))
        self.node_names = [n.name for n in nodes]
        self.node_systems = [n.system for n in nodes]
        self.node_base_watts = np.array([n.base_watts for n in nodes])
        self.node_count = len(nodes)
        gpu_node, gpu_index, models = [], [], []
        for i, n in enumerate(nodes):
            for g in range(n.gpus):
                gpu_node.append(i)
                gpu_index.append(g)
                models.append(n.gpu_model)
        self.gpu_node = np.array(gpu_node, dtype=np.int64)
        self.gpu_index = np.array(gpu_index, dtype=np.int64)
        self.gpu_count = len(gpu_node)
        self.gpu_model_names = [m.name for m in models]
        self.gpu_uuids = [
            f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'aifmon-sim/{self.factory.id}/{self.node_names[n]}/{g}')}"
            for n, g in zip(gpu_node, gpu_index)
        ]
        self.gpu_limit_watts = np.array([m.tdp_watts for m in models])
        self.gpu_idle_watts = np.array([m.idle_watts for m in models])
        self.gpu_memory_bytes = np.array([m.memory_bytes for m in models], dtype=np.float64)
        self.gpu_max_clock_hertz = np.array([m.max_sm_clock_hertz for m in models])
        self._node_first_gpu = np.searchsorted(self.gpu_node, np.arange(self.node_count))
        self._node_gpus = np.bincount(self.gpu_node, minlength=self.node_count)

    # -- jobs ------------------------------------------------------------------------------------
    def _draw_job_shape(self, rng: np.random.Generator) -> tuple[Project, int, int, float]:
        """(project, whole nodes or 0, GPUs on one shared node or 0, duration in seconds)."""
        project = self.projects[int(rng.integers(len(self.projects)))]
        big = project.access_mode in _BIG_MODES
        max_gpn = int(self._node_gpus.max()) if self.gpu_count else 0
        duration = float(np.clip(rng.lognormal(math.log(7200 if big else 3600), 0.7), 600, _MAX_JOB_S))
        if max_gpn > 1 and not big and rng.random() < 0.35:
            return project, 0, int(rng.integers(1, max_gpn)), duration
        max_nodes = max(1, self.node_count // (2 if big else 4))
        nodes = int(min(max_nodes, 2 ** int(rng.integers(0, 1 + int(math.log2(max_nodes))))))
        return project, nodes, 0, duration

    def _arrival_rate(self) -> float:
        """Arrivals per second that offer `_OFFERED_LOAD` of the factory's GPU-time."""
        rng = np.random.default_rng([self.seed, 0xA11])
        mean_gpu_s = 0.0
        for _ in range(400):
            _, nodes, gpus, duration = self._draw_job_shape(rng)
            mean_gpu_s += (nodes * self._node_gpus.mean() + gpus) * duration / 400
        return _OFFERED_LOAD * self.gpu_count / max(mean_gpu_s, 1.0)

    def _schedule_until(self, t: float) -> None:
        """Generate arrivals (in time order, so the schedule depends only on seed and epoch) up to t."""
        while self._scheduled_until < t:
            horizon = self._scheduled_until + _SCHEDULE_CHUNK_S
            while self._next_arrival < horizon:
                self._admit(self._next_arrival)
                self._next_arrival += self._rng.exponential(1 / self._arrival_rate_per_s)
            self._scheduled_until = horizon

    def _admit(self, t_arrival: float) -> None:
        project, nodes, gpus, duration = self._draw_job_shape(self._rng)
        weights = np.array(_MODE_PROFILES[project.access_mode])
        profile = 1 + int(self._rng.choice(4, p=weights / weights.sum()))
        start = math.ceil((t_arrival - self.epoch) / self.step_s)
        end = start + max(1, int(duration / self.step_s))
        free = self._gpu_free_tick <= start
        chosen = self._place(free, nodes, gpus)
        if chosen is None:
            return  # no room: the job is rejected, as a full queue would defer it past our horizon
        self._job_seq += 1
        # Like Slurm, ids only grow; the epoch's hour leads them so that two runs never reuse an id.
        job_id = f"{int(self.epoch) // 3600 % 100_000}{self._job_seq:05d}"
        self._gpu_free_tick[chosen] = end
        self._jobs.append(Job(job_id, project.id, project.access_mode, profile, start, end, tuple(int(g) for g in chosen)))

    def _place(self, free: np.ndarray, nodes: int, gpus: int) -> np.ndarray | None:
        free_per_node = np.bincount(self.gpu_node, weights=free, minlength=self.node_count).astype(int)
        if nodes:
            candidates = np.flatnonzero((free_per_node == self._node_gpus) & (self._node_gpus > 0))
            if len(candidates) < nodes:
                return None
            picked = np.sort(self._rng.choice(candidates, size=nodes, replace=False))
            return np.concatenate([np.arange(self._node_first_gpu[n], self._node_first_gpu[n] + self._node_gpus[n]) for n in picked])
        # A small job packs onto the fullest node that still fits it: this is what makes shared nodes.
        fits = np.flatnonzero(free_per_node >= gpus)
        if not len(fits):
            return None
        node = fits[np.argmin(free_per_node[fits])]
        first = self._node_first_gpu[node]
        return first + np.flatnonzero(free[first:first + self._node_gpus[node]])[:gpus]

    def jobs_between(self, start_tick: int, end_tick: int) -> list[Job]:
        """Jobs that run during any tick in [start_tick, end_tick)."""
        self._schedule_until(self.epoch + end_tick * self.step_s)
        return [j for j in self._jobs if j.start_tick < end_tick and j.end_tick > start_tick]

    # -- power model -----------------------------------------------------------------------------
    def _assignment(self, a: int, b: int) -> tuple[np.ndarray, list[Job]]:
        """(ticks b-a x GPUs) index into the returned job list, -1 where a GPU is idle."""
        jobs = self.jobs_between(a, b)
        m = np.full((b - a, self.gpu_count), -1, dtype=np.int32)
        for k, j in enumerate(jobs):
            m[max(j.start_tick, a) - a:min(j.end_tick, b) - a, list(j.gpus)] = k
        return m, jobs

    def _gpu_state(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Per tick in [a, b) and GPU: utilisation, power demand and power; shape (b-a, GPUs)."""
        ticks = np.arange(a, b, dtype=np.int64)[:, None]
        gpus = np.arange(self.gpu_count, dtype=np.int64)[None, :]
        m, jobs = self._assignment(a, b)
        profile = np.zeros_like(m)
        since = np.zeros(m.shape, dtype=np.float64)
        if jobs:
            prof = np.array([j.profile for j in jobs], dtype=np.int32)
            starts = np.array([j.start_tick for j in jobs], dtype=np.int64)
            busy = m >= 0
            profile[busy] = prof[m[busy]]
            since[busy] = (ticks - starts[np.maximum(m, 0)])[busy] * self.step_s
        u = _hash01(self.seed, 1, gpus, ticks)
        t_s = self.epoch + ticks * self.step_s
        util = np.select(
            [profile == TRAIN, profile == INFERENCE, profile == HPL, profile == DEVELOP],
            [
                # training: near-full, with a 60 s checkpoint dip every 30 minutes
                np.where((since % 1800.0) < 60.0, 0.25, 0.93) + 0.05 * (u - 0.5),
                0.45 + 0.25 * np.sin(2 * np.pi * t_s / 600.0 + gpus) + 0.1 * (u - 0.5),
                np.ones_like(u),
                0.12 + 0.2 * u,
            ],
            default=0.0,
        ).clip(0.0, 1.0)
        idle, limit = self.gpu_idle_watts[None, :], self.gpu_limit_watts[None, :]
        # HPL asks for more than the board may draw; the limit holds it (sw_power_cap throttling).
        headroom = np.where(profile == HPL, 1.10 * limit, 0.95 * limit) - idle
        demand = idle * (0.97 + 0.06 * u) + headroom * util ** 1.2
        power = np.minimum(demand, limit)
        return {"util": util, "demand": demand, "power": power, "profile": profile}

    def _node_power(self, gpu_power: np.ndarray, util: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(node power W, CPU package W per socket, DRAM W per socket) from per-GPU power and use; rows are ticks."""
        gpu_sum = self._per_node(gpu_power)
        busy = self._per_node(util) / np.maximum(self._node_gpus, 1)
        base = self.node_base_watts[None, :]
        pkg = 0.30 * base / 2 + 70.0 * busy  # per socket
        dram = 0.05 * base / 2 + 10.0 * busy
        node = base + 2 * (70.0 + 10.0) * busy + gpu_sum
        return node, pkg, dram

    def _per_node(self, per_gpu: np.ndarray) -> np.ndarray:
        """Sum per-GPU columns into per-node columns (GPUs are stored node by node)."""
        out = np.zeros((per_gpu.shape[0], self.node_count))
        has = self._node_gpus > 0
        if has.any():
            out[:, has] = np.add.reduceat(per_gpu, self._node_first_gpu[has], axis=1)
        return out

    def _pue(self, t: float) -> float:
        """Facility PUE: the design value, a little higher in the afternoon heat."""
        hour = (t % 86400) / 3600.0
        return self.factory.design_pue + 0.03 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)

    # -- time ------------------------------------------------------------------------------------
    def tick_of(self, t: float) -> int:
        return math.floor((t - self.epoch) / self.step_s + 1e-9)

    def snapshot(self, t: float) -> Snapshot:
        """Every reading at time t (unix seconds; not before the tick of the previous snapshot)."""
        return next(self.snapshots([t]))

    def snapshots(self, times: Sequence[float]) -> Iterator[Snapshot]:
        """Snapshots at non-decreasing times, evaluating every tick once, in blocks (fast backfill)."""
        ticks = [self.tick_of(t) for t in times]
        if ticks and (ticks[0] < self._tick or any(b < a for a, b in itertools.pairwise(ticks))):
            raise ValueError(f"times must not decrease nor go before the simulation's state (tick {self._tick})")
        i = 0
        block = max(1, _BLOCK_CELLS // max(1, self.gpu_count))
        while i < len(times):
            a = self._tick
            b = min(a + block, ticks[-1] + 1)
            s = self._gpu_state(a, b)
            power, util = s["power"], s["util"]
            node, pkg, dram = self._node_power(power, util)
            xid = _hash01(self.seed, 2, np.arange(self.gpu_count)[None, :], np.arange(a, b)[:, None]) < _XID_PER_GPU_TICK
            # Counters at the start of each tick a..b (one row more than ticks).
            gpu_e = _running(self._gpu_energy_j, power * self.step_s)
            pkg_e = _running(self._cpu_pkg_energy_j, np.repeat(pkg[:, :, None], 2, axis=2) * self.step_s)
            dram_e = _running(self._cpu_dram_energy_j, np.repeat(dram[:, :, None], 2, axis=2) * self.step_s)
            xids = _running(self._xid, xid.astype(float))
            ready = []
            while i < len(times) and ticks[i] < b:
                r, t = ticks[i] - a, times[i]
                into = t - (self.epoch + ticks[i] * self.step_s)
                capped = (s["demand"][r] > self.gpu_limit_watts).astype(float)
                ready.append(Snapshot(
                    t=t,
                    gpu_power_watts=power[r],
                    gpu_energy_joules=gpu_e[r] + power[r] * into,
                    gpu_utilization_ratio=util[r],
                    gpu_memory_used_bytes=np.round(_MEMORY_SHARE[s["profile"][r]] * self.gpu_memory_bytes / 2**20) * 2**20,
                    gpu_temperature_celsius=np.round(29.0 + 52.0 * power[r] / self.gpu_limit_watts, 0),
                    gpu_sm_clock_hertz=np.where(util[r] > 0.05, self.gpu_max_clock_hertz * (1 - 0.12 * capped), 0.345e9),
                    gpu_power_capped=capped,
                    gpu_xid_errors=xids[r],
                    node_power_watts=node[r],
                    cpu_package_energy_joules=pkg_e[r] + pkg[r][:, None] * into,
                    cpu_dram_energy_joules=dram_e[r] + dram[r][:, None] * into,
                    facility_power_watts=float(node[r].sum() * self._pue(t)),
                    jobs=self.jobs_between(ticks[i], ticks[i] + 1),
                ))
                i += 1
            # Keep the state at the last snapshot's tick, so another snapshot within that tick still works.
            # It is updated before yielding: a caller may never resume this generator.
            done = min(b, ticks[-1]) - a
            self._gpu_energy_j, self._cpu_pkg_energy_j = gpu_e[done], pkg_e[done]
            self._cpu_dram_energy_j, self._xid = dram_e[done], xids[done]
            self._tick = a + done
            yield from ready


def _running(start: np.ndarray, per_tick: np.ndarray) -> np.ndarray:
    """Counter values at the start of each tick and after the last: start, start + x0, start + x0 + x1, ..."""
    out = np.empty((per_tick.shape[0] + 1,) + per_tick.shape[1:])
    out[0] = start
    np.cumsum(per_tick, axis=0, out=out[1:])
    out[1:] += start
    return out
