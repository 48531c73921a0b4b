"""Exposition text: what the simulator renders, prometheus-client's parser reads; ours reads it back exactly."""

import math
import time
import warnings

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifmon.exporters.sim import SimExporter
from aifmon.exporters.simulation import FactorySimulation
from aifmon.ingest.parser import parse_exposition
from aifmon.ingest.window import NOT_A_TIME
from aifmon.telemetry.exposition import ExpositionError, label_text, parse_series, render_family
from aifmon.telemetry.schema import BY_NAME
from tests.test_collector import PER_FACTORY, PER_GPU, PER_NODE


def test_simulator_output_parses_the_same_with_prometheus_client(small_inventory):
    f = small_inventory.factory("alpha")
    text = SimExporter(FactorySimulation(f, small_inventory.projects_of("alpha"), epoch=time.time() - 3600)).body().decode()
    theirs = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in text_string_to_metric_families(text) for s in fam.samples}
    ours = {}
    samples = parse_exposition(text.encode())
    assert (samples.t_ms == -1).all()
    for series, value in zip(samples.series.to_pylist(), samples.values):
        name, labels = parse_series(series)
        ours[(name, tuple(sorted(labels.items())))] = value
    assert ours == theirs
    fixed = [key for key in ours if key[0] != "aif_gpu_job_info"]  # job info: one series per GPU in a job at the moment
    assert len(fixed) == PER_GPU * f.gpu_count + PER_NODE * f.node_count + PER_FACTORY


def test_label_values_are_escaped_and_unescaped():
    tricky = {"node": 'n"1', "path": "a\\b", "note": "two\nlines"}
    text = render_family(BY_NAME["aif_node_power_watts"], [label_text(tricky)], [12.5])
    samples = parse_exposition(text.encode())
    assert parse_series(samples.series.to_pylist()[0]) == ("aif_node_power_watts", tricky)
    assert samples.values.tolist() == [12.5]


def test_special_values_and_timestamps():
    samples = parse_exposition(b'a_total 1.5e3 1790000000000\nb NaN\nc{x="1 } 2"} +Inf\nd -2')
    assert samples.series.to_pylist() == ["a_total", "b", 'c{x="1 } 2"}', "d"]
    assert samples.values[0] == 1500.0 and math.isnan(samples.values[1]) and samples.values[2] == math.inf
    assert samples.values[3] == -2.0
    assert samples.t_ms.tolist() == [1790000000000, -1, -1, -1]
    openmetrics = parse_exposition(b"a_total 1 1790000000.125\n# EOF\n", timestamp_unit="s")
    assert openmetrics.t_ms.tolist() == [1790000000125]
    with warnings.catch_warnings():  # seconds beyond float64 in ms are no time, quietly: one target's bad clock logs nothing per scrape
        warnings.simplefilter("error")
        assert parse_exposition(b"a 1 1e308\n", timestamp_unit="s").t_ms.tolist() == [NOT_A_TIME]
    assert len(parse_exposition(b"# only comments\n\n")) == 0


@pytest.mark.parametrize("bad", ["metric_without_value", 'm{a="1"} twelve', "m 1 2 3", 'm{a="1"}', "m 1 ", "<html><body>oops</body></html>"])
def test_malformed_lines_name_the_line(bad):
    with pytest.raises(ExpositionError, match="line 3"):
        parse_exposition(("# HELP m fine\nm 1\n" + bad + "\nm 2\n").encode())


def test_malformed_labels_are_refused():
    with pytest.raises(ExpositionError):
        parse_series('m{a=1}')
    with pytest.raises(ExpositionError):
        parse_series("9bad")


def test_a_large_body_parsed_in_pieces_equals_one_parse(monkeypatch):
    import aifmon.ingest.parser as exposition

    lines = [f'm{{n="{i}"}} {i}.5' for i in range(20_000)]
    body = ("\n".join(lines) + "\n").encode()
    whole = exposition.parse_exposition(body)  # small: one piece
    monkeypatch.setattr(exposition, "_PARALLEL_FROM_BYTES", 1000)
    monkeypatch.setattr(exposition, "_CORES", 4)
    assert len(exposition._pieces(body, len(body), 0)) == 4
    pieces = exposition.parse_exposition(body)
    assert pieces.series.to_pylist() == whole.series.to_pylist() and (pieces.values == whole.values).all()
    bad = body.replace(b'm{n="15000"} 15000.5', b'm{n="15000"} oops')
    with pytest.raises(ExpositionError, match="line 15001:"):
        exposition.parse_exposition(bad)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 4096, 10**9])
def test_a_body_that_arrives_in_chunks_parses_as_one(chunk_bytes):
    """A scrape's reads end anywhere in a line: the stream's runs of whole lines give the samples of one parse, in
    order, and a bad line is named by its line in the whole body; a last line without its newline counts too."""
    from aifmon.ingest.parser import parse_stream

    lines = [f'm{{n="{i}"}} {i}.5 {1_790_000_000_000 + i}' for i in range(3_000)] + ["# EOF", "last 2"]
    body = "\n".join(lines).encode()
    whole = parse_exposition(body)
    chunks = (body[k:k + chunk_bytes] for k in range(0, len(body), chunk_bytes))
    runs = list(parse_stream(chunks))
    assert len(runs) == 2 if chunk_bytes > len(body) else len(runs) > 2  # in one piece: the lines, then the last without its newline
    streamed = [text for r in runs for text in r.series.to_pylist()]
    assert streamed == whole.series.to_pylist() and len(whole) == 3_001
    assert np.array_equal(np.concatenate([r.values for r in runs]), whole.values)
    assert np.array_equal(np.concatenate([r.t_ms for r in runs]), whole.t_ms)
    bad = body.replace(b'm{n="2500"} 2500.5', b'm{n="2500"} oops')
    with pytest.raises(ExpositionError, match="line 2501:"):
        list(parse_stream(bad[k:k + chunk_bytes] for k in range(0, len(bad), chunk_bytes)))


def test_numbers_convert_exactly_like_python_float():
    """The compiled fast path (at most 2**53 for the digits, a power of ten of at most 22) and Arrow's parser
    for the rest must both give the correctly rounded double: compared bit for bit with float()."""
    import random
    import struct

    rng = random.Random(7)
    texts = ["0", "-0", "+1", ".5", "5.", "1e5", "1E-5", "-2.5e+3", "9007199254740992", "9007199254740993",
             "123456789012345678901234567890", "1e22", "1e23", "1e-22", "1e-23", "4.9e-324", "1.7976931348623157e308",
             "0.000000000000000000000000001", "NaN", "+Inf", "-Inf"]
    for _ in range(20_000):
        x = rng.choice([rng.uniform(-1e3, 1e3), rng.expovariate(1e-6), rng.random() * 10 ** rng.randint(-30, 30), float(rng.getrandbits(60))])
        texts.append(rng.choice([repr(x), f"{x:.17g}", f"{x:.6f}", f"{x:.3e}", str(int(x))]))
    samples = parse_exposition("".join(f"m{{i=\"{i}\"}} {t}\n" for i, t in enumerate(texts)).encode())
    bits = [struct.pack("<d", v) for v in samples.values]
    assert bits == [struct.pack("<d", float(t)) for t in texts]


def test_series_of_gives_the_texts_of_the_rows_asked():
    a = parse_exposition(b'm{n="1"} 1\nm{n="2"} 2\n# HELP x\nm{n="3"} 3 1790000000000\n')
    assert a.series_of([1, 2]).to_pylist() == ['m{n="2"}', 'm{n="3"}']
