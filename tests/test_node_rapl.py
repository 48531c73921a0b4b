"""RAPL on a powercap tree built like the kernel's: wrap correction exact, permission denied survived; hwmon."""

from __future__ import annotations

import logging
from pathlib import Path

from aifmon.exporters.hwmon import HwmonSource
from aifmon.exporters.rapl import RaplSource, discover_zones
from aifmon.exporters.sysfs_energy import EnergyCounter
from tests.node_fixtures import RAPL_MAX_RANGE_UJ, Powercap, build_hwmon


def test_discovers_package_and_dram_zones_only(tmp_path):
    Powercap(tmp_path, sockets=2)
    zones = discover_zones(tmp_path)
    assert [(z.socket, z.domain) for z in zones] == [(0, "package"), (0, "dram"), (1, "package"), (1, "dram")]
    assert all(z.max_range_uj == RAPL_MAX_RANGE_UJ for z in zones)
    assert discover_zones(tmp_path / "absent") == []  # no RAPL (a VM, an ARM node): nothing, no error


def test_counter_wraps_with_a_range_and_resets_without_one():
    rapl, amd = EnergyCounter(), EnergyCounter()
    for t, raw in ((0.0, 100), (1.0, 250), (2.0, 900), (3.0, 50)):
        rapl.add_reading(raw, t, max_range_uj=1000)
        amd.add_reading(raw, t)
    assert rapl.energy_uj == 100 + 150 + 650 + 151  # 900 → 1000, wrap to 0 (1 µJ), → 50
    assert amd.energy_uj == 100 + 150 + 650 + 50  # a drop without a range is a restart from zero
    assert rapl.power_w == 151 / 1e6


def test_energy_exact_across_counter_wraps(tmp_path):
    tree = Powercap(tmp_path, sockets=2)
    near_top = RAPL_MAX_RANGE_UJ - 5_000_000
    for key in tree.zones:
        tree.set(key, near_top)
    src = RaplSource(tmp_path)
    src.poll()
    per_poll = {(0, "package"): 400_000_000, (0, "dram"): 30_000_000, (1, "package"): 390_000_123, (1, "dram"): 29_999_999}
    for _ in range(1500):  # over 2 wraps of each package counter at ~400 W; node_exporter would see each as a reset
        for key, uj in per_poll.items():
            tree.draw(key, uj)
        src.poll()
    got = {(z.socket, z.domain): z.energy_uj for z in src.zones()}
    assert got == tree.truth_uj  # integer µJ, exact
    assert tree.truth_uj[(0, "package")] > 2 * RAPL_MAX_RANGE_UJ
    assert src.errors == 0


def test_permission_denied_gives_one_message_and_no_metric(tmp_path, monkeypatch, caplog):
    Powercap(tmp_path, sockets=1)
    real_read_text = Path.read_text

    def root_only(self: Path, *args, **kwargs) -> str:
        # the tests run as root, for whom mode 0400 is no obstacle: refuse as the kernel does a non-root reader
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", root_only)
    src = RaplSource(tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            src.poll()
    assert src.zones() == [] and src.power_w() is None
    errors = [r for r in caplog.records if "permission denied" in r.message]
    assert len(errors) == 1 and "root" in errors[0].message and "CVE-2020-8694" in errors[0].message
    assert src.errors == 1


def test_hwmon_power_meter_and_amd_socket_energy(tmp_path):
    clock = [0.0]
    paths = build_hwmon(tmp_path, meter_uw=812_500_000, amd_sockets=2)
    src = HwmonSource(tmp_path, clock=lambda: clock[0])
    assert [s.socket for s in src.sockets] == [0, 1]  # Ecore* counters are not sockets
    src.poll()
    assert src.node_power_w == 812.5
    paths["amd_energy/energy1_input"].write_text("150000000\n")  # 150 J in 1 s
    clock[0] = 1.0
    src.poll()
    assert src.sockets[0].energy_uj == 150_000_000 and src.sockets[0].power_w == 150.0
    paths["amd_energy/energy1_input"].write_text("5000000\n")  # the driver was reloaded: counts from 0 again
    clock[0] = 2.0
    src.poll()
    assert src.sockets[0].energy_uj == 155_000_000
