"""The concrete alert rules of one site: every factory, system, node group, GPU partition and project of
the inventory, with the thresholds the alert rules file gives each.

The embedded evaluator (`aifmon.alerts.evaluator`) and the Prometheus rule file (`aifmon.alerts.prometheus`) are both
built from this one list, so the two judge the same numbers against the same thresholds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypedDict

from aifmon.alerts.config import AlertConfig, format_duration, required
from aifmon.telemetry.inventory import Factory, Inventory

POWER_LEVELS = (
    # level, alert name, severity, strictly above the threshold
    ("warning", "PowerCapWarning", "warning", False),
    ("critical", "PowerCapCritical", "critical", False),
    ("breached", "PowerCapBreached", "critical", True),
)
FORECAST, MISSING, BUDGET = "PowerCapForecast", "TelemetryMissing", "EnergyBudgetWarning"
SATURATED = "GpuPowerSaturated"
ALERT_NAMES = tuple(name for _, name, _, _ in POWER_LEVELS) + (FORECAST, MISSING, BUDGET, SATURATED)
SHOWN_NOT_PAGED = "info"
"""Severity of what the dashboard shows and nobody is paged for: a GPU at its power limit is how AI training runs."""


@dataclass(frozen=True)
class Inhibition:
    """While a firing alert matches `source`, alerts matching `target` with the same `equal` labels are not sent
    (Alertmanager's inhibit rule; the embedded evaluator applies the same list). Matchers are label -> regex."""

    source: dict[str, str]
    target: dict[str, str]
    equal: tuple[str, ...]

    def matches(self, matchers: dict[str, str], labels: dict[str, str]) -> bool:
        return all(re.fullmatch(pattern, labels.get(label, "")) for label, pattern in matchers.items())


INHIBITIONS = (
    # The critical level of a scope makes its warning redundant: page once, at the higher level.
    Inhibition({"alertname": "PowerCapCritical|PowerCapBreached"}, {"alertname": "PowerCapWarning"}, ("scope", "factory", "system", "node")),
    # A factory near its cap is the page; its systems' and nodes' warnings are the same event seen closer.
    Inhibition({"scope": "factory", "alertname": "PowerCap.*"}, {"scope": "system|node|gpu", "severity": "warning"}, ("factory",)),
)

Kind = Literal["power", "forecast", "missing", "throttle", "budget"]


@dataclass(frozen=True)
class Rule:
    """One alert rule on one target. Shares and thresholds are ratios (0.95 = 95 %), durations seconds.

    `labels` are the alert's fixed labels (alertname, scope, factory, system, project, severity...);
    node and GPU rules add `node` (and `gpu`) per alerting instance.
    """

    alertname: str
    kind: Kind
    scope: str
    labels: dict[str, str]
    threshold: float
    for_s: float
    strict: bool = False
    """True: fires above the threshold (breached); False: at or above it."""
    hysteresis: float = 0.0
    """A firing alert resolves only below threshold - hysteresis."""
    cap_watts: float = 0.0
    """factory/system/node rules: the power cap, W (facility power for a factory, IT power for a system)."""
    factory: str = ""
    system: str | None = None
    node_prefix: str | None = None
    """node rules: the node group's name prefix (nodes are `<prefix>NNNN`)."""
    design_pue: float = 1.0
    facility_meter: bool = True
    window_s: float = 0.0
    horizon_s: float = 0.0
    from_share: float = 0.0
    """forecast rules: only from this share of the cap now (ratio)."""
    expected_gpus: int = 0
    expected_nodes: int = 0
    project: str | None = None
    allocation_joules: float = 0.0

    def describe(self) -> str:
        """The rule in words, as the dashboard and e-mails show it (e.g. `facility power >= 95% of 15000 W for 2m, holds down to 93%`)."""
        pct = f"{self.threshold * 100:g}%"
        op = ">" if self.strict else ">="
        basis = {"factory": "facility power", "system": "IT power", "node": "node BMC power"}.get(self.scope, "")
        text = {
            "power": f"{basis} {op} {pct} of {self.cap_watts:.0f} W",
            "forecast": f"{basis} >= {self.from_share * 100:g}% and its trend of the last {format_duration(self.window_s)} reaches {pct} of {self.cap_watts:.0f} W "
                        f"within {format_duration(self.horizon_s)}",
            "missing": f">= {pct} of {self.expected_gpus + self.expected_nodes} expected power series missing or stale",
            "throttle": "GPU held at its power limit (sw_power_cap)",
            "budget": f"monthly GPU energy >= {pct} of {self.allocation_joules / 3.6e9:g} MWh",
        }[self.kind]
        text += f" for {format_duration(self.for_s)}"
        if self.hysteresis and self.kind in ("power", "forecast", "missing"):
            text += f", holds down to {(self.threshold - self.hysteresis) * 100:g}%"
        return text

    def passes(self, value: float, firing: bool) -> bool:
        """Whether `value` (a share) meets the rule; a firing alert holds down to threshold - hysteresis."""
        threshold = self.threshold - (self.hysteresis if firing else 0.0)
        return value > threshold if self.strict and not firing else value >= threshold


def paged(labels: dict[str, str], inhibited: bool) -> bool:
    """Whether notifiers are sent an alert: not inhibited by a firing one, nor of the severity shown and not paged.
    The evaluator's notifications and the dashboard's counts both ask this."""
    return not inhibited and labels.get("severity") != SHOWN_NOT_PAGED


def inhibited(labels: dict[str, str], firing: list[dict[str, str]]) -> bool:
    """Whether an alert with `labels` is inhibited by one of the `firing` alerts' labels (see `INHIBITIONS`)."""
    return any(
        i.matches(i.target, labels)
        and any(i.matches(i.source, f) and all(f.get(k, "") == labels.get(k, "") for k in i.equal) for f in firing)
        for i in INHIBITIONS
    )


def inhibits(labels: dict[str, str]) -> bool:
    """Whether an alert with `labels` matches the source of any of `INHIBITIONS`: only such firing alerts need be passed to
    `inhibited`, whose cost grows with targets x firing alerts (thousands of GPUs at their limit inhibit nothing)."""
    return any(i.matches(i.source, labels) for i in INHIBITIONS)


def build_rules(inventory: Inventory, config: AlertConfig) -> list[Rule]:
    """Every rule of every live factory and every project with an allocation, in inventory order."""
    rules: list[Rule] = []
    for f in inventory.live_factories():
        rules += _scope_rules(f, None, config)
        for s in f.systems:
            rules += _scope_rules(f, s.id, config)
            node = config.settings("node", f.id, s.id)
            # Only a limit the site states (its BMC's PowerLimit, in the rules file) is worth a page; an estimate from
            # TDPs would page for every node running flat out, which is normal for AI training.
            limit = node.power_limit_watts
            for group in s.node_groups if limit else ():
                for level, name, severity, strict in POWER_LEVELS:
                    lv = getattr(node, level)
                    rules.append(Rule(
                        name, "power", "node", {"alertname": name, "scope": "node", "factory": f.id, "system": s.id, "severity": severity},
                        lv.percent / 100, lv.for_s, strict, required(node.hysteresis_percent) / 100, required(limit), f.id, s.id, group.prefix,
                    ))
            if s.gpu_count:
                gpu = config.settings("gpu", f.id, s.id)
                labels = {"alertname": SATURATED, "scope": "gpu", "factory": f.id, "system": s.id, "severity": SHOWN_NOT_PAGED}
                rules.append(Rule(SATURATED, "throttle", "gpu", labels, 1.0, required(gpu.throttled_for_s), factory=f.id, system=s.id))
    live = {f.id for f in inventory.live_factories()}
    for p in inventory.projects:
        if p.allocation_mwh is None or p.factory not in live:
            continue
        budget = config.settings("project", project=p.id)
        for pct in sorted(required(budget.budget_percent)):
            labels = {"alertname": BUDGET, "scope": "project", "factory": p.factory, "project": p.id,
                      "budget_percent": f"{pct:g}", "severity": "critical" if pct >= 95 else "warning"}
            rules.append(Rule(BUDGET, "budget", "project", labels, pct / 100, 0.0, factory=p.factory, project=p.id,
                              allocation_joules=p.allocation_mwh * 3.6e9))
    return rules


class _Site(TypedDict):
    """The `Rule` fields every rule of one factory or system shares."""

    factory: str
    system: str | None
    design_pue: float
    facility_meter: bool


def _scope_rules(f: Factory, system: str | None, config: AlertConfig) -> list[Rule]:
    """Power levels, forecast and missing telemetry of a factory (system None) or one of its systems."""
    scope = "system" if system else "factory"
    s = config.settings(scope, f.id, system)
    ids = {"factory": f.id} | ({"system": system} if system else {})
    if system:
        sys_ = next(x for x in f.systems if x.id == system)
        cap, gpus, nodes = (sys_.power_cap_kw or 0.0) * 1e3, sys_.gpu_count, sys_.node_count
    else:
        cap, gpus, nodes = f.power_cap_mw * 1e6, f.gpu_count, f.node_count
    common = _Site(factory=f.id, system=system, design_pue=f.design_pue, facility_meter=f.facility_meter)
    hyst = required(s.hysteresis_percent) / 100
    rules = []
    if cap:  # a system without power_cap_kw has no cap to judge
        for level, name, severity, strict in POWER_LEVELS:
            lv = getattr(s, level)
            rules.append(Rule(name, "power", scope, {"alertname": name, "scope": scope, **ids, "severity": severity},
                              lv.percent / 100, lv.for_s, strict, hyst, cap, **common))
        fc = required(s.forecast)
        rules.append(Rule(FORECAST, "forecast", scope, {"alertname": FORECAST, "scope": scope, **ids, "severity": "warning"},
                          required(fc.percent) / 100, required(fc.for_s), False, hyst, cap,
                          window_s=required(fc.window_s), horizon_s=required(fc.horizon_s), from_share=required(fc.from_percent) / 100, **common))
    m = required(s.missing)
    rules.append(Rule(MISSING, "missing", scope, {"alertname": MISSING, "scope": scope, **ids, "severity": "critical"},
                      required(m.percent) / 100, required(m.for_s), False, hyst, expected_gpus=gpus, expected_nodes=nodes, **common))
    return rules
