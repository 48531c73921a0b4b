"""Exposition text: what the simulator renders, prometheus-client's parser reads; ours reads it back exactly."""

import math
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters.sim import SimExporter
from exporters.simulation import FactorySimulation
from telemetry.exposition import ExpositionError, label_text, parse_samples, parse_series, render_family
from telemetry.schema import BY_NAME


def test_simulator_output_parses_the_same_with_prometheus_client(small_inventory):
    f = small_inventory.factory("alpha")
    text = SimExporter(FactorySimulation(f, small_inventory.projects_of("alpha"), epoch=time.time() - 3600)).body().decode()
    theirs = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in text_string_to_metric_families(text) for s in fam.samples}
    ours = {}
    for series, value, ts in parse_samples(text):
        name, labels = parse_series(series)
        assert ts is None
        ours[(name, tuple(sorted(labels.items())))] = value
    assert ours == theirs
    assert len(ours) > 16 * 9  # 16 GPUs x at least 9 per-GPU metrics


def test_label_values_are_escaped_and_unescaped():
    tricky = {"node": 'n"1', "path": "a\\b", "note": "two\nlines"}
    text = render_family(BY_NAME["aif_node_power_watts"], [label_text(tricky)], [12.5])
    (series, value, _), = parse_samples(text)
    assert parse_series(series) == ("aif_node_power_watts", tricky)
    assert value == 12.5


def test_special_values_and_timestamps():
    samples = parse_samples('a_total 1.5e3 1790000000000\nb NaN\nc{x="1"} +Inf\n')
    assert samples[0] == ("a_total", 1500.0, 1790000000000)
    assert math.isnan(samples[1][1]) and samples[2][1] == math.inf


@pytest.mark.parametrize("bad", ["metric_without_value", 'm{a="1"} twelve', "m 1 2 3", "<html><body>oops</body></html>"])
def test_malformed_lines_name_the_line(bad):
    with pytest.raises(ExpositionError, match="line 2"):
        parse_samples("# HELP m fine\n" + bad + "\n")


def test_malformed_labels_are_refused():
    with pytest.raises(ExpositionError):
        parse_series('m{a=1}')
    with pytest.raises(ExpositionError):
        parse_series("9bad")
