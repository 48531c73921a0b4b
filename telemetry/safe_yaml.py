"""The one YAML loader of every file aifmon reads: plain data only, aliases bounded, every problem as `file:line: message`.

PyYAML's safe loader still expands aliases without limit (a "billion laughs" file of 400 bytes grows to
gigabytes), reports a NUL byte as an exception without a line, and lets a complex key reach Python as an
unhashable list. Here the document is composed into nodes first (linear in the file's size: an alias is a
second reference to the same node, not a copy) and checked before anything is built: only the standard
tags (text, numbers, booleans, null, timestamps, lists, mappings, merge keys), text-only keys, no
recursive alias, and at most `MAX_ALIAS_NODES` nodes reached through aliases.

Imports no pydantic: the node agent (exporters) loads its small YAML files through it too.
"""

from __future__ import annotations

from typing import Any

import yaml

from aifmon.telemetry.errors import UserError

MAX_ALIAS_NODES = 100_000
"""The most nodes aliases may add to a document once expanded. A hand-written file with anchors for shared
settings stays in the hundreds; a "billion laughs" file reaches 10^9. Past this the file is refused before
anything is built, in milliseconds, whatever the expansion would have been."""

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML was built with it: the demo inventory in 3 ms instead of 60 ms."""

_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map", "merge"))

Lines = dict[tuple, int]
"""The 1-based line of every key path of a document (`("factories", 0, "id")` → 12)."""


class YAMLFileError(UserError, ValueError):
    """A YAML file that is not plain, bounded YAML; `problems` are each `file:line: message`.

    A ValueError too, so the node agent's loaders, which report their files' faults as ValueError, pass it on.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems) if len(problems) == 1 else f"invalid YAML {source}:\n  " + "\n  ".join(problems))


def parse_yaml(text: str, source: str) -> tuple[Any, Lines]:
    """Parse one YAML document → (plain data, line of every key path); None and {} for an empty document.

    `source` names the file in the messages. Raises YAMLFileError listing every problem found.
    """
    try:
        return _parse(text, source)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise YAMLFileError(source, [f"{source}:{mark.line + 1 if mark else 1}: YAML syntax: {e.problem or e.context}"]) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, other control characters); it has no mark
        line = text.count("\n", 0, e.position) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)  # libyaml gives the code, PyYAML the character
        raise YAMLFileError(source, [f"{source}:{line}: character U+{code:04X} is not allowed in YAML (control characters are refused)"]) from None
    except RecursionError:  # PyYAML's own parser, where libyaml is missing, recurses once per level
        raise YAMLFileError(source, [f"{source}:1: lists and mappings nested too deep"]) from None


def _parse(text: str, source: str) -> tuple[Any, Lines]:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        lines: Lines = {}
        _check(root, source, lines)
        return loader.construct_document(root), lines
    finally:
        loader.dispose()


def load_yaml_file(path: str, default: Any = None) -> Any:
    """The plain data of the YAML file at `path` (`default` when it is empty); YAMLFileError names the file and line.

    An unreadable file is a YAMLFileError too (`path: cannot read: reason`).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise YAMLFileError(path, [f"{path}: cannot read: {e.strerror if isinstance(e, OSError) else e.reason}"]) from None
    data, _ = parse_yaml(text, path)
    return default if data is None else data


def _check(root: yaml.Node, source: str, lines: Lines) -> None:
    """Refuse what `construct_document` must never see, then map every key path to its line (and report duplicate keys)."""
    problems: list[str] = []
    sizes: dict[int, int] = {}
    expanded = _size(root, sizes, set(), problems, source)
    if problems:
        raise YAMLFileError(source, problems)
    if expanded - len(sizes) > MAX_ALIAS_NODES:
        raise YAMLFileError(source, [
            f"{source}:{root.start_mark.line + 1}: aliases expand this document to {expanded:,} nodes "
            f"({expanded - len(sizes):,} through aliases; at most {MAX_ALIAS_NODES:,} are read): refused"
        ])
    _index_lines(root, (), lines, problems, source)
    if problems:
        raise YAMLFileError(source, problems)


def _size(node: yaml.Node, sizes: dict[int, int], open_: set[int], problems: list[str], source: str) -> int:
    """The number of nodes under `node` once aliases are expanded, each shared node counted once (memoised by identity,
    so a bomb's count costs one visit per node); records bad tags, complex keys and recursive aliases in `problems`."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        problems.append(f"{source}:{node.start_mark.line + 1}: an alias refers to a node that contains it (recursive alias)")
        return 0
    at = f"{source}:{node.start_mark.line + 1}"
    if node.tag not in _PLAIN_TAGS:
        problems.append(f"{at}: tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} is not allowed; "
                        "only plain values (text, numbers, booleans, null, dates, lists, mappings) are read")
        sizes[key] = 1
        return 1
    open_.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                problems.append(f"{source}:{k.start_mark.line + 1}: a key must be plain text, not a list or mapping")
            total += _size(k, sizes, open_, problems, source) + _size(v, sizes, open_, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _size(item, sizes, open_, problems, source)
    open_.discard(key)
    sizes[key] = total
    return total


def _index_lines(node: yaml.Node, path: tuple, lines: Lines, problems: list[str], source: str) -> None:
    """Map every key path to its 1-based line; report duplicate keys, which PyYAML would silently merge."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = key.value
            if k in seen:
                problems.append(f"{source}:{key.start_mark.line + 1}: {dotted(path + (k,))}: duplicate key")
            seen.add(k)
            _index_lines(value, path + (k,), lines, problems, source)
            lines[path + (k,)] = key.start_mark.line + 1  # the key's line, not that of the block it opens
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), lines, problems, source)


def dotted(loc: tuple) -> str:
    """A key path as written in messages: `factories[0].systems[1].id`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
