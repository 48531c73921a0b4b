"""The alert rules file: thresholds and durations per scope, per-factory/system/project overrides, notifiers.

Validated like the inventory: a bad file raises `AlertRulesError` listing every problem as
`file:line: key.path: message`, and nothing is half-loaded, so a running evaluator can keep its last
good rules. Thresholds are percentages (of a power cap, of a scope's expected series, of a project's
monthly energy allocation) and never above 100; durations are `30s`, `5m`, `1h`, `1d` or seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from aifmon.telemetry.config import host_port
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.inventory import Inventory, format_problem, validate_yaml

SCOPES = ("factory", "system", "node", "gpu", "project")
_DURATION = re.compile(r"^(-?)(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `1d`, `250ms` or a number of seconds → seconds; negative durations are refused."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ValueError(f"{value!r} is not a duration; expected e.g. 30s, 5m, 1h or a number of seconds")
        seconds = float(m.group(2)) * _UNIT_S[m.group(3)] * (-1 if m.group(1) else 1)
    if seconds < 0:
        raise ValueError(f"negative duration {value!r}; a duration is 0 or more (e.g. 0s, 5m)")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds → the Prometheus duration it equals (`300` → `5m`), in the largest whole unit."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in the file as a Prometheus duration or a number."""
Percent = Annotated[float, Field(gt=0, le=100)]


class _Strict(BaseModel):
    # strict: `retries: true` or `percent: "90"` is refused, where pydantic would read 1 and 90.0
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


def _smtp_address(v: str) -> str:
    if host_port(v) is None:
        raise ValueError(f"{v!r} is not host:port with a port from 1 to 65535")
    return v


class Level(_Strict):
    """A threshold (% of the cap) and how long it must hold before the alert fires (s)."""

    percent: Percent | None = None
    for_s: Annotated[Duration | None, Field(alias="for")] = None


class Forecast(_Strict):
    """Fire when the linear trend of the last `window` reaches `percent` of the cap within `horizon`, once power is at
    least `from_percent` of the cap (below it, a job starting on an idle machine is a steep trend, not a risk)."""

    percent: Percent | None = None
    from_percent: Percent | None = None
    window_s: Annotated[Duration | None, Field(alias="window")] = None
    horizon_s: Annotated[Duration | None, Field(alias="horizon")] = None
    for_s: Annotated[Duration | None, Field(alias="for")] = None


class Missing(_Strict):
    """Fire when at least `percent` of a scope's expected series are absent or older than `stale_after`."""

    percent: Percent | None = None
    for_s: Annotated[Duration | None, Field(alias="for")] = None


class Settings(_Strict):
    """Every setting a scope may carry; which apply to which scope is checked after parsing (`_APPLIES`)."""

    warning: Level | None = None
    critical: Level | None = None
    breached: Level | None = None
    hysteresis_percent: Annotated[float, Field(ge=0, le=20)] | None = None
    """A firing level resolves only below its threshold minus this many percentage points."""
    forecast: Forecast | None = None
    missing: Missing | None = None
    power_limit_watts: Annotated[float, Field(gt=0)] | None = None
    """Node scope: the node's power limit, W, as its BMC enforces it (Redfish `PowerLimit`); without it, no node rules."""
    throttled_for_s: Annotated[Duration | None, Field(alias="throttled_for")] = None
    """GPU scope: how long a GPU must be held at its power limit (sw_power_cap throttling) before it alerts."""
    budget_percent: Annotated[list[Percent], Field(min_length=1, max_length=5)] | None = None
    """Project scope: shares of the monthly energy allocation that alert."""


_APPLIES: dict[str, set[str]] = {
    "factory": {"warning", "critical", "breached", "hysteresis_percent", "forecast", "missing"},
    "system": {"warning", "critical", "breached", "hysteresis_percent", "forecast", "missing"},
    "node": {"warning", "critical", "breached", "hysteresis_percent", "power_limit_watts"},
    "gpu": {"throttled_for_s"},
    "project": {"budget_percent"},
}
_FILE_KEY = {name: (f.alias or name) for name, f in Settings.model_fields.items()}


class Scopes(_Strict):
    factory: Settings = Settings()
    system: Settings = Settings()
    node: Settings = Settings()
    gpu: Settings = Settings()
    project: Settings = Settings()


class Override(Settings):
    """Settings for one factory, system (and its nodes and GPUs) or project; unset keys fall back to `scopes`."""

    scope: Literal["factory", "system", "node", "gpu", "project"]
    factory: str | None = None
    system: str | None = None
    project: str | None = None


class NotifierConfig(_Strict):
    """Where alerts go. Secrets are read from an environment variable or a file, never written here."""

    type: Literal["webhook", "alertmanager", "email"]
    name: str | None = None
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None
    """webhook: the URL POSTed to; alertmanager: its base URL (alerts go to `<url>/api/v2/alerts`)."""
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None
    smtp: Annotated[str, AfterValidator(_smtp_address)] | None = None
    """email: the SMTP server, host:port."""
    from_addr: Annotated[str | None, Field(alias="from")] = None
    to: list[str] | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    starttls: bool = True
    timeout_s: Annotated[Duration, Field(alias="timeout")] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Extra attempts within one cycle after a failure; a notification still undelivered is tried again next cycle."""
    repeat_interval_s: Annotated[Duration | None, Field(alias="repeat_interval")] = None
    """Re-send a still-firing alert this often (default: the file's `repeat_interval`; Alertmanager: 1m)."""


class _RulesFile(_Strict):
    evaluation_interval_s: Annotated[Duration, Field(alias="evaluation_interval", gt=0)] = 15.0
    stale_after_s: Annotated[Duration, Field(alias="stale_after", gt=0)] = 60.0
    repeat_interval_s: Annotated[Duration, Field(alias="repeat_interval", gt=0)] = 4 * 3600.0
    group_by: list[str] = ["alertname", "factory"]
    scopes: Scopes = Scopes()
    overrides: list[Override] = []
    notifiers: list[NotifierConfig] = []


DEFAULTS: dict[str, Settings] = {
    "factory": Settings(
        warning=Level(percent=85, for_s=300), critical=Level(percent=95, for_s=120), breached=Level(percent=100, for_s=60),
        hysteresis_percent=2, forecast=Forecast(percent=100, from_percent=75, window_s=900, horizon_s=1800, for_s=300),
        missing=Missing(percent=10, for_s=120),
    ),
    "system": Settings(
        warning=Level(percent=85, for_s=300), critical=Level(percent=95, for_s=120), breached=Level(percent=100, for_s=60),
        hysteresis_percent=2, forecast=Forecast(percent=100, from_percent=75, window_s=900, horizon_s=1800, for_s=300),
        missing=Missing(percent=10, for_s=120),
    ),
    "node": Settings(
        warning=Level(percent=85, for_s=600), critical=Level(percent=95, for_s=300), breached=Level(percent=100, for_s=120),
        hysteresis_percent=2,
    ),
    "gpu": Settings(throttled_for_s=900),
    "project": Settings(budget_percent=[85, 90, 95]),
}
"""Built-in settings: what applies where neither `scopes` nor an override says otherwise."""


class AlertRulesError(UserError, ValueError):
    """Every problem found in one alert rules file, each as `file:line: key.path: message`."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"invalid alert rules {source}:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class AlertConfig:
    """A validated alert rules file, checked against one inventory."""

    source: str
    evaluation_interval_s: float
    stale_after_s: float
    repeat_interval_s: float
    group_by: tuple[str, ...]
    scopes: Scopes
    overrides: tuple[Override, ...]
    notifiers: tuple[NotifierConfig, ...]

    def settings(self, scope: str, factory: str | None = None, system: str | None = None, project: str | None = None) -> Settings:
        """Effective settings of one target: the override's keys, else the file's scope keys, else `DEFAULTS`.

        A node or GPU takes its system's node/gpu override, else its factory's.
        """
        layers = [DEFAULTS[scope], getattr(self.scopes, scope)]
        for o in self.overrides:
            if o.scope != scope:
                continue
            if scope == "project" and o.project == project:
                layers.append(o)
            elif scope != "project" and o.factory == factory and o.system is None:
                layers.insert(2, o)  # a factory-wide override, below a system's own
            elif scope != "project" and o.factory == factory and o.system == system:
                layers.append(o)
        merged: dict[str, Any] = {}
        for layer in layers:
            for key in _APPLIES[scope]:
                value = getattr(layer, key)
                if isinstance(value, BaseModel) and isinstance(merged.get(key), BaseModel):
                    value = merged[key].model_copy(update=value.model_dump(exclude_none=True))
                if value is not None:
                    merged[key] = value
        return Settings(**merged)


_T = TypeVar("_T")


def required(value: _T | None) -> _T:
    """A value loading guarantees: a setting that applies to its scope (`DEFAULTS` sets each one, see
    `AlertConfig.settings`) or a notifier key its type requires (`_notifier_problems`). None here is a bug."""
    if value is None:
        raise AssertionError("a value the alert rules loader guarantees is unset")
    return value


def default_config() -> AlertConfig:
    """The built-in rules (`DEFAULTS`, no overrides, no notifiers)."""
    f = _RulesFile()
    return AlertConfig("(built-in defaults)", f.evaluation_interval_s, f.stale_after_s, f.repeat_interval_s,
                       tuple(f.group_by), f.scopes, (), ())


def load_alert_config(path: str | Path | None, inventory: Inventory) -> AlertConfig:
    """Load and validate an alert rules file against `inventory` (the built-in defaults when `path` is None)."""
    if path is None:
        return default_config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AlertRulesError(str(path), [f"{path}: cannot read: {e.strerror}"]) from None
    return parse_alert_config(text, inventory, str(path))


def parse_alert_config(text: str, inventory: Inventory, source: str = "<alert rules>") -> AlertConfig:
    """Validate alert rules YAML text against `inventory`; `source` names the file in error messages."""
    parsed, lines = validate_yaml(text, source, _RulesFile, AlertRulesError, "a mapping (scopes, overrides, notifiers)", _message)
    problems = [format_problem(source, lines, loc, msg) for loc, msg in _cross_check(parsed, inventory)]
    if problems:
        raise AlertRulesError(source, problems)
    return AlertConfig(source, parsed.evaluation_interval_s, parsed.stale_after_s, parsed.repeat_interval_s,
                       tuple(parsed.group_by), parsed.scopes, tuple(parsed.overrides), tuple(parsed.notifiers))


def _message(err: dict) -> str | None:
    loc = err["loc"]
    if err["type"] == "extra_forbidden" and len(loc) == 2 and loc[0] == "scopes":
        return f"unknown scope {loc[1]!r}; expected one of {', '.join(SCOPES)}"
    if err["type"] == "extra_forbidden" and loc[-1] in ("password", "bearer_token", "token"):
        return "secrets are not written in the rules file; use password_env/password_file (bearer_token_env/_file)"
    return None


def _cross_check(f: _RulesFile, inventory: Inventory) -> Iterator[tuple[tuple, str]]:
    """Checks that need the inventory or span several keys: known targets, applicable keys, level order."""
    factories = {x.id: x for x in inventory.factories}
    projects = {p.id for p in inventory.projects}
    for scope in SCOPES:
        yield from _applicable(("scopes", scope), scope, getattr(f.scopes, scope))
    seen: dict[tuple, int] = {}
    for i, o in enumerate(f.overrides):
        at = ("overrides", i)
        yield from _applicable(at, o.scope, o)
        if o.scope == "project":
            if o.project is None:
                yield at + ("project",), "required for scope project"
            elif o.project not in projects:
                yield at + ("project",), f"unknown project {o.project!r}; expected one of {_some(projects)}"
            for key in ("factory", "system"):
                if getattr(o, key) is not None:
                    yield at + (key,), "does not apply to scope project (name the project)"
        else:
            if o.project is not None:
                yield at + ("project",), f"does not apply to scope {o.scope}"
            if o.factory is None:
                yield at + ("factory",), f"required for scope {o.scope}"
            elif o.factory not in factories:
                yield at + ("factory",), f"unknown factory {o.factory!r}; expected one of {_some(factories)}"
            elif o.system is not None and o.system not in {s.id for s in factories[o.factory].systems}:
                known = {s.id for s in factories[o.factory].systems}
                yield at + ("system",), f"unknown system {o.system!r} in factory {o.factory}; expected one of {_some(known)}"
            if o.scope == "system" and o.system is None:
                yield at + ("system",), "required for scope system"
        target = (o.scope, o.factory, o.system, o.project)
        if target in seen:
            yield at, f"a second override for the same {o.scope} (first at overrides[{seen[target]}])"
        seen.setdefault(target, i)
    for i, n in enumerate(f.notifiers):
        yield from _notifier_problems(("notifiers", i), n)
    if f.evaluation_interval_s > f.stale_after_s:
        yield ("stale_after",), "shorter than evaluation_interval: every series would look stale between evaluations"
    config = AlertConfig("", f.evaluation_interval_s, f.stale_after_s, f.repeat_interval_s, tuple(f.group_by), f.scopes,
                         tuple(f.overrides), tuple(f.notifiers))
    yield from _level_order(config, inventory, f)


def _applicable(at: tuple, scope: str, s: Settings) -> Iterator[tuple[tuple, str]]:
    for key in Settings.model_fields:
        if getattr(s, key) is not None and key not in _APPLIES[scope]:
            yield at + (_FILE_KEY[key],), f"does not apply to scope {scope}; it takes {', '.join(sorted(_FILE_KEY[k] for k in _APPLIES[scope]))}"


def _level_order(config: AlertConfig, inventory: Inventory, f: _RulesFile) -> Iterator[tuple[tuple, str]]:
    """warning < critical <= breached and hysteresis below warning, for every target as merged."""
    targets: list[tuple[tuple, str, dict]] = [(("scopes", s), s, {}) for s in ("factory", "system", "node")]
    targets += [(("overrides", i), o.scope, {"factory": o.factory, "system": o.system})
                for i, o in enumerate(f.overrides) if o.scope in ("factory", "system", "node")]
    for at, scope, ids in targets:
        s = config.settings(scope, **ids)
        w, c, b = (required(required(level).percent) for level in (s.warning, s.critical, s.breached))
        if not w < c <= b:
            yield at, f"levels out of order: warning {w:g} % < critical {c:g} % <= breached {b:g} % is required"
        hysteresis = required(s.hysteresis_percent)
        if hysteresis >= w:
            yield at + ("hysteresis_percent",), f"{hysteresis:g} points is not below the warning level ({w:g} %)"


def _notifier_problems(at: tuple, n: NotifierConfig) -> Iterator[tuple[tuple, str]]:
    needs = {"webhook": ("url",), "alertmanager": ("url",), "email": ("smtp", "from_addr", "to")}[n.type]
    for key in needs:
        if not getattr(n, key):
            yield at + ({"from_addr": "from"}.get(key, key),), f"required for a {n.type} notifier"
    if n.type != "email":
        for key in ("smtp", "from_addr", "to", "username", "password_env", "password_file"):
            if getattr(n, key) is not None:
                yield at + ({"from_addr": "from"}.get(key, key),), f"does not apply to a {n.type} notifier"
    if n.password_env and n.password_file:
        yield at + ("password_file",), "give password_env or password_file, not both"
    if n.bearer_token_env and n.bearer_token_file:
        yield at + ("bearer_token_file",), "give bearer_token_env or bearer_token_file, not both"


def _some(names: set[str] | dict[str, Any], most: int = 12) -> str:
    listed = sorted(names)
    return ", ".join(listed[:most]) + (f" and {len(listed) - most} more" if len(listed) > most else "")
