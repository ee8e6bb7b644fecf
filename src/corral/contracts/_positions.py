"""Where things are in a YAML document: line numbers by field path, for error messages."""

from __future__ import annotations

__all__ = ["Lines", "dotted", "line_of"]

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
