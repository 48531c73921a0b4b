"""The `aifmon` command: parses arguments and wires the packages together. Nothing imports this module."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from aifmon.stores.store import StoreError, open_store
from aifmon.telemetry.config import DEFAULT_DASHBOARD_LISTEN, DEFAULT_SCRAPE_INTERVAL_S, DEFAULT_STORE_URL, parse_time
from aifmon.telemetry.inventory import InventoryError, load_inventory

log = logging.getLogger("aifmon")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run(args) or 0
    except (InventoryError, StoreError, ValueError, KeyError) as e:
        print(f"aifmon: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError) as e:  # a child that died, a port in use, a full disk
        print(f"aifmon: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aifmon", description="Energy and power monitoring for GPU supercomputers.")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def command(parent, name: str, run, help: str, store: bool = True) -> argparse.ArgumentParser:
        c = parent.add_parser(name, help=help, description=help)
        c.add_argument("--inventory", help="site inventory YAML (default: the demo inventory)")
        if store:
            c.add_argument("--store", default=DEFAULT_STORE_URL, help=f"store URL (default {DEFAULT_STORE_URL})")
        c.set_defaults(run=run)
        return c

    inv = sub.add_parser("inventory", help="site inventory").add_subparsers(required=True, metavar="ACTION")
    c = command(inv, "show", _inventory_show, "validate and show the site inventory", store=False)
    c.add_argument("--format", choices=["table", "json"], default="table")

    exp = sub.add_parser("exporter", help="exporters").add_subparsers(required=True, metavar="KIND")
    c = command(exp, "sim", _exporter_sim, "serve a simulated factory on /metrics", store=False)
    c.add_argument("--factory", required=True, help="factory id from the inventory")
    c.add_argument("--listen", help="host:port (default: the factory's first target in the inventory)")
    c.add_argument("--seed", type=int, default=1, help="simulation seed (same seed and epoch: same history)")
    c.add_argument("--epoch", type=float, help="simulation start, Unix seconds (default: now)")
    c.add_argument("--step", type=float, default=1.0, help="simulation tick, s (power is constant within a tick)")
    c.add_argument("--poll", type=float, default=1.0, help="re-render the exposition every POLL s")

    c = exp.add_parser("node", help="serve this node's GPUs, CPUs, BMC power and Slurm jobs on /metrics",
                       description="The node agent: NVML, RAPL, hwmon, Redfish BMC and Slurm job files, polled in the "
                                   "background; a scrape never touches the hardware. BMC credentials come from "
                                   "$AIFMON_BMC_USERNAME/$AIFMON_BMC_PASSWORD or a credentials file, never the command line.")
    c.set_defaults(run=_exporter_node)
    c.add_argument("--listen", default="127.0.0.1:9401", help="host:port (default 127.0.0.1:9401)")
    c.add_argument("--web-config", help="TLS and basic-auth file in exporter-toolkit web.yml format")
    c.add_argument("--node", help="node label (default: the short host name)")
    c.add_argument("--poll", type=float, default=1.0, help="GPU power/energy, RAPL and job files every POLL s")
    c.add_argument("--slow-poll", type=float, default=10.0, help="GPU limits, utilisation, memory, clocks every SLOW_POLL s")
    c.add_argument("--nvml-timeout", type=float, default=0.5, help="time box of one GPU's NVML calls, s")
    c.add_argument("--no-gpu", action="store_true", help="do not load NVML (CPU-only node)")
    c.add_argument("--nvml-module", default="pynvml", help="test/diagnostic hook: a module with pynvml's functions "
                                                         "(tests use tests.fake_nvml)")
    c.add_argument("--powercap-root", default="/sys/class/powercap", help="RAPL sysfs tree")
    c.add_argument("--hwmon-root", default="/sys/class/hwmon", help="hwmon sysfs tree")
    c.add_argument("--bmc-url", help="Redfish BMC, e.g. https://10.0.0.17 (no BMC: node power is estimated)")
    c.add_argument("--bmc-chassis", help="chassis id of this node, where one BMC serves several nodes")
    c.add_argument("--bmc-credentials-file", help="file whose first line is username:password (chmod 600)")
    c.add_argument("--bmc-ca-file", help="CA bundle to verify the BMC's certificate")
    c.add_argument("--bmc-insecure", action="store_true", help="do not verify the BMC's TLS certificate")
    c.add_argument("--bmc-timeout", type=float, default=5.0, help="timeout of one BMC request, s")
    c.add_argument("--bmc-poll", type=float, default=10.0, help="BMC node power every BMC_POLL s")
    c.add_argument("--estimate-baseline-watts", type=float, default=200.0,
                   help="unmeasured node power (fans, NICs, disks, PSU losses) added to the estimate, W")
    c.add_argument("--job-dir", default="/run/aifmon/jobs", help="directory the Slurm prolog writes job files to")
    c.add_argument("--qos-access-modes", help="YAML mapping of Slurm QoS to access mode")

    c = command(sub, "collect", _collect, "scrape the inventory's exporters into the store")
    c.add_argument("--interval", type=float, default=DEFAULT_SCRAPE_INTERVAL_S, help="scrape interval, s")
    c.add_argument("--once", action="store_true", help="scrape once and exit")

    st = sub.add_parser("store", help="move samples in and out of a store").add_subparsers(required=True, metavar="ACTION")
    c = command(st, "import", _store_import, "load an OpenMetrics file (samples with timestamps) into the store", store=True)
    c.add_argument("file", help="OpenMetrics text, e.g. from `aifmon store export`")
    c = command(st, "export", _store_export, "write the store's samples as OpenMetrics (promtool tsdb create-blocks-from openmetrics reads it)")
    c.add_argument("--start", default="1970-01-01", help="ISO 8601, Unix seconds, now or now-24h (default: everything)")
    c.add_argument("--end", default="now")
    c.add_argument("--out", help="file to write (default: standard output)")

    dep = sub.add_parser("deploy", help="configuration for site deployments").add_subparsers(required=True, metavar="WHAT")
    c = command(dep, "prometheus-config", _deploy_prometheus_config, "write prometheus.yml and file_sd targets from the inventory", store=False)
    c.add_argument("--out", default="deploy/prometheus", help="directory to write (default deploy/prometheus)")
    c.add_argument("--interval", type=float, default=15.0, help="scrape interval, s")
    c.add_argument("--alertmanager", action="append", help="host:port of an Alertmanager the rules fire to (repeatable)")
    c.add_argument("--remote-write", help="remote-write URL, e.g. http://victoria-metrics:8428/api/v1/write")
    c = command(dep, "alertmanager-config", _deploy_alertmanager_config,
                "write alertmanager.yml whose receivers are the alert rules file's notifiers", store=False)
    c.add_argument("--rules", help="alert rules YAML (default: the built-in thresholds, no notifiers)")
    c.add_argument("--out", default="deploy/alertmanager", help="directory to write (default deploy/alertmanager)")
    c.add_argument("--secrets-dir", default="/run/secrets",
                   help="where Alertmanager finds secrets given as environment variables in the rules file (default /run/secrets)")
    c = command(dep, "vmagent-config", _deploy_vmagent_config, "write vmagent.yml and file_sd targets from the inventory", store=False)
    c.add_argument("--out", default="deploy/vmagent", help="directory to write (default deploy/vmagent)")
    c.add_argument("--interval", type=float, default=15.0, help="scrape interval, s")
    c.add_argument("--remote-write", default="http://127.0.0.1:8428/api/v1/write", help="VictoriaMetrics write URL")
    c.add_argument("--members", type=int, default=1, help="vmagents sharing the targets (each scrapes about 1/MEMBERS)")

    roll = sub.add_parser("rollup", help="rollups").add_subparsers(required=True, metavar="WHAT")
    c = command(roll, "energy", _rollup_energy, "GPU energy, GPU-hours, cost and CO2e per group over a time range")
    c.add_argument("--start", required=True, help="ISO 8601, Unix seconds, now or -24h")
    c.add_argument("--end", default="now")
    c.add_argument("--by", default="project", choices=["job", "project", "access_mode", "sector", "system", "factory", "country", "total"])
    c.add_argument("--format", choices=["table", "json", "csv"], default="table")
    c.add_argument("--sacct", help="attribute GPU energy from Slurm accounting records (sacct --parsable2 output) instead of job info")
    c.add_argument("--sacct-timezone", default="UTC", help="time zone of the records' Start and End (default UTC)")
    c.add_argument("--sacct-factory", help="factory the records are from, where node names repeat across factories")
    c.add_argument("--from-samples", action="store_true",
                   help="compute every hour from samples, not settled hours from the hourly rollups (a cross-check)")
    c = command(roll, "hourly", _rollup_hourly, "compute every finished hour missing from the hourly rollup table")
    c.add_argument("--from", dest="reopen_from", help="also recompute every hour from this time on (history loaded late)")
    c = command(roll, "schedule", _rollup_schedule, "keep the hourly rollups up to date, checking every --every s, until stopped; "
                "with a PromQL --store, the rows go to --rows-store")
    c.add_argument("--every", type=float, default=60.0, help="check for finished hours every EVERY s (default 60)")
    c.add_argument("--rows-store", help="where the hourly rows go when --store keeps none (a PromQL server): "
                                        "influxdb+http://… (the sink) or duckdb:///rollups.duckdb")
    c.add_argument("--since", default="now-24h", help="with --rows-store: the first hour to roll up at start (default now-24h)")

    eff = sub.add_parser("efficiency", help="Green500-style energy efficiency").add_subparsers(required=True, metavar="WHAT")
    c = command(eff, "hpl", _efficiency_hpl, "GFlops/W of an HPL run over its core phase, with the EEHPC v2.0 level it qualifies for")
    rmax = c.add_mutually_exclusive_group(required=True)
    rmax.add_argument("--hpl-output", help="HPL output file: Rmax and the core phase (HPL_pdgesv start and end times)")
    rmax.add_argument("--rmax-gflops", type=float, help="Rmax, GFlop/s")
    c.add_argument("--hpl-timezone", default="UTC", help="time zone of the times in the HPL output (default UTC)")
    c.add_argument("--core-start", help="core phase start (default: from the HPL output)")
    c.add_argument("--core-end", help="core phase end (default: from the HPL output)")
    c.add_argument("--trace", help="OpenMetrics file with the power or energy trace (default: read --store)")
    c.add_argument("--metric", default="aif_node_power_watts", help="power (W) or energy counter (J, *_total) metric of the trace")
    c.add_argument("--match", action="append", default=[], metavar="LABEL=VALUE", help="keep series with this label (repeatable)")
    c.add_argument("--nodes", help="measured nodes, Slurm host list (e.g. node[001-016])")
    c.add_argument("--measured-nodes", type=int, help="nodes the trace measures (default: its number of series)")
    c.add_argument("--total-nodes", type=int, help="nodes of the whole machine (default: the --system's in the inventory)")
    c.add_argument("--system", help="system id from the inventory (node count; name in the league and --record)")
    c.add_argument("--subsystems", choices=["gpu-boards", "compute", "all-estimated", "all-measured"],
                   help="what the trace measures (default: gpu-boards for aif_gpu_* metrics, else compute)")
    c.add_argument("--meter-accuracy-pct", type=float, help="meter accuracy, %% (Level 2 needs 2, Level 3 1)")
    c.add_argument("--run-start", help="whole HPL run start, for the full-run average (Level 2)")
    c.add_argument("--run-end")
    c.add_argument("--idle-start", help="an idle window before or after the run, for idle power (Level 2)")
    c.add_argument("--idle-end")
    c.add_argument("--record", action="store_true", help="store the result for the monthly report's efficiency league")
    c.add_argument("--format", choices=["table", "json"], default="table")

    rep = sub.add_parser("report", help="reports").add_subparsers(required=True, metavar="WHAT")
    c = command(rep, "monthly", _report_monthly, "the governance board's monthly report: report.html, report.pdf, summary.csv, summary.json")
    c.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    c.add_argument("--out", required=True, help="directory to write the report into")
    c.add_argument("--no-pdf", action="store_true", help="skip report.pdf (needs Chromium)")

    al = sub.add_parser("alerts", help="power-cap and energy-budget alerts").add_subparsers(required=True, metavar="ACTION")
    c = command(al, "export-rules", _alerts_export_rules, "write the alert rules as a Prometheus rule file", store=False)
    c.add_argument("--rules", help="alert rules YAML (default: the built-in thresholds)")
    c.add_argument("--out", help="write the rule file here (default: standard output)")
    c = command(al, "evaluate", _alerts_evaluate, "evaluate the alert rules over the store and notify (every interval, or --once)")
    c.add_argument("--rules", help="alert rules YAML (default: the built-in thresholds); re-read when it changes")
    c.add_argument("--once", action="store_true", help="evaluate once, print the pending and firing alerts, and exit")
    c.add_argument("--format", choices=["table", "json"], default="table")

    c = command(sub, "dashboard", _dashboard, "serve the dashboard")
    c.add_argument("--listen", default=DEFAULT_DASHBOARD_LISTEN)
    c.add_argument("--refresh", type=float, default=5.0, help="live page refresh, s")
    _dashboard_options(c)

    c = command(sub, "up", _up, "the whole stack on the embedded store: simulators, collector, rollups, dashboard")
    c.add_argument("--listen", default=DEFAULT_DASHBOARD_LISTEN, help="dashboard address")
    c.add_argument("--backfill-hours", type=float, default=24.0, help="simulated history written before going live, h")
    c.add_argument("--interval", type=float, default=DEFAULT_SCRAPE_INTERVAL_S, help="scrape interval, s")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--alert-rules", help="alert rules YAML for the embedded evaluator (default: the built-in thresholds)")
    _dashboard_options(c)
    return p


def _inventory_show(args: argparse.Namespace) -> None:
    inventory = load_inventory(args.inventory)
    if args.format == "json":
        print(json.dumps({
            "name": inventory.name, "illustrative": inventory.illustrative, "note": inventory.note, "source": inventory.source,
            "factories": [f.model_dump() | {"gpus": f.gpu_count, "nodes": f.node_count} for f in inventory.factories],
            "projects": [p.model_dump() for p in inventory.projects],
        }, indent=2))
        return
    from aifmon.rollups.report_format import text_table

    rows = [[f.id, f.name, f.country, f.kind + (" (planning)" if f.planning_only else ""), f"{f.node_count:,}", f"{f.gpu_count:,}",
             f"{f.power_cap_mw:g}", f"{f.design_pue:.2f}", f"{f.energy_price_eur_per_kwh:.3f}", ", ".join(f.targets) or "-"]
            for f in inventory.factories]
    print(f"{inventory.name}  ({inventory.source})")
    if inventory.illustrative:
        print(f"ILLUSTRATIVE: {inventory.note}")
    print(text_table(["factory", "name", "country", "kind", "nodes", "GPUs", "cap MW", "PUE", "EUR/kWh", "targets"], rows))
    modes = Counter(p.access_mode for p in inventory.projects)
    print(f"\n{len(inventory.projects)} projects; by access mode: " + ", ".join(f"{m} {n}" for m, n in sorted(modes.items())))


def _exporter_sim(args: argparse.Namespace) -> None:
    from aifmon.exporters.http import serve_exposition
    from aifmon.exporters.sim import SimExporter
    from aifmon.exporters.simulation import FactorySimulation

    inventory = load_inventory(args.inventory)
    factory = inventory.factory(args.factory)
    listen = args.listen or (factory.targets[0] if factory.targets else None)
    if not listen:
        raise ValueError(f"factory {factory.id!r} has no target in the inventory; pass --listen host:port")
    sim = FactorySimulation(factory, inventory.projects_of(factory.id), seed=args.seed,
                            epoch=args.epoch if args.epoch is not None else time.time(), step_s=args.step)
    exporter = SimExporter(sim, poll_s=args.poll)
    server = serve_exposition(listen, exporter.body, f"aifmon simulated factory {factory.id}")
    exporter.start()
    log.info("simulating %s (%d GPUs on %d nodes) on http://%s/metrics", factory.id, sim.gpu_count, sim.node_count, listen)
    _wait_for_signal()
    exporter.stop()
    server.shutdown()


def _exporter_node(args: argparse.Namespace) -> None:
    import importlib
    import socket

    from aifmon.exporters.http import serve_exposition
    from aifmon.exporters.hwmon import HwmonSource
    from aifmon.exporters.node import NodeExporter
    from aifmon.exporters.nvml_source import NvmlSource
    from aifmon.exporters.rapl import RaplSource
    from aifmon.exporters.redfish import RedfishClient, RedfishPower, load_credentials
    from aifmon.exporters.slurm_jobs import JobMappings, load_qos_access_modes
    from aifmon.exporters.web_config import load_web_config
    from aifmon.telemetry.config import is_loopback, parse_listen

    web = load_web_config(args.web_config) if args.web_config else None
    host, _ = parse_listen(args.listen)
    if not is_loopback(host) and (web is None or web.ssl_context is None or not web.basic_auth_users):
        log.warning("serving on %s without TLS and basic auth: anyone on that network can read this node's metrics", host)
    bmc = None
    if args.bmc_url:
        if args.bmc_insecure:
            log.warning("--bmc-insecure: the BMC's certificate is not verified")
        client = RedfishClient(args.bmc_url, load_credentials(args.bmc_credentials_file), verify_tls=not args.bmc_insecure,
                               ca_file=args.bmc_ca_file, timeout_s=args.bmc_timeout)
        bmc = RedfishPower(client, chassis=args.bmc_chassis)
    nvml = None
    if not args.no_gpu:
        nvml = NvmlSource(lib=importlib.import_module(args.nvml_module), call_timeout_s=args.nvml_timeout,
                          slow_every_s=args.slow_poll)
    exporter = NodeExporter(
        args.node or socket.gethostname().split(".")[0], nvml=nvml, rapl=RaplSource(Path(args.powercap_root)),
        hwmon=HwmonSource(Path(args.hwmon_root)), bmc=bmc,
        jobs=JobMappings(Path(args.job_dir), load_qos_access_modes(args.qos_access_modes)),
        poll_s=args.poll, bmc_poll_s=args.bmc_poll, baseline_w=args.estimate_baseline_watts)
    exporter.start()
    server = serve_exposition(args.listen, exporter.body, f"aifmon node exporter {exporter.node}", web=web)
    scheme = "https" if web is not None and web.ssl_context is not None else "http"
    log.info("node %s on %s://%s/metrics", exporter.node, scheme, args.listen)
    _wait_for_signal()
    exporter.stop()
    server.shutdown()


def _collect(args: argparse.Namespace) -> None:
    from aifmon.ingest.collector import Collector, targets_of
    from aifmon.stores.duckdb_store import Compactor, DuckDBStore

    inventory = load_inventory(args.inventory)
    store = open_store(args.store)
    collector = Collector(store, targets_of(inventory), interval_s=args.interval)
    try:
        if args.once:
            print(f"{collector.collect_once()} samples stored in {store.url}")
            return
        log.info("collecting from %d targets every %g s into %s", len(collector.targets), args.interval, store.url)
        _run_workers([collector] + ([Compactor(store)] if isinstance(store, DuckDBStore) else []))
    finally:
        store.close()


def _store_import(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from aifmon.ingest.openmetrics import import_openmetrics
    from aifmon.rollups.hourly import reroll_stored_hours

    store = open_store(args.store)
    try:
        with tqdm(total=Path(args.file).stat().st_size, unit="B", unit_scale=True, desc="import", file=sys.stderr) as bar:
            imported = import_openmetrics(store, args.file, progress=bar.update)
        rerolled = 0
        if imported.samples:  # hours rolled up before this history arrived would otherwise be read stale
            rerolled = reroll_stored_hours(store, imported.first_ms, imported.last_ms, load_inventory(args.inventory))
    finally:
        store.close()
    print(f"{imported.samples} samples imported into {store.url}"
          + (f"; {rerolled} hourly rollup hour(s) they touch recomputed" if rerolled else ""))


def _store_export(args: argparse.Namespace) -> None:
    from aifmon.ingest.openmetrics import export_openmetrics

    start_ms, end_ms = parse_time(args.start), parse_time(args.end)
    store = open_store(args.store, read_only=True)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        n = export_openmetrics(store, out, start_ms, end_ms, progress=lambda m: log.info("exporting %s", m))
    finally:
        store.close()
        if args.out:
            out.close()
    log.info("%d samples exported", n)


def _deploy_prometheus_config(args: argparse.Namespace) -> None:
    from aifmon.deploy.prometheus_config import write_prometheus_config

    for path in write_prometheus_config(load_inventory(args.inventory), Path(args.out), args.interval,
                                        alertmanagers=args.alertmanager, remote_write_url=args.remote_write):
        print(f"wrote {path}")


def _deploy_alertmanager_config(args: argparse.Namespace) -> None:
    from aifmon.alerts.config import load_alert_config
    from aifmon.deploy.alertmanager_config import secret_files, write_alertmanager_config

    inventory = load_inventory(args.inventory)
    config = load_alert_config(args.rules, inventory)
    for path in write_alertmanager_config(inventory, config, Path(args.out), args.secrets_dir):
        print(f"wrote {path}")
    for path in secret_files(config, args.secrets_dir):
        print(f"reads the secret file {path} (create it where Alertmanager runs)")


def _deploy_vmagent_config(args: argparse.Namespace) -> None:
    from aifmon.deploy.vmagent_config import write_vmagent_config

    for path in write_vmagent_config(load_inventory(args.inventory), Path(args.out), args.interval, args.remote_write, args.members):
        print(f"wrote {path}")


def _rollup_energy(args: argparse.Namespace) -> None:
    from aifmon.rollups.energy import energy_rollup
    from aifmon.rollups.report_format import format_energy_rollup

    inventory = load_inventory(args.inventory)
    start_ms, end_ms = parse_time(args.start), parse_time(args.end)
    accounting = None
    if args.sacct:
        from aifmon.rollups.slurm_accounting import load_sacct

        accounting = load_sacct(args.sacct, args.sacct_timezone)
    store = open_store(args.store, read_only=True)
    try:
        result = energy_rollup(store, inventory, start_ms, end_ms, by=args.by, accounting=accounting,
                               accounting_factory=args.sacct_factory, from_hourly=not args.from_samples)
    finally:
        store.close()
    print(format_energy_rollup(result, args.format))


def _rollup_hourly(args: argparse.Namespace) -> None:
    from aifmon.rollups.hourly import HourlyRollups

    inventory = load_inventory(args.inventory)
    store = open_store(args.store)
    try:
        rollups = HourlyRollups(store, inventory)
        if args.reopen_from:
            rollups.reopen(parse_time(args.reopen_from), int(time.time() * 1000))
        print(f"{rollups.catch_up()} hour(s) computed")
    finally:
        store.close()


def _rollup_schedule(args: argparse.Namespace) -> None:
    from aifmon.rollups.hourly import HourlyRollups
    from aifmon.stores.split_store import SplitStore

    inventory = load_inventory(args.inventory)
    store = open_store(args.store)
    if args.rows_store:
        store = SplitStore(store, open_store(args.rows_store), parse_time(args.since) // 3_600_000 * 3_600_000)
    try:
        log.info("hourly rollups over %s, checked every %g s", store.url, args.every)
        _run_workers([HourlyRollups(store, inventory, check_every_s=args.every)])
    finally:
        store.close()


def _efficiency_hpl(args: argparse.Namespace) -> None:
    from aifmon.rollups.efficiency import format_efficiency, measure_hpl, read_hpl_file, record_efficiency, trace_store
    from aifmon.rollups.slurm_accounting import expand_nodelist

    inventory = load_inventory(args.inventory)
    run = read_hpl_file(args.hpl_output, args.hpl_timezone) if args.hpl_output else None
    start = parse_time(args.core_start) if args.core_start else run and run.core_start_ms
    end = parse_time(args.core_end) if args.core_end else run and run.core_end_ms
    if not start or not end:
        raise ValueError("no core phase: give --core-start and --core-end (the HPL output has no HPL_pdgesv() times)")
    system = next((s for f in inventory.factories for s in f.systems if s.id == args.system), None) if args.system else None
    if args.system and system is None:
        raise ValueError(f"no system {args.system!r} in {inventory.source}")
    total = args.total_nodes or (system.node_count if system else None)
    if not total:
        raise ValueError("give --total-nodes or --system (the whole machine's node count scales the measured power)")
    match = dict(m.split("=", 1) for m in args.match if "=" in m)
    windows = {w: (parse_time(getattr(args, f"{w}_start")), parse_time(getattr(args, f"{w}_end")))
               for w in ("run", "idle") if getattr(args, f"{w}_start") and getattr(args, f"{w}_end")}
    with trace_store(args.trace, args.store, read_only=not args.record) as store:
        result = measure_hpl(store, run.rmax_gflops if run else args.rmax_gflops, start, end, total, args.metric, match or None,
                             expand_nodelist(args.nodes) if args.nodes else None, args.measured_nodes, args.subsystems,
                             args.meter_accuracy_pct, windows.get("run"), windows.get("idle"))
        if args.record:
            factory = next((f.id for f in inventory.factories if system in f.systems), "")
            record_efficiency(store, result, factory, args.system or "measured system")
    print(format_efficiency(result, args.format))


def _report_monthly(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from aifmon.rollups.monthly_report import build_monthly_report, write_monthly_report

    inventory = load_inventory(args.inventory)
    store = open_store(args.store, read_only=True)
    with tqdm(desc=f"report {args.month}", unit="step", file=sys.stderr) as bar:
        def step(what: str) -> None:
            bar.set_postfix_str(what[:40])
            bar.update()

        try:
            report = build_monthly_report(store, inventory, args.month, progress=step)
        finally:
            store.close()
        paths = write_monthly_report(report, Path(args.out), pdf=not args.no_pdf, progress=step)
    for path in paths:
        print(f"wrote {path}")


def _alerts_export_rules(args: argparse.Namespace) -> None:
    from aifmon.alerts.config import load_alert_config
    from aifmon.alerts.prometheus import render_rules

    inventory = load_inventory(args.inventory)
    text = render_rules(inventory, load_alert_config(args.rules, inventory))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _alerts_evaluate(args: argparse.Namespace) -> None:
    from aifmon.alerts.evaluator import AlertEvaluator

    inventory = load_inventory(args.inventory)
    store = open_store(args.store, read_only=args.once)
    try:
        evaluator = AlertEvaluator(store, inventory, args.rules)
        if not args.once:
            log.info("evaluating %d alert rules every %g s", len(evaluator.rules), evaluator.config.evaluation_interval_s)
            _run_workers([evaluator])
            return
        active = sorted(evaluator.evaluate(), key=lambda a: (a.state, a.labels.get("alertname", ""), sorted(a.labels.items())))
        if args.format == "json":
            print(json.dumps([a.to_json() for a in active], indent=2))
            return
        from aifmon.rollups.report_format import text_table

        rows = [[a.state, a.labels["alertname"], a.labels.get("severity", ""),
                 " ".join(f"{k}={v}" for k, v in a.labels.items() if k not in ("alertname", "severity")),
                 a.annotations.get("value", ""), a.annotations.get("cap", ""), a.annotations.get("percentage", "")] for a in active]
        print(text_table(["state", "alert", "severity", "labels", "value", "cap", "share"], rows) if rows else "no pending or firing alerts")
    finally:
        store.close()


def _dashboard_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--users", help="dashboard users YAML (roles operator|board, bcrypt hashes; default: $AIFMON_DASHBOARD_USERS); "
                                   "sign-in is required beyond loopback")
    c.add_argument("--reports-dir", default="data/reports", help="monthly reports to list, one folder per month (default data/reports)")


def _dashboard_app(store, inventory, args: argparse.Namespace, **kwargs):
    """The dashboard of `aifmon dashboard` and `aifmon up`: users from --users or the environment, reports from --reports-dir."""
    from aifmon.dashboard.app import create_app
    from aifmon.dashboard.auth import load_users

    return create_app(store, inventory, users=load_users(args.users), reports_dir=Path(args.reports_dir), **kwargs)


def _dashboard(args: argparse.Namespace) -> None:
    from aifmon.dashboard.app import make_server

    inventory = load_inventory(args.inventory)
    store = open_store(args.store, read_only=True)
    server = make_server(_dashboard_app(store, inventory, args, refresh_s=args.refresh), args.listen)
    threading.Thread(target=server.run, name="dashboard", daemon=True).start()
    print(f"aifmon: dashboard on http://{args.listen}/", file=sys.stderr, flush=True)
    try:
        _wait_for_signal()
    finally:
        server.close()
        store.close()


def _up(args: argparse.Namespace) -> None:
    """Simulators (child processes), backfill, collector, hourly rollups and dashboard, until Ctrl-C."""
    from tqdm import tqdm

    from aifmon.alerts.evaluator import AlertEvaluator
    from aifmon.dashboard.app import make_server
    from aifmon.exporters.backfill import backfill
    from aifmon.exporters.simulation import FactorySimulation
    from aifmon.ingest.collector import Collector, targets_of
    from aifmon.rollups.hourly import HourlyRollups
    from aifmon.stores.duckdb_store import Compactor

    inventory = load_inventory(args.inventory)
    if not args.store.startswith("duckdb:"):
        raise ValueError("`aifmon up` runs the embedded stack; --store must be a duckdb:/// URL")
    store = open_store(args.store)
    step_s = 5.0  # simulation tick for the demo: as fine as the scrape interval, cheap enough for 2 cores
    epoch = _demo_epoch(store, args.seed, args.backfill_hours)
    sims: list[subprocess.Popen] = []
    server = None
    try:
        for f in inventory.live_factories():
            for target in f.targets[:1]:
                cmd = [sys.executable, "-m", "aifmon", "--quiet", "exporter", "sim", "--factory", f.id, "--listen", target,
                       "--epoch", str(epoch), "--seed", str(args.seed), "--step", str(step_s)]
                if args.inventory:
                    cmd += ["--inventory", args.inventory]
                sims.append(subprocess.Popen(cmd))
        server = make_server(_dashboard_app(store, inventory, args), args.listen)
        threading.Thread(target=server.run, name="dashboard", daemon=True).start()
        print(f"aifmon: dashboard on http://{args.listen}/  (Ctrl-C stops everything)", file=sys.stderr, flush=True)

        bounds = store.time_bounds()
        now = time.time() // 60 * 60
        start = max(epoch, (bounds[1] // 1000 // 60 + 1) * 60) if bounds else epoch
        steps = max(0, int((now - start) // 60))
        if steps:
            with tqdm(total=steps * len(inventory.live_factories()), desc="backfill", unit="snapshot", file=sys.stderr) as bar:
                for f in inventory.live_factories():
                    sim = FactorySimulation(f, inventory.projects_of(f.id), seed=args.seed, epoch=epoch, step_s=step_s)
                    backfill(store, sim, start, now, 60.0, progress=bar.update)
        log.info("live: scraping %d simulators every %g s", len(sims), args.interval)
        _run_workers([Collector(store, targets_of(inventory), interval_s=args.interval), HourlyRollups(store, inventory),
                      Compactor(store), AlertEvaluator(store, inventory, args.alert_rules)], sims)
    finally:
        print("aifmon: stopping...", file=sys.stderr, flush=True)
        if server is not None:
            server.close()
        for proc in sims:
            proc.terminate()
        for proc in sims:
            proc.wait(timeout=10)
        store.close()
        print("aifmon: stopped; store closed cleanly", file=sys.stderr, flush=True)


def _demo_epoch(store, seed: int, backfill_hours: float) -> float:
    """The simulation epoch of the demo store: kept across runs, so counters and job ids continue."""
    state = Path(str(getattr(store, "path", "data/aifmon.duckdb")) + ".demo.json")
    if state.exists():
        saved = json.loads(state.read_text())
        if saved.get("seed") == seed and time.time() - saved["epoch"] < 7 * 86400:
            return float(saved["epoch"])
        if store.time_bounds() is not None:
            raise ValueError(f"the demo store {store.path} was simulated with another seed or over a week ago; "
                             "move it aside (or delete it) to start a fresh demo")
    epoch = time.time() // 3600 * 3600 - backfill_hours * 3600
    state.write_text(json.dumps({"epoch": epoch, "seed": seed}))
    return epoch


def _run_workers(workers: list, children: list[subprocess.Popen] | None = None) -> None:
    """Run each worker's `run()` in a thread until SIGINT or SIGTERM (or a child dies), then stop and join
    them in order: the collector finishes, and commits, the cycle it is in."""
    threads = [threading.Thread(target=w.run, name=type(w).__name__) for w in workers]
    for thread in threads:
        thread.start()
    try:
        _wait_for_signal(children)
    finally:
        for worker, thread in zip(workers, threads):
            worker.stop()
            thread.join()


def _wait_for_signal(children: list[subprocess.Popen] | None = None) -> None:
    """Block until SIGINT or SIGTERM (or a child process dies, which is reported)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        for proc in children or []:
            if proc.poll() is not None:
                raise RuntimeError(f"child process {' '.join(proc.args[3:7])} exited with status {proc.returncode}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
