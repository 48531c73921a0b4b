"""Notifiers: where the evaluator's alerts go. Webhook (JSON), Alertmanager v2 API, e-mail over SMTP.

Every notifier receives one *group* of alerts at a time (alerts sharing the `group_by` labels) in the
shape Alertmanager gives its own webhook receivers, so one receiver serves both an Alertmanager and
the embedded evaluator. A failed attempt is retried `retries` times with a short back-off and counted;
a notification still undelivered stays owed and is tried again next cycle (the evaluator keeps, per
alert and notifier, what was last delivered). Secrets come from the environment or a file. Errors and logs
show a webhook's URL as scheme://host/… (a Slack-style webhook's path is its secret), an Alertmanager's redacted.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from aifmon.alerts.config import NotifierConfig, required
from aifmon.telemetry.config import host_port
from aifmon.telemetry.redact import redact_text, redact_url

log = logging.getLogger(__name__)

ALERTMANAGER_RESEND_S = 60.0
"""How often firing alerts are re-posted to Alertmanager, s (as Prometheus does), so it does not time them out."""


@dataclass(frozen=True)
class Notice:
    """One alert as a notifier sends it. Times are ms since the Unix epoch; `ends_ms` is None while firing."""

    labels: dict[str, str]
    annotations: dict[str, str]
    status: str  # "firing" or "resolved"
    starts_ms: int
    ends_ms: int | None
    generator_url: str = ""

    def as_alertmanager(self, now_ms: int, hold_ms: int) -> dict:
        """Alertmanager v2 `postableAlert`: a firing alert's `endsAt` is `hold_ms` ahead, so it expires if we go silent."""
        return {
            "labels": self.labels, "annotations": self.annotations, "startsAt": _iso(self.starts_ms),
            "endsAt": _iso(self.ends_ms if self.ends_ms is not None else now_ms + hold_ms),
            "generatorURL": self.generator_url,
        }

    def as_webhook(self) -> dict:
        """One entry of Alertmanager's webhook payload `alerts` list."""
        return {
            "status": self.status, "labels": self.labels, "annotations": self.annotations,
            "startsAt": _iso(self.starts_ms), "endsAt": _iso(self.ends_ms) if self.ends_ms else "0001-01-01T00:00:00Z",
            "generatorURL": self.generator_url, "fingerprint": fingerprint(self.labels),
        }


def fingerprint(labels: dict[str, str]) -> str:
    """A stable identity of an alert: its labels, sorted, as one string."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Notifier(Protocol):
    name: str
    repeat_interval_s: float
    retries: int

    def send(self, group: dict[str, str], notices: list[Notice], now_ms: int) -> None:
        """Deliver one group of alerts, or raise (OSError, smtplib.SMTPException, NotifierError)."""


class NotifierError(RuntimeError):
    """A notifier's server answered, but not with success."""


@dataclass
class NotifierStats:
    """Counters of one notifier since the evaluator started."""

    sent: int = 0
    """Groups delivered."""
    attempts: int = 0
    retries: int = 0
    """Attempts after a failed one (within a cycle)."""
    failures: int = 0
    """Groups given up for this cycle after every retry failed (they are owed to the next cycle)."""
    last_error: str = ""
    last_error_ms: int = 0


def _secret(env: str | None, file: str | None, what: str) -> str | None:
    """A secret from an environment variable or a file (first line), read when it is needed."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise NotifierError(f"{what}: environment variable {env} is not set")
        return value
    if file:
        return Path(file).read_text(encoding="utf-8").splitlines()[0].strip()
    return None


def _post_json(url: str, payload: object, timeout_s: float, token: str | None, keep_path: bool) -> None:
    """POST `payload` as JSON; any failure is a NotifierError whose message shows `url` redacted (`keep_path` as `redact_url`)."""
    headers = {"Content-Type": "application/json", "User-Agent": "aifmon"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    shown = redact_url(url, keep_path)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            r.read()
    except urllib.error.HTTPError as e:  # answered, but refused: say what it said
        body = e.read()[:200].decode(errors="replace")
        raise NotifierError(f"{shown} answered HTTP {e.code}: {redact_text(body, url, keep_path)}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # unreachable, refused, timed out, a URL urllib cannot use
        raise NotifierError(f"{shown}: {type(e).__name__}: {redact_text(str(e), url, keep_path)}") from None


@dataclass
class WebhookNotifier:
    """POSTs Alertmanager's webhook JSON (version 4) for each group to `url`."""

    name: str
    url: str
    repeat_interval_s: float
    retries: int = 2
    timeout_s: float = 5.0
    token: Callable[[], str | None] = lambda: None
    receiver: str = "aifmon"

    def send(self, group: dict[str, str], notices: list[Notice], now_ms: int) -> None:
        common = {k: v for k, v in notices[0].labels.items() if all(n.labels.get(k) == v for n in notices)}
        common_ann = {k: v for k, v in notices[0].annotations.items() if all(n.annotations.get(k) == v for n in notices)}
        payload = {
            "version": "4", "receiver": self.receiver,
            "status": "firing" if any(n.status == "firing" for n in notices) else "resolved",
            "groupKey": "{}:" + fingerprint(group), "truncatedAlerts": 0, "groupLabels": group,
            "commonLabels": common, "commonAnnotations": common_ann, "externalURL": "",
            "alerts": [n.as_webhook() for n in notices],
        }
        _post_json(self.url, payload, self.timeout_s, self.token(), keep_path=False)


@dataclass
class AlertmanagerNotifier:
    """POSTs alerts to an Alertmanager's v2 API; Alertmanager groups, de-duplicates, silences and routes them."""

    name: str
    url: str
    repeat_interval_s: float = ALERTMANAGER_RESEND_S
    retries: int = 2
    timeout_s: float = 5.0
    token: Callable[[], str | None] = lambda: None
    evaluation_interval_s: float = 15.0

    def send(self, group: dict[str, str], notices: list[Notice], now_ms: int) -> None:
        hold_ms = int(4 * max(self.repeat_interval_s, self.evaluation_interval_s) * 1000)
        _post_json(self.url.rstrip("/") + "/api/v2/alerts", [n.as_alertmanager(now_ms, hold_ms) for n in notices],
                   self.timeout_s, self.token(), keep_path=True)


@dataclass
class EmailNotifier:
    """Sends one plain-text e-mail per group over SMTP (STARTTLS unless turned off; login when a username is set)."""

    name: str
    host: str
    port: int
    from_addr: str
    to: list[str]
    repeat_interval_s: float
    retries: int = 2
    timeout_s: float = 10.0
    username: str | None = None
    password: Callable[[], str | None] = lambda: None
    starttls: bool = True

    def send(self, group: dict[str, str], notices: list[Notice], now_ms: int) -> None:
        msg = EmailMessage()
        firing = sum(n.status == "firing" for n in notices)
        head = f"[{'FIRING' if firing else 'RESOLVED'}:{firing or len(notices)}] " + " ".join(group.values())
        msg["Subject"], msg["From"], msg["To"] = head, self.from_addr, ", ".join(self.to)
        lines = []
        for n in notices:
            lines.append(f"{n.status.upper()}  {n.labels.get('alertname')}  " + " ".join(
                f"{k}={v}" for k, v in n.labels.items() if k != "alertname"))
            lines += [f"    {k}: {v}" for k, v in n.annotations.items()]
            lines.append(f"    since {_iso(n.starts_ms)}" + (f", resolved {_iso(n.ends_ms)}" if n.ends_ms else ""))
        msg.set_content("\n".join(lines) + "\n")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password() or "")
            smtp.send_message(msg)


def build_notifiers(configs: tuple[NotifierConfig, ...] | list[NotifierConfig], repeat_interval_s: float,
                    evaluation_interval_s: float) -> list[Notifier]:
    """Notifier objects for the rules file's `notifiers`; names default to `<type>-<n>`."""
    out: list[Notifier] = []
    for i, c in enumerate(configs):
        name = c.name or f"{c.type}-{i}"
        token = lambda c=c, name=name: _secret(c.bearer_token_env, c.bearer_token_file, f"notifier {name} bearer token")
        if c.type == "webhook":
            out.append(WebhookNotifier(name, required(c.url), c.repeat_interval_s or repeat_interval_s, c.retries, c.timeout_s, token))
        elif c.type == "alertmanager":
            out.append(AlertmanagerNotifier(name, required(c.url), c.repeat_interval_s or ALERTMANAGER_RESEND_S, c.retries, c.timeout_s,
                                            token, evaluation_interval_s))
        else:
            host, port = required(host_port(required(c.smtp)))
            password = lambda c=c, name=name: _secret(c.password_env, c.password_file, f"notifier {name} SMTP password")
            out.append(EmailNotifier(name, host, port, required(c.from_addr), list(required(c.to)), c.repeat_interval_s or repeat_interval_s,
                                     c.retries, c.timeout_s, c.username, password, c.starttls))
    return out


def deliver(notifier: Notifier, group: dict[str, str], notices: list[Notice], now_ms: int, stats: NotifierStats,
            backoff_s: float = 0.5) -> bool:
    """Send one group with retries; True when delivered. Never raises: a failure is logged and counted."""
    for attempt in range(notifier.retries + 1):
        stats.attempts += 1
        if attempt:
            stats.retries += 1
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            notifier.send(group, notices, now_ms)
            stats.sent += 1
            return True
        except Exception as e:  # any failure of one notifier must leave the others and the evaluator running
            stats.last_error, stats.last_error_ms = f"{type(e).__name__}: {e}", now_ms
    stats.failures += 1
    log.warning("notifier %s: %d alert(s) of group %s not delivered after %d attempt(s): %s; retrying next cycle",
                notifier.name, len(notices), group, notifier.retries + 1, stats.last_error)
    return False

