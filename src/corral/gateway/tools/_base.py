"""The tool gateway's shapes: the context of a call and its result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ToolCallContext", "ToolResult"]


@dataclass(frozen=True)
class ToolCallContext:
    """Who calls, from where.

    Attributes:
        tenant_id: Tenant of the run.
        run_id: The run, or ``None`` for calls from outside a managed run.
        step_index: Zero-based step of the run.
        call_index: Zero-based position of the call within the step.
        workspace: Root directory the ``fs.*`` tools may read, or ``None`` (they then refuse).
        allowed_tools: Exactly the tool names this agent may call.
    """

    tenant_id: str
    run_id: str | None
    step_index: int
    call_index: int
    workspace: Path | None
    allowed_tools: frozenset[str]

    @property
    def idempotency_key(self) -> str:
        """``{run_id}:{step}:{call_index}`` (DESIGN.md, "Exactly-once effects")."""
        return f"{self.run_id}:{self.step_index}:{self.call_index}"


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call through the gateway.

    Attributes:
        status: ``COMPLETED``; ``FAILED`` (the tool or its arguments failed); ``DENIED`` (not
            allowed to this agent or unknown).
        output: Text for the model: the tool's output (possibly truncated) or the error.
        output_bytes: Size in bytes of the full output before truncation (0 on error).
        truncated: Whether ``output`` was cut to the size cap.
        error: Error message, when not ``COMPLETED``.
        error_type: Stable error code (``path_outside_workspace``, ``invalid_arguments``...).
        tool_version: Version of the tool that ran, when it resolved.
    """

    status: Literal["COMPLETED", "FAILED", "DENIED"]
    output: str
    output_bytes: int = 0
    truncated: bool = False
    error: str | None = None
    error_type: str | None = None
    tool_version: str | None = None
