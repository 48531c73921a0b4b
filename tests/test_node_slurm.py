"""The Slurm prolog/epilog, run with the environment slurmd gives them, and aif_gpu_job_info from their files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from aifmon.exporters.node import NodeExporter
from aifmon.exporters.nvml_source import NvmlSource
from aifmon.exporters.slurm_jobs import JobMappings, load_qos_access_modes
from aifmon.rollups.slurm_accounting import JobAllocation, parse_sacct
from tests.fake_nvml import h100_node

SCRIPTS = Path(__file__).resolve().parent.parent / "exporters" / "slurm"
CAPTURES = Path(__file__).resolve().parent / "fixtures" / "slurm"  # from a real Slurm 22.05; see its README.md


def gpu_table(lib) -> str:
    """What `nvidia-smi --query-gpu=minor_number,uuid --format=csv,noheader,nounits` prints for the fake node."""
    return "\n".join(f"{g.minor}, {g.uuid}" for g in lib.gpus)


def run(script: str, job_dir: Path, table: str = "", extra_path: str = "", **slurm: str) -> subprocess.CompletedProcess:
    env = {"PATH": extra_path + "/usr/bin:/bin", "AIFMON_JOB_DIR": str(job_dir), "AIFMON_GPU_TABLE": table, **slurm}
    return subprocess.run(["/bin/sh", str(SCRIPTS / script)], env=env, capture_output=True, text=True, timeout=30)


def slurm_env(job: str, gpus: str, account: str = "alpha-train", partition: str = "booster", qos: str = "ls") -> dict[str, str]:
    return {"SLURM_JOB_ID": job, "SLURM_JOB_ACCOUNT": account, "SLURM_JOB_PARTITION": partition, "SLURM_JOB_QOS": qos,
            "SLURM_JOB_GPUS": gpus, "CUDA_VISIBLE_DEVICES": gpus, "SLURM_JOB_USER": "alice", "SLURMD_NODENAME": "n1"}


def node_with_swapped_minors():
    """8 GPUs whose /dev/nvidiaN numbers are not their NVML indices (as on boards wired that way)."""
    lib = h100_node(8)
    for g, minor in zip(lib.gpus, [2, 3, 0, 1, 6, 7, 4, 5]):
        g.minor = minor
    return lib


def test_prolog_writes_one_file_per_gpu_keyed_by_uuid(tmp_path):
    lib = node_with_swapped_minors()
    jobs = tmp_path / "jobs"
    r = run("prolog.sh", jobs, gpu_table(lib), **slurm_env("4242", "0,1,2,3"))
    assert r.returncode == 0 and r.stderr == "", r
    by_minor = {g.minor: g.uuid for g in lib.gpus}
    assert sorted(p.name for p in jobs.iterdir()) == sorted(f"{by_minor[m]}_4242" for m in (0, 1, 2, 3))
    text = (jobs / f"{by_minor[0]}_4242").read_text()
    assert text == "job=4242\naccount=alpha-train\npartition=booster\nqos=ls\n"
    assert oct((jobs / f"{by_minor[0]}_4242").stat().st_mode & 0o777) == "0o644"


def test_multi_node_job_each_node_keeps_its_own_gpus_and_the_exporter_labels_nvml_indices(tmp_path):
    nodes = {"n1": (node_with_swapped_minors(), "0,1,2,3,4,5,6,7"), "n2": (h100_node(8), "4,5")}
    for g in nodes["n2"][0].gpus:
        g.uuid = g.uuid.replace("GPU-0", "GPU-b")  # another node, other GPUs
    qos = tmp_path / "qos.yaml"
    qos.write_text("ls: Large Scale\ndebug: Development\n")
    for name, (lib, gpus) in nodes.items():
        assert run("prolog.sh", tmp_path / name, gpu_table(lib), **slurm_env("777", gpus)).returncode == 0
    # a second, single-GPU job on n2 at the same time
    assert run("prolog.sh", tmp_path / "n2", gpu_table(nodes["n2"][0]),
               **slurm_env("778", "0", account="beta-science", qos="debug")).returncode == 0

    info = {}
    for name, (lib, _) in nodes.items():
        nvml = NvmlSource(lib=lib, xid_events=False)
        exporter = NodeExporter(name, nvml=nvml, jobs=JobMappings(tmp_path / name, load_qos_access_modes(str(qos))))
        exporter.poll_host()
        exporter.poll_gpu()
        info[name] = sorted(tuple(sorted(s.labels.items())) for f in text_string_to_metric_families(exporter.body().decode())
                            for s in f.samples if s.name == "aif_gpu_job_info")
    lg = {"access_mode": "Large Scale", "job": "777", "project": "alpha-train"}
    assert info["n1"] == sorted(tuple(sorted({**lg, "node": "n1", "gpu": str(i)}.items())) for i in range(8))
    assert info["n2"] == sorted([tuple(sorted({**lg, "node": "n2", "gpu": "4"}.items())),
                                 tuple(sorted({**lg, "node": "n2", "gpu": "5"}.items())),
                                 tuple(sorted({"access_mode": "Development", "job": "778", "project": "beta-science",
                                               "node": "n2", "gpu": "0"}.items()))])

    # the epilog of job 777 leaves job 778's file alone
    for name in nodes:
        assert run("epilog.sh", tmp_path / name, SLURM_JOB_ID="777").returncode == 0
    assert list((tmp_path / "n1").iterdir()) == []
    assert [p.name for p in (tmp_path / "n2").iterdir()] == [f"{nodes['n2'][0].gpus[0].uuid}_778"]


def test_nvml_index_differs_from_device_number(tmp_path):
    lib = node_with_swapped_minors()
    run("prolog.sh", tmp_path, gpu_table(lib), **slurm_env("9", "0"))  # /dev/nvidia0 is NVML index 2 here
    exporter = NodeExporter("n1", nvml=NvmlSource(lib=lib, xid_events=False), jobs=JobMappings(tmp_path))
    exporter.poll_host()
    exporter.poll_gpu()
    lines = [line for line in exporter.body().decode().splitlines() if line.startswith("aif_gpu_job_info")]
    assert lines == ['aif_gpu_job_info{node="n1",gpu="2",job="9",project="alpha-train",access_mode="ls"} 1.0']


def test_uuids_and_mig_instances_pass_through(tmp_path):
    env = slurm_env("31", "GPU-abc,MIG-def")
    env.pop("SLURM_JOB_GPUS")
    assert run("prolog.sh", tmp_path, "", **env).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["GPU-abc_31", "MIG-def_31"]


def fake_scontrol(tmp_path: Path, script: str) -> str:
    """A `scontrol` that runs `script` (sh), in a folder of its own; returns the PATH prefix that puts it first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\n{script}\n")
    os.chmod(bin_dir / "scontrol", 0o755)
    return f"{bin_dir}:"


def test_qos_from_scontrol_when_slurm_does_not_set_it(tmp_path):
    path = fake_scontrol(tmp_path, "echo 'JobId=55 JobName=x UserId=a(1) Account=p QOS=fastlane JobState=RUNNING'")
    env = slurm_env("55", "GPU-1")
    env.pop("SLURM_JOB_QOS")
    assert run("prolog.sh", tmp_path / "jobs", "", extra_path=path, **env).returncode == 0
    assert "qos=fastlane\n" in (tmp_path / "jobs" / "GPU-1_55").read_text()


def test_the_prolog_never_fails_the_job(tmp_path):
    lib = h100_node(2)
    r = run("prolog.sh", tmp_path / "jobs", gpu_table(lib), **slurm_env("1", "0,9"))
    assert r.returncode == 0 and "no GPU with device number 9" in r.stderr
    assert len(list((tmp_path / "jobs").iterdir())) == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    r = run("prolog.sh", blocked / "jobs", gpu_table(lib), **slurm_env("2", "0"))
    assert r.returncode == 0 and "cannot create" in r.stderr
    assert run("prolog.sh", tmp_path / "cpu", "", SLURM_JOB_ID="3").returncode == 0  # a CPU-only job: nothing
    assert not (tmp_path / "cpu").exists()
    assert run("epilog.sh", tmp_path / "none", SLURM_JOB_ID="4").returncode == 0


def captured_env(name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (CAPTURES / name).read_text().splitlines())


def test_prolog_and_epilog_with_the_environment_a_real_slurmd_gave_them(tmp_path):
    """Slurm 22.05 sets no SLURM_JOB_QOS: the QoS comes from `scontrol show job` (here its captured answer)."""
    path = fake_scontrol(tmp_path, f"cat {CAPTURES / 'scontrol-show-job.txt'}")
    lib = node_with_swapped_minors()
    prolog_env = captured_env("prolog-env.txt")
    assert "SLURM_JOB_QOS" not in prolog_env and prolog_env["SLURM_JOB_GPUS"] == "0,1"
    jobs = tmp_path / "jobs"
    r = run("prolog.sh", jobs, gpu_table(lib), extra_path=path, **prolog_env)
    assert r.returncode == 0 and r.stderr == "", r
    by_minor = {g.minor: g.uuid for g in lib.gpus}
    assert sorted(p.name for p in jobs.iterdir()) == sorted(f"{by_minor[m]}_1" for m in (0, 1))
    assert (jobs / f"{by_minor[0]}_1").read_text() == "job=1\naccount=alpha-train\npartition=booster\nqos=normal\n"
    assert run("epilog.sh", jobs, **captured_env("epilog-env.txt")).returncode == 0
    assert list(jobs.iterdir()) == []


def test_a_cluster_without_accounting_has_no_qos(tmp_path):
    """scontrol's `QOS=(null)` (no slurmdbd) is no QoS, reported as access_mode "unknown", not "(null)"."""
    path = fake_scontrol(tmp_path, "echo 'JobId=7 JobName=wrap Account=alpha-train QOS=(null) JobState=RUNNING'")
    env = slurm_env("7", "GPU-1")
    env.pop("SLURM_JOB_QOS")
    assert run("prolog.sh", tmp_path / "jobs", "", extra_path=path, **env).returncode == 0
    assert (tmp_path / "jobs" / "GPU-1_7").read_text() == "job=7\naccount=alpha-train\npartition=booster\nqos=\n"
    assert JobMappings(tmp_path / "jobs").access_mode("") == "unknown"


def test_sacct_output_of_a_real_slurmdbd():
    """Steps and the CPU-only job are left out; the running job has no end; times are the daemons' Europe/Helsinki
    local time (EET, UTC+2 in December)."""
    jobs = parse_sacct((CAPTURES / "sacct.txt").read_text(), "sacct.txt", tz="Europe/Helsinki")
    t = 1796124051000  # 2026-12-01T13:20:51 EET = 11:20:51 UTC
    assert jobs == [JobAllocation("1", "alpha-train", "booster", "normal", t, t, ("aifn1",), 2),
                    JobAllocation("2", "beta-science", "booster", "normal", t, t, ("aifn1",), 1),
                    JobAllocation("5", "alpha-train", "booster", "normal", t + 3000, None, ("aifn1",), 1)]
