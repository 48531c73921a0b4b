"""A simulated day of the demo, evaluated as `aifmon up` does: how many notifications on-call gets, by rule.

The figures are the README's ("Alerts worth a page"); this test is where they come from. No node or GPU is paged
(the demo states no node limit), and only the demo's grid-constrained factory (it4lia) reaches a critical level.

The day is that of the 12 demo-scale factories. JAIF, at the seed's scale (25,000 GPUs), is left out of it: its day
alone takes about 5 minutes to backfill and 3 GB to evaluate, and its cap has a site's headroom, so with it in, the
figures were the same (7.5 minutes and 3.7 GB, measured once by hand).
"""

import dataclasses
from collections import Counter
from pathlib import Path

from aifmon.alerts.evaluator import AlertEvaluator
from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import load_inventory
from tests.test_alert_evaluator import Recorder

DAY_START_S = 1_796_083_200  # 2026-12-01T00:00:00Z
EVALUATION_S = 60  # the demo's evaluation is every 15 s; a minute keeps the test at about a minute and a half
README = Path(__file__).resolve().parent.parent / "README.md"
DEMO_SCALE_GPUS = 2_000


def test_a_demo_day_pages_a_handful_of_times(tmp_path):
    demo = load_inventory()
    inventory = dataclasses.replace(demo, factories=tuple(f for f in demo.factories if f.gpu_count <= DEMO_SCALE_GPUS))
    store = DuckDBStore(tmp_path / "day.duckdb")
    assert len(inventory.live_factories()) == len(demo.live_factories()) - 1, "every factory but JAIF is at demo scale"
    for f in inventory.live_factories():
        simulation = FactorySimulation(f, inventory.projects_of(f.id), seed=1, epoch=DAY_START_S - 3600, step_s=5.0)
        backfill(store, simulation, DAY_START_S - 3600, DAY_START_S + 86_400, 60.0)  # an hour before, so trends exist at 00:00
    recorder = Recorder()
    evaluator = AlertEvaluator(store, inventory, None, tmp_path / "alerts.json", notifiers=[recorder])
    for t_s in range(DAY_START_S, DAY_START_S + 86_400, EVALUATION_S):
        evaluator.evaluate(t_s * 1000)
    sent = [n for _, notices in recorder.sent for n in notices]
    firing = Counter(n.labels["alertname"] for n in sent if n.status == "firing")
    assert {n.labels["scope"] for n in sent} <= {"factory", "system"}, "no node or GPU page without a stated limit"
    assert {n.labels["factory"] for n in sent if n.labels["severity"] == "critical"} == {"it4lia"}
    line = "firing notifications in a simulated day of the demo: " + ", ".join(f"{name} {count}" for name, count in sorted(firing.items()))
    assert line in README.read_text(encoding="utf-8"), f"the README states: {line}"
    assert sum(firing.values()) <= 25, "a handful a day, not hundreds"
