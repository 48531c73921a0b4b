"""The simulated factory: energy is the integral of reported power, runs are reproducible, power is plausible."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aifmon.exporters.simulation import HPL, FactorySimulation
from aifmon.ingest.parser import parse_exposition
from aifmon.telemetry.exposition import parse_series
from tests.conftest import free_port, inventory_text, wait_for_http

EPOCH = 1_790_000_000.0


def _sim(inv, factory="alpha", seed=3, step_s=1.0):
    return FactorySimulation(inv.factory(factory), inv.projects_of(factory), seed=seed, epoch=EPOCH, step_s=step_s)


def test_energy_equals_integral_of_reported_power(small_inventory):
    """Sample power once per tick at irregular offsets; sum power x tick must equal the counter's increase."""
    sim = _sim(small_inventory, step_s=2.0)
    t0 = EPOCH + 3600.0
    first = sim.snapshot(t0)
    integral = np.zeros(sim.gpu_count)
    power_in_tick = first.gpu_power_watts
    rng = np.random.default_rng(0)
    t_prev = t0
    for k in range(1, 1800):  # one hour of 2 s ticks
        t = t0 + k * 2.0 + rng.uniform(0, 1.9)
        snap = sim.snapshot(t)
        # exact piecewise-constant integral between the two sample instants
        boundary = EPOCH + sim.tick_of(t) * 2.0
        integral += power_in_tick * (boundary - t_prev) + snap.gpu_power_watts * (t - boundary)
        power_in_tick, t_prev = snap.gpu_power_watts, t
    measured = snap.gpu_energy_joules - first.gpu_energy_joules
    assert measured.sum() > 1e6  # an hour of several GPUs is megajoules
    np.testing.assert_allclose(measured, integral, rtol=1e-9)


def test_energy_matches_power_sampled_every_second_within_0_1_percent(small_inventory):
    """What a scraper sees: left Riemann sum of 1 s power samples against the counter."""
    sim = _sim(small_inventory, step_s=1.0)
    start = sim.snapshot(EPOCH + 7200.0)
    riemann = np.zeros(sim.gpu_count)
    prev = start
    for k in range(1, 3601):
        snap = sim.snapshot(EPOCH + 7200.0 + k)
        riemann += prev.gpu_power_watts * 1.0
        prev = snap
    counter = (snap.gpu_energy_joules - start.gpu_energy_joules).sum()
    assert abs(counter - riemann.sum()) / counter < 0.001


def test_same_seed_same_history_and_another_seed_differs(small_inventory):
    a, b, c = _sim(small_inventory), _sim(small_inventory), _sim(small_inventory, seed=4)
    sa, sb, sc = (s.snapshot(EPOCH + 5000.5) for s in (a, b, c))
    np.testing.assert_array_equal(sa.gpu_energy_joules, sb.gpu_energy_joules)
    assert [j.job_id for j in sa.jobs] == [j.job_id for j in sb.jobs]
    assert not np.array_equal(sa.gpu_energy_joules, sc.gpu_energy_joules)


def test_one_block_and_many_small_steps_agree(small_inventory):
    """Fast-forwarding a day at once gives the same counters as stepping through it."""
    fast, slow = _sim(small_inventory, step_s=5.0), _sim(small_inventory, step_s=5.0)
    for t in np.arange(EPOCH, EPOCH + 86400, 600.0):
        slow.snapshot(float(t))
    end = EPOCH + 86400 + 1.25
    np.testing.assert_allclose(fast.snapshot(end).gpu_energy_joules, slow.snapshot(end).gpu_energy_joules, rtol=1e-12)


def test_power_stays_within_idle_and_the_limit_and_hpl_hits_the_limit(small_inventory):
    sim = _sim(small_inventory, factory="alpha", seed=11)
    limits = sim.gpu_limit_watts
    hpl_seen = False
    for snap in sim.snapshots([EPOCH + h * 900.0 for h in range(96)]):
        assert (snap.gpu_power_watts <= limits + 1e-9).all()
        assert (snap.gpu_power_watts >= 0.9 * sim.gpu_idle_watts).all()
        for job in snap.jobs:
            if job.profile == HPL:
                hpl_seen = True
                gpus = list(job.gpus)
                np.testing.assert_allclose(snap.gpu_power_watts[gpus], limits[gpus])
                assert (snap.gpu_power_capped[gpus] == 1.0).all()
    assert hpl_seen, "a day of a Large Scale project should include an HPL-like run"


def test_a_gpu_runs_one_job_at_a_time_and_jobs_span_nodes(small_inventory):
    sim = _sim(small_inventory)
    multi_node = False
    for snap in sim.snapshots([EPOCH + h * 600.0 for h in range(144)]):
        held = [g for j in snap.jobs for g in j.gpus]
        assert len(held) == len(set(held))
        multi_node |= any(len({sim.gpu_node[g] for g in j.gpus}) > 1 for j in snap.jobs)
    assert multi_node


def test_snapshot_refuses_to_go_back_in_time(small_inventory):
    sim = _sim(small_inventory)
    sim.snapshot(EPOCH + 100)
    sim.snapshot(EPOCH + 100.5)  # the same tick again is fine
    with pytest.raises(ValueError, match="must not decrease"):
        sim.snapshot(EPOCH + 50)


def test_factory_without_projects_is_refused(small_inventory):
    with pytest.raises(ValueError, match="no projects"):
        FactorySimulation(small_inventory.factory("beta"), [], epoch=EPOCH)



def test_a_new_simulation_starts_in_steady_state(small_inventory):
    """At its epoch a factory is already busy (jobs started before it), as a real one is when first scraped: the
    share of busy GPUs at the first tick is near that of the next day's (before, it started empty)."""
    sim = _sim(small_inventory, step_s=5.0)
    ticks_per_hour = 720

    def busy(tick: int) -> float:
        return sum(len(j.gpus) for j in sim.jobs_between(tick, tick + 1)) / sim.gpu_count

    later = [busy(h * ticks_per_hour) for h in range(2, 26, 2)]
    assert busy(0) >= 0.4 and any(j.start_tick < 0 for j in sim.jobs_between(0, 1)), "jobs that started before the epoch run at its first tick"
    assert abs(busy(0) - np.mean(later)) < 0.35, (busy(0), later)


def test_one_process_serves_every_factory_on_its_target_from_its_own_epoch(tmp_path):
    """`aifmon exporter sim` with several --factory: one process, one server per factory on its inventory target, each
    simulation from its own --epoch (as `aifmon up` starts a large factory's history later), busy from the first scrape."""
    targets = {"alpha": f"127.0.0.1:{free_port()}", "beta": f"127.0.0.1:{free_port()}"}
    inv = tmp_path / "inv.yaml"
    inv.write_text(inventory_text(targets))
    now = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "aifmon", "--quiet", "exporter", "sim", "--inventory", str(inv), "--step", "5",
                             "--factory", "alpha", "--epoch", str(now - 7200), "--factory", "beta", "--epoch", str(now - 60)])
    try:
        bodies = {f: wait_for_http(f"http://{t}/metrics", timeout_s=60).decode() for f, t in targets.items()}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    energy = {}
    for f, body in bodies.items():
        samples = parse_exposition(body.encode())
        series = [parse_series(s) for s in samples.series.to_pylist()]
        assert {labels.get("factory") for name, labels in series if name.startswith("aif_gpu")} == {f}, "each target serves its factory only"
        values = {name: [v for (n, _), v in zip(series, samples.values) if n == name] for name in ("aif_gpu_power_watts", "aif_gpu_energy_joules_total")}
        assert len(values["aif_gpu_power_watts"]) == 16
        assert sum(name == "aif_gpu_job_info" for name, _ in series) >= 4, "jobs run from the first scrape"
        energy[f] = sum(values["aif_gpu_energy_joules_total"])
    assert energy["alpha"] > 16 * 60 * 7200 and energy["beta"] < 16 * 400 * 120


@pytest.mark.parametrize("args,message", [
    (["--factory", "alpha", "--factory", "beta", "--listen", "127.0.0.1:1"], "--listen serves one factory"),
    (["--factory", "alpha", "--factory", "beta", "--epoch", "1", "--epoch", "2", "--epoch", "3"], "--epoch given 3 times for 2 factories"),
    (["--factory", "alpha", "--factory", "alpha"], "--factory names a factory twice"),
])
def test_exporter_sim_refuses_options_that_do_not_fit_its_factories(tmp_path, args, message):
    inv = tmp_path / "inv.yaml"
    inv.write_text(inventory_text({"alpha": f"127.0.0.1:{free_port()}", "beta": f"127.0.0.1:{free_port()}"}))
    out = subprocess.run([sys.executable, "-m", "aifmon", "exporter", "sim", "--inventory", str(inv), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
