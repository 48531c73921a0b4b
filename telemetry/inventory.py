"""Site inventory: factories → systems → node groups, and the projects that use them.

Loaded from YAML into frozen, validated objects. A bad file raises `InventoryError` (a `UserError`) listing
every problem as `file:line: key.path: what was expected`; nothing is half-loaded.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from aifmon.telemetry.config import host_port
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.gpu_models import GPU_MODELS, GpuModel
from aifmon.telemetry.safe_yaml import YAMLFileError, dotted, parse_yaml

ACCESS_MODES = (
    "Playground",
    "Fast Lane",
    "Large Scale",
    "AI for Science",
    "Benchmark",
    "Development",
    "Regular",
    "Extreme Scale",
)
SECTORS = (
    "Health & Life Sciences",
    "Technology & Digital",
    "Environment & Sustainability",
    "Education & Culture",
    "Manufacturing & Engineering",
    "Finance & Business",
    "Agriculture & Food",
    "Cybersecurity & Dual use",
    "Space & Aerospace",
    "Public Sector",
)
AccessMode = Literal[ACCESS_MODES]  # type: ignore[valid-type]
Sector = Literal[SECTORS]  # type: ignore[valid-type]

_ID = r"^[a-z0-9][a-z0-9-]*$"
Ident = Annotated[str, Field(pattern=_ID, max_length=40)]


def _named(v: str) -> str:
    if not v.strip():
        raise ValueError("a name is required, not empty text")
    return v


Name = Annotated[str, AfterValidator(_named)]


class _Strict(BaseModel):
    # strict: `count: true` or `power_cap_mw: "5"` is refused, where pydantic would read 1 and 5.0
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NodeGroup(_Strict):
    """`count` identical nodes named `<prefix><NNNN>`, each with `gpus_per_node` GPUs."""

    prefix: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    count: Annotated[int, Field(gt=0, le=100_000)]
    gpus_per_node: Annotated[int, Field(ge=0, le=16)]
    gpu_model: str
    node_base_watts: Annotated[float, Field(gt=0, le=10_000)] = 450.0
    """Node power apart from its GPUs (CPUs, memory, NICs, fans), W, at idle."""

    @field_validator("gpu_model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in GPU_MODELS:
            raise ValueError(f"unknown GPU model; expected one of {', '.join(GPU_MODELS)}")
        return v

    @property
    def model(self) -> GpuModel:
        return GPU_MODELS[self.gpu_model]


class System(_Strict):
    id: Ident
    name: Name
    hall: Name = "hall-1"
    power_cap_kw: Annotated[float, Field(gt=0)] | None = None
    node_groups: Annotated[list[NodeGroup], Field(min_length=1)]

    @property
    def gpu_count(self) -> int:
        return sum(g.count * g.gpus_per_node for g in self.node_groups)

    @property
    def node_count(self) -> int:
        return sum(g.count for g in self.node_groups)


class Factory(_Strict):
    id: Ident
    name: Name
    kind: Literal["ai-factory", "gigafactory"] = "ai-factory"
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    host: str = ""
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    power_cap_mw: Annotated[float, Field(gt=0, le=2000)]
    """Contracted grid capacity of the whole site, MW (facility power, cooling included)."""
    design_pue: Annotated[float, Field(ge=1.0, le=3.0)]
    energy_price_eur_per_kwh: Annotated[float, Field(gt=0, le=10)]
    facility_meter: bool = True
    """Whether the site has a facility power meter (`aif_facility_power_watts`)."""
    planning_only: bool = False
    """A planning scenario: sized and budgeted, not simulated or scraped."""
    targets: list[str] = []
    """Exporters to scrape, `host:port`."""
    systems: Annotated[list[System], Field(min_length=1)]

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for t in v:
            if host_port(t) is None:
                raise ValueError(f"target {t!r} is not host:port with a port from 1 to 65535")
        return v

    @property
    def gpu_count(self) -> int:
        return sum(s.gpu_count for s in self.systems)

    @property
    def node_count(self) -> int:
        return sum(s.node_count for s in self.systems)


class Project(_Strict):
    id: Ident
    name: Name
    access_mode: AccessMode
    sector: Sector
    factory: Ident
    allocation_mwh: Annotated[float, Field(gt=0)] | None = None


class _InventoryFile(_Strict):
    name: Name
    illustrative: bool = False
    note: str = ""
    factories: Annotated[list[Factory], Field(min_length=1)]
    projects: list[Project] = []


@dataclass(frozen=True)
class Node:
    """One node of a system, as the exporters and rollups name it."""

    factory: str
    system: str
    name: str
    gpus: int
    gpu_model: GpuModel
    base_watts: float


@dataclass(frozen=True)
class Inventory:
    """A validated site inventory."""

    name: str
    illustrative: bool
    note: str
    factories: tuple[Factory, ...]
    projects: tuple[Project, ...]
    source: str

    def factory(self, factory_id: str) -> Factory:
        """The factory with this id; a UserError naming the known ids if there is none (ids come from the command line)."""
        for f in self.factories:
            if f.id == factory_id:
                return f
        known = ", ".join(f.id for f in self.factories)
        raise UserError(f"no factory {factory_id!r} in {self.source}; known: {known}")

    def projects_of(self, factory_id: str) -> list[Project]:
        return [p for p in self.projects if p.factory == factory_id]

    @cached_property
    def project_by_id(self) -> dict[str, Project]:
        return {p.id: p for p in self.projects}

    def live_factories(self) -> list[Factory]:
        """Factories that are simulated or scraped (planning scenarios excluded)."""
        return [f for f in self.factories if not f.planning_only]


def nodes_of(factory: Factory) -> Iterator[Node]:
    """Every node of a factory, in inventory order."""
    for system in factory.systems:
        for group in system.node_groups:
            for i in range(group.count):
                yield Node(
                    factory.id,
                    system.id,
                    f"{group.prefix}{i + 1:04d}",
                    group.gpus_per_node,
                    group.model,
                    group.node_base_watts,
                )


class InventoryError(UserError):
    """Every problem found in one inventory file, each as `file:line: key.path: message`."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"invalid inventory {source}:\n  " + "\n  ".join(problems))


DEMO_INVENTORY = "demo-inventory.yaml"


def demo_inventory_path() -> Path:
    return Path(str(resources.files("aifmon.telemetry") / "data" / DEMO_INVENTORY))


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Load and validate an inventory file (the demo inventory when `path` is None)."""
    path = Path(path) if path is not None else demo_inventory_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InventoryError(str(path), [f"{path}: cannot read: {e.strerror}"]) from None
    return parse_inventory(text, str(path))


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    """Validate inventory YAML text; `source` names the file in error messages."""
    parsed, lines = validate_yaml(text, source, _InventoryFile, InventoryError, "a mapping with 'factories'")
    problems = [format_problem(source, lines, loc, msg) for loc, msg in _cross_check(parsed)]
    if problems:
        raise InventoryError(source, problems)
    return Inventory(parsed.name, parsed.illustrative, parsed.note, tuple(parsed.factories), tuple(parsed.projects), source)


_Model = TypeVar("_Model", bound=BaseModel)


def validate_yaml(
    text: str, source: str, model: type[_Model], error: Callable[[str, list[str]], Exception], expected: str,
    message: Callable[[dict], str | None] = lambda err: None,
) -> tuple[_Model, dict[tuple, int]]:
    """Parse YAML `text` into `model`, or raise `error(source, problems)` with every problem as `file:line: key.path: message`.

    Shared by every YAML file validated against a schema (inventory, alert rules); the YAML itself is read by
    `parse_yaml`, the loader of every YAML file aifmon reads. `expected` says what the top of the file should be;
    `message` may word a pydantic error its own way (None: the usual words). Returns the model and the 1-based
    line of every key path, for later checks that span several objects (see `format_problem`).
    """
    try:
        data, lines = parse_yaml(text, source)
    except YAMLFileError as e:
        raise error(source, e.problems) from None
    if data is None:
        raise error(source, [f"{source}:1: the file is empty; expected {expected}"])
    if not isinstance(data, dict):
        raise error(source, [f"{source}:1: expected {expected} at the top"])
    try:
        return model.model_validate(data), lines
    except ValidationError as e:
        errors: list[dict[str, Any]] = [dict(err) for err in e.errors()]  # plain dicts, as `message` takes them
        raise error(source, [format_problem(source, lines, err["loc"], message(err) or _message(err)) for err in errors]) from None


def format_problem(source: str, lines: dict[tuple, int], loc: tuple, msg: str) -> str:
    """`file:line: key.path: message` for the key at `loc` (or its nearest parent that has a line)."""
    path = tuple(loc)
    while path not in lines and path:
        path = path[:-1]
    return f"{source}:{lines.get(path, 1)}: {dotted(tuple(loc)) or '(top)'}: {msg}"


def _cross_check(inv: _InventoryFile) -> Iterator[tuple[tuple, str]]:
    """Checks that span several objects: unique ids and names, references, known countries, caps within their site's."""
    intensity = carbon_intensity_table()
    yield from _unique(((("factories", i, "id"), f.id) for i, f in enumerate(inv.factories)), "factory id")
    yield from _unique(((("projects", i, "id"), p.id) for i, p in enumerate(inv.projects)), "project id")
    targets = []
    for i, f in enumerate(inv.factories):
        if f.country not in intensity:
            yield ("factories", i, "country"), (
                f"no carbon intensity for country {f.country!r} in {CARBON_TABLE}; expected one of {', '.join(sorted(intensity))}"
            )
        if f.planning_only and f.targets:
            yield ("factories", i, "targets"), "a planning-only factory is not scraped; remove its targets"
        yield from _unique(((("factories", i, "systems", j, "id"), s.id) for j, s in enumerate(f.systems)), "system id")
        for j, s in enumerate(f.systems):
            if s.power_cap_kw is not None and s.power_cap_kw > f.power_cap_mw * 1000:
                yield ("factories", i, "systems", j, "power_cap_kw"), (
                    f"{s.power_cap_kw:g} kW is above its factory's power_cap_mw ({f.power_cap_mw:g} MW = {f.power_cap_mw * 1000:g} kW)"
                )
        prefixes = ((("factories", i, "systems", j, "node_groups", k, "prefix"), g.prefix)
                    for j, s in enumerate(f.systems) for k, g in enumerate(s.node_groups))
        yield from _unique(prefixes, "node prefix within a factory")
        targets += [(("factories", i, "targets", k), t) for k, t in enumerate(f.targets)]
    yield from _unique(targets, "target")
    factory_ids = {f.id for f in inv.factories}
    for i, p in enumerate(inv.projects):
        if p.factory not in factory_ids:
            yield ("projects", i, "factory"), f"unknown factory {p.factory!r}; expected one of {', '.join(sorted(factory_ids))}"


def _unique(items: Iterable[tuple[tuple, str]], what: str) -> Iterator[tuple[tuple, str]]:
    first: dict[str, tuple] = {}
    for loc, value in items:
        if value in first:
            yield loc, f"duplicate {what} {value!r} (first at {dotted(first[value])})"
        else:
            first[value] = loc


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "literal_error":
        return f"got {err['input']!r}; {msg[0].lower()}{msg[1:]}"
    if "input" in err and not isinstance(err["input"], (dict, list)):
        return f"{msg} (got {err['input']!r})"
    return msg


CARBON_TABLE = "carbon-intensity-eu.csv"


@dataclass(frozen=True)
class CarbonIntensity:
    """Average grid carbon intensity, gCO2e per kWh, with the source and year it comes from."""

    country: str
    gco2e_per_kwh: float
    source: str
    year: int


def carbon_intensity_table() -> dict[str, CarbonIntensity]:
    """The shipped per-country carbon intensity table (see telemetry/data/README.md)."""
    with (resources.files("aifmon.telemetry") / "data" / CARBON_TABLE).open(encoding="utf-8") as fh:
        return {
            r["country"]: CarbonIntensity(r["country"], float(r["gco2e_per_kwh"]), r["source"], int(r["year"]))
            for r in csv.DictReader(fh)
        }
