"""`aifmon deploy alertmanager-config`: an Alertmanager configuration from the alert rules file.

The receivers are the rules file's own `notifiers` (`aifmon.alerts.config.NotifierConfig`), so alerts from
Prometheus (the exported rule file) reach the same people as the embedded evaluator's:
- `webhook` → `webhook_configs` (Alertmanager posts the same webhook JSON, version 4, as aifmon does);
- `email` → `email_configs` (STARTTLS as `starttls` says);
- `alertmanager` is this Alertmanager itself (the evaluator posting to it): not a receiver.

Grouping and repetition follow the rules file: `group_by`, `repeat_interval`. Inhibitions are the embedded
evaluator's own list (`aifmon.alerts.rules.INHIBITIONS`), and alerts of severity `info` (shown, not paged) go to
a receiver without notifiers. Secrets are never
written into the file: Alertmanager reads them from files (`credentials_file`, `auth_password_file`).
A notifier whose secret comes from a file names that file; one whose secret comes from an environment
variable gets `<secrets_dir>/<variable>` (Alertmanager cannot read the environment), which the site
creates (compose: a secret of that name). `secret_files()` lists what must exist.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import yaml

from aifmon.alerts.config import AlertConfig, NotifierConfig, format_duration
from aifmon.alerts.rules import INHIBITIONS, SHOWN_NOT_PAGED
from aifmon.deploy.prometheus_config import generated_header
from aifmon.telemetry.inventory import Inventory

RECEIVER = "aifmon"
SILENT_RECEIVER = "aifmon-shown-not-paged"
DEFAULT_SECRETS_DIR = "/run/secrets"


def _secret_path(env: str | None, file: str | None, secrets_dir: str) -> str | None:
    """Where Alertmanager reads a notifier's secret: its file, or `<secrets_dir>/<environment variable>`."""
    if file:
        return file
    if env:
        return str(PurePosixPath(secrets_dir) / env)
    return None


def _webhook(n: NotifierConfig, secrets_dir: str) -> dict:
    config: dict = {"url": n.url, "send_resolved": True}
    token = _secret_path(n.bearer_token_env, n.bearer_token_file, secrets_dir)
    if token:
        config["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": token}}
    return config


def _email(n: NotifierConfig, secrets_dir: str) -> dict:
    config: dict = {"to": ", ".join(n.to or []), "from": n.from_addr, "smarthost": n.smtp, "require_tls": n.starttls,
                    "send_resolved": True}
    if n.username:
        config["auth_username"] = n.username
        password = _secret_path(n.password_env, n.password_file, secrets_dir)
        if password:
            config["auth_password_file"] = password
    return config


def alertmanager_config(config: AlertConfig, secrets_dir: str = DEFAULT_SECRETS_DIR) -> dict:
    """The alertmanager.yml document for one alert rules file (see the module docstring)."""
    receiver: dict = {"name": RECEIVER}
    webhooks = [_webhook(n, secrets_dir) for n in config.notifiers if n.type == "webhook"]
    emails = [_email(n, secrets_dir) for n in config.notifiers if n.type == "email"]
    if webhooks:
        receiver["webhook_configs"] = webhooks
    if emails:
        receiver["email_configs"] = emails
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": list(config.group_by),
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": format_duration(config.repeat_interval_s),
            # what the dashboard shows and nobody is paged for goes to a receiver without notifiers
            "routes": [{"matchers": [f'severity="{SHOWN_NOT_PAGED}"'], "receiver": SILENT_RECEIVER}],
        },
        "inhibit_rules": [{
            "source_matchers": [f'{label}=~"{pattern}"' for label, pattern in i.source.items()],
            "target_matchers": [f'{label}=~"{pattern}"' for label, pattern in i.target.items()],
            "equal": list(i.equal),
        } for i in INHIBITIONS],
        "receivers": [receiver, {"name": SILENT_RECEIVER}],
    }


def secret_files(config: AlertConfig, secrets_dir: str = DEFAULT_SECRETS_DIR) -> list[str]:
    """The secret files the generated configuration reads (each must exist where Alertmanager runs)."""
    paths = []
    for n in config.notifiers:
        if n.type == "webhook":
            paths.append(_secret_path(n.bearer_token_env, n.bearer_token_file, secrets_dir))
        elif n.type == "email" and n.username:
            paths.append(_secret_path(n.password_env, n.password_file, secrets_dir))
    return [p for p in paths if p]


def write_alertmanager_config(inventory: Inventory, config: AlertConfig, out_dir: Path,
                              secrets_dir: str = DEFAULT_SECRETS_DIR) -> list[Path]:
    """Write alertmanager.yml under `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "alertmanager.yml"
    note = "" if config.notifiers and any(n.type != "alertmanager" for n in config.notifiers) else \
        "# The alert rules file names no webhook or e-mail notifier: alerts are shown in Alertmanager only.\n"
    path.write_text(generated_header("alertmanager-config", inventory) + f"# Receivers from the notifiers of {config.source}.\n"
                    + note + yaml.safe_dump(alertmanager_config(config, secrets_dir), sort_keys=False))
    return [path]
