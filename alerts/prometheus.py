"""`aifmon alerts export-rules`: the site's alert rules as a Prometheus rule file, same semantics as the evaluator.

Built from the same `Rule` list as the embedded evaluator:
- recording rules give each scope's power: `aif:facility_power_watts{factory}` (the meter, or IT power
  x design PUE where a factory has none or it did not report) and `aif:system_power_watts{factory,system}`;
- each level is `share >= threshold` (breached: `>`), or, while the same alert is firing (the `ALERTS`
  series), `share >= threshold - hysteresis`: the hysteresis of the evaluator;
- the forecast is `predict_linear` over the recorded power of the last window, while not yet over the cap;
- telemetry missing counts distinct GPUs and nodes reporting against the inventory's count (a failed
  scrape marks its series stale at once);
- the energy budget sums a per-project, per-minute energy increase recorded with the calendar month
  as labels, so the sum restarts at each month (UTC), as the evaluator's does.
Expressions return the share (ratio); annotations give the value, the cap and the percentage.
"""

from __future__ import annotations

from collections import defaultdict

import yaml

from aifmon.alerts.config import AlertConfig, format_duration
from aifmon.alerts.rules import Rule, build_rules
from aifmon.telemetry.inventory import Inventory

_MONTH = '(count_values("year", year()) * on() group_left(month) count_values("month", month()))'
_PROJECT_ENERGY = "aif:project_gpu_energy_joules:increase1m"


def _sel(**labels: str | None) -> str:
    """A label matcher `{k="v",...}` (None values left out)."""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items() if v is not None) + "}"


def _num(x: float) -> str:
    return f"{x:.10g}"


def _alerts_sel(rule: Rule) -> str:
    fixed = {k: v for k, v in rule.labels.items() if k != "severity"}
    return "ALERTS" + _sel(alertstate="firing", **fixed)


def _with_hysteresis(rule: Rule, share: str, on: tuple[str, ...], extra: str = "") -> str:
    """`share op threshold`, or while firing `share >= threshold - hysteresis` (see module docstring)."""
    op = ">" if rule.strict else ">="
    met = f"({share}) {op} {_num(rule.threshold)}{extra}"
    held = f"({share}) >= {_num(rule.threshold - rule.hysteresis)}{extra}"
    return f"{met}\nor\n({held} and on({', '.join(on)}) {_alerts_sel(rule)})"


def _query_value(expr: str, fmt: str, unit: str, *args: str) -> str:
    """An annotation template running `expr` and printing its first value.

    `expr` is a Go raw string (backquoted); with `args` it is a printf format filled with them (e.g.
    `$labels.node`), since a template action inside a string literal is not expanded.
    """
    query = f"printf `{expr}` {' '.join(args)} | query" if args else f"query `{expr}`"
    return f'{{{{ with {query} }}}}{{{{ . | first | value | printf "{fmt}" }}}}{unit}{{{{ else }}}}no data{{{{ end }}}}'


def _scope_power(rule: Rule) -> str:
    if rule.scope == "factory":
        return f"aif:facility_power_watts{_sel(factory=rule.factory)}"
    return f"aif:system_power_watts{_sel(factory=rule.factory, system=rule.system)}"


def _power_rule(rule: Rule, node_rules: list[Rule]) -> dict:
    what = {"factory": f"factory {rule.factory}", "system": f"system {rule.system}", "node": "node {{ $labels.node }}"}[rule.scope]
    basis = {"factory": "facility power", "system": "IT power", "node": "BMC power"}[rule.scope]
    if rule.scope == "node":
        parts = [
            f"max by (factory, system, node) (aif_node_power_watts"
            f"{_sel(factory=r.factory, system=r.system, source='bmc')[:-1]},node=~\"{r.node_prefix}[0-9]+\"}}) / {_num(r.cap_watts)}"
            for r in node_rules
        ]
        share = " or ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
        expr = _with_hysteresis(rule, share, ("factory", "system", "node"))
        watts = 'max(aif_node_power_watts{factory=%q,node=%q,source="bmc"})'
        limits = {r.cap_watts for r in node_rules}
        cap = f"{_num(next(iter(limits)))} W" if len(limits) == 1 else "; ".join(
            f"{r.node_prefix}NNNN: {_num(r.cap_watts)} W" for r in node_rules)
    else:
        power = _scope_power(rule)
        expr = _with_hysteresis(rule, f"{power} / {_num(rule.cap_watts)}", ("factory", "system") if rule.system else ("factory",))
        watts, cap = power, f"{_num(rule.cap_watts)} W"
    return {
        "alert": rule.alertname, "expr": expr, "for": format_duration(rule.for_s),
        "labels": {k: v for k, v in rule.labels.items() if k != "alertname"},
        "annotations": {
            "summary": f"{what} {basis} at {{{{ $value | humanizePercentage }}}} of its power cap",
            "value": _query_value(watts, "%.0f", " W", *(("$labels.factory", "$labels.node") if rule.scope == "node" else ())),
            "cap": cap, "percentage": "{{ $value | humanizePercentage }}",
        },
    }


def _forecast_rule(rule: Rule) -> dict:
    power = _scope_power(rule)
    window, horizon = format_duration(rule.window_s), format_duration(rule.horizon_s)
    predicted = f"predict_linear({power}[{window}], {_num(rule.horizon_s)}) / {_num(rule.cap_watts)}"
    not_over = f" and ({power} / {_num(rule.cap_watts)}) <= 1 and ({power} / {_num(rule.cap_watts)}) >= {_num(rule.from_share)}"
    on = ("factory", "system") if rule.system else ("factory",)
    what = f"system {rule.system}" if rule.system else f"factory {rule.factory}"
    return {
        "alert": rule.alertname, "expr": _with_hysteresis(rule, predicted, on, not_over), "for": format_duration(rule.for_s),
        "labels": {k: v for k, v in rule.labels.items() if k != "alertname"},
        "annotations": {
            "summary": f"{what}: the trend of the last {window} reaches its power cap within {horizon}",
            "value": _query_value(power, "%.0f", " W"), "cap": f"{_num(rule.cap_watts)} W",
            "percentage": "{{ $value | humanizePercentage }}",
            "forecast": f"{{{{ $value | humanizePercentage }}}} of the cap in {horizon} at the trend of the last {window}",
        },
    }


def _present(rule: Rule) -> str:
    sel = _sel(factory=rule.factory, system=rule.system)
    return (f"(count(count by (node, gpu) (aif_gpu_power_watts{sel})) or vector(0))"
            f" + (count(count by (node) (aif_node_power_watts{sel})) or vector(0))")


def _missing_rule(rule: Rule) -> dict:
    expected = rule.expected_gpus + rule.expected_nodes
    share = f"1 - ({_present(rule)}) / {expected}"
    what = f"system {rule.system}" if rule.system else f"factory {rule.factory}"
    return {
        "alert": rule.alertname, "expr": _with_hysteresis(rule, share, ()), "for": format_duration(rule.for_s),
        "labels": {k: v for k, v in rule.labels.items() if k != "alertname"},
        "annotations": {
            "summary": f"{what}: {{{{ $value | humanizePercentage }}}} of its expected power series are missing or stale",
            "value": _query_value(_present(rule), "%.0f", f" of {expected} series reporting"),
            "cap": f"{expected} series expected", "percentage": "{{ $value | humanizePercentage }}",
        },
    }


def _throttle_rule(rule: Rule) -> dict:
    sel = _sel(reason="sw_power_cap", factory=rule.factory, system=rule.system)
    gpu, args = "factory=%q,node=%q,gpu=%q", ("$labels.factory", "$labels.node", "$labels.gpu")
    ratio = f"max(aif_gpu_power_watts{{{gpu}}}) / max(aif_gpu_power_limit_watts{{{gpu}}})"
    return {
        "alert": rule.alertname, "expr": f"max by (factory, system, node, gpu) (aif_gpu_throttled{sel}) >= 0.5",
        "for": format_duration(rule.for_s),
        "labels": {k: v for k, v in rule.labels.items() if k != "alertname"},
        "annotations": {
            "summary": "GPU {{ $labels.gpu }} of {{ $labels.node }} held at its power limit (sw_power_cap throttling)",
            "value": _query_value(f"max(aif_gpu_power_watts{{{gpu}}})", "%.0f", " W", *args),
            "cap": _query_value(f"max(aif_gpu_power_limit_watts{{{gpu}}})", "%.0f", " W", *args),
            "percentage": f"{{{{ with printf `{ratio}` {' '.join(args + args)} | query }}}}"
                          "{{ . | first | value | humanizePercentage }}{{ else }}no data{{ end }}",
        },
    }


def _budget_rule(rule: Rule) -> dict:
    used = f"sum by (factory, project) (sum_over_time({_PROJECT_ENERGY}{_sel(project=rule.project)}[31d]) and on(year, month) {_MONTH})"
    mwh = rule.allocation_joules / 3.6e9
    return {
        "alert": rule.alertname, "expr": f"{used} / {_num(rule.allocation_joules)} >= {_num(rule.threshold)}",
        "labels": {k: v for k, v in rule.labels.items() if k != "alertname"},
        "annotations": {
            "summary": f"project {rule.project} has used {{{{ $value | humanizePercentage }}}} of its monthly energy allocation",
            "value": _query_value(f"{used} / 3.6e9", "%.4g", " MWh"), "cap": f"{mwh:g} MWh",
            "percentage": "{{ $value | humanizePercentage }}",
        },
    }


def prometheus_rules(inventory: Inventory, config: AlertConfig) -> dict:
    """The rule file as a dict (groups `aifmon-power` and `aifmon-energy-budget`)."""
    rules = build_rules(inventory, config)
    records: list[dict] = []
    for f in inventory.live_factories():
        it = f"sum by (factory) (aif_node_power_watts{_sel(factory=f.id)}) * {_num(f.design_pue)}"
        expr = f"sum by (factory) (aif_facility_power_watts{_sel(factory=f.id)})\nor\n{it}" if f.facility_meter else it
        records.append({"record": "aif:facility_power_watts", "expr": expr, "labels": {"factory": f.id}})
        for s in f.systems:
            records.append({"record": "aif:system_power_watts",
                            "expr": f"sum by (factory, system) (aif_node_power_watts{_sel(factory=f.id, system=s.id)})",
                            "labels": {"factory": f.id, "system": s.id}})
    alerts: list[dict] = []
    node_groups: dict[tuple, list[Rule]] = defaultdict(list)
    for r in rules:
        if r.scope == "node":
            node_groups[(r.alertname, r.factory, r.system)].append(r)
    for r in rules:
        if r.kind == "power" and r.scope == "node":
            group = node_groups.pop((r.alertname, r.factory, r.system), None)
            if group:  # one rule per system and level, covering its node groups
                alerts.append(_power_rule(r, group))
        elif r.kind == "power":
            alerts.append(_power_rule(r, []))
        elif r.kind == "forecast":
            alerts.append(_forecast_rule(r))
        elif r.kind == "missing":
            alerts.append(_missing_rule(r))
        elif r.kind == "throttle":
            alerts.append(_throttle_rule(r))
    budget = [_budget_rule(r) for r in rules if r.kind == "budget"]
    interval = format_duration(config.evaluation_interval_s)
    groups = [{"name": "aifmon-power", "interval": interval, "rules": records + alerts}]
    if budget:
        project_energy = (
            "sum by (factory, project) (\n  increase(aif_gpu_energy_joules_total[1m])\n"
            "  * on(factory, node, gpu) group_left(project) max by (factory, node, gpu, project) (aif_gpu_job_info)\n)\n"
            f"* on() group_left(year, month) {_MONTH}"
        )
        # 1m: each recorded increase covers the minute since the last, so their sum over the month is its energy.
        groups.append({"name": "aifmon-energy-budget", "interval": "1m",
                       "rules": [{"record": _PROJECT_ENERGY, "expr": project_energy}] + budget})
    return {"groups": groups}


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml's emitter when present: 8x faster, same text
    pass


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def render_rules(inventory: Inventory, config: AlertConfig) -> str:
    """The Prometheus rule file text (YAML), with a header saying where it came from."""
    header = (f"# Prometheus alert rules generated by `aifmon alerts export-rules` from {inventory.source}\n"
              f"# and {config.source}. Regenerate rather than edit: the embedded evaluator uses the same rules.\n")
    return header + yaml.dump(prometheus_rules(inventory, config), Dumper=_Dumper, sort_keys=False, width=100_000, allow_unicode=True)
