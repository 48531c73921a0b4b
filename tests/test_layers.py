"""The parts import each other only along the data flow: the shared kernel imports no other part, the stores only the
kernel, and nothing imports the CLI. A new arrow running up the flow fails here, naming the file and the import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# part -> the parts it may import (besides itself); the order of the data flow in DESIGN.md
ALLOWED: dict[str, set[str]] = {
    "telemetry": set(),
    "stores": {"telemetry"},
    "ingest": {"telemetry", "stores"},
    "exporters": {"telemetry", "ingest", "stores"},  # the backfill writes simulated history into a store
    "rollups": {"telemetry", "stores", "ingest"},
    "alerts": {"telemetry", "stores", "rollups"},
    "deploy": {"telemetry", "alerts"},  # Alertmanager's receivers are the alert rules' notifiers
    "dashboard": {"telemetry", "stores", "rollups", "alerts"},
}


def _imported_parts(path: Path) -> list[tuple[int, str]]:
    """(line, part) for every `aifmon.<part>` module the file imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[1]) for name in names if name.startswith("aifmon.")]
    return found


def test_every_part_imports_only_the_parts_below_it_in_the_data_flow():
    wrong = []
    for part, allowed in ALLOWED.items():
        files = sorted((ROOT / part).rglob("*.py"))
        assert files, f"{part}/ has no modules"
        for path in files:
            for line, imported in _imported_parts(path):
                if imported != part and imported not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {part} imports aifmon.{imported}")
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_every_part_folder_is_linked_into_the_namespace_and_listed_here():
    links = {p.name for p in (ROOT / "src" / "aifmon").iterdir() if p.is_symlink()}
    assert links == set(ALLOWED)
    for name in links:
        assert (ROOT / "src" / "aifmon" / name).resolve() == (ROOT / name).resolve()


def test_the_dashboard_reads_the_alert_state_without_loading_the_evaluator():
    probe = "import sys, aifmon.dashboard.app; print('aifmon.alerts.evaluator' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"
