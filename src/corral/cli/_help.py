"""Readable help placeholders: ``--limit N``, ``--file PATH``, ``--agent AGENT``, not ``<int>``.

Typer shows a parameter's Python type (``<str>``, ``<bool>``, ``<int range>``) where command
lines conventionally show a placeholder naming the value (git, kubectl: ``NAME``, ``PATH``,
``N``). :func:`readable_placeholders` rewrites every parameter of the built click command.
"""

from __future__ import annotations

import pathlib
from typing import Any, get_args

from typer.core import TyperOption

from corral.cli._permissions import iter_commands

__all__ = ["readable_placeholders"]


def _placeholder(param: Any) -> str | None:
    """The placeholder of one parameter; ``None`` keeps Typer's (choices: ``<a|b>``)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""  # a flag takes no value
    described = getattr(param, "type_descriptor", None)
    if described is None or described.is_choice:
        return None
    annotation = described.annotation
    item = get_args(annotation)[0] if described.is_list and get_args(annotation) else annotation
    if described.is_path or item is pathlib.Path:
        return "PATH"
    if item is int:
        return "N"
    if item is float:
        return "SECONDS" if "seconds" in (param.name or "") else "NUMBER"
    return (param.name or "value").upper()


def _flagged(make_option: Any) -> Any:
    """``--help`` is built per call: give it the flag's empty placeholder too."""

    def help_option(ctx: Any) -> Any:
        option = make_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return help_option


def readable_placeholders(command: Any) -> Any:
    """Give every parameter of ``command`` and its subcommands a readable placeholder.

    Returns:
        ``command``, changed in place.
    """
    commands = [command, *(sub for _path, sub in iter_commands(command))]
    for each in commands:
        each.get_help_option = _flagged(each.get_help_option)
        for param in each.params:
            shown = _placeholder(param)
            if shown is None:
                continue
            if isinstance(param, TyperOption):
                param.metavar = shown
            else:  # an argument: its name is shown already; the type column gets the placeholder
                param.display_type_rich = lambda ctx, shown=shown: shown
    return command
