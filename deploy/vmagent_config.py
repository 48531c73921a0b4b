"""`aifmon deploy vmagent-config`: vmagent scrape configuration from the inventory, for sites past one Prometheus.

vmagent reads the same scrape job as Prometheus (`prometheus_config.scrape_job`: file_sd targets with
`factory`/`system` labels, `honor_labels: true`) and remote-writes to VictoriaMetrics (single node
`http://vm:8428/api/v1/write`, or a cluster's vminsert `http://vminsert:8480/insert/0/prometheus/api/v1/write`).
It evaluates no rules: at that scale vmalert runs the file of `aifmon alerts export-rules` against
VictoriaMetrics. A gigafactory splits its targets over `members` vmagents, each scraping about 1/members
of them (`-promscrape.cluster.*`); `vmagent_command()` gives each member's command line.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from aifmon.deploy.prometheus_config import duration, generated_header, scrape_job, scrape_timeout_s, write_targets
from aifmon.telemetry.inventory import Inventory

CONFIG_FILE = "vmagent.yml"


def vmagent_config(scrape_interval_s: float) -> dict:
    """The vmagent `-promscrape.config` document."""
    return {"global": {"scrape_interval": duration(scrape_interval_s), "scrape_timeout": duration(scrape_timeout_s(scrape_interval_s))},
            # vmagent re-reads file_sd files every -promscrape.fileSDCheckInterval (30 s), not per job
            "scrape_configs": [scrape_job(file_sd_refresh=None)]}


def vmagent_command(config_path: Path, remote_write_url: str, members: int = 1, member: int = 0) -> list[str]:
    """The command line of one vmagent (member `member` of `members`)."""
    if not 0 <= member < members:
        raise ValueError(f"member {member} is not in 0 … {members - 1}")
    cmd = ["vmagent", f"-promscrape.config={config_path}", f"-remoteWrite.url={remote_write_url}",
           # vmagent buffers on disk while the store is away: this folder must survive a restart
           "-remoteWrite.tmpDataPath=/var/lib/vmagent/remotewrite-data"]
    if members > 1:
        cmd += [f"-promscrape.cluster.membersCount={members}", f"-promscrape.cluster.memberNum={member}"]
    return cmd


def write_vmagent_config(inventory: Inventory, out_dir: Path, scrape_interval_s: float = 15.0,
                         remote_write_url: str = "http://127.0.0.1:8428/api/v1/write", members: int = 1) -> list[Path]:
    """Write vmagent.yml and the file_sd targets under `out_dir`; returns the files written."""
    if scrape_interval_s <= 0:
        raise ValueError("scrape interval must be positive")
    if members < 1:
        raise ValueError("members must be 1 or more")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / CONFIG_FILE
    commands = "".join(f"#   {' '.join(vmagent_command(config.resolve(), remote_write_url, members, i))}\n" for i in range(members))
    config.write_text(generated_header("vmagent-config", inventory) + "# Run (one line per vmagent):\n" + commands
                      + yaml.safe_dump(vmagent_config(scrape_interval_s), sort_keys=False))
    return [config, write_targets(inventory, out_dir)]
