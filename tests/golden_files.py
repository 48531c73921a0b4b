"""Golden files: an output compared with the copy committed under tests/golden/.

`AIFMON_UPDATE_GOLDEN=1 pytest tests/...` writes the current output there instead of comparing; review the
diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeGuard

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_ENV = "AIFMON_UPDATE_GOLDEN"
_HOW_TO_UPDATE = f"if the change is intended, regenerate with {UPDATE_ENV}=1 and review the diff of tests/golden/"


def _update(path: Path, text: str) -> None:
    """Write `text` to `path` when regeneration was asked for, and skip the test: a run that rewrote the file
    compared nothing, so it must not count as a pass."""
    if os.environ.get(UPDATE_ENV) == "1":
        path.write_text(text, encoding="utf-8")
        pytest.skip(f"wrote tests/golden/{path.name}; review its diff")


def assert_same_text(name: str, text: str) -> None:
    """`text` equals tests/golden/`name` byte for byte."""
    path = GOLDEN / name
    _update(path, text)
    golden = path.read_text(encoding="utf-8")
    if text != golden:
        diff = "".join(difflib.unified_diff(golden.splitlines(True), text.splitlines(True), f"golden/{name}", "this run"))
        raise AssertionError(f"output differs from tests/golden/{name} ({_HOW_TO_UPDATE}):\n{diff}")


def assert_same_json(name: str, doc: object, rel: float = 1e-12) -> None:
    """`doc` equals the JSON document tests/golden/`name`: the same keys, lists and strings, and numbers equal to
    `rel` (a sum's last bits may differ between CPUs whose NumPy takes another SIMD path)."""
    path = GOLDEN / name
    _update(path, json.dumps(doc, indent=2) + "\n")
    differences = list(_differences(json.loads(path.read_text(encoding="utf-8")), doc, "$", rel))
    if differences:
        shown = "\n".join(differences[:40]) + (f"\n... and {len(differences) - 40} more" if len(differences) > 40 else "")
        raise AssertionError(f"output differs from tests/golden/{name} ({_HOW_TO_UPDATE}):\n{shown}")


def _differences(golden: object, actual: object, where: str, rel: float) -> Iterator[str]:
    """'path: golden != actual' for every leaf that differs."""
    if isinstance(golden, dict) and isinstance(actual, dict):
        for key in sorted(golden.keys() | actual.keys()):
            if key not in actual or key not in golden:
                yield f"{where}.{key}: {'missing' if key not in actual else 'not in the golden file'}"
            else:
                yield from _differences(golden[key], actual[key], f"{where}.{key}", rel)
    elif isinstance(golden, list) and isinstance(actual, list):
        if len(golden) != len(actual):
            yield f"{where}: {len(golden)} items in the golden file, {len(actual)} now"
        for i, (g, a) in enumerate(zip(golden, actual)):
            yield from _differences(g, a, f"{where}[{i}]", rel)
    elif _number(golden) and _number(actual):
        if not math.isclose(golden, actual, rel_tol=rel):
            yield f"{where}: {golden!r} != {actual!r}"
    elif golden != actual or type(golden) is not type(actual):
        yield f"{where}: {golden!r} != {actual!r}"


def _number(value: object) -> TypeGuard[float]:
    """An int or a float (JSON's numbers), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
