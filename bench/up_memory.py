"""`make up`'s footprint: `aifmon up` on the demo inventory (13 live AI Factories, JAIF at 25,000 GPUs) from a new
store, its resident memory summed over its processes (`up`, its simulator child and the Chromium that prints the
reports' PDF) after 3 minutes and over the third minute (median and maximum, sampled every second), its start-up,
CPU and disk.

    .venv/bin/python bench/up_memory.py [--minutes 3] [--backfill-hours 24] [--every 1]

Target (issue 15): under 1 GB summed after 3 minutes and over the whole third minute, with the 25,000-GPU factory in
(before: 1.4 GB, of which 804 MB in 13 simulator processes, with 784 GPUs in all). The sum is of each process's
resident set (RSS): pages that processes share (Chromium's ten processes map the same 200 MB binary) count once per
process; the proportional sum (PSS, each shared page divided among its processes) is reported beside it. The demo's
targets (127.0.0.1:9101-9113) must be free: no other `make up` may run. Writes bench/results/up_memory.json and prints
the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "up_memory.json"
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402

TARGET_BYTES = 1e9
"""`make up`'s resident memory, summed over its processes, after 3 minutes and at every sample of the third minute."""

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*"):
            with contextlib.suppress(OSError):  # a thread that ended between the listing and the read
                pids += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return pids


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, bytes (0 once it has exited)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in bytes (Rss, Pss, Anonymous, Shared_Clean, ...; empty once it has exited): what of the
    resident memory is the process's own (Anonymous) and what is mapped files, shared with the other processes."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {}
    return {k.rstrip(":"): int(v) * 1024 for k, v, *_ in (line.split() for line in lines)}


def cpu_s(pid: int) -> float:
    """User + system CPU time of one process so far, s."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def describe(pid: int) -> str:
    """The part of `make up` a process is: up, simulator, chromium (each of its processes), or its program's name."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    argv = cmdline.split(b"\0")
    if not cmdline:  # exited, not yet reaped
        return "?"
    if b"sim" in argv and b"exporter" in argv:
        return "simulator"
    if b"up" in argv:
        return "up"
    # Chromium's launcher is a shell script (`sh /usr/bin/chromium ...`); its children (`--type=renderer`, ...) rewrite their
    # argv into one string, or run as /proc/self/exe while they start
    programs = [Path(a.decode(errors="replace").split(" ")[0]).name for a in argv[:2]]
    chromium = {"chromium", "chrome", "chromium-browser", "google-chrome"} & set(programs) or b"--type=" in cmdline
    return "chromium" if chromium else programs[0]


def by_part(per_process: dict[str, int]) -> dict[str, int]:
    """Figures keyed "PART PID" summed by part (up, simulator, chromium, ...)."""
    out: dict[str, int] = {}
    for key, value in per_process.items():
        part = key.rsplit(" ", 1)[0]
        out[part] = out.get(part, 0) + value
    return out


def spread(values: list[int]) -> dict[str, int]:
    """Median and maximum, bytes."""
    return {"median": int(statistics.median(values)), "max": max(values)} if values else {"median": 0, "max": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="measure this long after the start, min")
    ap.add_argument("--backfill-hours", type=float, default=24.0)
    ap.add_argument("--every", type=float, default=1.0, help="sampling interval, s (Chromium prints a PDF in 2-5 s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aifmon-up-bench-") as tmp:
        log_path, store = Path(tmp) / "up.log", Path(tmp) / "up.duckdb"
        dash = f"127.0.0.1:{free_port()}"
        started = time.time()
        with log_path.open("w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "aifmon", "up", "--store", f"duckdb:///{store}", "--listen", dash,
                                     "--backfill-hours", str(args.backfill_hours)], stderr=log_file, cwd=tmp)
        samples: list[dict] = []
        live_at = None
        try:
            while time.time() - started < args.minutes * 60:
                if proc.poll() is not None:
                    raise SystemExit(f"aifmon up exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                pids = tree(proc.pid)
                names = {p: f"{describe(p)} {p}" for p in pids}
                samples.append({"t_s": round(time.time() - started, 1), "rss_bytes": {names[p]: rss_bytes(p) for p in pids},
                                "pss_bytes": {names[p]: rollup(p).get("Pss", 0) for p in pids}, "cpu_s": {p: cpu_s(p) for p in pids}})
                if live_at is None and "live: scraping" in log_path.read_text():
                    live_at = time.time() - started
                time.sleep(args.every)
            last = samples[-1]
            total = sum(last["rss_bytes"].values())
            peak = max(sum(s["rss_bytes"].values()) for s in samples)
            third = [s for s in samples if s["t_s"] >= last["t_s"] - 60]  # the last minute of the run
            parts = sorted({part for s in third for part in by_part(s["rss_bytes"])})
            last_minute: dict[str, Any] = {"rss_total": spread([sum(s["rss_bytes"].values()) for s in third]),
                                           "pss_total": spread([sum(s["pss_bytes"].values()) for s in third]),
                                           "rss_by_part": {part: spread([by_part(s["rss_bytes"]).get(part, 0) for s in third]) for part in parts},
                                           "samples": len(third)}
            # CPU over the last minute of the run, all processes, in cores
            minute_ago = next(s for s in samples if s["t_s"] >= last["t_s"] - 60)
            cores = (sum(last["cpu_s"].values()) - sum(minute_ago["cpu_s"].get(p, 0.0) for p in last["cpu_s"])) / max(1.0, last["t_s"] - minute_ago["t_s"])
            disk = sum(f.stat().st_size for f in Path(tmp).glob("up.duckdb*"))
            rollups = {f"{describe(p)} {p}": rollup(p) for p in tree(proc.pid)}
        finally:
            proc.send_signal(signal.SIGINT)
            stopping = time.time()
            # each worker ends its current task before it stops: one run took about 150 s to stop on a loaded machine, past
            # an earlier 120 s limit that lost the run's figures
            status = proc.wait(timeout=600)
            stop_s = time.time() - stopping
        log = log_path.read_text()
    backfill = re.findall(r"backfill: \S+ \(\d+ GPUs\) for its last .*", log)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "minutes": args.minutes,
        "rss_bytes_total": total,
        "rss_bytes_by_process": last["rss_bytes"],
        "rss_bytes_peak_total": peak,
        "smaps_rollup_bytes_by_process": rollups,
        "rss_mb_timeline": [(s["t_s"], round(sum(s["rss_bytes"].values()) / 1e6), {k: round(v / 1e6) for k, v in by_part(s["rss_bytes"]).items()})
                            for s in samples],
        "last_minute_bytes": last_minute,
        "live_after_s": live_at,
        "cpu_cores_last_minute": cores,
        "store_bytes": disk,
        "backfill_log": backfill,
        "warnings": [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line][:20],
        # when the catch-up and the reports happened, to read beside the timeline (the log's clock, the start's above)
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "events": [line for line in log.splitlines() if re.search(r"live: |hourly rollups: |reports: ", line)][:40],
        "exit_status": status,
        "stop_s": stop_s,
        "target_bytes": TARGET_BYTES,
        "met": total < TARGET_BYTES and last_minute["rss_total"]["max"] < TARGET_BYTES,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"after {args.minutes:g} min: {total / 1e6:.0f} MB resident in all "
          f"({', '.join(f'{k}: {v / 1e6:.0f} MB' for k, v in last['rss_bytes'].items())}); peak {peak / 1e6:.0f} MB")
    print("  of which anonymous: " + ", ".join(f"{k}: {r.get('Anonymous', 0) / 1e6:.0f} MB" for k, r in rollups.items())
          + f"; proportional (PSS) sum {sum(r.get('Pss', 0) for r in rollups.values()) / 1e6:.0f} MB")
    lm = last_minute
    print(f"last minute ({lm['samples']} samples): median {lm['rss_total']['median'] / 1e6:.0f} MB, max {lm['rss_total']['max'] / 1e6:.0f} MB ("
          + ", ".join(f"{k} {v['median'] / 1e6:.0f}/{v['max'] / 1e6:.0f}" for k, v in lm["rss_by_part"].items())
          + f" MB median/max); PSS sum median {lm['pss_total']['median'] / 1e6:.0f} MB, max {lm['pss_total']['max'] / 1e6:.0f} MB")
    print(f"live after {live_at if live_at is None else round(live_at, 1)} s; {cores:.2f} cores over the last minute; store {disk / 1e6:.0f} MB")
    print(f"target < {TARGET_BYTES / 1e9:g} GB at the end and over the last minute: {'met' if result['met'] else 'NOT met'}; "
          f"stopped with status {status} after {stop_s:.0f} s")


if __name__ == "__main__":
    main()
