"""The shipped prolog and epilog run by a real slurmd, and `--sacct` on a real slurmdbd's records (tests/slurm_cluster.py).

Skipped where Debian's slurmctld/slurmd/slurmdbd/munge/mariadb-server are missing; fails under CI=true.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifmon.exporters.http import serve_exposition
from aifmon.exporters.node import NodeExporter
from aifmon.exporters.nvml_source import NvmlSource
from aifmon.exporters.slurm_jobs import JobMappings
from aifmon.rollups.slurm_accounting import expand_nodelist, parse_sacct
from tests.conftest import free_port, wait_until
from tests.fake_nvml import h100_node
from tests.slurm_cluster import SlurmCluster, slurm_cluster

TZ = "Europe/Helsinki"  # not UTC, so a Start/End read in the wrong zone is off by hours
SACCT_FORMAT = "JobID,Account,Partition,QOS,Start,End,NodeList,AllocTRES"
MINORS = [2, 3, 0, 1]  # /dev/nvidiaN of NVML index 0..3: Slurm's numbers are not NVML's


@pytest.fixture(scope="module")
def gpus():
    lib = h100_node(4)
    for g, minor in zip(lib.gpus, MINORS):
        g.minor = minor
    return lib


@pytest.fixture(scope="module")
def cluster(gpus, tmp_path_factory):
    table = "\n".join(f"{g.minor}, {g.uuid}" for g in gpus.gpus)  # as nvidia-smi --query-gpu=minor_number,uuid prints
    with slurm_cluster(table, ["alpha-train", "beta-science"], gpus=4, tz=TZ) as c:
        yield c


def held_until(release) -> str:
    """A job body that holds its GPUs until the test creates `release` (at most the partition's 10 min)."""
    return f"while [ ! -e {release} ]; do sleep 0.1; done"


def gres_minors(cluster: SlurmCluster, job: str) -> list[int]:
    """The GPUs Slurm gave `job` on the node, from `scontrol show job -d` (`GRES=gpu:2(IDX:0-1)`): with gres.conf's
    File=nvidia[0-3], index N is /dev/nvidiaN."""
    idx = cluster.job(job)["GRES"].split("IDX:")[1].rstrip(")")
    return [int(i) for i in expand_nodelist(f"[{idx}]")]


def test_slurmd_runs_the_prolog_and_epilog_and_the_exporter_labels_the_jobs(cluster, gpus, tmp_path):
    exporter = NodeExporter(cluster.node, nvml=NvmlSource(lib=gpus, xid_events=False), poll_s=0.1,
                            jobs=JobMappings(cluster.job_dir, {"normal": "Regular"}))
    address = f"127.0.0.1:{free_port()}"
    server = serve_exposition(address, exporter.body, "test node")
    exporter.start()

    def job_info() -> set[tuple[str, str, str, str]]:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {(s.labels["gpu"], s.labels["job"], s.labels["project"], s.labels["access_mode"])
                for f in text_string_to_metric_families(text) for s in f.samples if s.name == "aif_gpu_job_info"}

    nvml_index = {minor: i for i, minor in enumerate(MINORS)}
    srun = None
    try:
        batch = cluster.command("sbatch", "--parsable", "-A", "alpha-train", "--gres=gpu:2", "-o", "/dev/null",
                                "--wrap", held_until(tmp_path / "release-batch")).strip()
        srun = subprocess.Popen(["srun", "-A", "beta-science", "--gres=gpu:1", "sh", "-c", held_until(tmp_path / "release-srun")],
                                env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        step = wait_until(lambda: cluster.try_command("squeue", "-h", "-A", "beta-science", "-t", "R", "-o", "%A"), 20,
                          "the srun job running").strip()
        wait_until(lambda: cluster.try_command("squeue", "-h", "-j", batch, "-t", "R", "-o", "%A"), 20, "the batch job running")

        batch_minors, step_minors = gres_minors(cluster, batch), gres_minors(cluster, step)
        assert len(batch_minors) == 2 and len(step_minors) == 1 and not set(batch_minors) & set(step_minors)
        uuid = {g.minor: g.uuid for g in gpus.gpus}
        files = sorted(f"{uuid[m]}_{batch}" for m in batch_minors)
        wait_until(lambda: sorted(p.name for p in cluster.job_dir.glob(f"*_{batch}")) == files, 20,
                   f"the prolog's files for the GPUs Slurm gave the batch job: {files}")
        assert (cluster.job_dir / files[0]).read_text() == f"job={batch}\naccount=alpha-train\npartition=booster\nqos=normal\n"
        want = {(str(nvml_index[m]), batch, "alpha-train", "Regular") for m in batch_minors}
        want |= {(str(nvml_index[m]), step, "beta-science", "Regular") for m in step_minors}
        wait_until(lambda: job_info() == want, 10, f"aif_gpu_job_info == {want}")

        (tmp_path / "release-batch").touch()  # the batch job ends: slurmd runs the epilog
        wait_until(lambda: not list(cluster.job_dir.glob(f"*_{batch}")), 20, "the epilog removing the batch job's files")
        assert [p.name for p in cluster.job_dir.iterdir()] == [f"{uuid[step_minors[0]]}_{step}"]
        wait_until(lambda: job_info() == {(str(nvml_index[step_minors[0]]), step, "beta-science", "Regular")}, 10,
                   "only the srun job left in aif_gpu_job_info")

        (tmp_path / "release-srun").touch()
        assert srun.wait(30) == 0, srun.stdout.read() if srun.stdout else ""
        wait_until(lambda: not any(cluster.job_dir.iterdir()), 20, "the epilog removing the srun job's file")
        wait_until(lambda: job_info() == set(), 10, "no aif_gpu_job_info once the jobs ended")
    finally:
        if srun is not None and srun.poll() is None:
            srun.kill()
        if srun is not None:
            srun.wait(10)
            if srun.stdout:
                srun.stdout.close()
        exporter.stop()
        server.shutdown()
        server.server_close()


def test_sacct_records_from_slurmdbd_become_job_allocations(cluster, tmp_path):
    submitted_ms = int(time.time()) * 1000  # Slurm's times have 1 s resolution
    gpu_job = cluster.command("sbatch", "--parsable", "-A", "beta-science", "--gres=gpu:3", "-o", "/dev/null", "--wrap", "true").strip()
    cpu_job = cluster.command("sbatch", "--parsable", "-A", "alpha-train", "-o", "/dev/null", "--wrap", "true").strip()

    def finished_in_sacct() -> bool:
        # slurmdbd's row fills in over about a second: first with no Partition and QOS "Unknown" (PENDING, then
        # COMPLETED with an End), then complete; the rollup reads closed periods, so the test waits for that
        text = cluster.try_command("sacct", "-n", "--allocations", "--parsable2", "-j", f"{gpu_job},{cpu_job}",
                                   "--format", "Partition,QOS,End,State")
        rows = [line.split("|") for line in (text or "").splitlines()]
        return len(rows) == 2 and all(r == ["booster", "normal", r[2], "COMPLETED"] and r[2] != "Unknown" for r in rows)

    wait_until(finished_in_sacct, 30, "both jobs' complete records in slurmdbd")
    ended_ms = (int(time.time()) + 1) * 1000
    text = cluster.command("sacct", "--parsable2", "-j", f"{gpu_job},{cpu_job}", "--format", SACCT_FORMAT)
    assert f"{gpu_job}.batch|" in text  # the step line is there, and parse_sacct leaves it out
    (tmp_path / "sacct.txt").write_text(text)

    jobs = parse_sacct(text, "sacct.txt", tz=TZ)
    assert [(j.job, j.account, j.partition, j.qos, j.nodes, j.gpus_per_node) for j in jobs] == [
        (gpu_job, "beta-science", "booster", "normal", ("aifn1",), 3)]  # the CPU-only job holds no GPU energy
    job = jobs[0]
    assert job.end_ms is not None and submitted_ms <= job.start_ms <= job.end_ms <= ended_ms
    # and the same instants as slurmctld's own record of the job
    record = cluster.job(gpu_job)
    zone = ZoneInfo(TZ)
    assert job.start_ms == datetime.fromisoformat(record["StartTime"]).replace(tzinfo=zone).timestamp() * 1000
    assert job.end_ms == datetime.fromisoformat(record["EndTime"]).replace(tzinfo=zone).timestamp() * 1000
