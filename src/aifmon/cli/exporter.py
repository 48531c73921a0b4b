"""`aifmon exporter sim|node`: serve a simulated factory, or this node's hardware, on /metrics."""

from __future__ import annotations

import argparse
import logging
import time

from aifmon.cli.arguments import Commands, command, group
from aifmon.supervisor import wait_for_signal
from aifmon.telemetry.errors import UserError, user_input

log = logging.getLogger("aifmon")


def register(commands: Commands) -> None:
    exp = group(commands, "exporter", "exporters", "KIND")
    c = command(exp, "sim", sim, "serve simulated factories on /metrics, all from this one process", store=False)
    c.add_argument("--factory", action="append", required=True,
                   help="factory id from the inventory; repeat it to serve several factories, each on its own target")
    c.add_argument("--listen", help="host:port, with one --factory only (default: each factory's first target in the inventory)")
    c.add_argument("--seed", type=int, default=1, help="simulation seed (same seed and epoch: same history)")
    c.add_argument("--epoch", type=float, action="append",
                   help="simulation start, Unix seconds (default: now): once for every factory, or once per --factory in its order")
    c.add_argument("--step", type=float, default=1.0, help="simulation tick, s (power is constant within a tick)")
    c.add_argument("--poll", type=float, default=1.0, help="re-render each exposition every POLL s")

    c = exp.add_parser("node", help="serve this node's GPUs, CPUs, BMC power and Slurm jobs on /metrics",
                       description="The node agent: NVML or amdsmi, RAPL, hwmon, HPE Cray pm_counters, Redfish BMC and "
                                   "Slurm job files, polled in the "
                                   "background; a scrape never touches the hardware. BMC credentials come from "
                                   "$AIFMON_BMC_USERNAME/$AIFMON_BMC_PASSWORD or a credentials file, never the command line.")
    c.set_defaults(run=node)
    c.add_argument("--listen", default="127.0.0.1:9401", help="host:port (default 127.0.0.1:9401)")
    c.add_argument("--web-config", help="TLS and basic-auth file in exporter-toolkit web.yml format")
    c.add_argument("--node", help="node label (default: the short host name)")
    c.add_argument("--poll", type=float, default=1.0, help="GPU power/energy, RAPL and job files every POLL s")
    c.add_argument("--slow-poll", type=float, default=10.0, help="GPU limits, utilisation, memory, clocks every SLOW_POLL s")
    c.add_argument("--gpu", choices=("nvml", "amdsmi"), default="nvml",
                   help="GPU library: nvml (NVIDIA, default) or amdsmi (AMD Instinct, ROCm's amdsmi Python package)")
    c.add_argument("--nvml-timeout", type=float, default=0.5, help="time box of one GPU's library calls (NVML or amdsmi), s")
    c.add_argument("--no-gpu", action="store_true", help="load no GPU library (CPU-only node)")
    c.add_argument("--nvml-module", default="pynvml", help="test/diagnostic hook: a module with pynvml's functions "
                                                         "(tests use tests.fake_nvml)")
    c.add_argument("--amdsmi-module", default="amdsmi", help="test/diagnostic hook: a module with amdsmi's functions "
                                                             "(tests use tests.fake_amdsmi)")
    c.add_argument("--powercap-root", default="/sys/class/powercap", help="RAPL sysfs tree")
    c.add_argument("--hwmon-root", default="/sys/class/hwmon", help="hwmon sysfs tree")
    c.add_argument("--cray-pm-root", default="/sys/cray/pm_counters", help="HPE Cray EX power counters (read where present)")
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


def sim(args: argparse.Namespace) -> None:
    """Every factory named by --factory simulated in this process, each served by its own HTTP server on its target."""
    from aifmon.exporters.http import serve_exposition
    from aifmon.exporters.sim import SimExporter
    from aifmon.exporters.simulation import FactorySimulation
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    factories = [inventory.factory(f) for f in args.factory]
    if len(set(args.factory)) < len(factories):
        raise UserError(f"--factory names a factory twice: {', '.join(args.factory)}")
    if args.listen and len(factories) > 1:
        raise UserError("--listen serves one factory; with several --factory each is served on its inventory target")
    epochs = args.epoch or [time.time()]
    if len(epochs) not in (1, len(factories)):
        raise UserError(f"--epoch given {len(epochs)} times for {len(factories)} factories: give it once, or once per --factory")
    served = []
    for factory, epoch in zip(factories, epochs * len(factories) if len(epochs) == 1 else epochs):
        listen = args.listen or (factory.targets[0] if factory.targets else None)
        if not listen:
            raise UserError(f"factory {factory.id!r} has no target in the inventory; pass --listen host:port")
        with user_input(ValueError):  # a factory without projects, a --step of 0
            simulation = FactorySimulation(factory, inventory.projects_of(factory.id), seed=args.seed, epoch=epoch, step_s=args.step)
        exporter = SimExporter(simulation, poll_s=args.poll)
        with user_input(OSError, about=f"cannot listen on {listen}"):
            server = serve_exposition(listen, exporter.body, f"aifmon simulated factory {factory.id}")
        served.append((exporter, server))
        log.info("simulating %s (%d GPUs on %d nodes) on http://%s/metrics", factory.id, simulation.gpu_count, simulation.node_count, listen)
    for exporter, _ in served:
        exporter.start()
    wait_for_signal()
    for exporter, server in served:
        exporter.stop()
        server.shutdown()


def node(args: argparse.Namespace) -> None:
    """The node agent. Imports no more than a compute node installs (`pip install aifmon`): no inventory, no store."""
    import importlib
    import socket
    from pathlib import Path

    from aifmon.exporters.amdsmi_source import AmdsmiSource
    from aifmon.exporters.cray_pm import CrayPmSource
    from aifmon.exporters.http import serve_exposition
    from aifmon.exporters.hwmon import HwmonSource
    from aifmon.exporters.node import NodeExporter
    from aifmon.exporters.nvml_source import NvmlSource
    from aifmon.exporters.rapl import RaplSource
    from aifmon.exporters.redfish import RedfishClient, RedfishPower, load_credentials
    from aifmon.exporters.slurm_jobs import JobMappings, load_qos_access_modes
    from aifmon.exporters.web_config import load_web_config
    from aifmon.telemetry.config import is_loopback, parse_listen

    with user_input(ValueError):  # each names its file or URL
        web = load_web_config(args.web_config) if args.web_config else None
        qos_access_modes = load_qos_access_modes(args.qos_access_modes)
        credentials = load_credentials(args.bmc_credentials_file) if args.bmc_url else None
    host, _ = parse_listen(args.listen)
    if not is_loopback(host) and (web is None or web.ssl_context is None or not web.basic_auth_users):
        log.warning("serving on %s without TLS and basic auth: anyone on that network can read this node's metrics", host)
    bmc = None
    if args.bmc_url:
        if args.bmc_insecure:
            log.warning("--bmc-insecure: the BMC's certificate is not verified")
        with user_input(ValueError):  # the BMC URL
            client = RedfishClient(args.bmc_url, credentials, verify_tls=not args.bmc_insecure, ca_file=args.bmc_ca_file,
                                   timeout_s=args.bmc_timeout)
        bmc = RedfishPower(client, chassis=args.bmc_chassis)
    nvml = amdsmi = None
    if not args.no_gpu and args.gpu == "nvml":
        with user_input(ImportError, about=f"cannot load NVML's Python module {args.nvml_module!r} (no GPU here: --no-gpu)"):
            lib = importlib.import_module(args.nvml_module)
        nvml = NvmlSource(lib=lib, call_timeout_s=args.nvml_timeout, slow_every_s=args.slow_poll)
    elif not args.no_gpu:
        # amdsmi loads libamd_smi.so as it is imported; without ROCm the import fails with KeyError or OSError
        with user_input(ImportError, KeyError, OSError, about=f"cannot load amdsmi's Python module {args.amdsmi_module!r} "
                                                             "(ROCm's libamd_smi.so missing? set ROCM_PATH; no GPU here: --no-gpu)"):
            lib = importlib.import_module(args.amdsmi_module)
        amdsmi = AmdsmiSource(lib=lib, call_timeout_s=args.nvml_timeout, slow_every_s=args.slow_poll)
    cray = CrayPmSource(Path(args.cray_pm_root))
    exporter = NodeExporter(
        args.node or socket.gethostname().split(".")[0], nvml=nvml, amdsmi=amdsmi, rapl=RaplSource(Path(args.powercap_root)),
        hwmon=HwmonSource(Path(args.hwmon_root)), bmc=bmc, jobs=JobMappings(Path(args.job_dir), qos_access_modes),
        cray=cray if cray.present else None, poll_s=args.poll, bmc_poll_s=args.bmc_poll, baseline_w=args.estimate_baseline_watts)
    exporter.start()
    with user_input(OSError, about=f"cannot listen on {args.listen}"):
        server = serve_exposition(args.listen, exporter.body, f"aifmon node exporter {exporter.node}", web=web)
    scheme = "https" if web is not None and web.ssl_context is not None else "http"
    log.info("node %s on %s://%s/metrics", exporter.node, scheme, args.listen)
    wait_for_signal()
    exporter.stop()
    server.shutdown()
