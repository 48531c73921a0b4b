"""The embedded evaluator: every `evaluation_interval` it measures every rule over the store, moves each
alert through pending → firing → resolved, saves that state, and notifies.

Semantics (the same as the exported Prometheus rules, see `aifmon.alerts.prometheus`):
- A rule is *met* when its share reaches the threshold (breached: exceeds it). An alert is pending
  from the first evaluation where it is met and fires at the first evaluation at least `for` later; a
  pending alert that stops being met is dropped silently.
- Hysteresis: a firing alert stays firing while its share is at least threshold - hysteresis, so a
  value hovering at a threshold does not flap.
- A series counts only if it has a sample within `stale_after`; a scope with no data is not met (it
  resolves), and `TelemetryMissing` says why.
- `TelemetryMissing` starts no alert until the evaluator has watched for `stale_after`: before that, "no
  sample within stale_after" is not yet known, and a series may only be waiting for its first scrape (which
  registers every series, seconds at 100,000 GPUs). A missing alert restored from the state goes on as usual.
  Prometheus has no such wait in its rules; its first scrape comes within one scrape interval.
- Forecast: least-squares line through the scope's power at each evaluation of the last `window`,
  extrapolated `horizon` ahead (Prometheus' predict_linear); met when that reaches the cap while the
  power is not yet over it.

State is a JSON file beside the store (`<store>.alerts.json`, see `aifmon.alerts.state`), replaced atomically whenever an alert
changes state or a notification is delivered. A file rather than a store table because the dashboard
and `aifmon alerts` read it from other processes while one process holds the DuckDB file for writing,
and because it must survive a store that is only read (a PromQL backend). A restart reloads it: a
firing alert stays firing and is not paged again, a pending one keeps its start time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aifmon.alerts.config import AlertConfig, AlertRulesError, format_duration, load_alert_config
from aifmon.alerts.notify import Notice, Notifier, NotifierStats, build_notifiers, deliver, fingerprint
from aifmon.alerts.rules import Rule, build_rules, inhibited, inhibits, paged
from aifmon.alerts.state import STATE_VERSION, load_state, state_path_for
from aifmon.rollups.counters import HOUR_MS
from aifmon.rollups.ledger import month_of, month_range, read_ledger
from aifmon.stores.store import SampleReader
from aifmon.telemetry.inventory import Inventory
from aifmon.telemetry.power import facility_power, sum_by_factory

log = logging.getLogger(__name__)

KEEP_RESOLVED_MS = 24 * 3_600_000
"""Resolved alerts stay in the state (for the dashboard's recent list) this long, ms."""
MAX_RESOLVED = 2000
_TRAILING_DIGITS = re.compile(r"\d+$")


@dataclass
class Alert:
    """One alert instance. Times in ms since the Unix epoch; `value` is the share that was measured (ratio)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: str  # "pending", "firing" or "resolved"
    active_ms: int
    fired_ms: int | None = None
    resolved_ms: int | None = None
    value: float = math.nan
    sent: dict[str, list] = field(default_factory=dict)
    """notifier name → [status delivered ("firing"/"resolved"), when (ms)]."""
    rule: str = ""
    """The rule that put it in this state, in words (`Rule.describe`)."""
    inhibited: bool = False
    """True while a firing alert inhibits it (`rules.INHIBITIONS`): shown, not sent."""

    def notice(self) -> Notice:
        status = "resolved" if self.state == "resolved" else "firing"
        return Notice(self.labels, self.annotations, status, self.fired_ms or self.active_ms, self.resolved_ms)

    def to_json(self) -> dict:
        d = self.__dict__.copy()
        d["value"] = None if not math.isfinite(self.value) else self.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> Alert:
        d = dict(d)
        d["value"] = math.nan if d.get("value") is None else d["value"]
        return cls(**d)


@dataclass
class _Candidate:
    labels: dict[str, str]
    value: float
    annotations: dict[str, str]


class AlertEvaluator:
    """Evaluates `build_rules(inventory, config)` over `store` (see module docstring); `.run()` / `.stop()` as a worker.

    `rules_path` is re-read when it changes; a file that fails validation is reported (`rules_error`)
    and the last good rules stay in force. `notifiers` replaces the rules file's notifiers (tests);
    `backoff_s` is the first pause between a notifier's retries, s (doubling).
    """

    def __init__(self, store: SampleReader, inventory: Inventory, rules_path: str | Path | None = None,
                 state_path: str | Path | None = None, notifiers: list[Notifier] | None = None,
                 backoff_s: float = 0.5, budget_refresh_s: float = 900.0):
        self.store = store
        self.inventory = inventory
        self.rules_path = Path(rules_path) if rules_path else None
        self.state_path = Path(state_path) if state_path else state_path_for(store)
        self.backoff_s = backoff_s
        self.budget_refresh_s = budget_refresh_s  # monthly budgets move slowly: re-read the ledger at most this often, s
        self._fixed_notifiers = notifiers
        self._rules_stamp: tuple[float, int] | None = None
        self.rules_error: str | None = None
        self._apply(load_alert_config(self.rules_path, inventory))
        if self.rules_path:
            self._rules_stamp = _file_stamp(self.rules_path)
        saved = load_state(self.state_path)
        self.alerts: dict[str, Alert] = {fingerprint(a["labels"]): Alert.from_json(a) for a in saved["alerts"]}
        self.stats: dict[str, NotifierStats] = defaultdict(NotifierStats)
        self._history: dict[tuple[str, str | None], deque] = defaultdict(deque)
        self._seeded = False
        self._budget_cache: tuple[int, pd.Series] | None = None
        self._stop = threading.Event()
        self.cycles = 0
        self.last_cycle_s = math.nan
        self._first_cycle_ms: int | None = None

    # -- rules -------------------------------------------------------------------------------------
    def _apply(self, config: AlertConfig) -> None:
        self.config = config
        self.rules = build_rules(self.inventory, config)
        self.notifiers = self._fixed_notifiers if self._fixed_notifiers is not None else build_notifiers(
            config.notifiers, config.repeat_interval_s, config.evaluation_interval_s)
        self._notifier_since = getattr(self, "_notifier_since", {})
        now = int(time.time() * 1000)
        for n in self.notifiers:
            self._notifier_since.setdefault(n.name, now)

    def reload(self) -> bool:
        """Re-read the rules file if it changed; True when new rules are in force. A bad file keeps the last good rules."""
        if not self.rules_path:
            return False
        stamp = _file_stamp(self.rules_path)
        if stamp == self._rules_stamp:
            return False
        self._rules_stamp = stamp
        try:
            config = load_alert_config(self.rules_path, self.inventory)
        except AlertRulesError as e:
            self.rules_error = str(e)
            log.error("%s; keeping the rules loaded from %s", e, self.config.source)
            self._save(int(time.time() * 1000))
            return False
        self.rules_error = None
        self._apply(config)
        log.info("alert rules reloaded from %s: %d rules", self.rules_path, len(self.rules))
        return True

    # -- one cycle ---------------------------------------------------------------------------------
    def evaluate(self, now_ms: int | None = None) -> list[Alert]:
        """One evaluation cycle at `now_ms` (default now): measure, step every alert, save, notify. Returns pending and firing alerts."""
        t0 = time.perf_counter()
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if self._first_cycle_ms is None:
            self._first_cycle_ms = now_ms
        judges_missing = now_ms - self._first_cycle_ms >= self.config.stale_after_s * 1000
        changed = False
        seen: set[str] = set()
        for rule, candidates in self._measure(now_ms):
            described = rule.describe() if candidates else ""
            for c in candidates:
                key = fingerprint(c.labels)
                a = self.alerts.get(key)
                if not rule.passes(c.value, a is not None and a.state == "firing"):
                    continue
                if (a is None or a.state == "resolved") and rule.kind == "missing" and not judges_missing:
                    continue
                seen.add(key)
                if a is None or a.state == "resolved":
                    a = self.alerts[key] = Alert(c.labels, c.annotations, "pending", now_ms, sent=a.sent if a else {})
                    changed = True
                a.value, a.annotations, a.rule = c.value, c.annotations, described
                if a.state == "pending" and now_ms - a.active_ms >= rule.for_s * 1000:
                    a.state, a.fired_ms = "firing", now_ms
                    changed = True
        for key, a in list(self.alerts.items()):
            if key in seen:
                continue
            if a.state == "pending":
                del self.alerts[key]
                changed = True
            elif a.state == "firing":
                a.state, a.resolved_ms = "resolved", now_ms
                changed = True
        changed |= self._forget_old(now_ms)
        changed |= self._inhibit()
        changed |= self._notify(now_ms)
        if changed:
            self._save(now_ms)
        self.cycles += 1
        self.last_cycle_s = time.perf_counter() - t0
        return [a for a in self.alerts.values() if a.state != "resolved"]

    def _forget_old(self, now_ms: int) -> bool:
        resolved = sorted((a.resolved_ms, k) for k, a in self.alerts.items() if a.state == "resolved" and a.resolved_ms is not None)
        drop = {k for t, k in resolved if now_ms - t > KEEP_RESOLVED_MS} | {k for _, k in resolved[:-MAX_RESOLVED]}
        for k in drop:
            del self.alerts[k]
        return bool(drop)

    # -- measurement -------------------------------------------------------------------------------
    def _measure(self, now_ms: int) -> Iterable[tuple[Rule, list[_Candidate]]]:
        stale = self.config.stale_after_s
        kinds = {r.kind for r in self.rules}
        meter = sum_by_factory(self.store.latest("aif_facility_power_watts", now_ms, stale))["value"]
        nodes = _with_columns(self.store.latest("aif_node_power_watts", now_ms, stale), ["factory", "system", "node", "source"])
        gpus = _with_columns(self.store.latest("aif_gpu_power_watts", now_ms, stale), ["factory", "system", "node", "gpu"])
        it_factory = nodes.groupby("factory")["value"].sum()
        it_system = nodes.groupby(["factory", "system"])["value"].sum()
        scope_w: dict[tuple[str, str | None], float] = {(f.id, None): facility_power(f, meter, it_factory)[0] for f in self.inventory.live_factories()}
        scope_w |= {(f, s): float(w) for (f, s), w in it_system.items()}
        if "forecast" in kinds:
            self._record_history(now_ms, scope_w)
        present = _present_counts(nodes, gpus)
        throttled = self._throttled(now_ms, gpus) if "throttle" in kinds else None
        node_share = _node_shares(nodes[nodes["source"] == "bmc"], [r for r in self.rules if r.scope == "node"])
        budget = self._month_energy(now_ms) if "budget" in kinds else None
        for rule in self.rules:
            if rule.kind == "power" and rule.scope == "node":
                yield rule, _node_candidates(rule, node_share)
            elif rule.kind == "power":
                yield rule, _power_candidate(rule, scope_w.get((rule.factory, rule.system), math.nan))
            elif rule.kind == "forecast":
                yield rule, self._forecast_candidate(rule, now_ms, scope_w.get((rule.factory, rule.system), math.nan))
            elif rule.kind == "missing":
                yield rule, _missing_candidate(rule, present)
            elif rule.kind == "throttle":
                yield rule, _throttle_candidates(rule, throttled)
            elif rule.kind == "budget":
                yield rule, _budget_candidate(rule, budget)

    def _throttled(self, now_ms: int, gpus: pd.DataFrame) -> pd.DataFrame:
        """GPUs held at their power limit now (sw_power_cap), with their power and limit, W."""
        # Only the power-cap reason: a fifth of the throttle series, read and labelled.
        t = self.store.latest("aif_gpu_throttled", now_ms, self.config.stale_after_s, match={"reason": "sw_power_cap"})
        if t.empty:
            return pd.DataFrame(columns=["factory", "system", "node", "gpu", "power", "limit"])
        t = _with_columns(t[t["value"] >= 0.5], ["factory", "system", "node", "gpu"])
        if t.empty:
            return t.assign(power=[], limit=[])
        keys = ["factory", "system", "node", "gpu"]
        limits = _with_columns(self.store.latest("aif_gpu_power_limit_watts", now_ms, self.config.stale_after_s), keys)
        t = t[keys].merge(gpus[keys + ["value"]].rename(columns={"value": "power"}), on=keys, how="left")
        return t.merge(limits[keys + ["value"]].rename(columns={"value": "limit"}), on=keys, how="left")

    def _record_history(self, now_ms: int, scope_w: dict) -> None:
        """Keep each scope's power at every evaluation over the longest forecast window (seeded from the store once)."""
        window_ms = int(max(r.window_s for r in self.rules if r.kind == "forecast") * 1000)
        if not self._seeded:
            self._seed_history(now_ms, window_ms)
            self._seeded = True
        for key, w in scope_w.items():
            if math.isfinite(w):
                h = self._history[key]
                h.append((now_ms, w))
                while h and h[0][0] < now_ms - window_ms:
                    h.popleft()

    def _seed_history(self, now_ms: int, window_ms: int) -> None:
        """Scope power over the last window from the store, in buckets of one evaluation interval, so a restart can forecast at once."""
        step = max(1, int(self.config.evaluation_interval_s * 1000))
        start = now_ms - window_ms

        def per_bucket(metric: str, keys: list[str]) -> pd.DataFrame:
            """keys, t_ms (newest sample of the bucket), value (sum over series of each one's newest sample)."""
            r = self.store.range(metric, start, now_ms)
            if r.empty:
                return pd.DataFrame(columns=keys + ["bucket", "t_ms", "value"])
            if "system" not in r:
                r["system"] = None
            # Buckets end at now, as the live evaluations do; the newest (bucket 0) is what this evaluation measures.
            r["bucket"] = (now_ms - r["t_ms"]) // step
            last = r[r["bucket"] > 0].sort_values("t_ms").groupby(["series_id", "bucket"], as_index=False).last()
            return last.groupby(keys + ["bucket"], as_index=False).agg(t_ms=("t_ms", "max"), value=("value", "sum"))

        meter = per_bucket("aif_facility_power_watts", ["factory"])
        nodes = per_bucket("aif_node_power_watts", ["factory", "system"])
        for f in self.inventory.live_factories():
            m = meter[meter["factory"] == f.id]
            if not (f.facility_meter and not m.empty):
                m = nodes[nodes["factory"] == f.id].groupby("bucket", as_index=False).agg(t_ms=("t_ms", "max"), value=("value", "sum"))
                m["value"] *= f.design_pue
            self._history[(f.id, None)].extend(sorted(zip(m["t_ms"].astype(int), m["value"])))
        for (fid, sid), g in nodes.groupby(["factory", "system"]):
            self._history[(fid, sid)].extend(sorted(zip(g["t_ms"].astype(int), g["value"])))

    def _forecast_candidate(self, rule: Rule, now_ms: int, watts: float) -> list[_Candidate]:
        pts = [(t, w) for t, w in self._history.get((rule.factory, rule.system), ()) if t >= now_ms - rule.window_s * 1000]
        if len(pts) < 2 or not math.isfinite(watts) or not rule.from_share <= watts / rule.cap_watts <= 1.0:
            return []  # no trend yet, too far below the cap to matter, or already over it (PowerCapBreached's business)
        t = np.array([p[0] for p in pts], dtype=float) / 1000.0 - now_ms / 1000.0
        w = np.array([p[1] for p in pts])
        slope = float(np.sum((t - t.mean()) * (w - w.mean())) / np.sum((t - t.mean()) ** 2)) if np.ptp(t) > 0 else 0.0
        predicted = float(w.mean() - slope * t.mean() + slope * rule.horizon_s)  # the line at now + horizon
        share = predicted / rule.cap_watts
        ann = _annotations(rule, watts, watts / rule.cap_watts)
        ann["forecast"] = f"{predicted:.0f} W ({_pct(share)} of the cap) in {format_duration(rule.horizon_s)} at the trend of the last {format_duration(rule.window_s)}"
        ann["percentage"] = _pct(share)
        return [_Candidate(rule.labels, share, ann)]

    def _month_energy(self, now_ms: int) -> pd.Series:
        """GPU energy per project from the start of this calendar month (UTC) to the last finished hour, J, from the energy
        ledger (the figure the Projects page and the monthly report show for those hours), re-read every
        `budget_refresh_s`: the hours still open to late data are computed from samples at each read."""
        if self._budget_cache and now_ms - self._budget_cache[0] < self.budget_refresh_s * 1000:
            return self._budget_cache[1]
        month_start, _ = month_range(month_of(now_ms))
        finished = now_ms // HOUR_MS * HOUR_MS
        if finished <= month_start:
            energy = pd.Series(dtype=float)
        else:
            jobs = read_ledger(self.store, self.inventory, month_start, finished, now_ms).job_totals()
            energy = jobs.groupby("project")["energy_j"].sum()
        self._budget_cache = (now_ms, energy)
        return energy

    # -- notification and state --------------------------------------------------------------------
    def _inhibit(self) -> bool:
        """Mark the active alerts that a firing alert inhibits; True when any mark changed. A resolved alert keeps the
        mark it had, so the resolution of an alert that was never sent is not sent either."""
        firing = [a.labels for a in self.alerts.values() if a.state == "firing" and inhibits(a.labels)]
        changed = False
        for a in self.alerts.values():
            if a.state != "resolved" and a.inhibited != (now := inhibited(a.labels, firing)):
                a.inhibited, changed = now, True
        return changed

    def _owed(self, a: Alert, n: Notifier, now_ms: int) -> bool:
        if not paged(a.labels, a.inhibited):
            return False
        last = a.sent.get(n.name)
        if a.state == "firing":
            return last is None or last[0] != "firing" or now_ms - last[1] >= n.repeat_interval_s * 1000
        if a.state == "resolved":
            return (last is not None and last[0] != "resolved") or (last is None and a.resolved_ms >= self._notifier_since[n.name])
        return False

    def _notify(self, now_ms: int) -> bool:
        """Send what each notifier is owed, grouped by `group_by`; True when any delivery was recorded."""
        changed = False
        for n in self.notifiers:
            groups: dict[tuple, list[Alert]] = defaultdict(list)
            for a in self.alerts.values():
                if self._owed(a, n, now_ms):
                    groups[tuple(a.labels.get(k, "") for k in self.config.group_by)].append(a)
            for values, alerts in sorted(groups.items()):
                group = dict(zip(self.config.group_by, values))
                if not deliver(n, group, [a.notice() for a in alerts], now_ms, self.stats[n.name], self.backoff_s):
                    break  # a notifier that is down gets one try per cycle, not one per group; the others go on
                for a in alerts:
                    a.sent[n.name] = ["resolved" if a.state == "resolved" else "firing", now_ms]
                changed = True
        return changed

    def _save(self, now_ms: int) -> None:
        """Write the state file atomically: a crash leaves the old file or the new one, never half of one."""
        data = {"version": STATE_VERSION, "saved_ms": now_ms, "rules_source": self.config.source,
                "rules_error": self.rules_error, "alerts": [a.to_json() for a in self.alerts.values()]}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    # -- worker ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Evaluate on interval boundaries until stop(); a failed cycle is logged and the next one runs."""
        while not self._stop.wait(self.config.evaluation_interval_s - (time.time() % self.config.evaluation_interval_s)):
            try:
                self.reload()
                self.evaluate()
            except Exception:
                log.exception("alert evaluation failed; retrying at the next interval")

    def stop(self) -> None:
        self._stop.set()


def _file_stamp(path: Path) -> tuple[float, int] | None:
    """(modification time, size) of a file, None if it cannot be read: what tells that the rules file changed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size


# -- measurement helpers (plain functions of frames) ---------------------------------------------------
def _with_columns(latest: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`latest` with every `keys` column, `value` and `t_ms` present even when no series answered."""
    for k in keys:
        if k not in latest:
            latest = latest.assign(**{k: None})
    if "value" not in latest:
        latest = latest.assign(value=pd.Series(dtype=float), t_ms=pd.Series(dtype="int64"))
    return latest


def _present_counts(nodes: pd.DataFrame, gpus: pd.DataFrame) -> dict[tuple[str, str | None], int]:
    """Series reporting per factory (system None) and per (factory, system): nodes with power plus GPUs with power."""
    out: dict[tuple[str, str | None], int] = defaultdict(int)
    n = nodes.drop_duplicates(["factory", "system", "node"])
    for frame in (n, gpus):
        for f, c in frame.groupby("factory").size().items():
            out[(f, None)] += int(c)
        for (f, s), c in frame.groupby(["factory", "system"]).size().items():
            out[(f, s)] += int(c)
    return out


def _node_shares(bmc: pd.DataFrame, node_rules: list[Rule]) -> pd.DataFrame:
    """Each node's BMC power as a share of its group's limit: factory, system, node, prefix, value (W), limit (W), share."""
    if bmc.empty or not node_rules:
        return pd.DataFrame(columns=["factory", "system", "node", "prefix", "value", "limit", "share"])
    limits = pd.DataFrame({(r.factory, r.system, r.node_prefix): r.cap_watts for r in node_rules}.items(), columns=["k", "limit"])
    limits[["factory", "system", "prefix"]] = pd.DataFrame(limits.pop("k").tolist(), index=limits.index)
    b = bmc[["factory", "system", "node", "value"]].assign(prefix=bmc["node"].str.replace(_TRAILING_DIGITS, "", regex=True))
    b = b.merge(limits, on=["factory", "system", "prefix"], how="inner")
    return b.assign(share=b["value"] / b["limit"])


def _node_candidates(rule: Rule, shares: pd.DataFrame) -> list[_Candidate]:
    mine = shares[(shares["factory"] == rule.factory) & (shares["system"] == rule.system) & (shares["prefix"] == rule.node_prefix)]
    mine = mine[mine["share"] >= rule.threshold - rule.hysteresis]  # cannot be met below this, firing or not
    return [_Candidate(rule.labels | {"node": n}, s, _annotations(rule, v, s, cap=lim, node=n))
            for n, s, v, lim in zip(mine["node"], mine["share"], mine["value"], mine["limit"])]


def _power_candidate(rule: Rule, watts: float) -> list[_Candidate]:
    if not math.isfinite(watts):
        return []
    share = watts / rule.cap_watts
    return [_Candidate(rule.labels, share, _annotations(rule, watts, share))]


def _missing_candidate(rule: Rule, present: dict) -> list[_Candidate]:
    expected = rule.expected_gpus + rule.expected_nodes
    if not expected:
        return []
    have = min(present.get((rule.factory, rule.system), 0), expected)
    share = 1.0 - have / expected
    what = f"system {rule.system}" if rule.system else f"factory {rule.factory}"
    return [_Candidate(rule.labels, share, {
        "summary": f"{what}: {_pct(share)} of its expected power series are missing or stale",
        "value": f"{have} of {expected} series reporting", "cap": f"{expected} series expected", "percentage": _pct(share),
    })]


def _throttle_candidates(rule: Rule, throttled: pd.DataFrame) -> list[_Candidate]:
    mine = throttled[(throttled["factory"] == rule.factory) & (throttled["system"] == rule.system)]
    out = []
    for node, gpu, power, limit in zip(mine["node"], mine["gpu"], mine["power"], mine["limit"]):
        share = power / limit if limit and math.isfinite(power) else math.nan
        out.append(_Candidate(rule.labels | {"node": node, "gpu": str(gpu)}, 1.0, {
            "summary": f"GPU {gpu} of {node} held at its power limit (sw_power_cap throttling)",
            "value": _watts(power), "cap": _watts(limit), "percentage": _pct(share),
        }))
    return out


def _budget_candidate(rule: Rule, energy: pd.Series) -> list[_Candidate]:
    used = float(energy.get(rule.project, 0.0))
    share = used / rule.allocation_joules
    return [_Candidate(rule.labels, share, {
        "summary": f"project {rule.project} has used {_pct(share)} of its monthly energy allocation",
        "value": f"{used / 3.6e9:.4g} MWh", "cap": f"{rule.allocation_joules / 3.6e9:g} MWh", "percentage": _pct(share),
    })]


def _annotations(rule: Rule, watts: float, share: float, cap: float | None = None, node: str = "") -> dict[str, str]:
    what = {"factory": f"factory {rule.factory}", "system": f"system {rule.system}", "node": f"node {node}"}[rule.scope]
    basis = {"factory": "facility power", "system": "IT power", "node": "BMC power"}[rule.scope]
    return {"summary": f"{what} {basis} at {_pct(share)} of its power cap", "value": _watts(watts),
            "cap": _watts(cap if cap is not None else rule.cap_watts), "percentage": _pct(share)}


def _watts(w: float) -> str:
    return f"{w:.0f} W" if w is not None and math.isfinite(w) else "no data"


def _pct(share: float) -> str:
    """As Prometheus' humanizePercentage writes it (4 significant digits)."""
    return f"{share * 100:.4g}%" if math.isfinite(share) else "no data"


