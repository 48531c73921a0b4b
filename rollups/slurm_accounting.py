"""Slurm accounting records (`sacct --parsable2`) as job allocations per node, for attribution.

Expected columns (any order; others are ignored): JobID, Account, Partition, QOS, Start, End, NodeList,
AllocTRES, as written by e.g.

    sacct --allocations --parsable2 --starttime 2025-03-01 --endtime 2025-04-01 \\
          --format JobID,Account,Partition,QOS,Start,End,NodeList,AllocTRES

- Job steps (`123.batch`, `123.0`) are skipped: the allocation line holds the job's resources.
- The Slurm account is the project. The access mode is the project's in the inventory; for an account
  the inventory does not know, the QoS name stands in.
- Start and End are Slurm's local time without a zone; `tz` says which zone that is (default UTC).
  A running job (`End` = `Unknown`) ends at the range's end; a job that never started is skipped.
- GPUs per node = the `gres/gpu` count of AllocTRES / the number of nodes (Slurm allocates GPUs evenly
  across a job's nodes for `--gpus-per-node`, which AI Factories use). sacct does not say which GPUs of a
  shared node a job held, so on a node with N GPUs a job holding k of them is attributed k/N of the
  energy of each of the node's GPUs while it runs (see `aifmon.rollups.energy`).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from aifmon.telemetry.errors import UserError

REQUIRED = ("JobID", "Account", "Partition", "QOS", "Start", "End", "NodeList", "AllocTRES")


class AccountingError(UserError, ValueError):
    """A record that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class JobAllocation:
    """One job's allocation: `gpus_per_node` GPUs on each of `nodes` over [start_ms, end_ms)."""

    job: str
    account: str
    partition: str
    qos: str
    start_ms: int
    end_ms: int | None  # None while the job runs
    nodes: tuple[str, ...]
    gpus_per_node: int


_GROUP = re.compile(r"\[([^\]]*)\]")


def expand_nodelist(text: str) -> list[str]:
    """Expand a Slurm host list: `node[001-004,007],gpu12` -> node001..node004, node007, gpu12.

    Zero padding is kept (`[08-10]` -> 08, 09, 10); several bracket groups in one name expand as a
    product (`r[1-2]n[1-2]` -> r1n1, r1n2, r2n1, r2n2), as `scontrol show hostnames` does.
    """
    names: list[str] = []
    for item in _split_top_level(text.strip()):
        if not item or item == "None assigned":
            continue
        expanded = [""]
        pos = 0
        for m in _GROUP.finditer(item):
            literal = item[pos:m.start()]
            expanded = [e + literal + part for e in expanded for part in _expand_range(m.group(1), text)]
            pos = m.end()
        tail = item[pos:]
        if "[" in tail or "]" in tail:
            raise AccountingError(f"host list {text!r}: unbalanced brackets")
        names += [e + tail for e in expanded]
    return names


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _expand_range(spec: str, text: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise AccountingError(f"host list {text!r}: {part!r} is not a number or a range of numbers")
        if not sep:
            out.append(lo)
            continue
        width = len(lo)
        if int(hi) < int(lo):
            raise AccountingError(f"host list {text!r}: range {part!r} runs backwards")
        out += [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    return out


def gpus_in_tres(tres: str) -> int:
    """The GPU count of an AllocTRES string (`cpu=64,gres/gpu=8,mem=500G,node=2` -> 8; typed `gres/gpu:h100=8` too)."""
    items = dict(item.partition("=")[::2] for item in tres.split(",") if "=" in item)
    if "gres/gpu" in items:  # Slurm writes the total beside the typed counts; the total alone counts
        return int(items["gres/gpu"])
    return sum(int(v) for k, v in items.items() if k.startswith("gres/gpu:"))


def _time(text: str, tz: ZoneInfo, where: str) -> int | None:
    if text in ("Unknown", "None", ""):
        return None
    try:
        return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp() * 1000)
    except ValueError:
        raise AccountingError(f"{where}: {text!r} is not a Slurm time (YYYY-MM-DDTHH:MM:SS)") from None


def parse_sacct(text: str, source: str = "<sacct>", tz: str = "UTC") -> list[JobAllocation]:
    """Job allocations from `sacct --parsable2` output (header line first, fields separated by `|`)."""
    zone = ZoneInfo(tz)
    reader = csv.reader(io.StringIO(text), delimiter="|", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
        raise AccountingError(f"{source}: empty; expected sacct --parsable2 output with a header line")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise AccountingError(f"{source}:1: missing column(s) {', '.join(missing)}; run sacct with "
                              f"--format {','.join(REQUIRED)}")
    col = {name: header.index(name) for name in REQUIRED}
    jobs: list[JobAllocation] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or row == [""]:
            continue
        if len(row) < len(header):
            raise AccountingError(f"{source}:{line_no}: {len(row)} fields, the header has {len(header)}")
        job = row[col["JobID"]]
        if "." in job:
            continue  # a job step; the allocation line carries the resources
        where = f"{source}:{line_no}"
        start = _time(row[col["Start"]], zone, f"{where}: Start")
        if start is None:
            continue  # never started: no energy to attribute
        nodes = tuple(expand_nodelist(row[col["NodeList"]]))
        gpus = gpus_in_tres(row[col["AllocTRES"]])
        if not nodes or not gpus:
            continue  # no GPU on any node: nothing of the GPU energy is this job's
        if gpus % len(nodes):
            raise AccountingError(f"{where}: {gpus} GPUs do not spread evenly over {len(nodes)} nodes; "
                                  "attribution needs GPUs per node")
        jobs.append(JobAllocation(job, row[col["Account"]], row[col["Partition"]], row[col["QOS"]], start,
                                  _time(row[col["End"]], zone, f"{where}: End"), nodes, gpus // len(nodes)))
    return jobs


def load_sacct(path: str | Path, tz: str = "UTC") -> list[JobAllocation]:
    """`parse_sacct` of a file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AccountingError(f"{path}: cannot read: {e.strerror}") from None
    return parse_sacct(text, str(path), tz)
