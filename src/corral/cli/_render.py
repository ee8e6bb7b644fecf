"""Plain-text rendering of tables, steps and span trees for the terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

__all__ = ["ago", "render_step", "render_tool_call", "render_trace", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, with a header row."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def ago(timestamp: str | None) -> str:
    """``2026-11-21T09:00:00Z`` -> ``2026-11-21 09:00:00``."""
    if not timestamp:
        return "-"
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_step(step: dict[str, Any]) -> str:
    """One step as a few lines: the decision and each tool call's outcome."""
    head = (
        f"step {step['index']}  {step['kind']}  ({step['input_tokens']} in / "
        f"{step['output_tokens']} out tokens)"
    )
    lines = [head]
    decision = step["decision"]
    if step["kind"] == "invalid_decision":
        lines.append(f"    invalid: {_short(decision.get('error'))}")
        lines.append(f"    model said: {_short(decision.get('raw'))}")
    elif step["kind"] == "model_error":
        lines.append(f"    model error: {_short(step.get('error'))}")
    elif step["kind"] == "final_answer":
        lines.append(f"    answer: {_short(decision.get('final_answer'), 200)}")
        if decision.get("sources"):
            lines.append(f"    sources: {', '.join(decision['sources'])}")
    lines.extend(render_tool_call(call) for call in step["tool_calls"])
    return "\n".join(lines)


def render_tool_call(call: dict[str, Any]) -> str:
    """One tool call of a step, indented under it: ``tool {arguments} -> outcome``."""
    outcome = call["status"]
    if call["status"] == "COMPLETED":
        outcome += f" ({call['output_bytes']} bytes{', truncated' if call['truncated'] else ''})"
    elif call["status"] == "REPEATED":
        outcome += " (not executed: the run made this call before; the model was told so)"
    else:
        outcome += f": {_short(call['error'])}"
    return f"    {call['tool_name']} {_short(call['arguments'])} -> {outcome}"


def render_trace(spans: list[dict[str, Any]]) -> str:
    """The span tree, children indented under parents, with durations and token counts."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {span["span_id"] for span in spans}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_time"]):
            attributes = span["attributes"]
            extra = []
            if "gen_ai.usage.input_tokens" in attributes:
                extra.append(
                    f"{attributes['gen_ai.usage.input_tokens']} in / "
                    f"{attributes.get('gen_ai.usage.output_tokens', 0)} out tokens"
                )
            if "error.type" in attributes:
                extra.append(f"error.type={attributes['error.type']}")
            suffix = f"  [{'; '.join(extra)}]" if extra else ""
            lines.append(f"{'  ' * depth}{span['name']}  {span['duration_ms']:.1f} ms{suffix}")
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)
