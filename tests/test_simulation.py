"""The simulated factory: energy is the integral of reported power, runs are reproducible, power is plausible."""

import numpy as np
import pytest

from aifmon.exporters.simulation import HPL, FactorySimulation

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
