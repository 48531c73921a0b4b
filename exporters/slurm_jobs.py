"""Slurm job → GPU attribution from the mapping files the prolog writes (exporters/slurm/prolog.sh).

One file per (GPU, job) in the job directory, named `<GPU or MIG UUID>_<job id>`, with `key=value`
lines `job`, `account`, `partition`, `qos`. Keyed by UUID because the NVML index, Slurm's GPU index
and `/dev/nvidiaN` can all differ; the exporter turns the UUID into the NVML index it labels GPUs with.
The Slurm account is the project; the QoS gives the access mode through a configurable table.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from aifmon.telemetry.safe_yaml import YAMLFileError, load_yaml_file

log = logging.getLogger(__name__)

DEFAULT_JOB_DIR = Path("/run/aifmon/jobs")


@dataclass(frozen=True)
class GpuJob:
    uuid: str
    job: str
    project: str
    partition: str
    qos: str


def load_qos_access_modes(path: str | None) -> dict[str, str]:
    """A YAML mapping `qos: access mode` (e.g. `ls-prio: Large Scale`); {} when no file is given."""
    if not path:
        return {}
    try:
        doc = load_yaml_file(path, default={})
    except YAMLFileError as e:
        raise ValueError(f"QoS access-mode file {e}") from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise ValueError(f"QoS access-mode file {path}: expected a mapping of QoS name to access mode, e.g. 'normal: Regular'")
    return doc


def parse_mapping(name: str, text: str) -> GpuJob | None:
    """One mapping file; None (and a log line) if it is not one."""
    uuid, sep, job_from_name = name.rpartition("_")
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not sep or not uuid or fields.get("job") != job_from_name:
        log.warning("job mapping file %s is malformed; ignored", name)
        return None
    return GpuJob(uuid, fields["job"], fields.get("account", ""), fields.get("partition", ""), fields.get("qos", ""))


class JobMappings:
    """The job directory, re-read when its modification time changes (the prolog renames files into it)."""

    def __init__(self, directory: Path = DEFAULT_JOB_DIR, qos_access_modes: dict[str, str] | None = None):
        self.directory = directory
        self.qos_access_modes = qos_access_modes or {}
        self.errors = 0  # for aif_exporter_errors_total{source="slurm"}
        self._mtime_ns: int | None = None
        self._jobs: tuple[GpuJob, ...] = ()
        self._unmapped_logged: set[str] = set()
        self._missing_logged = False

    def jobs(self) -> tuple[GpuJob, ...]:
        return self._jobs

    def poll(self) -> None:
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            if not self._missing_logged:
                self._missing_logged = True
                log.info("job directory %s does not exist (yet); no aif_gpu_job_info until the Slurm prolog creates it",
                         self.directory)
            self._jobs, self._mtime_ns = (), None
            return
        except OSError as e:
            self.errors += 1
            log.debug("job directory %s: %s", self.directory, e)
            return
        if mtime == self._mtime_ns and time.time_ns() - mtime > 2_000_000_000:
            return  # unchanged; a directory changed in the last 2 s is re-read, as timestamps are coarse (jiffies)
        jobs = []
        try:
            for entry in os.scandir(self.directory):
                if entry.name.startswith(".") or not entry.is_file():
                    continue  # the prolog's temporary files
                try:
                    text = Path(entry.path).read_text()
                except FileNotFoundError:
                    continue  # removed by an epilog while we listed
                job = parse_mapping(entry.name, text)
                if job is not None:
                    jobs.append(job)
        except OSError as e:
            self.errors += 1
            log.warning("cannot read job directory %s: %s", self.directory, e)
            return
        self._jobs, self._mtime_ns = tuple(sorted(jobs, key=lambda j: (j.uuid, j.job))), mtime

    def access_mode(self, qos: str) -> str:
        """The access mode of a QoS; an unmapped QoS is reported as itself (and logged once)."""
        mode = self.qos_access_modes.get(qos)
        if mode is None:
            if qos not in self._unmapped_logged and self.qos_access_modes:
                self._unmapped_logged.add(qos)
                log.warning("QoS %r has no access mode in the QoS table; reporting access_mode=%r", qos, qos or "unknown")
            return qos or "unknown"
        return mode
