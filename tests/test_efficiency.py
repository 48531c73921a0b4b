"""Green500-style efficiency: HPL output parsing, core-phase averaging, EEHPC levels, the league table."""

import numpy as np
import pytest

from aifmon.rollups.efficiency import HplError, league_table, measure_hpl, parse_hpl_output
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key

T0 = 1_741_000_000_000  # ms
HPL_OUT = """================================================================================
HPLinpack 2.3  --  High-Performance Linpack benchmark  --   December 2, 2018
================================================================================
T/V                N    NB     P     Q               Time                 Gflops
--------------------------------------------------------------------------------
WR11C2R4     2400000  1024    40    40             150.00             1.2000e+07
HPL_pdgesv() start time Mon Mar  3 11:08:20 2025

HPL_pdgesv() end time   Mon Mar  3 11:10:50 2025

--------------------------------------------------------------------------------
||Ax-b||_oo/(eps*(||A||_oo*||x||_oo+||b||_oo)*N)=   2.70e-03 ...... PASSED
WR11C2R4     2400000  1024    40    40             140.00             1.3000e+07
--------------------------------------------------------------------------------
||Ax-b||_oo/(eps*(||A||_oo*||x||_oo+||b||_oo)*N)=   9.10e+02 ...... FAILED
"""


def test_hpl_output_gives_rmax_and_the_core_phase():
    run = parse_hpl_output(HPL_OUT)
    assert run.rmax_gflops == 1.2e7  # the faster run failed its residual check
    assert run.core_start_ms == 1_741_000_100_000 and run.core_end_ms - run.core_start_ms == 150_000
    with pytest.raises(HplError, match="no HPL result line"):
        parse_hpl_output("nothing here")


def _trace(tmp_path, nodes: int, readings_every_s: float, core_kw: float, other_kw: float):
    """Per-node power over a 300 s run: 60 s ramp at `other_kw`, 200 s core at `core_kw`, 40 s tail at `other_kw` (total over nodes)."""
    store = DuckDBStore(tmp_path / "hpl.duckdb")
    t = np.arange(T0 - 120_000, T0 + 420_000 + 1, int(readings_every_s * 1000))
    s = (t - T0) / 1000
    core = (s >= 60) & (s <= 260)
    watts = np.where(core, core_kw, np.where((s >= 0) & (s <= 300), other_kw, 0.2 * core_kw)) * 1000 / nodes
    for n in range(nodes):
        sid = store.series_ids([series_key("aif_node_power_watts", {"factory": "f", "system": "booster", "node": f"n{n:03d}",
                                                                    "source": "bmc"})])
        store.append(np.full(len(t), sid[0]), t, watts)
    return store


def test_gflops_per_watt_uses_the_core_phase_average_not_the_whole_run(tmp_path):
    store = _trace(tmp_path, nodes=16, readings_every_s=1.0, core_kw=48.0, other_kw=20.0)
    e = measure_hpl(store, 2.4e6, T0 + 60_000, T0 + 260_000, total_nodes=160, run=(T0, T0 + 300_000), idle=(T0 - 120_000, T0))
    whole_run_kw = e.measurement.full_run_average_w / 1000
    assert e.measurement.core.average_w / 1000 == pytest.approx(48.0)
    # trapezoids over 1 s readings: 59 s at 20 kW, 1 s ramp (34), 200 s at 48, 1 s ramp (34), 39 s at 20
    assert whole_run_kw == pytest.approx((59 * 20 + 34 + 200 * 48 + 34 + 39 * 20) / 300, rel=1e-12)  # 38.76 kW: not what counts
    # 16 of 160 nodes measured: the system draws 10 x 48 kW
    assert e.system_power_kw == pytest.approx(480.0)
    assert e.gflops_per_watt == pytest.approx(2.4e6 / 480_000.0)
    store.close()


def test_a_measurement_that_qualifies_for_level_1_but_not_level_2(tmp_path):
    store = _trace(tmp_path, nodes=16, readings_every_s=30.0, core_kw=48.0, other_kw=20.0)
    e = measure_hpl(store, 2.4e6, T0 + 60_000, T0 + 260_000, total_nodes=160, meter_accuracy_pct=2.0, subsystems="all-estimated",
                    run=(T0, T0 + 300_000), idle=(T0 - 120_000, T0))
    assert e.level == 1
    why = " | ".join(e.why_not_next)
    assert "measured 16 of 160 nodes" in why and "at least 20 nodes (1/8, 15) and 10 kW" in why
    assert "7 readings in the core phase; Level 2 needs at least 10" in why
    assert e.as_dict()["eehpc_level"] == 1
    store.close()


def test_gpu_board_power_alone_does_not_reach_level_1(tmp_path):
    store = _trace(tmp_path, nodes=16, readings_every_s=1.0, core_kw=48.0, other_kw=20.0)
    e = measure_hpl(store, 2.4e6, T0 + 60_000, T0 + 260_000, total_nodes=160, subsystems="gpu-boards")
    assert e.level == 0 and any("only GPU boards" in w for w in e.why_not_next)
    store.close()


def test_league_table_places_a_measured_system_among_the_top500_entries():
    league = league_table([{"system": "alpha-gpu", "rmax_gflops": 2.4e6, "system_power_kw": 40.0, "gflops_per_watt": 60.0,
                            "eehpc_level": 1}])
    systems = league["system"].tolist()
    assert systems[:3] == ["JEDI (JUPITER)", "JETI (JUPITER)", "alpha-gpu"]
    assert league.iloc[-1]["gflops_per_watt"] != league.iloc[-1]["gflops_per_watt"]  # no power figure: last, NaN
    assert league.iloc[0]["source"].startswith("TOP500 November 2024")


def test_efficiency_command_reads_an_hpl_file_and_an_openmetrics_trace(tmp_path, capsys):
    import json

    from aifmon.cli import main
    from aifmon.ingest.openmetrics import export_openmetrics

    store = _trace(tmp_path, nodes=16, readings_every_s=5.0, core_kw=48.0, other_kw=20.0)
    trace = tmp_path / "trace.om"
    with trace.open("w") as fh:
        export_openmetrics(store, fh, 0, 2**62)
    store.close()
    hpl = tmp_path / "HPL.out"
    hpl.write_text(HPL_OUT)
    assert main(["--quiet", "efficiency", "hpl", "--hpl-output", str(hpl), "--trace", str(trace), "--total-nodes", "160",
                 "--nodes", "n[000-015]", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["measured_power_kw"] == pytest.approx(48.0) and out["core_phase_s"] == 150.0
    assert out["gflops_per_watt"] == pytest.approx(1.2e7 / 480_000.0) and out["eehpc_level"] == 1
    assert main(["efficiency", "hpl", "--rmax-gflops", "1e6", "--trace", str(trace), "--total-nodes", "160"]) == 2  # no core phase
    assert "no core phase" in capsys.readouterr().err
