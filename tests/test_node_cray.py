"""HPE Cray EX pm_counters on sysfs trees written in the controller's own formats: node, CPU, memory and
accelerator energy exact across a controller restart, stale and torn reads, and the node exporter's series."""

from __future__ import annotations

import pytest

from aifmon.exporters import cray_pm
from aifmon.exporters.amdsmi_source import AmdsmiSource
from aifmon.exporters.cray_pm import CrayPmSource
from aifmon.exporters.node import NodeExporter
from tests.fake_amdsmi import mi250x_node
from tests.node_fixtures import CrayPmCounters
from tests.test_node_exporter import checked_body, samples

EX235A = {"node": 2150, "cpu": 180, "memory": 60, "accel0": 460, "accel1": 440, "accel2": 450, "accel3": 430}  # LUMI-G, W
EX425 = {"node": 610, "cpu0": 250, "cpu1": 240, "memory": 70}  # a two-socket CPU blade


def totals_j(src: CrayPmSource) -> dict[str, float]:
    return {e.component: e.energy_j for e in src.energies()}


def test_energy_exact_across_a_controller_restart_a_stale_read_and_a_new_generation(tmp_path):
    pm = CrayPmCounters(tmp_path / "pm_counters", EX235A)
    clock = [0.0]
    src = CrayPmSource(pm.root, clock=lambda: clock[0])
    src.poll()
    assert totals_j(src) == pm.truth_j  # the first reading: everything since boot
    pm.draw(1)
    clock[0] = 1.0
    src.poll()
    clock[0] = 1.5
    src.poll()  # freshness unchanged: no new data, nothing counted twice
    assert src.stale_reads == 1
    assert totals_j(src) == pm.truth_j
    pm.power_w = {c: w + 100 for c, w in EX235A.items()}
    pm.draw(3)
    pm.restart_controller()  # every counter from 0; what the node drew since is counted
    pm.draw(2)
    clock[0] = 6.0
    src.poll()
    pm.generation += 1  # a new power cap: the counters run on
    pm.cap_w = 2500
    pm.draw(5)
    clock[0] = 11.0
    src.poll()
    got = totals_j(src)
    lost = {c: (w + 100) * 3 for c, w in EX235A.items()}  # drawn before the restart and never read: unknowable
    assert got == {c: pm.truth_j[c] - lost[c] for c in EX235A}  # whole joules: exact, not approximately
    assert got["node"] == 1_000_000 + 2150 + 0 + (2250 * 2) + (2250 * 5) and src.errors == 0
    assert src.power_w == {c: float(w + 100) for c, w in EX235A.items()} and src.power_cap_w == 2500.0


def test_a_set_the_controller_rewrites_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    pm = CrayPmCounters(tmp_path / "pm_counters", EX425)
    src = CrayPmSource(pm.root)
    src.poll()
    reads = []
    real = cray_pm._first_int

    def controller_updates_mid_read(path):
        value = real(path)
        reads.append(path.name)
        if path.name == "memory_energy" and reads.count("memory_energy") == 1:
            pm.draw(1)  # the controller publishes the next set between two files of this read
        return value

    monkeypatch.setattr(cray_pm, "_first_int", controller_updates_mid_read)
    pm.draw(1)
    src.poll()
    assert reads.count("freshness") == 4  # before and after, twice: the torn set was dropped and read again
    assert totals_j(src) == pm.truth_j and src.errors == 0


def test_missing_tree_is_no_source_and_an_unreadable_file_is_counted(tmp_path):
    assert not CrayPmSource(tmp_path / "absent").present
    pm = CrayPmCounters(tmp_path / "pm_counters", EX425)
    src = CrayPmSource(pm.root)
    (pm.root / "cpu1_energy").write_text("garbage\n")
    src.poll()
    assert src.errors == 1 and src.energies() == []


def test_lumi_g_node_series_node_power_from_pm_counters_and_promtool_silent(tmp_path):
    pm = CrayPmCounters(tmp_path / "pm_counters", EX235A, cap_w=2800)
    lib = mi250x_node(4)
    clock = [0.0]
    exporter = NodeExporter("nid005123", amdsmi=AmdsmiSource(lib, clock=lambda: clock[0]),
                            cray=CrayPmSource(pm.root, clock=lambda: clock[0]))
    exporter.poll_host()
    exporter.poll_gpu()
    pm.draw(1)
    lib.advance(1)
    clock[0] = 1.0
    body = checked_body(exporter)
    by: dict[str, list] = {}
    for s in samples(body):
        by.setdefault(s.name, []).append(s)
    assert [(s.labels["source"], s.value) for s in by["aif_node_power_watts"]] == [("cray_pm", 2150.0)]
    energy = {s.labels["component"]: s.value for s in by["aif_node_energy_joules_total"]}
    assert energy == {c: float(j) for c, j in pm.truth_j.items()}
    assert {s.labels["component"]: s.value for s in by["aif_node_component_power_watts"]} == \
        {c: float(w) for c, w in EX235A.items() if c != "node"}
    assert [s.value for s in by["aif_node_power_limit_watts"]] == [2800.0]
    assert {s.labels["source"]: s.value for s in by["aif_exporter_errors_total"]} == {"amdsmi": 0.0, "cray_pm": 0.0}
    # the pm_counters accelerator figure and amdsmi's primary-die figure meter the same four packages
    assert sorted(s.labels["gpu"] for s in by["aif_gpu_power_watts"]) == ["0", "2", "4", "6"]
    assert len(by["aif_gpu_package_info"]) == 8


@pytest.mark.parametrize("cap, shown", [(0, False), (2400, True)])
def test_power_cap_zero_means_uncapped(tmp_path, cap, shown):
    pm = CrayPmCounters(tmp_path / "pm_counters", EX425, cap_w=cap)
    src = CrayPmSource(pm.root)
    src.poll()
    assert (src.power_cap_w is not None) == shown
