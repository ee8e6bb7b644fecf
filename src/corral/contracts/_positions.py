"""Where things are in a YAML document: line numbers by field path, for error messages."""

from __future__ import annotations

import yaml

__all__ = ["Lines", "collect_lines", "dotted", "line_of"]

Lines = dict[tuple[str | int, ...], int]
"""One-based line of every field path of a document (``("spec", "limits")`` -> 12)."""


def dotted(path: tuple[str | int, ...]) -> str:
    """``("spec", "tools", 0)`` -> ``spec.tools[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(lines: Lines, path: tuple[str | int, ...]) -> int | None:
    """The line of ``path``, or of its closest existing parent (a missing field has none)."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def collect_lines(node: yaml.Node, path: tuple[str | int, ...], lines: Lines) -> None:
    """Record the line of ``node`` and of everything below it into ``lines``."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            collect_lines(value_node, (*path, key), lines)
            # The key's own line is the better answer for "this field is wrong".
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            collect_lines(item, (*path, index), lines)
